"""Recommendation on synthetic results: Pareto front, feasibility, verdict, messages,
baseline, and the adaptive sweep's choice of what to measure next."""

from __future__ import annotations

import json

import pytest

from vitres.tune.adaptive import adaptive_candidates
from vitres.tune.budget import Budget
from vitres.tune.recommend import (
    format_recommendation,
    pareto_front,
    recommend,
    select_baseline,
)
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result, read_results
from vitres.tune.rule import judge


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


def test_best_eligible_is_most_accurate_then_fastest():
    base = mk(28, 0.93, 4.0)
    b = mk(24, 0.92, 2.0)
    d = mk(20, 0.92, 2.2)
    slow = mk(32, 0.96, 6.0)
    rec = recommend([base, b, d, slow], Budget(max_latency_ms=2.5))
    assert rec.choice.key == b.key  # tie on accuracy with d -> the faster one
    assert keys(rec.feasible) == keys([b, d]) and keys(rec.eligible) == keys([b, d])
    assert rec.baseline.key == base.key
    # the seed's formulas, by hand: ΔAcc = (0.93 - 0.92) / 0.93, ΔSpeed = (4 - 2) / 4
    assert rec.delta_acc == pytest.approx(0.01 / 0.93)
    assert rec.delta_acc_points == pytest.approx(1.0)
    assert rec.delta_speed == pytest.approx(0.5)
    assert rec.speedup == pytest.approx(2.0)
    assert rec.accepted is True and rec.status == "accepted"
    assert rec.verdict.startswith("accept")


def test_rule_matches_the_seeds_hand_computation():
    # the seed's vehicle case: 120 ms -> 68 ms for a 1 % relative accuracy loss
    base, tuned = mk(28, 0.800, 120.0), mk(20, 0.792, 68.0)
    j = judge(tuned, base, Budget())
    assert j.delta_acc == pytest.approx((0.800 - 0.792) / 0.800)  # 1.0 %
    assert j.delta_speed == pytest.approx((120.0 - 68.0) / 120.0)  # 43.3 %
    assert j.accepted is True
    # relative vs points: a 1-point drop from 60 % is 1.67 % relative
    base, tuned = mk(28, 0.60, 4.0), mk(20, 0.59, 2.0)
    assert judge(tuned, base, Budget()).accepted is False
    assert judge(tuned, base, Budget()).acc_ok is False
    assert judge(tuned, base, Budget(acc_form="points")).accepted is True
    # time saved vs throughput gain: 4 ms -> 3.3 ms saves 17.5 %, is 1.21x the throughput
    base, tuned = mk(28, 0.9, 4.0), mk(24, 0.9, 3.3)
    assert judge(tuned, base, Budget(min_speedup=0.2)).delta_speed == pytest.approx(0.175)
    assert judge(tuned, base, Budget(min_speedup=0.2)).accepted is False
    assert judge(tuned, base, Budget(min_speedup=0.2, speed_form="throughput")).accepted is True
    # exactly at the limit is not accepted (|ΔAcc| < 1.5 %, ΔSpeed > 25 %)
    assert judge(mk(20, 0.985, 1.0), mk(28, 1.0, 4.0), Budget()).acc_ok is False
    assert judge(mk(20, 1.0, 3.0), mk(28, 1.0, 4.0), Budget()).speed_ok is False
    # a gain in accuracy never fails, however large
    assert judge(mk(20, 0.99, 2.0), mk(28, 0.5, 4.0), Budget(max_acc_drop=0)).accepted is True


def test_no_budget_means_most_accurate_config_the_rule_accepts():
    base = mk(28, 0.93, 4.0)
    bigger = mk(40, 0.94, 8.0)  # more accurate but slower: the speed half fails
    good = mk(20, 0.925, 2.0)  # 0.54 % drop, 50 % faster
    small = mk(16, 0.90, 1.0)  # 3.2 % drop
    rec = recommend([base, bigger, good, small])
    assert rec.choice.key == good.key and rec.accepted is True
    assert rec.budget.limits() == [] and "no limits" in rec.budget.source
    assert rec.sentence() == (
        "Deploy 20 px fp32 eager: 92.5 % (ΔAcc +0.54 %, a loss of 0.50 points), 2.00× faster "
        "than 28 px fp32 eager — accepted by the rule."
    )


