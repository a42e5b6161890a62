"""The run-time calibration: timed per-size points become the same latency model a sweep's
records give, without a records file, and their records read back like a sweep's."""

from __future__ import annotations

import pytest
import torch
from runtime_fixtures import linear_ms, record

import vitres
from vitres.measure import TimingConfig
from vitres.runtime.calibration import calibrate
from vitres.runtime.latency import LatencyModel, LatencyPoint
from vitres.tune.records import read_results

MODEL = "fmnist-vit-multires"
QUICK = TimingConfig(warmup_calls=1, warmup_s=0.0, min_calls=3, min_s=0.0)


def test_points_give_the_model_records_give():
    records = [record(s, linear_ms((s // 4) ** 2), accuracy=0.8) for s in (16, 20, 24, 28)]
    records += [record(s, 0.5 * (s // 4) ** 2 + 2.0, batch=8, tail=1.5) for s in (16, 24, 28)]
    from_records = LatencyModel.from_records(records)
    points = [
        LatencyPoint(
            tuple(m.config.resolution),
            m.config.batch_size,
            m.latency.median_ms,
            m.latency.p95_ms,
            m.tokens,
            m.accuracy,
        )
        for m in records
    ]
    from_points = LatencyModel.from_points(
        points, model="m", backend="eager", patch_size=4, tokens_at=lambda s: (s[0] // 4) ** 2
    )
    for size in (16, 20, 28, 32):
        for batch in (1, 4, 8):
            a, b = from_records.predict(size, batch), from_points.predict(size, batch)
            assert (a.source, a.median_ms, a.p95_ms) == (b.source, b.median_ms, b.p95_ms)
    assert from_points.expected_accuracy(24) == from_records.expected_accuracy(24)
    with pytest.raises(ValueError, match="no measured point with a positive latency"):
        LatencyModel.from_points([], model="m", backend="eager")


def test_calibrate_times_every_size_and_leaves_the_model_alone(tmp_path):
    torch.set_num_threads(1)
    model = vitres.load_model(MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = calibrate(model, [12, 16], backend="eager-bf16", batches=(1, 2), timing=QUICK)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [(p.size, p.batch) for p in calibration.points] == [
        ((12, 12), 1),
        ((12, 12), 2),
        ((16, 16), 1),
        ((16, 16), 2),
    ]
    assert all(p.ok and p.stats.count >= 3 and p.attempts >= 1 for p in calibration.points)
    assert [p.tokens for p in calibration.points] == [9, 9, 16, 16]
    latency = calibration.latency_model(MODEL)
    assert (latency.backend, latency.precision, latency.patch_size) == ("eager-bf16", "bf16", 4)
    point = calibration.points[2]
    assert latency.predict(16).median_ms == point.stats.median_ms
    assert latency.predict(16).source == "measured"
    assert latency.tokens(28) == 49  # a size not timed: from the patch size and policy
    path = tmp_path / "calibration.jsonl"
    calibration.write(str(path), MODEL)
    back = read_results(path)
    assert [m.config.resolution for m in back] == [(12, 12), (12, 12), (16, 16), (16, 16)]
    assert all(m.ok and m.config.backend == "eager-bf16" for m in back)
    again = LatencyModel.from_records(back)
    assert again.predict(16).median_ms == latency.predict(16).median_ms
    assert again.predict(28).median_ms == pytest.approx(latency.predict(28).median_ms)


def test_server_calibration_times_every_size_and_batch_and_saves_them(tmp_path):
    from vitres.serve.config import ServeConfig
    from vitres.serve.launch import load_records

    saved = tmp_path / "calibration.jsonl"
    config = ServeConfig(
        model=MODEL,
        resolutions="12,20",
        max_batch=2,
        safe_resolution="12",
        safe_backend="onnxruntime",
        save_calibration=str(saved),
        progress=False,
        threads=1,
    )
    lines: list[str] = []
    records = load_records(config, log=lines.append)
    points = sorted((m.config.backend, m.config.resolution, m.config.batch_size) for m in records)
    assert points == [
        ("eager", (12, 12), 1),
        ("eager", (12, 12), 2),
        ("eager", (20, 20), 1),
        ("eager", (20, 20), 2),
        ("onnxruntime", (12, 12), 1),
        ("onnxruntime", (12, 12), 2),
    ]
    assert all(m.ok and m.latency.median_ms > 0 and m.accuracy is None for m in records)
    assert [m.to_dict() for m in read_results(saved)] == [m.to_dict() for m in records]
    assert "6 configs" in lines[0] and "6 ok, 0 failed" in lines[-1]
    model = LatencyModel.from_records([m for m in records if m.config.backend == "eager"])
    assert model.predict(20, 2).median_ms > model.predict(12, 1).median_ms
