"""The table a sweep ends with: every config measured, fastest first, as
``benchmark_app`` and timm's ``benchmark.py`` print theirs."""

from __future__ import annotations

from collections.abc import Sequence

from vitres.tune.intervals import wilson_interval
from vitres.tune.records import Measurement, group_key, latest_by_key

__all__ = ["summary_rows", "summary_table"]

HEADER = ("resolution", "config", "median ms", "p90 ms", "img/s", "accuracy (95 % interval)")


def _accuracy(m: Measurement) -> str:
    if m.accuracy is None:
        return "not measured"
    if m.n_eval <= 0:
        return f"{100 * m.accuracy:.1f} %"
    low, high = wilson_interval(m.accuracy, m.n_eval)
    return f"{100 * m.accuracy:.1f} % ({100 * low:.1f}–{100 * high:.1f})"


def summary_rows(records: Sequence[Measurement]) -> list[tuple[str, ...]]:
    """One row per config (its last ``ok`` record, else its last), fastest first; failed
    and predicted configs after them."""
    last = {m.key: m for m in latest_by_key(list(records))}
    timed = sorted(
        (m for m in last.values() if m.ok and m.latency is not None),
        key=lambda m: m.latency.median_ms,
    )
    rows = []
    for m in timed:
        h, w = m.config.resolution
        rows.append(
            (
                f"{h}x{w}",
                group_key(m).label(),
                f"{m.latency.median_ms:.3g}",
                f"{m.latency.p90_ms:.3g}",
                "–" if m.throughput_ips is None else f"{m.throughput_ips:.4g}",
                _accuracy(m),
            )
        )
    for m in last.values():
        if not (m.ok and m.latency is not None):
            h, w = m.config.resolution
            what = m.status if m.status != "error" else f"failed: {(m.error or '')[:40]}"
            rows.append((f"{h}x{w}", group_key(m).label(), what, "", "", ""))
    return rows


def summary_table(records: Sequence[Measurement]) -> str:
    """The rows as an aligned plain-text table."""
    rows = [HEADER, *summary_rows(records)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    right = {2, 3, 4}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
