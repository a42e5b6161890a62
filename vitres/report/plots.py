"""The report's plots, as PNG bytes: accuracy vs resolution, latency vs resolution
(measured points and the fitted cost model), the accuracy-vs-latency Pareto front with
the recommendation marked, peak memory vs resolution with the budget line, and OOD AUROC.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitres.report.tables import resolution_side, series_key
from vitres.tokens.merge import merge_label
from vitres.tune.budget import Budget
from vitres.tune.costmodel import CostFit
from vitres.tune.recommend import Recommendation, describe_config
from vitres.tune.records import Measurement, group_key

__all__ = [
    "Plot",
    "plot_accuracy",
    "plot_latency",
    "plot_memory",
    "plot_ood",
    "plot_pareto",
]


@dataclass
class Plot:
    """One figure: file name (without ``.png``), title, PNG bytes."""

    name: str
    title: str
    png: bytes


def _series_label(key: tuple) -> str:
    backend, precision, batch, patch, merge, budget = key
    patch_text = "" if patch is None else f", p{patch}"
    merge_text = "" if merge is None else f", merge {merge_label(merge)}"
    budget_text = "" if budget is None else f", ≤{budget} tokens"
    return f"{backend} ({precision}, b{batch}{patch_text}{merge_text}{budget_text})"


def _by_series(records: Sequence[Measurement]) -> dict[tuple, list[Measurement]]:
    out: dict[tuple, list[Measurement]] = {}
    for m in sorted(records, key=resolution_side):
        out.setdefault(series_key(m), []).append(m)
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
        ax.errorbar(
            [resolution_side(m) for m in points],
            [100 * m.accuracy for m in points],
            yerr=_accuracy_errors(points),
            marker="o",
            capsize=2,
            label=_series_label(key),
        )
    if series:
        ax.set_xlabel("resolution (px, √(H·W)); bars: 95 % interval")
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
            [resolution_side(m) for m in points],
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
    sides = np.linspace(
        min(resolution_side(m) for m in points), max(resolution_side(m) for m in points), 100
    )
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
            [resolution_side(m) for m in points],
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
            [resolution_side(m) for m in points],
            [m.latency_ms for m in points],
            facecolors="none",
            edgecolors=colors.get(key, "gray"),
            label=f"{_series_label(key)} predicted",
        )
    timed = [m for m in ok if m.latency_ms is not None]
    _mark_quality(ax, timed, resolution_side, lambda m: m.latency_ms)
    _mark_choice(ax, rec, resolution_side, lambda m: m.latency_ms)
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


def front_2d(points: Sequence[Measurement]) -> list[Measurement]:
    """The accuracy/latency Pareto front of ``points``: each config no other is both
    faster and more accurate than, by latency (a true 2-D front, drawn as steps)."""
    front: list[Measurement] = []
    best = -1.0
    for m in sorted(points, key=lambda m: (m.latency_ms, -m.accuracy)):
        if m.accuracy > best:
            front.append(m)
            best = m.accuracy
    return front


def _accuracy_errors(points: Sequence[Measurement]) -> list[list[float]] | None:
    """Wilson 95 % intervals as matplotlib's asymmetric ``yerr`` (points), ``None`` when
    no point knows its evaluation size."""
    from vitres.tune.intervals import wilson_interval

    if not any(m.n_eval > 0 for m in points):
        return None
    low, high = [], []
    for m in points:
        if m.n_eval > 0:
            lo, hi = wilson_interval(m.accuracy, m.n_eval)
            low.append(100 * (m.accuracy - lo))
            high.append(100 * (hi - m.accuracy))
        else:
            low.append(0.0)
            high.append(0.0)
    return [low, high]


def _label_points(ax: Any, points: Sequence[Measurement], x: Any, y: Any) -> None:
    for m in points:
        height, width = m.config.resolution
        text = f"{height}" if height == width else f"{height}x{width}"
        ax.annotate(text, (x(m), y(m)), textcoords="offset points", xytext=(4, 4), fontsize=7)


def plot_pareto(ok: Sequence[Measurement], rec: Recommendation) -> Plot:
    figure, ax = _figure()
    points = [m for m in ok if m.accuracy is not None and m.latency_ms is not None]
    if not points:
        _empty(ax, "no accuracy data: no accuracy/latency trade-off to show")
    else:
        ax.errorbar(
            [m.latency_ms for m in points],
            [100 * m.accuracy for m in points],
            yerr=_accuracy_errors(points),
            fmt="o",
            color="gray",
            markerfacecolor="lightgray",
            ecolor="silver",
            capsize=2,
            label="all configs (95 % interval)",
        )
        front = front_2d(points)
        ax.step(
            [m.latency_ms for m in front],
            [100 * m.accuracy for m in front],
            where="post",
            marker="o",
            color="tab:blue",
            label="Pareto front (accuracy, latency)",
        )
        _label_points(ax, points, lambda m: m.latency_ms, lambda m: 100 * m.accuracy)
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
    ax.set_title("Accuracy vs latency (labels: resolution)")
    return Plot("pareto", "Accuracy vs latency: Pareto front and recommendation", _png(figure))


def plot_memory(
    ok: Sequence[Measurement], predicted: Sequence[Measurement], fits: dict, budget: Budget
) -> Plot:
    figure, ax = _figure()
    series = _by_series([m for m in ok if m.peak_mem_mb is not None])
    for key, points in series.items():
        line = ax.plot(
            [resolution_side(m) for m in points],
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
            [resolution_side(m) for m in points],
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
