"""A report of a sweep: one self-contained HTML file and a Markdown file beside it.

Plots (PNG, embedded in the HTML as base64; written as files for the Markdown):
accuracy vs resolution, latency vs resolution (measured points and the fitted cost
model), the accuracy-vs-latency Pareto front with the recommendation marked, and peak
memory vs resolution with the budget line. Tables list the recommendation, every
record, the cost-model fits, and the memory ceiling next to the seed's naive formula.

The report draws what the other stages computed (:mod:`vitres.tune.costmodel`,
:mod:`vitres.tune.recommend`); it computes no results itself. Given ``analysis=`` (a
:class:`~vitres.tune.report_analysis.ReportAnalysis`, measured beforehand by
:func:`~vitres.tune.report_analysis.analyse_for_report`), it adds the "what changes with
resolution" section: OOD AUROC per method, class overlap and silhouette beside accuracy,
t-SNE, and the seed's overlap rule as advice. Plots use matplotlib's Agg canvas directly
(no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitres.tokens.merge import merge_label
from vitres.tune.budget import Budget
from vitres.tune.costmodel import CostFit
from vitres.tune.recommend import (
    MemoryCeiling,
    Recommendation,
    describe_config,
    format_recommendation,
    recommend,
)
from vitres.tune.records import Measurement, group_key, read_results

if TYPE_CHECKING:
    from vitres.tune.report_analysis import AnalysisSection, ReportAnalysis


@dataclass
class Plot:
    name: str
    title: str
    png: bytes


def _series_key(m: Measurement) -> tuple:
    c = m.config
    return (c.backend, c.precision, c.batch_size, c.patch_size, c.merge, c.token_budget)


def _series_label(key: tuple) -> str:
    backend, precision, batch, patch, merge, budget = key
    patch_text = "" if patch is None else f", p{patch}"
    merge_text = "" if merge is None else f", merge {merge_label(merge)}"
    budget_text = "" if budget is None else f", ≤{budget} tokens"
    return f"{backend} ({precision}, b{batch}{patch_text}{merge_text}{budget_text})"


def _side(m: Measurement) -> float:
    height, width = m.config.resolution
    return math.sqrt(height * width)


def _by_series(records: Sequence[Measurement]) -> dict[tuple, list[Measurement]]:
    out: dict[tuple, list[Measurement]] = {}
    for m in sorted(records, key=_side):
        out.setdefault(_series_key(m), []).append(m)
    return out


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _log_if_wide(ax: Any, values: Sequence[float], axis: str) -> bool:
    """Logarithmic ``axis`` when the positive ``values`` span more than 10×."""
    positive = [v for v in values if v is not None and v > 0]
    wide = bool(positive) and max(positive) / min(positive) > 10
    if wide:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    return wide


def _mark_quality(ax: Any, points: Sequence[Measurement], x: Any, y: Any) -> None:
    """Rings around points whose timing showed interference (red) or spread (orange):
    marked, never hidden."""
    for test, color, label in (
        (lambda m: m.flagged, "red", "interference (see Measurement quality)"),
        (
            lambda m: not m.flagged and m.latency is not None and m.latency.unstable,
            "orange",
            "unstable timing",
        ),
    ):
        marked = [m for m in points if test(m)]
        if marked:
            ax.scatter(
                [x(m) for m in marked],
                [y(m) for m in marked],
                s=170,
                facecolors="none",
                edgecolors=color,
                linewidths=1.6,
                label=label,
                zorder=5,
            )


def plot_accuracy(ok: Sequence[Measurement]) -> Plot:
    figure, ax = _figure()
    series = {k: [m for m in v if m.accuracy is not None] for k, v in _by_series(ok).items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        _empty(ax, "no accuracy data (sweep run without --data)")
    for key, points in series.items():
        ax.plot(
            [_side(m) for m in points],
            [100 * m.accuracy for m in points],
            marker="o",
            label=_series_label(key),
        )
    if series:
        ax.set_xlabel("resolution (px, √(H·W))")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title("Accuracy vs resolution")
    return Plot("accuracy_vs_resolution", "Accuracy vs resolution", _png(figure))


def plot_ood(ok: Sequence[Measurement], budget: Budget) -> Plot:
    """Best OOD AUROC vs resolution (records of a sweep run with ``--ood``)."""
    figure, ax = _figure()
    series = {k: [m for m in v if m.ood_auroc is not None] for k, v in _by_series(ok).items()}
    series = {k: v for k, v in series.items() if v}
    for key, points in series.items():
        ax.plot(
            [_side(m) for m in points],
            [m.ood_auroc for m in points],
            marker="o",
            label=_series_label(key),
        )
    if budget.min_ood_auroc is not None:
        ax.axhline(budget.min_ood_auroc, color="red", linestyle=":", label="budget")
    ax.set_xlabel("resolution (px, √(H·W))")
    ax.set_ylabel("best OOD AUROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Out-of-distribution detection vs resolution")
    return Plot("ood_vs_resolution", "Best OOD AUROC vs resolution", _png(figure))


def _model_line(
    fit: CostFit, points: Sequence[Measurement]
) -> tuple[np.ndarray, np.ndarray] | None:
    patch = points[0].patch_size
    if not patch or points[0].config.token_budget is not None:
        return None  # a budget's token count does not follow the side
    sides = np.linspace(min(_side(m) for m in points), max(_side(m) for m in points), 100)
    return sides, fit.predict((sides / patch) ** 2)


def _mark_choice(ax: Any, rec: Recommendation | None, x: Any, y: Any) -> None:
    """The baseline (black square) and the recommendation (red star)."""
    if rec is None:
        return
    if rec.baseline is not None and y(rec.baseline) is not None:
        ax.scatter(
            [x(rec.baseline)],
            [y(rec.baseline)],
            marker="s",
            s=80,
            color="black",
            label="baseline",
            zorder=6,
        )
    if rec.choice is not None and y(rec.choice) is not None:
        ax.scatter(
            [x(rec.choice)],
            [y(rec.choice)],
            marker="*",
            s=220,
            color="tab:red",
            label=f"recommended: {describe_config(rec.choice)}",
            zorder=7,
        )


def _finish_resolution_axes(
    ax, has_data: bool, limit: float | None, unit: str, ylabel: str, title: str, empty: str
) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Budget line, labels, grid and legend shared by the per-resolution plots."""
    if limit is not None:
        ax.axhline(limit, color="red", linestyle=":", label=f"budget {limit:g} {unit}")
    if not has_data:
        _empty(ax, empty)
    else:
        ax.set_xlabel("resolution (px, √(H·W))")
        if not ax.get_ylabel():
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax.set_title(title)


