"""Interference detection, re-measurement and thread choice, on scripted readings:
no real timing is asserted anywhere here."""

from __future__ import annotations

import pytest

from vitres.measure.interference import (
    CpuSample,
    Interference,
    assess,
    other_cores,
    reassess,
    sample_cpu,
)
from vitres.measure.threads import choose_threads
from vitres.measure.timing import latency_stats, median_ci_ranks
from vitres.tune.costmodel import latency_outliers
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, read_results
from vitres.tune.sweep import run_sweep


def test_other_cores_subtracts_our_own_cpu_time():
    before = CpuSample(wall_s=10.0, busy_s=100.0, self_s=5.0, loadavg_1m=0.5)
    # 2 s of wall time: the machine was busy 3.5 CPU-s, 1.9 of them ours -> 0.8 cores others
    after = CpuSample(wall_s=12.0, busy_s=103.5, self_s=6.9, loadavg_1m=1.4)
    assert other_cores(before, after) == pytest.approx(0.8)
    # no /proc/stat: unknown, never a guess
    assert other_cores(CpuSample(0, None, 0, None), CpuSample(1, None, 1, None)) is None
    # readings are injectable
    ticks = iter([1.0, 4.0])
    sample = sample_cpu(clock=lambda: next(ticks), busy=lambda: 7.0, self_time=lambda: 2.0)
    assert (sample.wall_s, sample.busy_s, sample.self_s) == (1.0, 7.0, 2.0)


def test_assess_flags_each_kind_of_evidence():
    quiet = assess(
        other=0.1,
        loadavg=0.9,
        reference_ms=(1.0, 1.05),
        reference_best_ms=1.0,
        tail_ratio=1.1,
        threads=1,
        cores=2,
    )
    assert not quiet.flagged and quiet.reasons == [] and quiet.free_cores == 1
    # one other busy core while we time with 2 threads on 2 cores
    busy = assess(
        other=1.0,
        loadavg=None,
        reference_ms=None,
        reference_best_ms=None,
        tail_ratio=None,
        threads=2,
        cores=2,
    )
    assert busy.flagged and "other processes used 1.00 cores while 0 were free" in busy.reasons[0]
    # ... but with 1 thread the other core was free for it
    assert not assess(
        other=1.0,
        loadavg=None,
        reference_ms=None,
        reference_best_ms=None,
        tail_ratio=None,
        threads=1,
        cores=2,
    ).flagged
    slow = assess(
        other=None,
        loadavg=None,
        reference_ms=(1.0, 1.5),
        reference_best_ms=1.0,
        tail_ratio=None,
        threads=1,
        cores=2,
    )
    assert slow.flagged and slow.reference_slowdown == pytest.approx(1.5)
    tail = assess(
        other=None,
        loadavg=None,
        reference_ms=None,
        reference_best_ms=None,
        tail_ratio=3.0,
        threads=1,
        cores=2,
    )
    assert tail.flagged and "median call 3.00× the fastest" in tail.reasons
    # a high load average alone is a hint, not a flag
    hint = assess(
        other=None,
        loadavg=9.0,
        reference_ms=None,
        reference_best_ms=None,
        tail_ratio=None,
        threads=1,
        cores=2,
    )
    assert not hint.flagged and "load average" in hint.reasons[0]
    # a better reference seen later turns a clean-looking window into a flagged one
    first = assess(
        other=None,
        loadavg=None,
        reference_ms=(2.0, 2.0),
        reference_best_ms=2.0,
        tail_ratio=1.0,
        threads=1,
        cores=2,
    )
    assert not first.flagged
    again = reassess(first.to_dict(), 1.0, threads=1, cores=2)
    assert again.flagged and again.reference_slowdown == pytest.approx(2.0)
    assert Interference.from_dict(again.to_dict()).score() == pytest.approx(again.score())


