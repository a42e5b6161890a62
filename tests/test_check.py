"""`vitres check`: the CI gate on constructed and real record sets, and its noise model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from vitres.cli import main
from vitres.measure import latency_stats
from vitres.tune.check import (
    CheckPolicy,
    bootstrap_difference_interval,
    check_files,
    check_records,
    latency_difference_interval,
    median_standard_error,
    parse_fraction,
)
from vitres.tune.hostkind import describe_host, host_fingerprint, records_for_host, split_by_host
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

EPYC = {
    "cpu": "AMD EPYC 7B13",
    "cpu_flags": {"avx512f": False, "amx_tile": False},
    "logical_cores": 2,
    "usable_cores": 2,
    "torch": "2.13.0",
    "hostname_hash": "aaaaaaaaaaaa",
}
XEON = {**EPYC, "cpu": "Intel Xeon Platinum 8480+", "cpu_flags": {"avx512f": True}}


def stats(median: float, iqr: float, count: int = 30) -> LatencyStats:
    return LatencyStats(
        median_ms=median,
        iqr_ms=iqr,
        p90_ms=median + iqr,
        p95_ms=median + 1.5 * iqr,
        p99_ms=median + 2 * iqr,
        min_ms=median - iqr,
        mean_ms=median,
        count=count,
        unstable=iqr / median > 0.1,
    )


def record(res: int, median: float, iqr: float | None = None, **kw) -> Measurement:
    """A measured record of a 28-px-native model at ``res`` px; IQR defaults to 5 %."""
    kw.setdefault("env", EPYC)
    count = kw.pop("count", 30)
    return Measurement(
        SweepConfig("fmnist-vit-single", (res, res), threads=1),
        latency=stats(median, 0.05 * median if iqr is None else iqr, count),
        **kw,
    )


def run_set(scale: float = 1.0, **kw) -> list[Measurement]:
    return [record(r, scale * ms, **kw) for r, ms in ((16, 1.0), (20, 1.6), (28, 3.0))]


def write(path, records) -> str:
    for m in records:
        append_result(path, m)
    return str(path)


def check_cli(tmp_path, base, cur, *extra) -> int:
    return main(
        [
            "check",
            "--baseline",
            write(tmp_path / "base.jsonl", base),
            "--current",
            write(tmp_path / "new.jsonl", cur),
            *extra,
        ]
    )


# ---------------------------------------------------------------- the noise model


def test_median_standard_error_matches_a_simulation():
    """1.2533·(IQR/1.349)/sqrt(n) is the spread of the median over repeated runs."""
    rng = np.random.default_rng(0)
    n, runs = 41, 3000
    draws = rng.normal(10.0, 0.8, size=(runs, n))
    empirical = float(np.median(draws, axis=1).std())
    predicted = np.mean([median_standard_error(latency_stats(d / 1000.0)) for d in draws[:300]])
    assert predicted == pytest.approx(empirical, rel=0.12)
    assert median_standard_error(stats(10.0, 2.0, 30)) == pytest.approx(
        1.2533 * (2.0 / 1.349) / math.sqrt(30), rel=1e-3
    )
    assert median_standard_error(stats(10.0, 2.0, 2)) == math.inf


def test_bootstrap_agrees_with_the_iqr_interval_on_normal_samples():
    rng = np.random.default_rng(1)
    base, cur = rng.normal(10.0, 1.0, 200), rng.normal(10.5, 1.0, 200)
    low, high = bootstrap_difference_interval(base, cur)
    assert (low, high) == bootstrap_difference_interval(base, cur)  # seeded: reproducible
    iqr_low, iqr_high, method = latency_difference_interval(
        latency_stats(base / 1000), latency_stats(cur / 1000)
    )
    assert method == "iqr"
    assert high - low == pytest.approx(iqr_high - iqr_low, rel=0.3)
    assert low < float(np.median(cur) - np.median(base)) < high


def test_parse_fraction():
    assert parse_fraction("10%") == pytest.approx(0.10)
    assert parse_fraction("0.25") == 0.25
    for bad in ("ten", "-5%", "10"):
        with pytest.raises(ValueError):
            parse_fraction(bad)


# ---------------------------------------------------------------- verdicts


def test_identical_runs_pass(tmp_path, capsys):
    assert check_cli(tmp_path, run_set(), run_set()) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS: 0 regression(s) in 3 common config(s)")


def test_injected_slowdown_fails(tmp_path, capsys):
    slow = run_set()
    slow[1] = record(20, 1.6 * 1.5)
    assert check_cli(tmp_path, run_set(), slow, "--max-latency-regression", "10%") == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "+50.0%" in out and out.splitlines()[-1].startswith("FAIL: 1")
    result = check_records(run_set(), slow)
    assert [v.key for v in result.regressions] == [slow[1].key]
    assert [v.verdict for v in result.configs] == ["ok", "regression", "ok"]


def test_noise_within_the_interval_passes_and_the_same_change_with_less_noise_fails():
    base = [record(28, 10.0, iqr=4.0, count=10)]
    noisy = [record(28, 11.2, iqr=4.0, count=10)]  # +12 %: beyond 10 %, within the noise
    result = check_records(base, noisy)
    (verdict,) = result.configs
    assert result.passed and verdict.verdict == "within noise"
    low, high = verdict.interval_ms
    half = 1.96 * math.hypot(*[1.2533 * (4.0 / 1.349) / math.sqrt(10)] * 2)
    assert (low, high) == pytest.approx((1.2 - half, 1.2 + half), rel=1e-3)
    assert low < 0 < high
    tight = check_records([record(28, 10.0, iqr=0.5)], [record(28, 11.2, iqr=0.5)])
    assert not tight.passed and tight.configs[0].verdict == "regression"
    under = check_records([record(28, 10.0, iqr=0.1)], [record(28, 10.8, iqr=0.1)])
    assert under.passed and under.configs[0].verdict == "ok"  # real but below 10 %
    faster = check_records([record(28, 10.0)], [record(28, 5.0)])
    assert faster.passed and faster.configs[0].verdict == "faster"


def test_accuracy_drop_fails_and_its_binomial_interval_is_optional(tmp_path, capsys):
    acc = {"data": "fashion-mnist", "n_eval": 1000}
    base = run_set(accuracy=0.90, **acc)
    small = run_set(accuracy=0.898, **acc)  # -0.2 points
    large = run_set(accuracy=0.89, **acc)  # -1.0 point
    assert check_records(base, small).passed
    result = check_records(base, large)
    assert not result.passed and all(v.verdict == "regression" for v in result.configs)
    assert result.configs[0].acc_drop_points == pytest.approx(1.0)
    # with n = 1000 per run the 95 % interval of the difference is ±2.63 points
    noisy = check_records(base, large, CheckPolicy(acc_noise=True))
    assert noisy.passed
    assert noisy.configs[0].acc_interval_points == pytest.approx(
        100 * 1.959964 * math.sqrt(0.9 * 0.1 / 1000 + 0.89 * 0.11 / 1000), rel=1e-4
    )
    assert check_cli(tmp_path, base, large, "--max-acc-drop", "0.5") == 1
    assert "drops 1.00 points" in capsys.readouterr().out


def test_failed_current_config_fails_and_missing_is_reported():
    cur = run_set()[:2]
    cur[0] = Measurement(cur[0].config, status="error", error="RuntimeError: boom", env=EPYC)
    result = check_records(run_set(), cur)
    assert [v.verdict for v in result.configs] == ["failed", "ok"]
    assert result.missing == [run_set()[2].key] and not result.passed
    # a missing config fails the gate unless missing configs are allowed
    assert not check_records(run_set(), run_set()[:2]).passed
    assert check_records(run_set(), run_set()[:2], CheckPolicy(fail_on_missing=False)).passed


# ---------------------------------------------------------------- bad input: exit 2


def test_no_common_configs_is_bad_input(tmp_path, capsys):
    other = [record(40, 5.0), record(56, 9.0)]
    assert check_cli(tmp_path, run_set(), other) == 2
    assert "no config in common" in capsys.readouterr().err


def test_different_host_kinds_need_allow_host_change(tmp_path, capsys):
    assert check_cli(tmp_path, run_set(), run_set(env=XEON)) == 2
    err = capsys.readouterr().err
    assert "different machine kinds" in err and "--allow-host-change" in err
    assert "Intel Xeon Platinum 8480+" in err
    (tmp_path / "base.jsonl").unlink()
    (tmp_path / "new.jsonl").unlink()
    assert check_cli(tmp_path, run_set(), run_set(env=XEON), "--allow-host-change") == 0
    assert "across machine kinds" in capsys.readouterr().out


def test_unreadable_input_is_bad_input(tmp_path, capsys):
    assert main(["check", "--baseline", str(tmp_path / "nope.jsonl"), "--current", "x"]) == 2
    assert "no results file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not a record\n{}\n")
    assert main(["check", "--baseline", str(bad), "--current", str(bad)]) == 2
    assert "not a valid result record" in capsys.readouterr().err
    assert (
        main(
            [
                "check",
                "--baseline",
                str(bad),
                "--current",
                str(bad),
                "--max-latency-regression",
                "10",
            ]
        )
        == 2
    )


def test_different_eval_data_is_bad_input():
    base = run_set(accuracy=0.9, data="fashion-mnist", n_eval=1000)
    cur = run_set(accuracy=0.9, data="fashion-mnist", n_eval=500)
    with pytest.raises(ValueError, match="different data"):
        check_records(base, cur)


# ---------------------------------------------------------------- host fingerprint


def test_host_fingerprint_is_the_machine_kind_not_the_box():
    other_box = {**EPYC, "hostname_hash": "bbbbbbbbbbbb", "torch": "2.14.0", "usable_cores": 1}
    assert host_fingerprint(EPYC) == host_fingerprint(other_box)
    assert len(host_fingerprint(EPYC)) == 12
    assert host_fingerprint(EPYC) != host_fingerprint(XEON)
    assert host_fingerprint(EPYC) != host_fingerprint({**EPYC, "logical_cores": 4})
    assert host_fingerprint(EPYC) != host_fingerprint({**EPYC, "gpu": "NVIDIA H100"})
    reordered = {**EPYC, "cpu_flags": {"amx_tile": False, "avx512f": False}}
    assert host_fingerprint(reordered) == host_fingerprint(EPYC)
    assert host_fingerprint({}) == "unknown"
    assert describe_host(XEON) == "Intel Xeon Platinum 8480+, 2 cores, avx512f"
    groups = split_by_host([*run_set(), *run_set(env=XEON), record(40, 5.0)])
    assert list(groups) == [host_fingerprint(EPYC), host_fingerprint(XEON)]
    assert [len(g) for g in groups.values()] == [4, 3]
    mixed = [*run_set(), *run_set(env=XEON)]
    xeon = records_for_host(mixed, host_fingerprint(XEON)[:6])
    assert [m.env["cpu"] for m in xeon] == [XEON["cpu"]] * 3
    with pytest.raises(ValueError, match="matches no machine kind.*Intel Xeon"):
        records_for_host(mixed, "zzz")
    with pytest.raises(ValueError, match="matches several"):
        records_for_host(mixed, "")  # a prefix of every kind


# ---------------------------------------------------------------- JSON and stored samples


def test_json_verdict_and_bootstrap_from_stored_samples(tmp_path, capsys):
    rng = np.random.default_rng(2)
    base_path, new_path = tmp_path / "base.jsonl", tmp_path / "new.jsonl"
    for path, scale in ((base_path, 1.0), (new_path, 1.5)):
        samples = list(scale * rng.normal(3.0, 0.15, 60))
        m = dataclasses.replace(record(28, 1.0), latency=latency_stats([s / 1000 for s in samples]))
        line = json.loads(m.to_json())
        line["latency"]["samples_ms"] = samples
        path.write_text(json.dumps(line) + "\n")
    result = check_files(base_path, new_path)
    (verdict,) = result.configs
    assert verdict.interval_method == "bootstrap" and verdict.verdict == "regression"
    assert verdict.interval_ms[0] > 0
    code = main(["check", "--baseline", str(base_path), "--current", str(new_path), "--json"])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False and out["regressions"] == [verdict.key]
    assert out["configs"][0]["interval_method"] == "bootstrap"


def test_gate_on_a_real_sweep(tmp_path):
    """A real (tiny) sweep passes against itself and fails once its latencies are 1.5x."""
    from vitres.measure import TimingConfig
    from vitres.tune.sweep import run_sweep

    base = tmp_path / "base.jsonl"
    records = run_sweep(
        "vit_tiny_patch4",
        out_path=base,
        resolutions="8,16",
        threads=1,
        isolate=False,
        progress=False,
        timing=TimingConfig(warmup_calls=2, warmup_s=0.0, min_calls=60, min_s=0.0),
        model_overrides={"img_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2},
    )
    assert all(m.ok for m in records)
    assert check_files(base, base).passed
    slow = tmp_path / "slow.jsonl"
    for m in records:
        lat = m.latency
        scaled = dataclasses.replace(
            lat, **{f: getattr(lat, f) * 1.5 for f in ("median_ms", "iqr_ms", "min_ms", "mean_ms")}
        )
        append_result(slow, dataclasses.replace(m, latency=scaled))
    result = check_files(base, slow)
    assert not result.passed and len(result.regressions) == 2
    assert all(v.change == pytest.approx(0.5) for v in result.configs)
