"""Energy per image: RAPL counters read from a powercap tree (here a fake one with the
kernel's layout), their wraparound, the refusal sentences, and the records a sweep makes."""

from __future__ import annotations

import pytest
import torch

import vitres
from vitres.measure import TimingConfig
from vitres.measure import energy as energy_module
from vitres.measure.energy import EnergyMeter, energy_per_image, rapl_packages, rapl_reader
from vitres.tune.records import Measurement, SweepConfig


def zone(root, name, energy_uj, range_uj=1_000_000):
    path = root / name
    path.mkdir(parents=True)
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


def test_rapl_sums_packages_not_their_parts_and_unwraps_overflows(tmp_path):
    first = zone(tmp_path, "intel-rapl:0", 900_000)
    second = zone(tmp_path, "intel-rapl:1", 10)
    zone(tmp_path, "intel-rapl:0:0", 5)  # the cores of package 0: part of it, not added
    assert [p.name for p in rapl_packages(tmp_path)] == ["intel-rapl:0", "intel-rapl:1"]
    reader, why = rapl_reader(tmp_path)
    assert why == "" and reader() == 0.0
    (first / "energy_uj").write_text("100000\n")  # wrapped at 1e6: +200,000 uJ
    (second / "energy_uj").write_text("500010\n")  # +500,000 uJ
    assert reader() == 0.7
    meter = EnergyMeter("cpu", reader=reader)
    meter.start()
    (first / "energy_uj").write_text("400000\n")
    assert meter.stop() == pytest.approx(0.3, abs=1e-12) and meter.joules == meter.stop()
    assert energy_per_image(1.5, 6) == 0.25 and energy_per_image(None, 6) is None


def test_missing_counters_say_why(tmp_path):
    reader, why = rapl_reader(tmp_path / "absent")
    assert reader is None and "no RAPL energy counters here" in why
    broken = tmp_path / "intel-rapl:0"
    (broken / "energy_uj").mkdir(parents=True)  # unreadable as a number
    reader, why = rapl_reader(tmp_path)
    assert reader is None and "could not be read" in why


def test_a_sweep_record_carries_energy_per_image(monkeypatch):
    """A counter that adds one joule per forward call: a record's energy per image must
    be exactly 1 / batch, whatever the number of warm-up and timed calls."""
    from vitres.tune.measurement import measure_config

    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4",
        img_size=16,
        in_chans=1,
        num_classes=2,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    monkeypatch.setattr(energy_module, "rapl_reader", lambda: (lambda: float(calls[0]), ""))
    config = SweepConfig(model="tiny", resolution=(16, 16), batch_size=4)
    timing = TimingConfig(warmup_calls=2, warmup_s=0.0, min_calls=5, min_s=0.0)
    record = measure_config(lambda: model, config, timing=timing, with_flops=False)
    assert record.energy_j_per_image == 0.25 and record.energy_method == "rapl"
    assert record.energy_missing is None and record.host_peak_mem_mb is None  # CPU: one memory
    again = Measurement.from_dict(record.to_dict())
    assert again.energy_j_per_image == 0.25 and again.energy_method == "rapl"

    monkeypatch.setattr(energy_module, "rapl_reader", lambda: (None, "no counters, for the test"))
    record = measure_config(lambda: model, config, timing=timing, with_flops=False)
    assert (
        record.energy_j_per_image is None and record.energy_missing == "no counters, for the test"
    )
