"""Whether an analysis had enough images to be read: one plain sentence per problem.

:func:`sample_warnings` looks at a :class:`~vitres.explain.analysis.ResolutionAnalysis`
(any object with its ``n_train``, ``n_id``, ``n_ood``, ``methods`` and ``results``):

* AUROC whose 95 % interval (:func:`vitres.explain.metrics.auroc_interval`) is wider than
  ``± 0.05``, or that rests on fewer than :data:`MIN_IMAGES` in-distribution images,
  cannot rank resolutions or methods; the warning names the widest interval, whether it
  holds 0.5 (chance), and how many images per set would pin AUROC to ``± 0.05``;
* Mahalanobis and ViM fitted on fewer than :data:`MIN_IMAGES` training images measure
  the fit, not the model.
"""

from __future__ import annotations

from typing import Any

from vitres.explain.metrics import AUROC_HALF_WIDTH, auroc_images_needed, auroc_interval
from vitres.explain.ood import FEATURE_METHODS

__all__ = ["MIN_IMAGES", "sample_warnings"]

#: Fewer in-distribution (or training) images than this are too few to read AUROC from.
MIN_IMAGES = 200


def _interval(metrics: Any, analysis: Any) -> tuple[float, float] | None:
    """A cell's AUROC interval, from its own set sizes or else the analysis's."""
    if metrics.auroc_ci95 is not None:
        return metrics.auroc_ci95
    if analysis.n_id > 0 and analysis.n_ood > 0:
        return auroc_interval(metrics.auroc, analysis.n_id, analysis.n_ood)
    return None


def _auroc_warning(analysis: Any) -> str | None:
    cells = [
        (r.label, m, metrics, _interval(metrics, analysis))
        for r in analysis.results
        for m, metrics in r.ood.items()
    ]
    if not cells:
        return None

    def half(cell: tuple) -> float:
        return 1.0 if cell[3] is None else (cell[3][1] - cell[3][0]) / 2

    label, method, widest, interval = max(cells, key=half)
    if analysis.n_id >= MIN_IMAGES and half((label, method, widest, interval)) <= AUROC_HALF_WIDTH:
        return None
    needed = max([MIN_IMAGES] + [auroc_images_needed(c[2].auroc) for c in cells])
    shown = "" if interval is None else f", 95 % interval {interval[0]:.2f}–{interval[1]:.2f}"
    chance = (
        ", which holds 0.5 (chance)"
        if interval is not None and interval[0] <= 0.5 <= interval[1]
        else ""
    )
    return (
        f"AUROC from {analysis.n_id} in-distribution and {analysis.n_ood} OOD images is too "
        f"noisy to compare resolutions or methods ({method} at {label} px: "
        f"{widest.auroc:.3f}{shown}{chance}); about {needed} images per set (--limit, "
        f"--ood-limit) would pin AUROC to ±{AUROC_HALF_WIDTH:.2f}"
    )


def _fit_warning(analysis: Any) -> str | None:
    fitted = [m for m in analysis.methods if m in FEATURE_METHODS]
    if not fitted or analysis.n_train >= MIN_IMAGES:
        return None
    names = " and ".join(fitted)
    return (
        f"{names} {'was' if len(fitted) == 1 else 'were'} fitted on only {analysis.n_train} "
        f"training images (fewer than {MIN_IMAGES}): their AUROC measures the fit, not the "
        f"model; give --train-limit {max(10 * MIN_IMAGES, 1000)} or more"
    )


def sample_warnings(analysis: Any) -> list[str]:
    """The sentences saying which numbers of ``analysis`` the sample is too small for."""
    return [w for w in (_auroc_warning(analysis), _fit_warning(analysis)) if w is not None]