def plot_latency(
    ok: Sequence[Measurement],
    predicted: Sequence[Measurement],
    fits: dict,
    budget: Budget,
    rec: Recommendation | None = None,
) -> Plot:
    figure, ax = _figure()
    series = _by_series([m for m in ok if m.latency_ms is not None])
    colors = {}
    for key, points in series.items():
        # bars span the fastest call to the 90th percentile (asymmetric, never below 0)
        below = [max(0.0, m.latency_ms - m.latency.min_ms) for m in points]
        above = [max(0.0, m.latency.p90_ms - m.latency_ms) for m in points]
        container = ax.errorbar(
            [_side(m) for m in points],
            [m.latency_ms for m in points],
            yerr=[below, above],
            fmt="o",
            capsize=2,
            label=f"{_series_label(key)} median (bars: min to p90)",
        )
        colors[key] = container.lines[0].get_color()
        fit = fits.get(group_key(points[0]))
        line = None if fit is None else _model_line(fit, points)
        if line is not None:
            ax.plot(
                *line,
                linestyle="--",
                color=colors[key],
                alpha=0.8,
                label=f"model: {fit.form}, LOO {fit.loo_error_pct:.1f} %"
                if not math.isnan(fit.loo_error_pct)
                else f"model: {fit.form}",
            )
    for key, points in _by_series([m for m in predicted if m.latency_ms is not None]).items():
        ax.scatter(
            [_side(m) for m in points],
            [m.latency_ms for m in points],
            facecolors="none",
            edgecolors=colors.get(key, "gray"),
            label=f"{_series_label(key)} predicted",
        )
    timed = [m for m in ok if m.latency_ms is not None]
    _mark_quality(ax, timed, _side, lambda m: m.latency_ms)
    _mark_choice(ax, rec, _side, lambda m: m.latency_ms)
    values = [m.latency_ms for m in timed] + [budget.max_latency_ms or 0]
    if _log_if_wide(ax, values, "y"):
        ax.set_ylabel("median latency per call (ms, log scale)")
    _finish_resolution_axes(
        ax,
        bool(series),
        budget.max_latency_ms,
        "ms",
        "median latency per call (ms)",
        "Latency vs resolution",
        "no successful measurements",
    )
    return Plot(
        "latency_vs_resolution",
        "Latency vs resolution (points measured, lines modelled)",
        _png(figure),
    )


