"""``--csv`` on sweep, recommend, check, eval and ood: flat tables that hold the same
numbers as the commands' JSON, and a clear error for a path that cannot be written."""

import csv
import json

import pytest

from vitres.cli import main
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def results_file(tmp_path, name="results.jsonl", slower=1.0):
    path = tmp_path / name
    for size, median, acc in ((16, 1.0, 0.80), (20, 1.3, 0.875), (28, 2.0, 0.88)):
        config = SweepConfig("fmnist-vit-single", (size, size), None, 1, "fp32", "eager", 1, "cpu")
        m = median * slower
        latency = LatencyStats(m, 0.05, m * 1.1, m * 1.2, m * 1.3, m, m, 40, False)
        append_result(path, Measurement(config=config, accuracy=acc, n_eval=2000,
                                        latency=latency, throughput_ips=1000 / m,
                                        native_resolution=(28, 28), native_patch_size=4))  # fmt: skip
    return path


def test_recommend_and_sweep_style_rows_hold_the_records(tmp_path, capsys):
    results = results_file(tmp_path)
    out = tmp_path / "rec.csv"
    main(["recommend", str(results), "--csv", str(out), "--json"])
    decision = json.loads(capsys.readouterr().out)
    rows = read(out)
    assert [r["height"] for r in rows] == ["16", "20", "28"]
    assert [float(r["median_ms"]) for r in rows] == [1.0, 1.3, 2.0]
    assert rows[2]["baseline"] == "true" and rows[2]["delta_speed"] == "0.0"
    chosen = [r["key"] for r in rows if r["chosen"] == "true"]
    assert chosen == [decision["choice"]["key"]]
    # ΔAcc of 20 px against 28 px: (0.88 - 0.875) / 0.88, the rule's sign (positive = loss)
    assert float(rows[1]["delta_acc"]) == pytest.approx((0.88 - 0.875) / 0.88)
    assert float(rows[0]["accuracy_low95"]) < 0.80 < float(rows[0]["accuracy_high95"])


def test_check_rows_and_eval_rows(tmp_path, capsys):
    base = results_file(tmp_path, "base.jsonl")
    slow = results_file(tmp_path, "slow.jsonl", slower=1.5)
    out = tmp_path / "check.csv"
    assert main(["check", "--baseline", str(base), "--current", str(slow), "--csv", str(out)]) == 1
    rows = read(out)
    assert len(rows) == 3 and all(r["regression"] == "true" for r in rows)
    assert float(rows[0]["change"]) == pytest.approx(0.5)
    capsys.readouterr()
    evaluated = tmp_path / "eval.csv"
    assert main(["eval", "--model", "fmnist-vit-single", "--res", "16,28", "--limit", "200",
                 "--json", "--csv", str(evaluated)]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    rows = read(evaluated)
    assert {r["resolution"]: float(r["accuracy"]) for r in rows} == pytest.approx(
        result["accuracy"]
    )
    assert all(r["n"] == "200" for r in rows)


def test_a_csv_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    results = results_file(tmp_path)
    for command in (
        ["recommend", str(results)],
        ["eval", "--model", "fmnist-vit-single", "--res", "16"],
        ["check", "--baseline", str(results), "--current", str(results)],
    ):
        assert main([*command, "--csv", str(tmp_path)]) == 2
        assert "is a directory" in capsys.readouterr().err
        assert main([*command, "--csv", str(tmp_path / "no" / "x.csv")]) == 2
        assert "does not exist" in capsys.readouterr().err
