"""Figures of :mod:`vitres.explain`: attention overlays, OOD AUROC and class separability
by resolution, t-SNE.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no display needed);
:func:`figure_png` turns one into PNG bytes for an HTML report.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vitres.explain.analysis import ResolutionAnalysis
from vitres.explain.image import AttentionPanel
from vitres.explain.separability import OVERLAP_RULE_THRESHOLD

__all__ = ["attention_figure", "figure_png", "ood_figure", "separability_figure", "tsne_figure"]


def figure_png(figure: Figure, dpi: int = 120) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _token_extent(panel: AttentionPanel) -> tuple[float, float, float, float]:
    """Where the token grid lies in image pixels: ``(left, right, bottom, top)``."""
    height, width = panel.display.shape[:2]
    rows, cols = panel.attention.grid
    if panel.size_policy == "resize":  # the image was resized to the grid: tokens span it
        return (0.0, float(width), float(height), 0.0)
    p = panel.attention.patch_size
    return (0.0, float(cols * p), float(rows * p), 0.0)


def attention_figure(
    panels: Sequence[AttentionPanel] | Mapping[str, Sequence[AttentionPanel]],
    title: str | None = None,
) -> Figure:
    """The image at each resolution with its attention map over it, side by side.

    Each map is scaled to [0, 1] over the tokens that hold content; padding tokens are
    left transparent.

    Args:
        panels: one row of panels, or a row name (e.g. a model) -> its row.
        title: the figure's title (the method when ``None``).
    """
    rows = dict(panels) if isinstance(panels, Mapping) else {"": list(panels)}
    if not rows or not all(rows.values()):
        raise ValueError("attention_figure needs at least one panel in every row")
    columns = max(len(row) for row in rows.values())
    figure = Figure(figsize=(2.6 * columns, 3.0 * len(rows) + 0.3), layout="constrained")
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for axes, (row_name, row) in zip(grid, rows.items()):
        for axis in axes[len(row) :]:
            axis.set_visible(False)
        for axis, panel in zip(axes, row):
            _draw_attention(axis, panel)
        if row_name:
            axes[0].set_ylabel(row_name, fontsize=9)
    method = next(iter(rows.values()))[0].attention.method
    figure.suptitle(title or f"attention ({method})", fontsize=10)
    return figure


def _draw_attention(axis, panel: AttentionPanel) -> None:
    height, width = panel.display.shape[:2]
    attention = panel.attention
    values = attention.maps[0, -1].numpy().astype(np.float64)
    valid = attention.valid.numpy()
    top = values[valid].max() if valid.any() else 0.0
    scaled = np.ma.masked_array(values / top if top > 0 else values, mask=~valid)
    axis.imshow(panel.display, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
    axis.imshow(
        scaled,
        cmap="inferno",
        vmin=0,
        vmax=1,
        alpha=0.55,
        interpolation="nearest",
        extent=_token_extent(panel),
    )
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_xticks([])
    axis.set_yticks([])
    rows, cols = attention.grid
    name = panel.class_name or f"class {panel.predicted}"
    axis.set_title(
        f"{height}x{width} px, grid {rows}x{cols}\n{name} ({panel.probability:.0%})", fontsize=9
    )


def ood_figure(analyses: Mapping[str, ResolutionAnalysis]) -> Figure:
    """AUROC and FPR at 95 % TPR against resolution, one line per method and model.

    Args:
        analyses: a name for each model -> its analysis.
    """
    if not analyses:
        raise ValueError("ood_figure needs at least one analysis")
    figure = Figure(figsize=(10, 3.8))
    auroc_axis, fpr_axis = figure.subplots(1, 2)
    styles = ["-", "--", ":", "-."]
    for index, (name, analysis) in enumerate(analyses.items()):
        pixels = [r.resolution[0] * r.resolution[1] for r in analysis.results]
        sides = np.sqrt(pixels)
        labels = [r.label for r in analysis.results]
        for colour, method in enumerate(analysis.methods):
            aurocs = [r.ood[method].auroc for r in analysis.results]
            fprs = [r.ood[method].fpr95 for r in analysis.results]
            style = {"linestyle": styles[index % len(styles)], "color": f"C{colour}", "marker": "o"}
            auroc_axis.plot(sides, aurocs, label=f"{name}: {method}", **style)
            fpr_axis.plot(sides, fprs, label=f"{name}: {method}", **style)
        for axis in (auroc_axis, fpr_axis):
            axis.set_xticks(sides, labels)
    auroc_axis.axhline(0.9, color="grey", linewidth=0.8)
    auroc_axis.set_ylabel("AUROC (higher is better)")
    fpr_axis.set_ylabel("FPR at 95 % TPR (lower is better)")
    for axis in (auroc_axis, fpr_axis):
        axis.set_xlabel("resolution (px)")
        axis.grid(alpha=0.3)
    first = next(iter(analyses.values()))
    figure.suptitle(f"OOD detection: {first.id_data} vs {first.ood_data}", fontsize=10)
    fpr_axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return figure


def separability_figure(
    analyses: Mapping[str, ResolutionAnalysis], threshold: float = OVERLAP_RULE_THRESHOLD
) -> Figure:
    """Accuracy, class overlap (with the seed's threshold) and silhouette against resolution.

    Args:
        analyses: a name for each model -> its analysis (with overlap measured).
        threshold: the overlap rule's threshold, drawn as a line.
    """
    measured = {
        name: [r for r in analysis.results if r.overlap is not None]
        for name, analysis in analyses.items()
    }
    measured = {name: results for name, results in measured.items() if results}
    if not measured:
        raise ValueError("separability_figure needs an analysis with class overlap measured")
    figure = Figure(figsize=(12, 3.6))
    accuracy_axis, overlap_axis, silhouette_axis = figure.subplots(1, 3)
    for index, (name, results) in enumerate(measured.items()):
        sides = np.sqrt([r.resolution[0] * r.resolution[1] for r in results])
        style = {"color": f"C{index}", "marker": "o", "label": name}
        accuracy_axis.plot(sides, [r.accuracy * 100 for r in results], **style)
        overlap_axis.plot(sides, [r.overlap * 100 for r in results], **style)
        silhouette_axis.plot(sides, [r.silhouette for r in results], **style)
        for axis in (accuracy_axis, overlap_axis, silhouette_axis):
            axis.set_xticks(sides, [r.label for r in results])
    overlap_axis.axhline(
        threshold * 100, color="red", linestyle=":", label=f"overlap rule: {threshold:.0%}"
    )
    overlap_axis.set_ylim(bottom=0, top=max(overlap_axis.get_ylim()[1], threshold * 100 + 5))
    accuracy_axis.set_ylabel("top-1 accuracy (%)")
    overlap_axis.set_ylabel("class overlap (%, lower is better)")
    silhouette_axis.set_ylabel("silhouette (higher is better)")
    for axis in (accuracy_axis, overlap_axis, silhouette_axis):
        axis.set_xlabel("resolution (px)")
        axis.grid(alpha=0.3)
    overlap_axis.legend(fontsize=7)
    figure.suptitle("Class separability of the classifier's features", fontsize=10)
    figure.tight_layout()
    return figure


def tsne_figure(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] | None = None,
    overlaps: Mapping[str, float] | None = None,
) -> Figure:
    """One t-SNE scatter per resolution, points coloured by class.

    Args:
        embeddings: resolution label -> ``(points (n, 2), labels (n,))`` from
            :func:`vitres.explain.tsne_embedding`.
        class_names: legend names of the labels.
        overlaps: resolution label -> class overlap, shown in the titles.
    """
    if not embeddings:
        raise ValueError("tsne_figure needs at least one embedding")
    figure = Figure(figsize=(3.4 * len(embeddings) + 1.6, 3.6))
    axes = figure.subplots(1, len(embeddings), squeeze=False)[0]
    classes = sorted({int(c) for _, labels in embeddings.values() for c in labels})
    for axis, (label, (points, labels)) in zip(axes, embeddings.items()):
        for colour, cls in enumerate(classes):
            chosen = labels == cls
            name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
            axis.scatter(
                points[chosen, 0], points[chosen, 1], s=3, color=f"C{colour % 10}", label=name
            )
        title = f"{label} px"
        if overlaps and label in overlaps:
            title += f", overlap {overlaps[label]:.0%}"
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    axes[-1].legend(
        fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
    )
    figure.suptitle("t-SNE of the classifier's features", fontsize=10)
    return figure