def plot_pareto(ok: Sequence[Measurement], rec: Recommendation) -> Plot:
    figure, ax = _figure()
    points = [m for m in ok if m.accuracy is not None and m.latency_ms is not None]
    if not points:
        _empty(ax, "no accuracy data: no accuracy/latency trade-off to show")
    else:
        ax.scatter(
            [m.latency_ms for m in points],
            [100 * m.accuracy for m in points],
            color="lightgray",
            edgecolors="gray",
            label="all configs",
        )
        front = [m for m in rec.front if m.accuracy is not None]
        if front:
            ax.plot(
                [m.latency_ms for m in front],
                [100 * m.accuracy for m in front],
                marker="o",
                color="tab:blue",
                label="Pareto front (acc, latency, memory)",
            )
        _mark_quality(ax, points, lambda m: m.latency_ms, lambda m: 100 * m.accuracy)
        _mark_choice(
            ax,
            rec,
            lambda m: m.latency_ms,
            lambda m: None if m.accuracy is None else 100 * m.accuracy,
        )
        if rec.budget.max_latency_ms is not None:
            ax.axvline(
                rec.budget.max_latency_ms, color="red", linestyle=":", label="latency budget"
            )
        wide = _log_if_wide(
            ax, [m.latency_ms for m in points] + [rec.budget.max_latency_ms or 0], "x"
        )
        ax.set_xlabel("median latency per call (ms" + (", log scale)" if wide else ")"))
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax.set_title("Accuracy vs latency")
    return Plot("pareto", "Accuracy vs latency: Pareto front and recommendation", _png(figure))


def plot_memory(
    ok: Sequence[Measurement], predicted: Sequence[Measurement], fits: dict, budget: Budget
) -> Plot:
    figure, ax = _figure()
    series = _by_series([m for m in ok if m.peak_mem_mb is not None])
    for key, points in series.items():
        line = ax.plot(
            [_side(m) for m in points],
            [m.peak_mem_mb for m in points],
            marker="o",
            linestyle="none",
            label=f"{_series_label(key)} measured",
        )
        fit = fits.get(group_key(points[0]))
        model_line = None if fit is None else _model_line(fit, points)
        if model_line is not None:
            ax.plot(
                *model_line,
                linestyle="--",
                color=line[0].get_color(),
                alpha=0.8,
                label=f"model: {fit.form}",
            )
    for key, points in _by_series([m for m in predicted if m.peak_mem_mb is not None]).items():
        ax.scatter(
            [_side(m) for m in points],
            [m.peak_mem_mb for m in points],
            facecolors="none",
            edgecolors="gray",
            label=f"{_series_label(key)} predicted",
        )
    _finish_resolution_axes(
        ax,
        bool(series),
        budget.max_memory_mb,
        "MiB",
        "peak memory over baseline (MiB)",
        "Peak memory vs resolution",
        "no memory measurements",
    )
    return Plot("memory_vs_resolution", "Peak memory vs resolution", _png(figure))


# --------------------------------------------------------------------------- tables


def _fmt(value: Any, digits: int = 3) -> str:
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


def result_rows(records: Sequence[Measurement]) -> list[list[str]]:
    rows = []
    for m in sorted(records, key=lambda m: (_series_key(m)[:2], m.config.batch_size, _side(m))):
        lat = m.latency
        rows.append(
            [
                m.key,
                m.status,
                "x".join(str(v) for v in m.config.resolution),
                _fmt(m.patch_size),
                str(m.config.batch_size),
                m.config.backend,
                m.config.precision,
                _fmt(None if m.accuracy is None else 100 * m.accuracy, 4),
                _fmt(None if lat is None else lat.median_ms),
                _fmt(None if lat is None or m.status == "predicted" else lat.iqr_ms),
                _fmt(None if lat is None or m.status == "predicted" else lat.p95_ms),
                _fmt(None if lat is None or m.status == "predicted" else lat.unstable),
                _fmt(m.throughput_ips, 4),
                _fmt(m.peak_mem_mb),
                _fmt(m.tokens),
                _fmt(m.ood_auroc),
                _fmt(None if m.flops is None else m.flops / 1e9, 4),
                _fmt(None if m.flops_analytic is None else m.flops_analytic / 1e9, 4),
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
                _fmt(m.flagged),
                _fmt(unstable),
                _fmt(m.latency_ms),
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
            loo = ", ".join(f"{f} {_fmt(e)} %" for f, e in fit.candidates.items())
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
                _fmt(fitted),
                _fmt(naive, 4),
                _fmt(ratio, 3),
            ]
        )
    return rows


