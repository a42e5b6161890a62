"""Result records: bad lines are refused with the file, the line and what is wrong."""

from __future__ import annotations

import json

import pytest

from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result, read_results


def record(**overrides) -> Measurement:
    lat = LatencyStats(2.0, 0.1, 2.1, 2.2, 2.3, 1.9, 2.0, 30, False)
    values = {"accuracy": 0.9, "latency": lat, "throughput_ips": 500.0, "peak_mem_mb": 12.0}
    values.update(overrides)
    return Measurement(SweepConfig("m", (28, 28)), **values)


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "r.jsonl"
    m = record()
    append_result(path, m)
    (back,) = read_results(path)
    assert back.to_dict() == m.to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(accuracy=1.7), "accuracy must be a fraction in \\[0, 1\\]"),
        (lambda d: d.update(accuracy=-0.1), "accuracy must be a fraction"),
        (lambda d: d.update(accuracy="high"), "accuracy must be a fraction"),
        (lambda d: d.update(peak_mem_mb=-3.0), "peak_mem_mb must be a number >= 0"),
        (lambda d: d.pop("config"), "needs a 'config' object"),
    ],
)
def test_invalid_values_are_refused(tmp_path, mutate, message):
    d = record().to_dict()
    mutate(d)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(d) + "\n" + record().to_json() + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_results(path)
    assert "line 1" in str(info.value) and str(path) in str(info.value)


def test_nan_accuracy_and_latency_are_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    line = record().to_json().replace('"accuracy": 0.9', '"accuracy": NaN')
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match="accuracy must be a fraction"):
        read_results(path)
    line = record().to_json().replace('"median_ms": 2.0', '"median_ms": NaN')
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match="median_ms must be a finite"):
        read_results(path)


@pytest.mark.parametrize("line", ["[1, 2, 3]", '"text"', "42", "{}"])
def test_lines_that_are_not_records_are_clear_errors(tmp_path, line):
    path = tmp_path / "r.jsonl"
    path.write_text(record().to_json() + "\n" + line + "\n")
    with pytest.raises(ValueError, match="line 2: not a valid result record"):
        read_results(path)
