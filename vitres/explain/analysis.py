"""What changes with resolution, measured: accuracy, OOD detection and class separability.

For each resolution, one pass over three image sets gives the classifier head's input
features and logits (:mod:`vitres.explain.features`):

* the in-distribution training split (first ``train_limit`` images): fits Mahalanobis and
  ViM (:mod:`vitres.explain.ood`) at that resolution;
* the in-distribution test split: accuracy, the in-distribution scores, class overlap and
  silhouette (:mod:`vitres.explain.separability`);
* the OOD set (:mod:`vitres.explain.ood_data`): the OOD scores.

AUROC and FPR at 95 % TPR (:mod:`vitres.explain.metrics`) compare the two score sets.
:func:`ood_auroc_for_config` is the one-number form for a sweep record.
:meth:`ResolutionAnalysis.rule_check` applies the seed's overlap rule (seed
"ViT模型分辨率调优实战", step 1) and sets it beside the measured accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from vitres.data import get_dataset
from vitres.data.transforms import to_size
from vitres.devices import check_device
from vitres.explain.features import FeatureSet, extract_features, linear_head
from vitres.explain.metrics import DetectionMetrics, detection_metrics
from vitres.explain.ood import FEATURE_METHODS, OODDetectors, parse_methods
from vitres.explain.ood_data import open_ood_data
from vitres.explain.sample import sample_warnings
from vitres.explain.separability import (
    OVERLAP_RULE_THRESHOLD,
    class_overlap,
    resolution_advice,
    silhouette,
    tsne_embedding,
)
from vitres.progress import progress_bar

__all__ = [
    "LOWERING_HELPS_MARGIN",
    "OverlapRuleCheck",
    "ResolutionAnalysis",
    "ResolutionResult",
    "analyse_resolutions",
    "analysis_table",
    "ood_auroc_for_config",
    "resolution_label",
    "result_cells",
]

#: A lower resolution at least this much more accurate (1 point) means lowering helps.
LOWERING_HELPS_MARGIN = 0.01


def resolution_label(resolution: int | Sequence[int]) -> str:
    """``28`` or ``(28, 28)`` -> ``"28"``; ``(40, 24)`` -> ``"40x24"``."""
    height, width = to_size(resolution if isinstance(resolution, int) else tuple(resolution))
    return str(height) if height == width else f"{height}x{width}"


@dataclass(frozen=True)
class ResolutionResult:
    """Measurements at one resolution.

    Attributes:
        resolution: ``(height, width)``.
        accuracy: top-1 accuracy on the in-distribution test images.
        ood: method -> AUROC and FPR at 95 % TPR.
        overlap: class overlap of the test features (``None`` when not measured).
        disagreement: mean fraction of other-class neighbours.
        silhouette: mean silhouette coefficient of the test features.
    """

    resolution: tuple[int, int]
    accuracy: float
    ood: dict[str, DetectionMetrics]
    overlap: float | None = None
    disagreement: float | None = None
    silhouette: float | None = None

    @property
    def label(self) -> str:
        return resolution_label(self.resolution)

    def best_method(self) -> tuple[str, DetectionMetrics] | None:
        """The method with the highest AUROC, or ``None`` when no OOD score was computed."""
        if not self.ood:
            return None
        return max(self.ood.items(), key=lambda item: item[1].auroc)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_method()
        return {
            "resolution": list(self.resolution),
            "label": self.label,
            "accuracy": self.accuracy,
            "ood": {method: metrics.to_dict() for method, metrics in self.ood.items()},
            "best_method": best[0] if best else None,
            "best_auroc": best[1].auroc if best else None,
            "overlap": self.overlap,
            "disagreement": self.disagreement,
            "silhouette": self.silhouette,
        }


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %"


@dataclass(frozen=True)
class OverlapRuleCheck:
    """The seed's overlap rule at the highest resolution measured, beside the accuracy.

    The rule (seed "ViT模型分辨率调优实战", step 1): *if class clusters overlap by more
    than 30 % at high resolution, lower the resolution*. "High" is the resolution with
    the most pixels. Lowering helps when a lower resolution is at least
    ``LOWERING_HELPS_MARGIN`` (1 point) more accurate; the rule is right when it fires
    exactly when lowering helps.

    Attributes:
        threshold: the rule's threshold (the seed's 0.30).
        resolution: label of the highest resolution.
        overlap: its class overlap.
        accuracy: its accuracy.
        fires: ``overlap > threshold``.
        advice: :func:`~vitres.explain.separability.resolution_advice`'s sentence.
        best_lower: label of the most accurate lower resolution (``None`` if none).
        best_lower_accuracy: its accuracy.
    """

    threshold: float
    resolution: str
    overlap: float
    accuracy: float
    fires: bool
    advice: str
    best_lower: str | None = None
    best_lower_accuracy: float | None = None

    @property
    def lowering_helps(self) -> bool | None:
        """A lower resolution is at least 1 point more accurate (``None`` without one)."""
        if self.best_lower_accuracy is None:
            return None
        return self.best_lower_accuracy >= self.accuracy + LOWERING_HELPS_MARGIN

    @property
    def right(self) -> bool | None:
        """The rule fired exactly when lowering helps (``None`` without a lower one)."""
        helps = self.lowering_helps
        return None if helps is None else self.fires == helps

    def rule_text(self) -> str:
        """The rule with its threshold, whether it fires, and the advice."""
        rule = (
            f"Seed's rule (class overlap > {_percent(self.threshold)} at the highest "
            "resolution → lower the resolution)"
        )
        verdict = "fires" if self.fires else "does not fire"
        return f"{rule} {verdict}: {self.advice}."

    def accuracy_text(self) -> str:
        """The rule against the measured accuracy, in one sentence (empty without a lower
        resolution)."""
        if self.best_lower is None or self.best_lower_accuracy is None:
            return ""
        gap = (self.best_lower_accuracy - self.accuracy) * 100
        measured = (
            f"Measured accuracy: {self.resolution} px {self.accuracy * 100:.1f} %, best lower "
            f"{self.best_lower} px {self.best_lower_accuracy * 100:.1f} % ({gap:+.1f} points)"
        )
        if self.lowering_helps and self.fires:
            return f"{measured}: lowering helps, as the rule says."
        if self.lowering_helps:
            return f"{measured}: lowering would help, and the rule misses it."
        if self.fires:
            return f"{measured}: lowering does not help, though the rule says to."
        return f"{measured}: lowering does not help; the rule is right to stay silent."

    def text(self) -> str:
        """:meth:`rule_text` and :meth:`accuracy_text` together."""
        return " ".join(part for part in (self.rule_text(), self.accuracy_text()) if part)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "resolution": self.resolution,
            "overlap": self.overlap,
            "accuracy": self.accuracy,
            "fires": self.fires,
            "advice": self.advice,
            "best_lower": self.best_lower,
            "best_lower_accuracy": self.best_lower_accuracy,
            "lowering_helps": self.lowering_helps,
            "right": self.right,
            "text": self.text(),
        }


@dataclass(frozen=True)
class ResolutionAnalysis:
    """The measurements of :func:`analyse_resolutions`, and the features they came from.

    Attributes:
        model: the model reference (``"<in-memory>"`` for a module).
        id_data: in-distribution dataset name.
        ood_data: OOD dataset name (``None`` without OOD scores).
        ood_conversion: how the OOD images were converted for the model.
        methods: the OOD scores computed.
        n_train: training images the feature-space detectors were fitted on (0 if none).
        n_id: in-distribution test images.
        n_ood: OOD images.
        k: neighbours of the class-overlap measure.
        results: one entry per resolution, in the order asked.
        classes: the in-distribution class names.
        test_features: resolution label -> the in-distribution test features (not in
            :meth:`to_dict`; for t-SNE pictures).
    """

    model: str
    id_data: str
    ood_data: str | None
    ood_conversion: str | None
    methods: tuple[str, ...]
    n_train: int
    n_id: int
    n_ood: int
    k: int
    results: list[ResolutionResult]
    classes: tuple[str, ...] = ()
    test_features: dict[str, FeatureSet] = field(default_factory=dict, repr=False)

    def advice(self, threshold: float = OVERLAP_RULE_THRESHOLD) -> str | None:
        """The seed's overlap rule as a sentence (``None`` when overlap was not measured)."""
        overlaps = {r.label: r.overlap for r in self.results if r.overlap is not None}
        return resolution_advice(overlaps, threshold, self.n_id or None) if overlaps else None

    def tsne_embeddings(
        self, max_points: int = 2000, progress: bool = False
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """A t-SNE embedding of the test features at each resolution.

        Args:
            max_points: points per embedding (a seeded random subset of the test features).
            progress: show a progress bar over the resolutions.

        Returns:
            resolution label -> ``(points (n, 2), labels (n,))`` (see
            :func:`~vitres.explain.separability.tsne_embedding`).
        """
        if not self.test_features:
            raise ValueError("no test features kept: the analysis was rebuilt from numbers")
        return {
            label: tsne_embedding(features.features, features.labels, max_points)
            for label, features in progress_bar(
                self.test_features.items(), desc="t-SNE", unit="res", disable=not progress
            )
        }

    def rule_check(self, threshold: float = OVERLAP_RULE_THRESHOLD) -> OverlapRuleCheck | None:
        """The seed's overlap rule beside the measured accuracy (``None`` when overlap was
        not measured)."""
        measured = [r for r in self.results if r.overlap is not None]
        if not measured:
            return None
        top = max(measured, key=lambda r: r.resolution[0] * r.resolution[1])
        pixels = top.resolution[0] * top.resolution[1]
        lower = [r for r in self.results if r.resolution[0] * r.resolution[1] < pixels]
        best_lower = max(lower, key=lambda r: r.accuracy) if lower else None
        assert top.overlap is not None
        return OverlapRuleCheck(
            threshold=threshold,
            resolution=top.label,
            overlap=top.overlap,
            accuracy=top.accuracy,
            fires=top.overlap > threshold,
            advice=resolution_advice(
                {r.label: r.overlap for r in measured}, threshold, self.n_id or None
            ),
            best_lower=best_lower.label if best_lower else None,
            best_lower_accuracy=best_lower.accuracy if best_lower else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "id_data": self.id_data,
            "ood_data": self.ood_data,
            "ood_conversion": self.ood_conversion,
            "methods": list(self.methods),
            "n_train": self.n_train,
            "n_id": self.n_id,
            "n_ood": self.n_ood,
            "k": self.k,
            "classes": list(self.classes),
            "results": [r.to_dict() for r in self.results],
            "advice": self.advice(),
            "rule_check": None if (check := self.rule_check()) is None else check.to_dict(),
            "warnings": sample_warnings(self),
        }


def _model(model: nn.Module | str) -> tuple[nn.Module, str]:
    if isinstance(model, str):
        from vitres.models.resolve import resolve_model as load_model

        return load_model(model), model
    return model, "<in-memory>"


# long: the public entry point; most of it is the documentation of its seventeen arguments
def analyse_resolutions(
    model: nn.Module | str,
    resolutions: Sequence[int | Sequence[int]],
    id_data: str = "fashion-mnist",
    ood_data: str | None = "digits",
    *,
    methods: str | Sequence[str] | None = None,
    train_limit: int | None = 10_000,
    limit: int | None = None,
    ood_limit: int | None = None,
    separability: bool = True,
    k: int = 10,
    silhouette_sample: int | None = None,
    principal_dim: int | None = None,
    batch_size: int = 256,
    patch_size: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> ResolutionAnalysis:
    """Measures accuracy, OOD detection and class separability at each resolution.

    Args:
        model: a classifier with a linear head, or a checkpoint path / bundled name.
        resolutions: ints (squares) or ``(height, width)`` pairs.
        id_data: in-distribution dataset name or folder (its ``train`` and ``test`` splits).
        ood_data: ``digits``, a dataset name or an image folder; ``None`` for no OOD scores.
        methods: OOD scores among ``msp, maxlogit, energy, mahalanobis, vim`` (all when
            ``None``).
        train_limit: training images the Mahalanobis and ViM fits use (the first ones).
        limit: in-distribution test images (the first ones; all when ``None``).
        ood_limit: OOD images (all when ``None``).
        separability: measure class overlap and silhouette on the test features.
        k: neighbours of the class-overlap measure.
        silhouette_sample: score the silhouette on a seeded subset of this many points.
        principal_dim: ViM's principal-subspace dimension (half the feature size if None).
        batch_size: images per forward pass.
        patch_size: patch side for every call (the model's own when ``None``).
        data_dir: folder of the Fashion-MNIST files.
        progress: show progress bars.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``); the model is moved
            there (features are analysed on the CPU).

    Raises:
        ValueError: bad arguments, a model without a linear head, or data with no images.
    """
    target = check_device(device)
    net, name = _model(model)
    net.to(target)
    head = linear_head(net)
    method_names = parse_methods(methods) if ood_data is not None else ()
    sizes = [to_size(r if isinstance(r, int) else tuple(r)) for r in resolutions]
    if not sizes:
        raise ValueError("analyse_resolutions needs at least one resolution")
    test_set, train_set, ood = _open_data(id_data, ood_data, data_dir, net, method_names)
    run = _SizeAnalysis(
        net=net,
        head=head,
        methods=method_names,
        test_set=test_set,
        train_set=train_set,
        ood=ood,
        common={"batch_size": batch_size, "patch_size": patch_size, "progress": progress},
        limits=(limit, train_limit, ood_limit),
        separability=separability,
        k=k,
        silhouette_sample=silhouette_sample,
        principal_dim=principal_dim,
    )
    bar = progress_bar(sizes, desc="resolutions", unit="res", disable=not progress)
    results = [run.at(size) for size in bar]
    return ResolutionAnalysis(
        model=name,
        id_data=str(getattr(test_set, "name", id_data)),
        ood_data=run.ood.name if run.ood is not None else None,
        ood_conversion=run.ood.conversion if run.ood is not None else None,
        methods=method_names,
        n_train=run.n_train,
        n_id=run.n_id,
        n_ood=run.n_ood,
        k=k,
        results=results,
        classes=tuple(getattr(test_set, "classes", ())),
        test_features=run.test_features,
    )


def _open_data(
    id_data: str,
    ood_data: str | None,
    data_dir: str | None,
    net: nn.Module,
    methods: tuple[str, ...],
) -> tuple[Any, Any, Any]:
    """The test split, the train split (only for feature-space OOD scores) and the OOD data."""
    in_chans = net.config.in_chans
    test_set = get_dataset(id_data, "test", data_dir=data_dir, in_chans=in_chans)
    train_set = None
    if any(m in FEATURE_METHODS for m in methods):
        train_set = get_dataset(id_data, "train", data_dir=data_dir, in_chans=in_chans)
    ood = open_ood_data(ood_data, in_chans, data_dir) if ood_data is not None else None
    return test_set, train_set, ood


@dataclass
class _SizeAnalysis:
    """What :func:`analyse_resolutions` measures at every size, and what it has counted.

    ``limits`` is ``(test, train, OOD)`` images; ``common`` the feature-extraction options.
    """

    net: nn.Module
    head: Any
    methods: tuple[str, ...]
    test_set: Any
    train_set: Any
    ood: Any
    common: dict[str, Any]
    limits: tuple[int | None, int | None, int | None]
    separability: bool
    k: int
    silhouette_sample: int | None
    principal_dim: int | None
    test_features: dict[str, FeatureSet] = field(default_factory=dict)
    n_train: int = 0
    n_ood: int = 0
    n_id: int = 0

    def features(self, dataset: Any, size: tuple[int, int], limit: int | None, what: str) -> Any:
        """The features of ``dataset`` at ``size``."""
        description = f"{resolution_label(size)} px {what}"
        return extract_features(
            self.net, dataset, size, limit=limit, description=description, **self.common
        )

    def at(self, size: tuple[int, int]) -> ResolutionResult:
        """Accuracy, OOD detection and separability at ``size``."""
        test = self.features(self.test_set, size, self.limits[0], "test")
        self.test_features[resolution_label(size)] = test
        self.n_id = len(test)
        ood_metrics = self.ood_metrics(size, test) if self.ood is not None else {}
        overlap = disagreement = silhouette_value = None
        if self.separability:
            measured = class_overlap(test.features, test.labels, k=self.k)
            overlap, disagreement = measured.overlap, measured.disagreement
            silhouette_value = silhouette(
                test.features, test.labels, sample_size=self.silhouette_sample
            )
        return ResolutionResult(
            resolution=size,
            accuracy=test.accuracy,
            ood=ood_metrics,
            overlap=overlap,
            disagreement=disagreement,
            silhouette=silhouette_value,
        )

    def ood_metrics(self, size: tuple[int, int], test: Any) -> dict[str, DetectionMetrics]:
        """Each OOD score's detection metrics at ``size`` (the feature-space scores fitted
        on the training features at that size)."""
        train = None
        if self.train_set is not None:
            train = self.features(self.train_set, size, self.limits[1], "train")
            self.n_train = len(train)
        outliers = self.features(self.ood.dataset, size, self.limits[2], "OOD")
        self.n_ood = len(outliers)
        detectors = OODDetectors.fit(self.methods, train, self.head, self.principal_dim)
        id_scores = detectors.scores(test)
        ood_scores = detectors.scores(outliers)
        return {
            method: detection_metrics(id_scores[method], ood_scores[method])
            for method in self.methods
        }


def ood_auroc_for_config(
    model: nn.Module | str,
    resolution: int | Sequence[int],
    id_data: str = "fashion-mnist",
    ood_data: str = "digits",
    *,
    methods: str | Sequence[str] | None = None,
    train_limit: int | None = 10_000,
    limit: int | None = None,
    ood_limit: int | None = None,
    batch_size: int = 256,
    patch_size: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> float:
    """The best OOD AUROC over ``methods`` for one model at one resolution (and patch size).

    The number a sweep record can carry (and ``recommend --min-ood-auroc`` can constrain);
    :func:`analyse_resolutions` gives every method and the FPR as well. Arguments are
    those of :func:`analyse_resolutions`.
    """
    analysis = analyse_resolutions(
        model,
        [resolution],
        id_data,
        ood_data,
        methods=methods,
        train_limit=train_limit,
        limit=limit,
        ood_limit=ood_limit,
        separability=False,
        batch_size=batch_size,
        patch_size=patch_size,
        data_dir=data_dir,
        progress=progress,
    )
    best = analysis.results[0].best_method()
    assert best is not None
    return best[1].auroc


def result_cells(result: ResolutionResult, methods: Sequence[str]) -> list[str]:
    """One resolution's cells, as :func:`analysis_table` and the report show them.

    ``[resolution, accuracy, AUROC (FPR95) per method, overlap, disagreement, silhouette]``;
    ``–`` where a value was not measured.
    """

    def number(value: float | None, form: str, unit: str = "") -> str:
        return "–" if value is None else format(value, form) + unit

    cells = [f"{result.label} px", f"{result.accuracy * 100:.1f} %"]
    for method in methods:
        metrics = result.ood.get(method)
        cells.append(
            "–" if metrics is None else f"{metrics.auroc:.3f} ({metrics.fpr95 * 100:.0f} %)"
        )
    return cells + [
        number(None if result.overlap is None else result.overlap * 100, ".1f", " %"),
        number(result.disagreement, ".3f"),
        number(result.silhouette, ".3f"),
    ]


def analysis_table(analyses: dict[str, ResolutionAnalysis]) -> str:
    """A Markdown table: one row per model and resolution, AUROC (FPR95) per method.

    Args:
        analyses: a name for each model -> its analysis (all with the same methods).
    """
    if not analyses:
        raise ValueError("analysis_table needs at least one analysis")
    methods = next(iter(analyses.values())).methods
    header = ["model", "res", "accuracy", *methods, "overlap", "disagreement", "silhouette"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * 2 + " ---: |" * (len(header) - 2)]
    for name, analysis in analyses.items():
        for result in analysis.results:
            cells = result_cells(result, methods)
            best = result.best_method()
            if best is not None and best[0] in methods:
                index = 2 + list(methods).index(best[0])
                cells[index] = f"**{cells[index]}**"
            lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
