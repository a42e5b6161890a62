"""The report's "what changes with resolution" part: OOD detection, class overlap, t-SNE.

Lowering the resolution changes more than accuracy (issue 17). A sweep's records hold
accuracy, latency and at most one OOD number per config; class overlap, silhouette, the
AUROC of each OOD score and t-SNE pictures need the model and the data again. So this
module does two separate things:

* :func:`analyse_for_report` **computes** (only when called): for each resolution of the
  records (or a given list) it runs :func:`vitres.explain.analyse_resolutions` once and,
  if asked, :func:`vitres.explain.tsne_embedding` per resolution; the result is a
  :class:`ReportAnalysis`.
* :func:`analysis_section` **draws**: the table beside accuracy, the separability and OOD
  plots (:mod:`vitres.explain.plots`), the t-SNE grid, and the seed's overlap rule checked
  against the measured accuracy (:meth:`~vitres.explain.ResolutionAnalysis.rule_check`,
  seed "ViT模型分辨率调优实战", step 1). :func:`vitres.report.write_report` renders it
  when given ``analysis=``; without it the report is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from vitres.explain.analysis import (
    OverlapRuleCheck,
    ResolutionAnalysis,
    analyse_resolutions,
    resolution_label,
    result_cells,
)
from vitres.explain.plots import figure_png, ood_figure, separability_figure, tsne_figure
from vitres.explain.separability import OVERLAP_RULE_THRESHOLD
from vitres.tune.recommend import Recommendation
from vitres.tune.records import Measurement

__all__ = [
    "AnalysisSection",
    "ReportAnalysis",
    "analyse_for_report",
    "analysis_section",
    "record_resolutions",
]


@dataclass(frozen=True)
class ReportAnalysis:
    """What :func:`analyse_for_report` measured, for :func:`vitres.report.write_report`.

    Attributes:
        analysis: accuracy, OOD metrics per method, overlap and silhouette per resolution.
        name: the model's name in the report.
        tsne: resolution label -> ``(points (n, 2), labels (n,))``; empty when not asked.
        patch_size: the patch size of every forward (``None``: the model's own).
        threshold: the overlap rule's threshold.
    """

    analysis: ResolutionAnalysis
    name: str
    tsne: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    patch_size: int | None = None
    threshold: float = OVERLAP_RULE_THRESHOLD

    @property
    def has_separability(self) -> bool:
        return any(r.overlap is not None for r in self.analysis.results)

    @property
    def has_ood(self) -> bool:
        return bool(self.analysis.methods)

    def rule_check(self) -> OverlapRuleCheck | None:
        """The seed's overlap rule beside the accuracy (``None`` without overlap)."""
        return self.analysis.rule_check(self.threshold)


def record_resolutions(records: Sequence[Measurement]) -> list[tuple[int, int]]:
    """The distinct resolutions of the measured (``ok``) records, fewest pixels first."""
    sizes = {tuple(m.config.resolution) for m in records if m.ok}
    return sorted(sizes, key=lambda size: (size[0] * size[1], size))


def _records(source: Recommendation | Sequence[Measurement]) -> list[Measurement]:
    return list(source.records if isinstance(source, Recommendation) else source)


def _model_of(records: Sequence[Measurement]) -> str:
    models = sorted({m.config.model for m in records if m.ok})
    if len(models) != 1:
        found = ", ".join(models) if models else "none"
        raise ValueError(
            f"the analysis needs one model; the records name {len(models)} ({found}): "
            "pass model= (--model M)"
        )
    return models[0]


def _check_request(separability: bool, tsne: bool, ood: str | None, tsne_points: int) -> None:
    if not (separability or tsne or ood):
        raise ValueError(
            "nothing to analyse: ask for separability, tsne or ood "
            "(--separability, --tsne, --ood SET, or --analysis for all three)"
        )
    if tsne_points < 2:
        raise ValueError(f"tsne_points must be at least 2; got {tsne_points}")


def _analysed_sizes(
    records: Sequence[Measurement], resolutions: Sequence[int | Sequence[int]] | None
) -> list[Any]:
    sizes = list(resolutions) if resolutions is not None else record_resolutions(records)
    if not sizes:
        raise ValueError(
            "no resolution to analyse: the records hold no measured config; pass resolutions= "
            "(--res)"
        )
    return sizes


def analyse_for_report(
    records: Recommendation | Sequence[Measurement],
    model: nn.Module | str | None = None,
    id_data: str = "fashion-mnist",
    *,
    resolutions: Sequence[int | Sequence[int]] | None = None,
    separability: bool = True,
    tsne: bool = False,
    ood: str | None = None,
    methods: str | Sequence[str] | None = None,
    limit: int | None = None,
    train_limit: int | None = 10_000,
    ood_limit: int | None = None,
    k: int = 10,
    tsne_points: int = 2000,
    batch_size: int = 256,
    patch_size: int | None = None,
    data_dir: str | None = None,
    threshold: float = OVERLAP_RULE_THRESHOLD,
    progress: bool = True,
) -> ReportAnalysis:
    """Measures the report's analysis sections for the resolutions of a sweep.

    One pass of :func:`vitres.explain.analyse_resolutions` per resolution (test features,
    and training and OOD features when ``ood`` is given), then t-SNE when asked. Every
    forward uses one patch size (``patch_size``, else the model's own): the analysis is
    per resolution, not per sweep config.

    Args:
        records: the sweep's records, or the :class:`Recommendation` drawn from them.
        model: the model, a checkpoint path or bundled name; ``None``: the one model the
            records name.
        id_data: in-distribution dataset name or folder (its ``test`` split is scored).
        resolutions: ints or ``(height, width)`` pairs; ``None``: those of the ``ok``
            records.
        separability: class overlap and silhouette per resolution.
        tsne: a t-SNE embedding of the test features per resolution.
        ood: OOD set (``digits`` or an image folder) for AUROC / FPR95 per method;
            ``None`` for none.
        methods: OOD scores (all of ``msp, maxlogit, energy, mahalanobis, vim`` if None).
        limit: first test images (all when ``None``).
        train_limit: training images the Mahalanobis and ViM fits use.
        ood_limit: first OOD images (all when ``None``).
        k: neighbours of the class-overlap measure.
        tsne_points: points per t-SNE (a seeded random subset of the test features).
        batch_size: images per forward pass.
        patch_size: patch side for every forward (the model's own when ``None``).
        data_dir: folder of the Fashion-MNIST files.
        threshold: the seed's overlap threshold (30 %).
        progress: progress bars for feature extraction and t-SNE.

    Raises:
        ValueError: nothing asked, no resolution, several models without ``model``, or
            bad data (see :func:`vitres.explain.analyse_resolutions`).
    """
    _check_request(separability, tsne, ood, tsne_points)
    rows = _records(records)
    if model is None:
        model = _model_of(rows)
    sizes = _analysed_sizes(rows, resolutions)
    analysis = analyse_resolutions(
        model,
        sizes,
        id_data,
        ood,
        methods=methods,
        train_limit=train_limit,
        limit=limit,
        ood_limit=ood_limit,
        separability=separability,
        k=k,
        batch_size=batch_size,
        patch_size=patch_size,
        data_dir=data_dir,
        progress=progress,
    )
    embeddings = analysis.tsne_embeddings(tsne_points, progress) if tsne else {}
    name = model if isinstance(model, str) else analysis.model
    return ReportAnalysis(analysis, name, embeddings, patch_size, threshold)


# --------------------------------------------------------------------------- drawing


@dataclass
class AnalysisSection:
    """What the report shows of a :class:`ReportAnalysis`, ready to write as HTML or Markdown.

    Attributes:
        header: the table's column names.
        rows: the table's cells, one row per resolution.
        values: the numbers behind each row (``ResolutionResult.to_dict()`` plus the
            sweep's accuracy and OOD AUROC range at that resolution).
        notes: sentences on what was measured and how.
        rule: the seed's overlap rule and its check against accuracy (``None`` without
            overlap).
        figures: ``(name, title, png)`` of the separability, OOD and t-SNE figures.
    """

    header: list[str]
    rows: list[list[str]]
    values: list[dict[str, Any]]
    notes: list[str]
    rule: OverlapRuleCheck | None
    figures: list[tuple[str, str, bytes]]


def _sweep_range(
    records: Sequence[Measurement], label: str, value: Any
) -> tuple[float, float] | None:
    """Smallest and largest ``value(m)`` over the ok records at resolution ``label``."""
    found = [
        value(m)
        for m in records
        if m.ok and resolution_label(m.config.resolution) == label and value(m) is not None
    ]
    found = [v for v in found if not math.isnan(v)]
    return (min(found), max(found)) if found else None


def _range_text(span: tuple[float, float] | None, scale: float, form: str, unit: str) -> str:
    if span is None:
        return "–"
    low, high = (format(v * scale, form) for v in span)
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def _section_table(
    analysis: ResolutionAnalysis, records: Sequence[Measurement]
) -> tuple[list[str], list[list[str]], list[dict[str, Any]], bool]:
    """The table's header, cells and numbers, one row per resolution, and whether the
    sweep recorded OOD AUROC."""
    methods = list(analysis.methods)
    sweep_accuracy = any(m.ok and m.accuracy is not None for m in records)
    sweep_ood = any(m.ok and m.ood_auroc is not None for m in records)
    header = ["resolution", "accuracy"]
    header += [f"{method} AUROC (FPR95)" for method in methods]
    header += ["overlap", "disagreement", "silhouette"]
    if methods:
        header.append("best OOD")
    if sweep_accuracy:
        header.append("sweep accuracy")
    if sweep_ood:
        header.append("sweep OOD AUROC")
    rows, values = [], []
    for result in analysis.results:
        row = result_cells(result, methods)
        entry = result.to_dict()
        best = result.best_method()
        if methods:
            row.append("–" if best is None else f"{best[0]} {best[1].auroc:.3f}")
        if sweep_accuracy:
            span = _sweep_range(records, result.label, lambda m: m.accuracy)
            entry["sweep_accuracy"] = span
            row.append(_range_text(span, 100, ".1f", " %"))
        if sweep_ood:
            span = _sweep_range(records, result.label, lambda m: m.ood_auroc)
            entry["sweep_ood_auroc"] = span
            row.append(_range_text(span, 1, ".3f", ""))
        rows.append(row)
        values.append(entry)
    return header, rows, values, sweep_ood


def _section_notes(report_analysis: ReportAnalysis, sweep_ood: bool) -> list[str]:
    """Sentences on what was measured and how."""
    analysis = report_analysis.analysis
    patch = (
        "the model's own patch size"
        if report_analysis.patch_size is None
        else f"patch {report_analysis.patch_size}"
    )
    notes = [
        f"Model {report_analysis.name}, {patch}; {analysis.id_data}: the first "
        f"{analysis.n_id} images per resolution (accuracy is on these, the sweep's "
        "accuracy on its own evaluation set)."
    ]
    if report_analysis.has_separability:
        notes.append(
            f"Class overlap: the fraction of test points whose {analysis.k} nearest neighbours "
            "(Euclidean, standardised features of the classifier head's input, the point "
            f"itself excluded) are mostly (more than {analysis.k // 2}) of another class. "
            "Disagreement: the mean fraction of other-class neighbours. Silhouette: the mean "
            "silhouette coefficient of the classes on the same features."
        )
    if report_analysis.has_ood:
        fitted = (
            f"; Mahalanobis and ViM fitted per resolution on {analysis.n_train} training images"
            if analysis.n_train
            else ""
        )
        notes.append(
            f"OOD: {analysis.id_data} vs {analysis.ood_data} (n = {analysis.n_ood}; "
            f"{analysis.ood_conversion}){fitted}. Cells: AUROC (FPR at 95 % TPR)."
        )
    if sweep_ood:
        notes.append(
            "Sweep OOD AUROC: the best method's AUROC the sweep recorded per config "
            "(`vitres sweep --ood`), over the configs at that resolution."
        )
    return notes


def _section_figures(report_analysis: ReportAnalysis) -> list[tuple[str, str, bytes]]:
    """``(name, title, png)`` of the separability, OOD and t-SNE figures that apply."""
    analysis = report_analysis.analysis
    figures: list[tuple[str, str, bytes]] = []
    name = report_analysis.name
    if report_analysis.has_separability:
        figure = separability_figure({name: analysis}, report_analysis.threshold)
        figures.append(
            (
                "separability_vs_resolution",
                "Accuracy, class overlap and silhouette vs resolution",
                figure_png(figure),
            )
        )
    if report_analysis.has_ood:
        figures.append(
            (
                "ood_methods_vs_resolution",
                "OOD AUROC and FPR95 per method vs resolution",
                figure_png(ood_figure({name: analysis})),
            )
        )
    if report_analysis.tsne:
        overlaps = {r.label: r.overlap for r in analysis.results if r.overlap is not None}
        figure = tsne_figure(report_analysis.tsne, analysis.classes, overlaps)
        figures.append(("tsne", "t-SNE of the test features per resolution", figure_png(figure)))
    return figures


def analysis_section(
    report_analysis: ReportAnalysis, records: Sequence[Measurement] = ()
) -> AnalysisSection:
    """The table, notes, rule check and figures of the report's analysis section.

    Args:
        report_analysis: what :func:`analyse_for_report` measured.
        records: the sweep's records: their accuracy and OOD AUROC (a sweep with
            ``--ood``) at each resolution are shown beside the analysis.
    """
    header, rows, values, sweep_ood = _section_table(report_analysis.analysis, records)
    notes = _section_notes(report_analysis, sweep_ood)
    figures = _section_figures(report_analysis)
    return AnalysisSection(header, rows, values, notes, report_analysis.rule_check(), figures)
