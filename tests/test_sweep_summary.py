"""The table a sweep ends with, checked against the records it summarises."""

from vitres.tune.records import LatencyStats, Measurement, SweepConfig
from vitres.tune.summary import summary_rows, summary_table


def record(size, median, accuracy=None, n_eval=0, status="ok", batch=1):
    config = SweepConfig("m", (size, size), None, batch, "fp32", "eager", 1, "cpu")
    latency = None if status != "ok" else LatencyStats(median, 0.1, median * 1.2, median * 1.3,
                                                        median * 1.4, median, median, 20, False)  # fmt: skip
    return Measurement(config=config, status=status, accuracy=accuracy, n_eval=n_eval,
                       latency=latency, throughput_ips=None if latency is None else batch * 1000 / median,
                       error="RuntimeError: out of memory" if status == "error" else None)  # fmt: skip


def test_fastest_first_with_intervals_and_failures_last():
    records = [record(28, 2.0, 0.9, 1000), record(16, 1.0, 0.8, 1000),
               record(40, 0, status="error"), record(20, 1.5)]  # fmt: skip
    rows = summary_rows(records)
    assert [r[0] for r in rows] == ["16x16", "20x20", "28x28", "40x40"]
    assert rows[0][2:5] == ("1", "1.2", "1000")  # median, p90, img/s
    # Wilson 95 % interval of 800 / 1000: 77.4-82.4
    assert rows[0][5] == "80.0 % (77.4–82.4)"
    assert rows[1][5] == "not measured"
    assert rows[3][2].startswith("failed: RuntimeError: out of memory")
    text = summary_table(records)
    assert text.splitlines()[0].startswith("resolution") and "\r" not in text
    # a resumed key keeps its last record only
    assert len(summary_rows([record(16, 3.0), record(16, 1.0)])) == 1
