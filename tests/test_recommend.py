"""Recommendation on synthetic results: Pareto front, feasibility, verdict, messages,
baseline, and the adaptive sweep's choice of what to measure next."""

from __future__ import annotations

import json

import pytest

from vitres.recommend import (
    Budget,
    adaptive_candidates,
    format_recommendation,
    pareto_front,
    recommend,
    select_baseline,
)
from vitres.records import LatencyStats, Measurement, SweepConfig, append_result, read_results


def mk(
    res: int,
    acc: float | None,
    ms: float,
    mem: float = 10.0,
    backend: str = "eager",
    batch: int = 1,
    status: str = "ok",
) -> Measurement:
    precision = "bf16" if backend.endswith("bf16") else "fp32"
    config = SweepConfig("m", (res, res), None, batch, precision, backend, 1)
    lat = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 30, False)
    return Measurement(
        config,
        status=status,
        accuracy=acc,
        latency=lat,
        throughput_ips=batch * 1000 / ms,
        peak_mem_mb=mem,
        tokens=(res // 4) ** 2,
        native_resolution=(28, 28),
        native_patch_size=4,
    )


def keys(records):
    return sorted(m.key for m in records)


def test_pareto_front_removes_dominated_points():
    a = mk(16, 0.90, 1.0)
    b = mk(24, 0.92, 2.0)
    c = mk(20, 0.89, 3.0)  # dominated by a (less accurate, slower, same memory)
    d = mk(28, 0.92, 2.0, mem=12.0)  # dominated by b (same acc and latency, more memory)
    e = mk(32, 0.95, 5.0, mem=8.0)  # most accurate: on the front
    failed = mk(12, 0.99, 0.1, status="error")  # errors never count
    front = pareto_front([a, b, c, d, e, failed])
    assert keys(front) == keys([a, b, e])
    assert [m.latency_ms for m in front] == [1.0, 2.0, 5.0]


def test_best_feasible_is_most_accurate_then_fastest():
    base = mk(28, 0.93, 4.0)
    b = mk(24, 0.92, 2.0)
    d = mk(20, 0.92, 2.2)
    slow = mk(32, 0.96, 6.0)
    rec = recommend([base, b, d, slow], Budget(max_latency_ms=2.5))
    assert rec.choice.key == b.key  # tie on accuracy with d -> the faster one
    assert keys(rec.feasible) == keys([b, d])
    assert rec.baseline.key == base.key
    assert rec.delta_acc_points == pytest.approx(-1.0)
    assert rec.delta_speed == pytest.approx(4.0 / 2.0 - 1.0)
    assert rec.accepted is True and rec.verdict.startswith("accept")


def test_verdict_rejects_large_accuracy_change_or_small_speedup():
    base = mk(28, 0.93, 4.0)
    rec = recommend([base, mk(16, 0.91, 1.0)], Budget(max_latency_ms=2.0))
    assert rec.delta_acc_points == pytest.approx(-2.0)
    assert rec.accepted is False and "accuracy" in rec.verdict
    rec = recommend([base, mk(24, 0.93, 3.5)], Budget(max_latency_ms=3.6))
    assert rec.delta_speed == pytest.approx(4.0 / 3.5 - 1) and rec.delta_speed < 0.25
    assert rec.accepted is False and "speed" in rec.verdict
    # the rule is |ΔAcc| < max_acc_drop: exactly at the limit is not accepted
    rec = recommend([base, mk(16, 0.915, 1.0)], Budget(max_latency_ms=2.0, max_acc_drop=1.5))
    assert rec.delta_acc_points == pytest.approx(-1.5) and rec.accepted is False


def test_speedup_is_per_image_across_batch_sizes():
    base = mk(28, 0.93, 4.0)
    batched = mk(28, 0.93, 8.0, batch=4)  # 2 ms per image
    rec = recommend([base, batched], Budget(min_fps=400), baseline=base.key)
    assert rec.choice.key == batched.key
    assert rec.delta_speed == pytest.approx(1.0)


def test_infeasible_message_names_the_closest():
    records = [mk(28, 0.93, 9.0), mk(28, 0.925, 6.1, backend="eager-bf16"), mk(40, 0.94, 15.0)]
    rec = recommend(records, Budget(max_latency_ms=5))
    assert rec.choice is None
    assert rec.message == "no config meets 5 ms; the fastest is 28 px bf16 at 6.1 ms"
    assert rec.closest.config.backend == "eager-bf16"
    assert "No feasible config" in format_recommendation(rec)
    rec = recommend(records, Budget(max_memory_mb=5))
    assert rec.message.startswith("no config fits 5 MiB; the smallest is")
    # each limit reachable alone, not together
    both = [mk(16, 0.9, 1.0, mem=50.0), mk(20, 0.9, 5.0, mem=5.0)]
    rec = recommend(both, Budget(max_latency_ms=2.0, max_memory_mb=10.0))
    assert rec.choice is None and rec.message.startswith("no config meets all of")


def test_baseline_selection():
    native_b1 = mk(28, 0.93, 4.0)
    native_b8 = mk(28, 0.93, 20.0, batch=8)
    native_bf16 = mk(28, 0.92, 3.0, backend="eager-bf16")
    other = mk(16, 0.9, 1.0)
    assert select_baseline([native_b8, native_bf16, other, native_b1]).key == native_b1.key
    assert select_baseline([native_b8, native_bf16, other]).key == native_b8.key  # smallest batch
    assert select_baseline([native_bf16, other]) is None
    assert select_baseline([native_b1, other], other.key).key == other.key
    with pytest.raises(ValueError, match="baseline key"):
        select_baseline([native_b1], "no-such-key")
    rec = recommend([native_bf16, other], Budget())
    assert rec.baseline is None and rec.accepted is None


def test_recommendation_from_a_results_file_and_json(tmp_path):
    path = tmp_path / "results.jsonl"
    for m in [mk(28, 0.93, 4.0), mk(20, 0.925, 2.0), mk(16, None, 1.0, status="error")]:
        append_result(path, m)
    rec = recommend(read_results(path), Budget(max_latency_ms=3))
    data = json.loads(json.dumps(rec.to_dict()))
    assert data["choice"]["resolution"] == [20, 20]
    assert data["accepted"] is True
    assert data["delta_acc_points"] == pytest.approx(-0.5)
    assert "Recommended: 20 px fp32" in format_recommendation(rec)


def test_adaptive_candidates_boundary_and_accuracy_bracket():
    measured = [mk(16, 0.80, 1.0), mk(32, 0.90, 4.0), mk(48, 0.85, 9.0), mk(64, 0.84, 16.0)]

    def predicted(res: int, ms: float) -> Measurement:
        m = mk(res, None, ms, status="predicted")
        m.source = "predicted"
        return m

    p24, p40, p56 = predicted(24, 2.3), predicted(40, 6.2), predicted(56, 12.2)
    budget = Budget(max_latency_ms=6.0)
    out = adaptive_candidates(measured, [p24, p40, p56], budget, error_pct=10.0)
    # p40 (6.2 ms vs 6 ms) is within the 10 % band: feasibility unknown; p56 surely fails;
    # p24 is surely feasible and lies between the best measured (32 px) and its neighbour
    assert [m.key for m in out] == [p40.key, p24.key]
    # a tight band settles p40 as infeasible
    out = adaptive_candidates(measured, [p24, p40, p56], budget, error_pct=1.0)
    assert [m.key for m in out] == [p24.key]
    # without accuracy data only the boundary matters
    blind = [mk(r, None, ms) for r, ms in ((16, 1.0), (32, 4.0), (64, 16.0))]
    out = adaptive_candidates(blind, [p24, p40, p56], budget, error_pct=10.0)
    assert [m.key for m in out] == [p40.key]