# --------------------------------------------------------------------------- writers


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;white-space:pre-wrap}
.plots img{max-width:48%;margin:0.5%}
.answer{font-size:1.35em;font-weight:600;background:#eef6ee;border-left:6px solid #3a3;padding:.6em 1em}
.answer.none{background:#fff4e0;border-left-color:#d80}
.advice{background:#eef2fa;border-left:6px solid #46c;padding:.5em 1em}
.plots img.wide{max-width:97%}"""

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


ANALYSIS_TITLE = "What changes with resolution: OOD detection, class overlap, t-SNE"


def _analysis_section(
    analysis: ReportAnalysis | None, records: Sequence[Measurement]
) -> AnalysisSection | None:
    if analysis is None:
        return None
    from vitres.tune.report_analysis import ReportAnalysis, analysis_section

    if not isinstance(analysis, ReportAnalysis):
        raise ValueError(
            "write_report: analysis must be a ReportAnalysis from "
            f"vitres.tune.report_analysis.analyse_for_report; got {type(analysis).__name__}"
        )
    return analysis_section(analysis, records)


def _rule_paragraphs(section: AnalysisSection) -> list[str]:
    if section.rule is None:
        return ["Class overlap was not measured, so the seed's overlap rule is not applied."]
    lines = [section.rule.rule_text()]
    if section.rule.accuracy_text():
        lines.append(section.rule.accuracy_text())
    return lines


def _analysis_html(section: AnalysisSection) -> list[str]:
    parts = [f'<section id="analysis"><h2>{html.escape(ANALYSIS_TITLE)}</h2>']
    parts += [f'<p class="advice">{html.escape(line)}</p>' for line in _rule_paragraphs(section)]
    parts.append(_html_table(section.header, section.rows))
    parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
    parts.append('<div class="plots">')
    for name, title, png in section.figures:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<img class="wide" id="{name}" alt="{html.escape(title, quote=True)}" '
            f'title="{html.escape(title, quote=True)}" src="data:image/png;base64,{encoded}">'
        )
    parts.append("</div></section>")
    return parts


def _analysis_markdown(section: AnalysisSection, files_dir: str) -> list[str]:
    md = [f"## {ANALYSIS_TITLE}", ""]
    for line in _rule_paragraphs(section):
        md += [f"> {line}", ""]
    md += [_md_table(section.header, section.rows), ""]
    for note in section.notes:
        md += [note, ""]
    for name, title, png in section.figures:
        with open(os.path.join(files_dir, name + ".png"), "wb") as f:
            f.write(png)
        md += [f"![{title}]({os.path.basename(files_dir)}/{name}.png)", ""]
    return md


def write_report(
    recommendation: Recommendation | str | os.PathLike[str] | Sequence[Measurement],
    out_html: str | os.PathLike[str],
    budget: Budget | None = None,
    *,
    baseline: str | None = None,
    title: str = "vitres resolution report",
    markdown: bool = True,
    analysis: ReportAnalysis | None = None,
) -> tuple[str, str | None]:
    """Writes the HTML report (and ``<name>.md`` with ``<name>_files/*.png`` beside it).

    The report draws what :func:`vitres.tune.recommend.recommend` decided and the
    evidence it carries (records, fits, ceilings); it computes no results itself.

    Args:
        recommendation: The :class:`Recommendation` to draw. A results file or a list
            of records is accepted too: it is first passed to ``recommend`` with
            ``budget`` and ``baseline`` (the same call ``vitres recommend`` makes).
        out_html: Path of the HTML file.
        budget: Budget, only when ``recommendation`` is records.
        baseline: Baseline config key, only when ``recommendation`` is records.
        title: Page title.
        markdown: Also write the Markdown file.
        analysis: What :func:`vitres.tune.report_analysis.analyse_for_report` measured:
            adds the OOD / class overlap / t-SNE section and the seed's overlap rule as
            advice. ``None`` (the default): the report without it, nothing computed.

    Returns:
        The HTML path and the Markdown path (``None`` without Markdown).
    """
    if isinstance(recommendation, Recommendation):
        if budget is not None or baseline is not None:
            raise ValueError(
                "write_report: budget and baseline belong to recommend(); pass them there, "
                "or pass records instead of a Recommendation"
            )
        rec = recommendation
    else:
        records = (
            read_results(recommendation)
            if isinstance(recommendation, (str, os.PathLike))
            else list(recommendation)
        )
        rec = recommend(records, budget, baseline)
    budget, records = rec.budget, rec.records
    ok = [m for m in records if m.ok]
    predicted = [m for m in records if m.status == "predicted"]
    lat_fits, mem_fits = rec.latency_fits, rec.memory_fits
    plots = [
        plot_accuracy(ok),
        plot_latency(ok, predicted, lat_fits, budget, rec),
        plot_pareto(ok, rec),
        plot_memory(ok, predicted, mem_fits, budget),
    ]
    if any(m.ood_auroc is not None for m in ok):
        plots.append(plot_ood(ok, budget))
    summary = format_recommendation(rec)
    section = _analysis_section(analysis, records)
    if section is not None and section.rule is not None:
        summary += f"\nAdvice (feature space): {section.rule.rule_text()}"
    limits = budget.limits()
    budget_text = (
        f"Budget: {', '.join(limits) if limits else 'no limits'} — {budget.source}. "
        f"Rule: {budget.rule_text()}."
    )
    quality, quality_table = quality_summary(records), quality_rows(records)
    rows, fits, ceilings = (
        result_rows(records),
        fit_rows(lat_fits, mem_fits),
        ceiling_rows(rec.ceilings),
    )
    env = next((m.env for m in ok if m.env), {})
    counts = (
        f"{len(ok)} measured ok, {sum(m.status == 'error' for m in records)} failed, "
        f"{len(predicted)} predicted (not measured)"
    )

    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="answer{"" if rec.choice is not None else " none"}">'
        f"{html.escape(rec.sentence())}</p>",
        f"<p>{html.escape(budget_text)}</p>",
        f"<p>{html.escape(counts)}</p>",
        "<h2>Recommendation</h2>",
        f"<pre>{html.escape(summary)}</pre>",
        '<h2>Plots</h2><div class="plots">',
    ]
    for plot in plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<img alt="{html.escape(plot.title, quote=True)}" title="{html.escape(plot.title, quote=True)}" '
            f'src="data:image/png;base64,{encoded}">'
        )
    parts.append("</div>")
    if section is not None:
        parts += _analysis_html(section)
    parts += [
        "<h2>Cost model</h2>",
        _html_table(FIT_HEADER, fits) if fits else "<p>Too few points to fit.</p>",
    ]
    if ceilings:
        parts += [
            f"<h2>Memory ceiling for {html.escape(_fmt(budget.max_memory_mb))} MiB</h2>",
            "<p>Fitted: the largest square side whose predicted peak memory fits. Naive: the seed's "
            "formula side = p·sqrt(mem / (p²·D·4)), read as pixels.</p>",
            _html_table(CEILING_HEADER, ceilings),
        ]
    parts += ["<h2>Measurement quality</h2>", f"<p>{html.escape(quality)}</p>"]
    if quality_table:
        parts.append(_html_table(QUALITY_HEADER, quality_table))
    parts += ["<h2>All results</h2>", _html_table(RESULT_COLUMNS, rows)]
    if env:
        parts += [
            "<h2>Environment</h2>",
            _html_table(("field", "value"), [[k, _fmt(v)] for k, v in env.items()]),
        ]
    parts.append("</body></html>")
    out_html = os.fspath(out_html)
    directory = os.path.dirname(out_html)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(out_html, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))

    if not markdown:
        return out_html, None
    stem = os.path.splitext(out_html)[0]
    files_dir = stem + "_files"
    os.makedirs(files_dir, exist_ok=True)
    md = [
        f"# {title}",
        "",
        f"**{rec.sentence()}**",
        "",
        budget_text,
        "",
        counts,
        "",
        "## Recommendation",
        "",
        "```",
        summary,
        "```",
        "",
        "## Plots",
        "",
    ]
    for plot in plots:
        path = os.path.join(files_dir, plot.name + ".png")
        with open(path, "wb") as f:
            f.write(plot.png)
        md += [f"![{plot.title}]({os.path.basename(files_dir)}/{plot.name}.png)", ""]
    if section is not None:
        md += _analysis_markdown(section, files_dir)
    md += [
        "## Cost model",
        "",
        _md_table(FIT_HEADER, fits) if fits else "Too few points to fit.",
        "",
    ]
    if ceilings:
        md += [
            f"## Memory ceiling for {_fmt(budget.max_memory_mb)} MiB",
            "",
            _md_table(CEILING_HEADER, ceilings),
            "",
        ]
    md += ["## Measurement quality", "", quality, ""]
    if quality_table:
        md += [_md_table(QUALITY_HEADER, quality_table), ""]
    md += ["## All results", "", _md_table(RESULT_COLUMNS, rows), ""]
    if env:
        md += [
            "## Environment",
            "",
            _md_table(("field", "value"), [[k, _fmt(v)] for k, v in env.items()]),
            "",
        ]
    md_path = stem + ".md"
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return out_html, md_path
