"""How well the classes separate in a model's feature space, and the seed's advice rule.

Definitions (features are the classifier head's input, see
:mod:`vitres.explain.features`; each dimension is standardised to zero mean and unit
variance over the evaluated set first):

* **class overlap**: the fraction of points whose ``k`` nearest neighbours (``k = 10``,
  Euclidean, the point itself excluded) are mostly, i.e. more than ``k / 2`` of them, of
  another class than the point's own. Well-separated clusters give 0; ``C`` classes drawn
  from one distribution give about ``P(Binomial(k, 1 - 1/C) > k/2)`` (0.38 for two
  classes, 0.998 for ten).
* **neighbour disagreement**: the mean fraction of a point's ``k`` neighbours that are of
  another class (0 when separated, about ``1 - 1/C`` when identical).
* **silhouette**: the mean silhouette coefficient (Rousseeuw, "Silhouettes: a graphical
  aid to the interpretation and validation of cluster analysis", J. Comput. Appl. Math.
  1987) of the labels as clusters, Euclidean: 1 for tight, far-apart classes, about 0
  for overlapping ones.

t-SNE (van der Maaten and Hinton, JMLR 2008) gives the 2-D picture of the same features.

The seed "ViT模型分辨率调优实战", step 1: *if class clusters overlap by more than 30 % at
high resolution, lower the resolution*; :func:`resolution_advice` states it for measured
overlaps (docs/explain.md says whether it holds for the bundled models). Given the
number of test images, it advises lowering only when the overlap's 95 % interval clears
the threshold, and otherwise says the sample is too small and how many images would do.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitres.explain.metrics import Z95, proportion_images_needed, proportion_interval

__all__ = [
    "OVERLAP_RULE_THRESHOLD",
    "ClassOverlap",
    "class_overlap",
    "resolution_advice",
    "silhouette",
    "standardise",
    "tsne_embedding",
]

#: The seed's threshold: more overlap than this at high resolution -> lower the resolution.
OVERLAP_RULE_THRESHOLD = 0.30


def _sklearn(module: str, name: str) -> Any:
    """``name`` from scikit-learn's ``module``, imported on first use (the ``explain`` extra)."""
    try:
        return getattr(importlib.import_module(f"sklearn.{module}"), name)
    except ImportError:
        raise ImportError(
            "feature-space separability needs scikit-learn: pip install 'vitres[explain]'"
        ) from None


def _checked(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (N >= 2, D); got shape {features.shape}")
    if labels.shape != (len(features),):
        raise ValueError(
            f"expected one label per feature row: {len(features)} rows, labels {labels.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or Inf")
    return features, labels


def standardise(features: np.ndarray) -> np.ndarray:
    """Each column to zero mean and unit variance (constant columns become 0)."""
    features = np.asarray(features, dtype=np.float64)
    std = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)


@dataclass(frozen=True)
class ClassOverlap:
    """Neighbourhood overlap of labelled clusters (see the module docstring).

    Attributes:
        overlap: fraction of points with more than ``k / 2`` other-class neighbours.
        disagreement: mean fraction of other-class neighbours.
        k: neighbours per point.
    """

    overlap: float
    disagreement: float
    k: int


def class_overlap(
    features: np.ndarray, labels: np.ndarray, k: int = 10, standardised: bool = True
) -> ClassOverlap:
    """Class overlap and neighbour disagreement of ``features`` labelled ``labels``.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` class of each row.
        k: neighbours per point, ``1 <= k < N``.
        standardised: standardise the columns first (the definition above).
    """
    features, labels = _checked(features, labels)
    count = len(features)
    if not 1 <= k < count:
        raise ValueError(f"k must be between 1 and N - 1 = {count - 1}; got {k}")
    points = standardise(features) if standardised else features
    index = _sklearn("neighbors", "NearestNeighbors")(n_neighbors=k + 1).fit(points)
    neighbours = index.kneighbors(points, return_distance=False)  # (N, k + 1)
    # drop the point itself; if duplicates pushed it out of the list, drop the farthest
    is_self = neighbours == np.arange(count)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    first_self = is_self & (np.cumsum(is_self, axis=1) == 1)
    neighbours = neighbours[~first_self].reshape(count, k)
    other = (labels[neighbours] != labels[:, None]).sum(axis=1)  # (N,)
    return ClassOverlap(
        overlap=float((other > k / 2).mean()),
        disagreement=float(other.mean() / k),
        k=k,
    )


