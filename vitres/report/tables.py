"""The report's tables: every record, the measurement quality, the cost-model fits and
the memory ceiling, as rows of display strings (the HTML and Markdown writers lay them
out), and the series a record belongs to in the plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vitres.tune.intervals import wilson_interval
from vitres.tune.recommend import MemoryCeiling
from vitres.tune.records import Measurement

__all__ = [
    "CEILING_HEADER",
    "FIT_HEADER",
    "QUALITY_HEADER",
    "RESULT_COLUMNS",
    "ceiling_rows",
    "fit_rows",
    "format_value",
    "quality_rows",
    "quality_summary",
    "resolution_side",
    "result_rows",
    "series_key",
]


def series_key(m: Measurement) -> tuple:
    """The plot series (and table group) of a record: backend, precision, batch, patch,
    merge, token budget."""
    c = m.config
    return (c.backend, c.precision, c.batch_size, c.patch_size, c.merge, c.token_budget)


def resolution_side(m: Measurement) -> float:
    """The side of the square with the record's pixel count (its x position in plots)."""
    height, width = m.config.resolution
    return math.sqrt(height * width)


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: ``–`` for missing or NaN, yes/no, ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


RESULT_COLUMNS = (
    "key",
    "status",
    "resolution",
    "patch",
    "batch",
    "backend",
    "precision",
    "accuracy %",
    "95 % interval",
    "images",
    "median ms",
    "IQR ms",
    "p95 ms",
    "unstable",
    "img/s",
    "peak MiB",
    "tokens",
    "OOD AUROC",
    "GFLOPs",
    "GFLOPs (analytic)",
    "error",
)


def _interval_text(m: Measurement) -> str:
    """The accuracy's 95 % Wilson interval in percent, ``-`` without accuracy or size."""
    if m.accuracy is None or m.n_eval < 1:
        return "-"
    low, high = wilson_interval(m.accuracy, m.n_eval)
    return f"{100 * low:.2f}–{100 * high:.2f}"


def result_rows(records: Sequence[Measurement]) -> list[list[str]]:
    rows = []
    for m in sorted(
        records, key=lambda m: (series_key(m)[:2], m.config.batch_size, resolution_side(m))
    ):
        lat = m.latency
        rows.append(
            [
                m.key,
                m.status,
                "x".join(str(v) for v in m.config.resolution),
                format_value(m.patch_size),
                str(m.config.batch_size),
                m.config.backend,
                m.config.precision,
                format_value(None if m.accuracy is None else 100 * m.accuracy, 4),
                _interval_text(m),
                format_value(m.n_eval or None),
                format_value(None if lat is None else lat.median_ms),
                format_value(None if lat is None or m.status == "predicted" else lat.iqr_ms),
                format_value(None if lat is None or m.status == "predicted" else lat.p95_ms),
                format_value(None if lat is None or m.status == "predicted" else lat.unstable),
                format_value(m.throughput_ips, 4),
                format_value(m.peak_mem_mb),
                format_value(m.tokens),
                format_value(m.ood_auroc),
                format_value(None if m.flops is None else m.flops / 1e9, 4),
                format_value(None if m.flops_analytic is None else m.flops_analytic / 1e9, 4),
                m.error or "",
            ]
        )
    return rows


QUALITY_HEADER = ("key", "attempts", "kept", "interference", "unstable", "median ms", "evidence")


def quality_rows(records: Sequence[Measurement]) -> list[list[str]]:
    """One row per measured config that was re-measured, disturbed or unstable."""
    rows = []
    for m in records:
        if not m.ok or m.source != "measured":
            continue
        evidence = m.interference or {}
        attempts = int(evidence.get("attempts", 1))
        unstable = bool(m.latency is not None and m.latency.unstable)
        if attempts < 2 and not m.flagged and not unstable:
            continue
        rows.append(
            [
                m.key,
                str(attempts),
                str(evidence.get("kept", 1)),
                format_value(m.flagged),
                format_value(unstable),
                format_value(m.latency_ms),
                "; ".join(evidence.get("reasons", [])),
            ]
        )
    return rows


def quality_summary(records: Sequence[Measurement]) -> str:
    """Counts of re-measured, disturbed and unstable configs, and the thread choice."""
    measured = [m for m in records if m.ok and m.source == "measured"]
    remeasured = sum(int((m.interference or {}).get("attempts", 1)) > 1 for m in measured)
    flagged = sum(m.flagged for m in measured)
    unstable = sum(bool(m.latency is not None and m.latency.unstable) for m in measured)
    unchecked = sum(m.interference is None for m in measured)
    choices = sorted(
        {m.env["thread_choice"]["reason"] for m in measured if "thread_choice" in m.env}
    )
    threads = sorted({str(m.env.get("torch_threads")) for m in measured if m.env})
    text = (
        f"{len(measured)} configs measured: {remeasured} re-measured, {flagged} still showing "
        f"interference, {unstable} with unstable timing (IQR/median > 10 %)"
    )
    if unchecked:
        text += f", {unchecked} recorded without interference evidence (older records)"
    text += f". Threads: {', '.join(threads) or 'unknown'}"
    if choices:
        text += f" ({'; '.join(choices)})"
    return text + "."


def fit_rows(lat_fits: dict, mem_fits: dict) -> list[list[str]]:
    rows = []
    for kind, fits, unit in (("latency", lat_fits, "ms"), ("memory", mem_fits, "MiB")):
        for key, fit in fits.items():
            loo = ", ".join(f"{f} {format_value(e)} %" for f, e in fit.candidates.items())
            rows.append(
                [
                    kind,
                    key.model,
                    key.backend,
                    key.precision,
                    str(key.batch_size),
                    fit.describe(unit),
                    loo,
                ]
            )
    return rows


def ceiling_rows(ceilings: Sequence[MemoryCeiling]) -> list[list[str]]:
    rows = []
    for c in ceilings:
        fitted, naive = c.fitted_side_px, c.naive_side_px
        ratio = None if (fitted is None or naive is None or fitted == 0) else naive / fitted
        rows.append(
            [
                c.group.backend,
                c.group.precision,
                str(c.group.batch_size),
                str(c.patch_size),
                format_value(fitted),
                format_value(naive, 4),
                format_value(ratio, 3),
            ]
        )
    return rows


FIT_HEADER = ("quantity", "model", "backend", "precision", "batch", "fit", "LOO error by form")
CEILING_HEADER = (
    "backend",
    "precision",
    "batch",
    "patch",
    "fitted ceiling (px)",
    "naive formula (px)",
    "naive / fitted",
)