def test_robust_statistics_by_hand():
    # 10 calls in order; rounds of 2: medians 1.5, 3.5, 5.5, 7.5, 9.5 -> robust 5.5
    stats = latency_stats([v / 1000 for v in range(1, 11)], rounds=5)
    assert stats.rounds == 5 and stats.robust_ms == pytest.approx(5.5)
    assert stats.median_ms == pytest.approx(5.5) and stats.tail_ratio == pytest.approx(5.5)
    # in call order: rounds [1,1,1,1] [1,1,1,1] [1,9,9,9] [9,9,9,9] -> round medians 1,1,9,9
    calls = [1.0] * 9 + [9.0] * 7
    late = latency_stats([v / 1000 for v in calls], rounds=4)
    assert late.robust_ms == pytest.approx(5.0) and late.median_ms == pytest.approx(1.0)
    # order-statistic interval of the median: n=100 -> ranks 40..59 (0-based), contains it
    lo, hi = median_ci_ranks(100)
    assert (lo, hi) == (40, 59)
    stats = latency_stats([v / 1000 for v in range(100)])
    assert stats.ci_low_ms == pytest.approx(40.0) and stats.ci_high_ms == pytest.approx(59.0)
    assert median_ci_ranks(1) == (0, 0)


def test_choose_threads_times_each_count_interleaved_and_prefers_fewer_on_a_tie():
    state = {"threads": 2, "now": 0.0, "order": []}
    per_call = {1: 0.010, 2: 0.004}

    def set_threads(n):
        state["threads"] = n
        state["order"].append(n)

    def fn():
        state["now"] += per_call[state["threads"]]

    choice = choose_threads(
        fn, [1, 2], rounds=2, calls=3, clock=lambda: state["now"], set_threads=set_threads
    )
    assert choice.threads == 2 and choice.median_ms == {
        1: pytest.approx(10.0),
        2: pytest.approx(4.0),
    }
    assert state["order"][:4] == [1, 2, 1, 2]  # interleaved rounds, then restored
    per_call[2] = 0.0098  # within 5 % of one thread: one thread wins the tie
    assert (
        choose_threads(
            fn, [1, 2], rounds=1, calls=2, clock=lambda: state["now"], set_threads=set_threads
        ).threads
        == 1
    )
    # under load two threads collapse: one thread is chosen
    per_call[2] = 0.040
    assert (
        choose_threads(
            fn, [1, 2], rounds=1, calls=2, clock=lambda: state["now"], set_threads=set_threads
        ).threads
        == 1
    )
    with pytest.raises(ValueError, match="positive"):
        choose_threads(fn, [0, 1])