def test_none_passes_names_the_closest_and_by_how_much():
    base = mk(28, 0.93, 4.0)
    almost = mk(24, 0.93, 3.2)  # ΔSpeed 20 %: misses 25 % by 5 points
    lossy = mk(16, 0.85, 1.0)  # fast but 8.6 % drop
    rec = recommend([base, almost, lossy])
    assert rec.choice is None and rec.status == "none-passes"
    assert rec.closest.key == almost.key
    assert rec.message.startswith("ΔSpeed misses by 5.0 %")
    assert rec.sentence() == (
        "Keep 28 px fp32 eager: no other config passes the rule (the closest, 24 px fp32 "
        "eager, saves only 20 % of the time per image)."
    )
    assert "None passes" in format_recommendation(rec)
    data = rec.to_dict()
    assert data["choice"] is None and data["closest"]["key"] == almost.key
    assert data["closest_judgement"]["delta_speed"] == pytest.approx(0.2)


def test_speedup_is_per_image_across_batch_sizes():
    base = mk(28, 0.93, 4.0)
    batched = mk(28, 0.93, 8.0, batch=4)  # 2 ms per image
    rec = recommend([base, batched], Budget(min_fps=400), baseline=base.key)
    assert rec.choice.key == batched.key
    assert rec.delta_speed == pytest.approx(0.5) and rec.speedup == pytest.approx(2.0)


def test_infeasible_message_names_the_closest():
    records = [mk(28, 0.93, 9.0), mk(28, 0.925, 6.1, backend="eager-bf16"), mk(40, 0.94, 15.0)]
    rec = recommend(records, Budget(max_latency_ms=5))
    assert rec.choice is None and rec.status == "infeasible"
    assert rec.message == "no config meets 5 ms; the fastest is 28 px bf16 at 6.1 ms"
    assert rec.closest.config.backend == "eager-bf16"
    assert rec.sentence().startswith("Nothing meets latency ≤ 5 ms; closest: 28 px bf16")
    rec = recommend(records, Budget(max_memory_mb=5))
    assert rec.message.startswith("no config fits 5 MiB; the smallest is")
    # each limit reachable alone, not together
    both = [mk(16, 0.9, 1.0, mem=50.0), mk(20, 0.9, 5.0, mem=5.0)]
    rec = recommend(both, Budget(max_latency_ms=2.0, max_memory_mb=10.0))
    assert rec.choice is None and rec.message.startswith("no config meets all of")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_latency_ms": -1}, "max_latency_ms must be a positive"),
        ({"max_latency_ms": 0}, "max_latency_ms must be a positive"),
        ({"min_fps": float("nan")}, "min_fps must be a positive"),
        ({"max_memory_mb": float("inf")}, "max_memory_mb must be a positive"),
        ({"max_acc_drop": -1}, "max_acc_drop must be a finite number >= 0"),
        ({"max_acc_drop": float("nan")}, "max_acc_drop"),
        ({"min_speedup": 1.5}, "must lie in \\(-1, 1\\)"),
        ({"min_speedup": float("nan")}, "min_speedup must be a finite"),
        ({"acc_form": "absolute"}, "acc_form must be one of"),
        ({"min_side_px": 40, "max_side_px": 20}, "larger than"),
    ],
)
def test_bad_budgets_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Budget(**kwargs)


