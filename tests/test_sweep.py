"""Sweep: grid parsing, resumable results file, failure isolation, adaptive mode."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from vitres.measure import LatencyStats, TimingConfig
from vitres.tune.grid import anchor_resolutions, build_grid, parse_int_list, parse_resolutions
from vitres.tune.records import (
    Measurement,
    SweepConfig,
    append_result,
    read_results,
    repair_results,
)
from vitres.tune.sweep import run_sweep

FAST = TimingConfig(warmup_calls=1, warmup_s=0.0, min_calls=3, min_s=0.0)


# ---------------------------------------------------------------- a tiny fake model


@dataclass
class FakeConfig:
    img_size: tuple = (16, 16)
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 3
    embed_dim: int = 8
    mean: tuple = (0.5,)
    std: tuple = (0.5,)


BUILDS = {"count": 0}
FAIL_AT: dict[str, object] = {"height": None, "interrupt_at": None}


class FakeModel(nn.Module):
    """Patchify, one linear layer, mean-pool. Fails or interrupts on request."""

    num_prefix_tokens = 0

    def __init__(self) -> None:
        super().__init__()
        self.config = FakeConfig()
        self.embed = nn.Conv2d(1, 8, 4, 4)
        self.head = nn.Linear(8, 3)

    def grid_size(self, size, patch_size=None):
        p = patch_size or 4
        return (-(-size[0] // p), -(-size[1] // p))

    def forward(self, x, patch_size=None):
        if x.shape[-2] == FAIL_AT["height"]:
            raise RuntimeError(f"cannot run at height {x.shape[-2]}")
        if x.shape[-2] == FAIL_AT["interrupt_at"]:
            raise KeyboardInterrupt
        if x.shape[-2] == 20 and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # only ever in an isolated child
        return self.head(self.embed(x).flatten(2).mean(-1))


def make_fake_model() -> FakeModel:
    BUILDS["count"] += 1
    return FakeModel()


@pytest.fixture(autouse=True)
def _reset():
    BUILDS["count"] = 0
    FAIL_AT.update(height=None, interrupt_at=None)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sweep(path, resolutions, **kw):
    configs = build_grid(make_fake_model, resolutions, threads=1)
    # timings of this tiny model on a shared machine may show real interference; the
    # re-measurement logic is tested on its own with scripted evidence
    kw = {"max_attempts": 1, "keep_unstable": True, **kw}
    return run_sweep(
        make_fake_model, configs, path, timing=FAST, isolate=False, progress=False, **kw
    )


# ---------------------------------------------------------------- parsing and grid


def test_parse_resolutions():
    assert parse_resolutions("16,20,28") == [(16, 16), (20, 20), (28, 28)]
    wide = parse_resolutions("96:448:32")
    assert wide[0] == (96, 96) and wide[-1] == (448, 448) and len(wide) == 12
    assert parse_resolutions("28x40, 16") == [(28, 40), (16, 16)]
    assert parse_resolutions("16,16,20:24:4") == [(16, 16), (20, 20), (24, 24)]
    assert parse_resolutions([16, (20, 24)]) == [(16, 16), (20, 24)]
    for bad in ("abc", "0", "30:20", "16,,x"):
        with pytest.raises(ValueError):
            parse_resolutions(bad)
    assert parse_int_list("1,8") == [1, 8]
    assert parse_int_list("native,4", allow_native=True) == [None, 4]
    with pytest.raises(ValueError):
        parse_int_list("1,-2")


def test_build_grid_and_anchors():
    grid = build_grid(
        "vit",
        "16,28",
        patch_sizes=[None, 4],
        batch_sizes=[1, 8],
        backends=["eager", "eager-bf16"],
        threads=2,
    )
    assert len(grid) == 16
    assert {c.precision for c in grid if c.backend == "eager-bf16"} == {"bf16"}
    assert grid[0].resolution == (16, 16) and grid[1].resolution == (28, 28)  # resolution fastest
    assert len({c.key() for c in grid}) == 16
    with pytest.raises(ValueError, match="unknown backend"):
        build_grid("vit", "16", backends=["nope"])
    sizes = parse_resolutions("16:64:8")  # 7 sizes
    assert anchor_resolutions(sizes, 4) == [(16, 16), (32, 32), (48, 48), (64, 64)]
    assert anchor_resolutions(sizes[:3], 4) == sizes[:3]


# ---------------------------------------------------------------- records file


def test_records_round_trip_through_json():
    m = Measurement(
        SweepConfig("m", (28, 40), 4, 2, "bf16", "eager-bf16", 1),
        accuracy=0.5,
        n_eval=10,
        latency=LatencyStats(1.0, 0.1, 1.2, 1.3, 1.4, 0.9, 1.05, 30, False),
        grid=(7, 10),
        tokens=70,
        native_resolution=(28, 28),
        env={"cpu_flags": {"avx512f": True}},
    )
    back = Measurement.from_json(m.to_json())
    assert back == m
    assert back.key == "m|28x40|p4|b2|eager-bf16|bf16|t1|cpu"
    assert json.loads(m.to_json())["config"]["resolution"] == [28, 40]


def test_partial_trailing_line_is_tolerated_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    good = [Measurement(SweepConfig("m", (r, r))) for r in (16, 20)]
    for m in good:
        append_result(path, m)
    with open(path, "a", encoding="utf-8") as f:
        f.write(good[0].to_json()[:40])  # a killed writer
    with pytest.warns(UserWarning, match="partial last line"):
        assert [m.key for m in read_results(path)] == [m.key for m in good]
    append_result(path, Measurement(SweepConfig("m", (24, 24))))  # repairs, then appends
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_results(path)) == 3
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json\n" + good[0].to_json() + "\n")
    with pytest.raises(ValueError, match="line 4"):
        read_results(path)
    assert not repair_results(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- sweeping


def test_resume_skips_configs_already_done(tmp_path):
    path = tmp_path / "r.jsonl"
    first = sweep(path, "8,12,16")
    assert [m.status for m in first] == ["ok"] * 3 and BUILDS["count"] == 3
    m = first[1]
    assert m.tokens == 9 and m.grid == (3, 3) and m.native_resolution == (16, 16)
    assert m.flops == 2 * 9 * 1 * 16 * 8 + 2 * 8 * 3  # patch conv + head (mean not counted)
    assert m.flops_analytic is None  # FakeConfig is neither a ViT nor a Mixer config
    assert m.latency.count >= 3 and m.throughput_ips > 0 and m.env["torch_threads"] == 1
    again = sweep(path, "8,12,16")
    assert BUILDS["count"] == 3  # nothing re-measured
    assert [m.key for m in again] == [m.key for m in first]
    sweep(path, "8,12,16,24")
    assert BUILDS["count"] == 4  # only the new resolution
    assert len(read_results(path)) == 4


def test_failing_config_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = tmp_path / "r.jsonl"
    FAIL_AT["height"] = 12
    results = sweep(path, "8,12,16")
    assert [m.status for m in results] == ["ok", "error", "ok"]
    assert "RuntimeError: cannot run at height 12" in results[1].error
    FAIL_AT["height"] = None
    retried = sweep(path, "8,12,16")  # errors are retried on resume, ok configs are not
    assert [m.status for m in retried] == ["ok"] * 3 and BUILDS["count"] == 4


def test_interrupt_leaves_only_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    FAIL_AT["interrupt_at"] = 12
    with pytest.raises(KeyboardInterrupt):
        sweep(path, "8,12,16")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(text.splitlines()) == 1
    assert read_results(path)[0].config.resolution == (8, 8)


def test_adaptive_measures_anchors_and_predicts_the_rest(tmp_path):
    path = tmp_path / "r.jsonl"
    results = sweep(path, "8:36:4", adaptive=True)  # 8 resolutions, no budget, no data
    measured = [m for m in results if m.status == "ok"]
    predicted = [m for m in results if m.status == "predicted"]
    assert [m.config.resolution[0] for m in measured] == [8, 16, 28, 36]
    assert len(predicted) == 4 and BUILDS["count"] == 4
    assert all(m.latency_ms > 0 and m.source == "predicted" for m in predicted)
    assert {m.status for m in read_results(path)} == {"ok", "predicted"}


def test_isolated_child_crash_becomes_an_error_record(tmp_path):
    path = tmp_path / "r.jsonl"
    configs = build_grid("test_sweep:make_fake_model", "16,20", threads=1)
    results = run_sweep(
        "test_sweep:make_fake_model",
        configs,
        path,
        timing=FAST,
        isolate=True,
        progress=False,
        timeout_s=120,
        max_attempts=1,
    )
    assert results[0].status == "ok" and results[0].mem_method == "rss_hwm_child"
    assert results[0].peak_mem_mb is not None and results[0].peak_mem_mb >= 0
    assert results[1].status == "error" and "SIGKILL" in results[1].error
    assert [m.status for m in read_results(path)] == ["ok", "error"]


def test_measure_hook_replaces_measurement(tmp_path):
    """Strategies can be compared on recorded numbers: the hook is called per config."""
    from vitres.tune.sweep import error_record, run_sweep

    seen = []

    def replay(model_ref, config, *rest):
        seen.append(config.resolution)
        return error_record(config, "replayed")

    out = tmp_path / "r.jsonl"
    records = run_sweep(
        "vit_tiny_patch16", out_path=out, resolutions="32,48", measure=replay, progress=False
    )
    assert seen == [(32, 32), (48, 48)]
    assert [m.error for m in records] == ["replayed", "replayed"]
    assert len(out.read_text().splitlines()) == 2


def test_resume_measures_again_when_the_checkpoint_changed(tmp_path):
    """Results are keyed by model name; a retrained checkpoint under the same path must not
    inherit them, while an unchanged one resumes without measuring anything."""
    import vitres
    from vitres.models.checkpoint import checkpoint_digest, save_model

    def fake(model_ref, config, *rest):
        calls.append(config.resolution)
        return Measurement(config=config, accuracy=0.5, n_eval=1)

    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_model(
        vitres.create_model("vit_tiny_patch4", img_size=8, embed_dim=16, depth=1, num_heads=2), path
    )
    first = checkpoint_digest(path)
    assert first is not None and checkpoint_digest("vit_tiny_patch4") is None
    out = tmp_path / "r.jsonl"
    calls: list = []
    run_sweep(
        str(path), out_path=out, resolutions="8,16", measure=fake, progress=False, max_attempts=1
    )
    assert len(calls) == 2 and {m.model_digest for m in read_results(out)} == {first}
    calls.clear()
    run_sweep(
        str(path), out_path=out, resolutions="8,16", measure=fake, progress=False, max_attempts=1
    )
    assert calls == []  # same weights: everything resumes
    torch.manual_seed(1)
    save_model(
        vitres.create_model("vit_tiny_patch4", img_size=8, embed_dim=16, depth=1, num_heads=2), path
    )
    second = checkpoint_digest(path)
    assert second != first
    with pytest.warns(UserWarning, match="other weights"):
        records = run_sweep(
            str(path),
            out_path=out,
            resolutions="8,16",
            measure=fake,
            progress=False,
            max_attempts=1,
        )
    assert len(calls) == 2 and {m.model_digest for m in records} == {second}