def record(res: int, ms: float, *, flagged: bool = False, ref: float = 1.0, other: float = 0.0):
    lat = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 30, False)
    evidence = assess(
        other=other,
        loadavg=None,
        reference_ms=(ref, ref),
        reference_best_ms=ref,
        tail_ratio=None,
        threads=1,
        cores=2,
    )
    if flagged:
        evidence.flagged, evidence.reasons = True, ["scripted load"]
    return Measurement(
        SweepConfig("m", (res, res), None, 1, "fp32", "eager", 1),
        latency=lat,
        throughput_ips=1000 / ms,
        tokens=(res // 4) ** 2,
        env={"torch_threads": 1, "usable_cores": 2},
        interference=evidence.to_dict(),
    )


class Script:
    """A measure hook that replays scripted records per resolution, attempt by attempt."""

    def __init__(self, plan):
        self.plan = {res: list(items) for res, items in plan.items()}
        self.calls = []

    def __call__(self, model_ref, config, *rest):
        res = config.resolution[0]
        self.calls.append(res)
        m = self.plan[res].pop(0)
        m.config = config
        m.key = config.key()
        return m


def test_disturbed_config_is_measured_again_after_its_neighbours_and_the_cleanest_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    script = Script(
        {
            16: [record(16, 1.0)],
            20: [record(20, 9.0, flagged=True), record(20, 1.6)],
            24: [record(24, 2.2)],
            28: [record(28, 2.9)],
            32: [record(32, 3.6)],
        }
    )
    messages = []
    results = run_sweep(
        "m",
        out_path=out,
        resolutions="16,20,24,28,32",
        measure=script,
        progress=False,
        log=messages.append,
    )
    # 20 px was disturbed: measured again after its next two neighbours
    assert script.calls == [16, 20, 24, 28, 20, 32]
    kept = {m.config.resolution[0]: m for m in results}[20]
    assert kept.latency_ms == pytest.approx(1.6) and not kept.flagged
    assert kept.interference["attempts"] == 2 and kept.interference["kept"] == 2
    assert any("measuring again after its neighbours" in text for text in messages)
    assert any("re-measured 1 disturbed config" in text for text in messages)
    # the file's last line for the key is the kept record
    on_file = {m.key: m for m in read_results(out)}
    assert on_file[kept.key].latency_ms == pytest.approx(1.6)


def test_always_disturbed_config_stops_after_max_attempts_and_keeps_the_least_disturbed(tmp_path):
    out = tmp_path / "r.jsonl"
    script = Script(
        {
            16: [record(16, 1.0)],
            20: [
                record(20, 9.0, flagged=True, other=1.9),
                record(20, 3.0, flagged=True, other=1.4),
                record(20, 7.0, flagged=True, other=1.8),
            ],
        }
    )
    messages = []
    results = run_sweep(
        "m",
        out_path=out,
        resolutions="16,20",
        measure=script,
        progress=False,
        max_attempts=3,
        log=messages.append,
    )
    assert script.calls == [16, 20, 20, 20]
    kept = results[1]
    assert kept.latency_ms == pytest.approx(3.0) and kept.interference["kept"] == 2
    assert kept.flagged  # still flagged, and said so
    assert any("still disturbed after every attempt" in text for text in messages)
    assert read_results(out)[-1].latency_ms == pytest.approx(3.0)


def test_resume_measures_flagged_records_again_unless_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    first = Script({16: [record(16, 1.0)], 20: [record(20, 9.0, flagged=True)]})
    run_sweep("m", out_path=out, resolutions="16,20", measure=first, progress=False, max_attempts=1)
    again = Script({20: [record(20, 1.5)]})
    messages = []
    run_sweep(
        "m", out_path=out, resolutions="16,20", measure=again, progress=False, log=messages.append
    )
    assert again.calls == [20]
    assert any("flagged unstable or disturbed" in text for text in messages)
    kept = Script({})
    messages = []
    run_sweep(
        "m",
        out_path=out,
        resolutions="16,20",
        measure=kept,
        progress=False,
        keep_unstable=True,
        log=messages.append,
    )
    assert kept.calls == [] and any("nothing to measure" in text for text in messages)


def test_a_config_far_slower_than_its_neighbours_cost_model_is_measured_again(tmp_path):
    # latency = 0.5 + 0.01·N; 28 px (N=49) recorded at 3x what its neighbours predict
    lat = {16: 0.66, 20: 0.75, 24: 0.86, 28: 3 * 0.99, 32: 1.14}
    records = [record(r, ms) for r, ms in lat.items()]
    outliers = latency_outliers(records, threshold=1.5)
    assert list(outliers) == [records[3].key] and outliers[records[3].key] == pytest.approx(
        3.0, rel=0.05
    )
    plan = {r: [record(r, ms)] for r, ms in lat.items()}
    plan[28].append(record(28, 0.99))
    script = Script(plan)
    results = run_sweep(
        "m",
        out_path=tmp_path / "r.jsonl",
        resolutions="16,20,24,28,32",
        measure=script,
        progress=False,
    )
    assert script.calls == [16, 20, 24, 28, 32, 28]
    assert results[3].latency_ms == pytest.approx(0.99)
    assert results[3].interference["attempts"] == 2


def test_busy_time_counts_only_the_cores_we_may_run_on(tmp_path):
    from vitres.measure.interference import read_proc_stat

    stat = tmp_path / "stat"
    hz = __import__("os").sysconf("SC_CLK_TCK")
    # cpu0: 100+0+50 busy, cpu1: 900+0+100 busy (someone pinned there)
    stat.write_text(
        "cpu  1000 0 150 5000 0 0 0 0 0 0\n"
        "cpu0 100 0 50 2500 0 0 0 0 0 0\n"
        "cpu1 900 0 100 2500 0 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    assert read_proc_stat(str(stat), {0}) == pytest.approx(150 / hz)
    assert read_proc_stat(str(stat), {0, 1}) == pytest.approx(1150 / hz)
    stat.write_text("cpu  10 0 5 100 0 1 1 1 0 0\n")  # no per-CPU lines: the aggregate
    assert read_proc_stat(str(stat), {0}) == pytest.approx(18 / hz)