def test_task_presets_scale_with_the_native_size():
    realtime = Budget.for_task("realtime")
    assert realtime.min_fps == 30 and "realtime" in realtime.source
    # native 28 px: "224 px on the model's scale" is 28 px, "384 px" is 48 px
    assert realtime.side_limits(mk(28, 0.9, 1.0)) == (0.0, pytest.approx(28.0))
    precise = Budget.for_task("high-precision")
    assert precise.side_limits(mk(28, 0.9, 1.0))[0] == pytest.approx(28 * 384 / 224)
    records = [mk(28, 0.93, 20.0), mk(40, 0.94, 30.0), mk(56, 0.95, 40.0), mk(20, 0.92, 10.0)]
    assert precise.violations(records[1]) == ["size"] and precise.feasible(records[2])
    # 20 px is the only config within 28 px that is >= 30 FPS and passes the rule
    assert recommend(records, realtime).choice.config.resolution == (20, 20)
    with pytest.raises(ValueError, match="unknown task"):
        Budget.for_task("fast")


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
    assert data["delta_acc_points"] == pytest.approx(0.5)
    assert data["delta_acc"] == pytest.approx(0.005 / 0.93)
    assert data["delta_speed"] == pytest.approx(0.5) and data["speedup"] == pytest.approx(2.0)
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


def test_records_of_two_machine_kinds_are_never_mixed(tmp_path, capsys):
    from vitres.cli import main
    from vitres.tune.hostkind import host_fingerprint
    from vitres.tune.recommend import recommend_per_host

    def on(host_cpu: str, m: Measurement) -> Measurement:
        m.env = {"cpu": host_cpu, "logical_cores": 2, "cpu_flags": {}}
        return m

    slow_box = [on("Box A", mk(28, 0.93, 4.0)), on("Box A", mk(20, 0.925, 2.0))]
    fast_box = [on("Box B", mk(28, 0.93, 1.0)), on("Box B", mk(24, 0.928, 0.7))]
    records = slow_box + fast_box
    with pytest.raises(ValueError, match="2 machine kinds"):
        recommend(records)
    kind_a = host_fingerprint(slow_box[0].env)
    kind_b = host_fingerprint(fast_box[0].env)
    assert recommend(records, host=kind_a).choice.config.resolution == (20, 20)
    assert recommend(records, host=kind_b[:6]).choice.config.resolution == (24, 24)
    per = recommend_per_host(records)
    assert set(per) == {kind_a, kind_b}
    path = tmp_path / "r.jsonl"
    for m in records:
        append_result(path, m)
    assert main(["recommend", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"== {kind_a}" in out and f"== {kind_b}" in out and "Box A" in out
    assert main(["recommend", str(path), "--host", kind_b]) == 0
    assert capsys.readouterr().out.startswith("Deploy 24 px")


def test_min_ood_auroc_is_a_constraint():
    base, a, b = mk(28, 0.93, 4.0), mk(24, 0.928, 2.5), mk(20, 0.925, 2.0)
    base.ood_auroc, a.ood_auroc, b.ood_auroc = 0.95, 0.93, 0.85
    assert recommend([base, a, b]).choice.key == a.key  # most accurate that passes
    assert recommend([base, a, b], Budget(min_ood_auroc=0.9)).choice.key == a.key
    assert Budget(min_ood_auroc=0.94).violations(a) == ["ood"]
    rec = recommend([base, a, b], Budget(min_ood_auroc=0.97))
    assert rec.choice is None and rec.message == (
        "no config reaches OOD AUROC 0.97; the best is 28 px at 0.950"
    )
    with pytest.raises(ValueError, match="AUROC in"):
        Budget(min_ood_auroc=1.5)


def test_sweep_records_ood_auroc_per_config(tmp_path):
    from vitres.explain.analysis import ood_auroc_for_config
    from vitres.tune.sweep import run_sweep

    out = tmp_path / "r.jsonl"
    (record,) = run_sweep(
        "fmnist-vit-single",
        out_path=out,
        resolutions="20",
        data="fashion-mnist",
        eval_limit=200,
        ood="digits",
        isolate=False,
        progress=False,
        max_attempts=1,
        timing=__import__("vitres.measure", fromlist=["TimingConfig"]).TimingConfig(
            warmup_calls=1, warmup_s=0, min_calls=2, min_s=0
        ),
    )
    expected = ood_auroc_for_config(
        "fmnist-vit-single",
        20,
        "fashion-mnist",
        "digits",
        train_limit=2000,
        limit=200,
        ood_limit=200,
    )
    assert record.ood_auroc == pytest.approx(expected)
    assert read_results(out)[0].ood_auroc == pytest.approx(expected)
