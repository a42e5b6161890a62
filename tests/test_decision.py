"""The decision is never silently wrong: no accuracy means no acceptance, one model per
decision, one sign for ΔAcc in every output, an answer that names a resolution, and the
sampling noise of accuracy as part of the answer."""

from __future__ import annotations

import json
import re

import pytest
from scipy.stats import binomtest

from vitres.tune.budget import Budget
from vitres.tune.intervals import difference_interval, limit_to_tell, wilson_interval
from vitres.tune.recommend import format_recommendation, recommend
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result
from vitres.tune.rule import judge


def mk(
    res: int,
    acc: float | None,
    ms: float,
    backend: str = "eager",
    model: str = "m",
    digest: str | None = None,
    n: int = 0,
    batch: int = 1,
) -> Measurement:
    precision = "bf16" if backend.endswith("bf16") else "fp32"
    config = SweepConfig(model, (res, res), None, batch, precision, backend, 1)
    lat = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 30, False)
    return Measurement(
        config,
        accuracy=acc,
        n_eval=n,
        latency=lat,
        throughput_ips=batch * 1000 / ms,
        peak_mem_mb=10.0,
        tokens=(res // 4) ** 2,
        native_resolution=(28, 28),
        native_patch_size=4,
        model_digest=digest,
    )


SPEED_ONLY = [mk(28, None, 4.0), mk(24, None, 3.0), mk(16, None, 1.0), mk(12, None, 0.6)]


# --------------------------------------------------------------------------- no accuracy


def test_a_speed_only_file_is_never_accepted():
    rec = recommend(SPEED_ONLY)
    assert rec.status == "no-accuracy"
    assert rec.accepted is not True and rec.eligible == []
    assert rec.choice.key == SPEED_ONLY[-1].key  # the fastest within the (empty) budget
    text = rec.sentence()
    assert "accepted by the rule" not in text
    assert text.startswith("Fastest within the budget: 12 px fp32 eager")
    assert "accuracy not measured" in text
    data = rec.to_dict()
    assert data["status"] == "no-accuracy" and data["accepted"] is not True
    assert "— accepted by the rule" not in format_recommendation(rec)
    # under a latency limit, still the fastest feasible, still not accepted
    limited = recommend(SPEED_ONLY, Budget(max_latency_ms=3.5))
    assert limited.status == "no-accuracy" and limited.choice.key == SPEED_ONLY[-1].key
    # nor without the rule, nor without a baseline
    for other in (recommend(SPEED_ONLY, Budget(apply_rule=False)), recommend(SPEED_ONLY[1:])):
        assert other.accepted is not True
        assert "accepted by the rule" not in other.sentence()
        assert "accuracy not measured" in other.sentence()


def test_a_baseline_without_accuracy_accepts_nothing_even_if_others_have_it():
    records = [mk(28, None, 4.0), mk(20, 0.92, 2.0)]
    rec = recommend(records)
    assert rec.status == "no-accuracy" and rec.accepted is not True


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_the_report_headline_of_a_speed_only_file_says_accuracy_was_not_measured(tmp_path, fmt):
    from vitres.report import write_report

    html, md = write_report(recommend(SPEED_ONLY), tmp_path / "report.html", title="t")
    text = open(html if fmt == "html" else md, encoding="utf-8").read()
    assert "accuracy not measured" in text
    assert "accepted by the rule." not in text


def test_export_recommended_refuses_a_speed_only_file(tmp_path, capsys):
    from vitres.cli import main

    path = tmp_path / "results.jsonl"
    for m in SPEED_ONLY:
        append_result(path, m)
    out = tmp_path / "m.onnx"
    argv = ["export", "--from", str(path), "--recommended", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no measured accuracy" in err and "--no-accuracy-ok" in err
    assert not out.exists()
    assert main(["recommend", str(path)]) == 1  # nothing can pass without accuracy
    assert "accuracy not measured" in capsys.readouterr().out


# --------------------------------------------------------------------------- one model


def test_records_of_two_models_are_refused_with_the_list():
    a = [mk(28, 0.93, 4.0, model="a"), mk(20, 0.925, 2.0, model="a")]
    b = [mk(28, 0.80, 3.0, model="b"), mk(16, 0.79, 1.0, model="b")]
    with pytest.raises(ValueError, match=r"2 models.*'a'.*'b'.*--for-model"):
        recommend(a + b)
    assert recommend(a + b, model="a").choice.key == a[1].key
    rec_b = recommend(a + b, model="b")
    assert rec_b.baseline.key == b[0].key and rec_b.choice.key == b[1].key


def test_retrained_weights_under_one_name_are_two_models_and_old_records_join():
    old = [mk(28, 0.93, 4.0, digest="aaaaaaaa11"), mk(20, 0.925, 2.0, digest="aaaaaaaa11")]
    new = [mk(16, 0.95, 1.0, digest="bbbbbbbb22")]
    with pytest.raises(ValueError, match="2 models"):
        recommend(old + new)
    assert recommend(old + new, model="aaaaaa").choice.key == old[1].key
    # a record without a digest, of a reference measured with one digest, is that model
    legacy = mk(24, 0.93, 3.9)
    assert recommend([*old, legacy]).baseline.key == old[0].key


def test_run_refuses_another_models_records(tmp_path):
    from vitres.runtime.session import run_session

    path = tmp_path / "other.jsonl"
    for m in [mk(28, 0.9, 4.0, model="someone-else"), mk(16, 0.8, 1.0, model="someone-else")]:
        append_result(path, m)
    with pytest.raises(ValueError, match=r"holds no records of 'fmnist-vit-single'.*someone-else"):
        run_session(
            "fmnist-vit-single", "fashion-mnist", target_fps=30, records=path, frames=2, log=print
        )


# --------------------------------------------------------------------------- one sign


SIGNED = re.compile(r"ΔAcc ([+-−]?\d+\.\d+) %")


def _signs(text: str) -> set[int]:
    return {(-1 if v.startswith(("-", "−")) else 1) for v in SIGNED.findall(text)}


@pytest.mark.parametrize(("acc", "expected"), [(0.925, 1), (0.94, -1)])
def test_delta_acc_has_one_sign_in_every_output(tmp_path, acc, expected):
    base, tuned = mk(28, 0.93, 4.0), mk(20, acc, 2.0)
    rec = recommend([base, tuned])
    assert rec.choice.key == tuned.key
    # the definition: (base - tuned) / base, positive is a loss
    assert rec.delta_acc == pytest.approx((0.93 - acc) / 0.93)
    assert (rec.delta_acc > 0) == (expected > 0)
    sentence, verdict = rec.sentence(), rec.verdict
    assert _signs(sentence) == {expected} and _signs(verdict) == {expected}
    assert ("a loss" in sentence) == (expected > 0) and ("a gain" in sentence) == (expected < 0)
    data = rec.to_dict()
    assert data["delta_acc"] * expected > 0 and _signs(data["answer"]) == {expected}
    from vitres.report import write_report

    html, md = write_report(rec, tmp_path / "r.html", title="t")
    for path in (html, md):
        assert _signs(open(path, encoding="utf-8").read()) == {expected}


def test_the_regression_check_uses_the_same_sign(tmp_path):
    from vitres.tune.check import CheckPolicy, check_records, format_check

    base, worse = mk(28, 0.93, 4.0, n=2000), mk(28, 0.90, 4.0, n=2000)
    result = check_records([base], [worse], CheckPolicy())
    table = format_check(result)
    assert "ΔAcc pts" in table
    assert re.search(r"\+3\.00", table) and not re.search(r"-3\.00", table)


# --------------------------------------------------------------------------- names a size


def test_nothing_passes_keeps_the_baseline_and_names_the_closest():
    base, near = mk(28, 0.93, 4.0), mk(24, 0.915, 2.5)  # ΔAcc 1.61 %: misses
    rec = recommend([base, near, mk(16, 0.80, 1.0)])
    assert rec.status == "none-passes"
    assert rec.sentence() == (
        "Keep 28 px fp32 eager: no other config passes the rule (the closest, 24 px fp32 eager, "
        "loses 1.6 % of the accuracy (ΔAcc +1.61 %))."
    )


def test_a_backend_change_at_the_native_size_names_the_size_and_the_backend():
    base, ort = mk(28, 0.93, 4.0), mk(28, 0.93, 2.0, backend="onnxruntime")
    rec = recommend([base, ort])
    assert rec.choice.key == ort.key
    assert rec.sentence().startswith("Keep 28 px, run it as fp32 onnxruntime: 93.0 %")


def test_run_and_serve_take_the_recommended_backend_from_the_records():
    from vitres.serve.config import ServeConfig
    from vitres.serve.launch import with_backend
    from vitres.tune.deployment import recommended_backend

    records = [mk(28, 0.93, 4.0), mk(28, 0.93, 2.0, backend="onnxruntime")]
    backend, why = recommended_backend(records)
    assert backend == "onnxruntime" and "28 px fp32 onnxruntime" in why
    lines: list[str] = []
    config = ServeConfig(model="m", max_batch=8)
    # onnxruntime is timed at batch 1 only: a server cannot predict its batches
    assert with_backend(config, records, lines.append).backend == "eager"
    assert "cannot be used" in lines[-1]
    batched = [*records, mk(28, 0.93, 9.0, backend="onnxruntime", batch=8)]
    assert with_backend(config, batched, lines.append).backend == "onnxruntime"
    assert with_backend(ServeConfig(model="m", backend="eager"), batched, print).backend == "eager"
    # a speed-only file recommends nothing: eager, and the reason said
    backend, why = recommended_backend(SPEED_ONLY)
    assert backend == "eager" and "no accuracy" in why


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (90, 100), (1800, 2000), (50, 50)])
def test_wilson_interval_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k / n, n)
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)


