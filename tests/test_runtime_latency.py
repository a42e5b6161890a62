"""The shared latency model: measured points, cost-model predictions, accuracy per
resolution and the online correction, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
from runtime_fixtures import linear_ms, record

from vitres.runtime.latency import LatencyModel, OnlineCorrection, as_size
from vitres.tune.records import Measurement, append_result, read_results


def quiet_records() -> list[Measurement]:
    """Batch 1 at 16/20/24/28 px (16/25/36/49 tokens), median = 0.1·N + 1 ms; batch 8 at
    16, 24 and 28 px with median = 0.5·N + 2 and p95 = 1.5 × median."""
    accuracy = {16: 0.80, 20: 0.85, 24: None, 28: 0.90}
    out = [record(s, linear_ms((s // 4) ** 2), accuracy=accuracy[s]) for s in (16, 20, 24, 28)]
    out += [record(s, 0.5 * (s // 4) ** 2 + 2.0, batch=8, tail=1.5) for s in (16, 24, 28)]
    return out


def test_measured_points_are_the_records():
    model = LatencyModel.from_records(quiet_records())
    p = model.predict(20)
    assert p.source == "measured"
    assert p.median_ms == pytest.approx(3.5) and p.p95_ms == pytest.approx(4.2)
    assert model.predict((28, 28), 8).median_ms == pytest.approx(26.5)
    assert model.resolutions == [(16, 16), (20, 20), (24, 24), (28, 28)]
    assert model.batch_sizes == [1, 8]
    assert (model.backend, model.precision, model.patch_size) == ("eager", "fp32", 4)


def test_unmeasured_points_come_from_the_cost_model():
    model = LatencyModel.from_records(quiet_records())
    # 32 px -> 8x8 = 64 tokens; batch-1 fit is 0.1·N + 1 exactly; p95 uses the 1.2 tail
    p = model.predict(32)
    assert p.source == "cost-model"
    assert model.tokens(32) == 64
    assert p.median_ms == pytest.approx(linear_ms(64), rel=1e-9)
    assert p.p95_ms == pytest.approx(1.2 * linear_ms(64), rel=1e-9)
    # batch 8 has its own fit through (16 tokens, 10 ms), (36, 20) and (49, 26.5): 0.5·N + 2
    p8 = model.predict(20, 8)
    assert p8.source == "cost-model"
    assert p8.median_ms == pytest.approx(0.5 * 25 + 2.0, rel=1e-9)
    assert p8.p95_ms == pytest.approx(1.5 * (0.5 * 25 + 2.0), rel=1e-9)


def test_batch_without_a_fit_uses_tokens_times_batch():
    records = [record(s, linear_ms((s // 4) ** 2)) for s in (16, 20, 24, 28)]
    model = LatencyModel.from_records(records)
    p = model.predict(28, 4)
    assert p.source == "cost-model-pooled"
    assert p.median_ms == pytest.approx(linear_ms(49 * 4), rel=1e-9)
    assert p.p95_ms == pytest.approx(1.2 * linear_ms(49 * 4), rel=1e-9)


def test_expected_accuracy_measured_interpolated_or_unknown():
    model = LatencyModel.from_records(quiet_records())
    assert model.expected_accuracy(28) == pytest.approx(0.90)
    # 24 px (36 tokens) between 20 px (25 tokens, 0.85) and 28 px (49 tokens, 0.90)
    assert model.expected_accuracy(24) == pytest.approx(0.85 + 0.05 * 11 / 24)
    assert model.expected_accuracy(32) is None  # outside the measured range
    assert model.expected_accuracy(12) is None
    no_accuracy = LatencyModel.from_records([record(16, 2.0), record(28, 5.0)])
    assert no_accuracy.expected_accuracy(16) is None


def test_results_file_round_trip_and_skipped_records(tmp_path):
    path = tmp_path / "results.jsonl"
    for m in quiet_records():
        append_result(path, m)
    append_result(path, record(32, 999.0, status="error"))
    model = LatencyModel.from_records(read_results(path))
    # the error record at 32 px is ignored: 32 px is predicted, not 999 ms
    assert model.predict(32).median_ms == pytest.approx(linear_ms(64), rel=1e-9)


def test_mixed_backends_must_be_chosen():
    records = quiet_records() + [record(28, 3.0, backend="onnxruntime")]
    with pytest.raises(ValueError, match="mix backends.*backend="):
        LatencyModel.from_records(records)
    onnx = LatencyModel.from_records(records, backend="onnxruntime")
    assert onnx.predict(28).median_ms == pytest.approx(3.0)
    with pytest.raises(ValueError, match="backend='openvino'.*'eager', 'onnxruntime'"):
        LatencyModel.from_records(records, backend="openvino")


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="no measured records"):
        LatencyModel.from_records([record(16, 2.0, status="error")])
    model = LatencyModel.from_records(quiet_records())
    with pytest.raises(ValueError, match="batch must be a positive int"):
        model.predict(16, 0)
    with pytest.raises(ValueError, match="resolution must be positive"):
        model.predict(-4)
    with pytest.raises(ValueError, match="positive int or"):
        as_size("big")
    corrected = OnlineCorrection(model)
    with pytest.raises(ValueError, match="> 0 ms"):
        corrected.observe(16, 1, -1.0)
    with pytest.raises(ValueError, match="finite"):
        corrected.observe(16, 1, float("nan"))
    with pytest.raises(ValueError, match="half_life"):
        OnlineCorrection(model, half_life=0)


def test_correction_moves_every_prediction_by_one_factor():
    model = LatencyModel.from_records(quiet_records())
    corrected = OnlineCorrection(model, half_life=1.0)  # alpha = 1/2
    assert corrected.alpha == pytest.approx(0.5)
    # a 28 px call took twice its median: log factor = ln 2 / 2 -> sqrt 2
    assert corrected.observe(28, 1, 2 * 5.9) == pytest.approx(math.sqrt(2))
    assert corrected.predict(20).p95_ms == pytest.approx(4.2 * math.sqrt(2))
    assert corrected.predict(32).median_ms == pytest.approx(linear_ms(64) * math.sqrt(2))
    assert corrected.predict(20, 8).correction == pytest.approx(math.sqrt(2))
    assert corrected.count == 1 and corrected.last_ratio == pytest.approx(2.0)


def test_half_life_counts_observations():
    model = LatencyModel.from_records(quiet_records())
    corrected = OnlineCorrection(model, half_life=4.0, clip=10.0)
    for _ in range(4):
        corrected.observe(16, 1, 4 * 2.6)  # ratio 4, within the clip
    # after one half-life, half the log distance is covered: factor = sqrt(4) = 2
    assert corrected.factor == pytest.approx(2.0)
    for _ in range(400):
        corrected.observe(16, 1, 4 * 2.6)
    assert corrected.factor == pytest.approx(4.0)
    corrected.reset()
    assert corrected.factor == 1.0 and corrected.count == 0


def test_outliers_are_clipped():
    model = LatencyModel.from_records(quiet_records())
    corrected = OnlineCorrection(model, half_life=1.0, clip=3.0)
    corrected.observe(16, 1, 100 * 2.6)  # ratio 100 enters as 3 (the clip)
    assert corrected.factor == pytest.approx(math.sqrt(3.0))
    # ratio 0.01 enters as sqrt(3) / 3: log factor ln3/2 + (-ln3/2 - ln3/2) / 2 = 0
    corrected.observe(16, 1, 2.6 / 100)
    assert corrected.factor == pytest.approx(1.0)


def test_set_factor_seeds_the_correction():
    corrected = OnlineCorrection(LatencyModel.from_records(quiet_records()), half_life=1.0)
    corrected.set_factor(1.5)
    assert corrected.predict(16).p95_ms == pytest.approx(1.5 * 1.2 * 2.6)
    corrected.observe(16, 1, 4 * 2.6)  # ratio 4 = 1.5 * (8/3): the log moves half-way
    assert corrected.factor == pytest.approx(1.5 * math.sqrt(8 / 3))
    with pytest.raises(ValueError, match="positive"):
        corrected.set_factor(0.0)