def silhouette(
    features: np.ndarray,
    labels: np.ndarray,
    sample_size: int | None = None,
    seed: int = 0,
    standardised: bool = True,
) -> float:
    """Mean silhouette coefficient of the classes (Euclidean, columns standardised).

    Args:
        features: ``(N, D)``.
        labels: ``(N,)``, at least two classes.
        sample_size: score a random subset of this many points (all when ``None``).
        seed: seed of the subset.
        standardised: standardise the columns first.
    """
    features, labels = _checked(features, labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("silhouette needs at least two classes")
    points = standardise(features) if standardised else features
    score = _sklearn("metrics", "silhouette_score")
    if sample_size is not None and sample_size < len(points):
        return float(score(points, labels, sample_size=sample_size, random_state=seed))
    return float(score(points, labels))


def tsne_embedding(
    features: np.ndarray,
    labels: np.ndarray,
    max_points: int = 2000,
    perplexity: float = 30.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D t-SNE embedding of (a seeded random subset of) standardised features.

    Returns:
        ``(points (n, 2), labels (n,))`` with ``n = min(N, max_points)``.
    """
    features, labels = _checked(features, labels)
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, False))
        features, labels = features[keep], labels[keep]
    perplexity = min(perplexity, (len(features) - 1) / 3)
    embedding = _sklearn("manifold", "TSNE")(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(standardise(features))
    return embedding, labels


def _pixels(label: str) -> int:
    height, _, width = str(label).partition("x")
    return int(height) * int(width or height)


def _differs(p: float, q: float, n: int | None) -> bool:
    """``p`` and ``q`` (fractions of the same ``n`` images) differ beyond the 95 % noise of
    two independent proportions (always, when ``n`` is not known)."""
    if n is None:
        return True
    return abs(p - q) > Z95 * np.sqrt((p * (1 - p) + q * (1 - q)) / n)


def _too_few(top: str, p: float, threshold: float, n: int) -> str:
    low, high = proportion_interval(p, n)
    needed = proportion_images_needed(p, threshold)
    need = f"about {needed} test images" if needed <= 10**7 else "far more test images"
    return (
        f"overlap {p * 100:.0f} % at {top} px, but its 95 % interval from {n} test images "
        f"({low * 100:.0f}–{high * 100:.0f} %) reaches {threshold * 100:.0f} % → too few "
        f"images to tell whether to lower the resolution; {need} would tell"
    )


def resolution_advice(
    overlaps: Mapping[str | int, float],
    threshold: float = OVERLAP_RULE_THRESHOLD,
    n: int | None = None,
) -> str:
    """The seed's rule as one sentence, for overlaps measured per resolution.

    The rule looks at the highest resolution (most pixels): if its class overlap exceeds
    ``threshold``, it advises lowering the resolution and names the lower resolution with
    the least overlap, if any. Below the threshold it says so, and names a lower
    resolution that overlaps at least 5 points less (the threshold is the seed's; on the
    bundled models overlap below 30 % can still cost accuracy, see docs/explain.md).

    With ``n``, the number of test images the overlaps were measured on, advice is given
    only outside the noise: the overlap's Wilson 95 % interval must clear the threshold
    (else the sentence says the sample is too small and how many images would tell), and
    a lower resolution is named only when it differs beyond the noise.

    Args:
        overlaps: resolution label (``28``, ``"28"`` or ``"40x24"``) -> overlap in [0, 1].
        threshold: the seed's 30 %.
        n: test images per resolution (``None``: the overlaps are taken as exact).

    Example:
        >>> resolution_advice({28: 0.12, 56: 0.34})
        'overlap 34 % at 56 px > 30 % → consider lowering the resolution (28 px: 12 %)'
    """
    if not overlaps:
        raise ValueError("resolution_advice needs the overlap of at least one resolution")
    labels = sorted((str(k) for k in overlaps), key=_pixels)
    values = {str(k): float(v) for k, v in overlaps.items()}
    top = labels[-1]
    percent = f"{values[top] * 100:.0f} %"
    limit = f"{threshold * 100:.0f} %"
    lower = [label for label in labels[:-1] if values[label] < values[top]]
    lower = [label for label in lower if _differs(values[top], values[label], n)]
    best = min(lower, key=lambda label: values[label]) if lower else None
    if values[top] <= threshold:
        sentence = f"overlap {percent} at {top} px ≤ {limit} → no reason to lower the resolution"
        if best is not None and values[top] - values[best] >= 0.05:
            sentence += f", though {best} px overlaps less ({values[best] * 100:.0f} %)"
        return sentence
    if n is not None and proportion_interval(values[top], n)[0] <= threshold:
        return _too_few(top, values[top], threshold, n)
    sentence = f"overlap {percent} at {top} px > {limit} → consider lowering the resolution"
    if best is not None:
        sentence += f" ({best} px: {values[best] * 100:.0f} %)"
    return sentence