def test_difference_interval_contains_the_difference_and_narrows_with_n():
    small = difference_interval(0.93, 500, 0.915, 500)
    large = difference_interval(0.93, 50_000, 0.915, 50_000)
    for low, high in (small, large):
        assert low < 0.015 < high
    assert large[1] - large[0] < (small[1] - small[0]) / 5


def test_a_verdict_within_noise_says_so_and_the_limit_it_suggests_tells():
    base, tuned = mk(28, 0.930, 4.0, n=2000), mk(20, 0.920, 2.0, n=2000)  # ΔAcc 1.08 %
    j = judge(tuned, base, Budget())
    assert j.accepted is True and j.uncertain
    low, high = j.acc_interval
    assert low < 0.015 <= high
    rec = recommend([base, tuned])
    assert "cannot tell" in rec.sentence() and f"--limit {j.limit_to_tell}" in rec.sentence()
    assert rec.to_dict()["uncertain"] is True
    # at the suggested size, the same accuracies give an interval clear of the threshold
    n = j.limit_to_tell
    at_n = judge(mk(20, 0.920, 2.0, n=n), mk(28, 0.930, 4.0, n=n), Budget())
    assert not at_n.uncertain and at_n.acc_interval[1] < 0.015
    assert limit_to_tell(0.0, 0.02, 0.015, 0.015, 100) is None  # on the threshold: no size


def test_a_clear_verdict_carries_its_interval_but_no_caveat(tmp_path):
    base, tuned = mk(28, 0.93, 4.0, n=10_000), mk(20, 0.929, 2.0, n=10_000)
    rec = recommend([base, tuned])
    assert rec.accepted and not rec.judgement.uncertain
    assert "cannot tell" not in rec.sentence()
    assert "95 % interval" in rec.sentence()  # the accuracy carries its Wilson interval
    data = rec.to_dict()
    assert data["choice"]["accuracy_interval"] == pytest.approx(
        list(wilson_interval(0.929, 10_000))
    )
    assert json.dumps(data)  # serialisable
    from vitres.report import write_report

    _, md = write_report(rec, tmp_path / "r.html", title="t")
    low, high = wilson_interval(0.929, 10_000)
    assert f"{100 * low:.2f}–{100 * high:.2f}" in open(md, encoding="utf-8").read()
