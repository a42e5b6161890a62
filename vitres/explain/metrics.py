"""Detection metrics for OOD scores: AUROC and the false-positive rate at 95 % TPR.

In-distribution examples are the positives and every score is "higher = more
in-distribution". AUROC is the Mann-Whitney statistic: the probability that a random
in-distribution example scores above a random OOD one, ties counting one half. FPR at
``tpr`` is the fraction of OOD examples accepted by the highest threshold that still
accepts at least ``tpr`` of the in-distribution examples (the usual "FPR95").

Every AUROC carries its 95 % interval (:func:`auroc_interval`, Hanley & McNeil 1982), and
:func:`proportion_interval` (Wilson) gives one for a fraction such as the class overlap:
with a few dozen images the interval is wide enough to hold almost any answer, and
:func:`auroc_images_needed` / :func:`proportion_images_needed` say how many would do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AUROC_HALF_WIDTH",
    "Z95",
    "DetectionMetrics",
    "auroc",
    "auroc_images_needed",
    "auroc_interval",
    "average_ranks",
    "detection_metrics",
    "fpr_at_tpr",
    "proportion_images_needed",
    "proportion_interval",
]

#: The normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054
#: The half-width of AUROC's 95 % interval worth comparing resolutions or methods at.
AUROC_HALF_WIDTH = 0.05
_MAX_IMAGES = 10**7  # "more than this": no practical sample size tells


def _scores(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; need at least one score")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    group_rank = first + (counts + 1) / 2.0  # mean of ranks first+1 .. first+count
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(group_rank, counts)
    return ranks


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve with in-distribution as the positive class."""
    positives = _scores(id_scores, "id_scores")
    negatives = _scores(ood_scores, "ood_scores")
    ranks = average_ranks(np.concatenate([positives, negatives]))
    n_pos, n_neg = len(positives), len(negatives)
    u_statistic = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD scores ``>= t`` for the largest ``t`` accepting ``>= tpr`` of ID."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1]; got {tpr}")
    positives = np.sort(_scores(id_scores, "id_scores"))[::-1]
    negatives = _scores(ood_scores, "ood_scores")
    accepted = math.ceil(tpr * len(positives) - 1e-9)  # in-distribution examples to accept
    threshold = positives[max(accepted, 1) - 1]
    return float((negatives >= threshold).mean())


def auroc_interval(value: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % interval of an AUROC from ``n_pos`` positives and ``n_neg`` negatives.

    Hanley & McNeil's standard error, ``Q1 = A/(2-A)``, ``Q2 = 2A²/(1+A)``,
    ``SE² = (A(1-A) + (n_pos-1)(Q1-A²) + (n_neg-1)(Q2-A²)) / (n_pos·n_neg)``;
    ``A ± z·SE`` clipped to [0, 1].
    """
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need at least one score of each kind, got {n_pos} and {n_neg}")
    a = float(value)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    variance = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (
        n_pos * n_neg
    )
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def _smallest(fits) -> int:
    """The smallest n >= 1 with ``fits(n)`` (monotone), or ``_MAX_IMAGES + 1``."""
    high = 1
    while not fits(high):
        if high > _MAX_IMAGES:
            return _MAX_IMAGES + 1
        high *= 2
    low = high // 2  # fits(low) is false (or low is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def auroc_images_needed(value: float, half_width: float = AUROC_HALF_WIDTH) -> int:
    """Images per set (as many OOD as in-distribution) for AUROC ``value``'s 95 %
    interval to be at most ``± half_width`` (about 260 at 0.5, fewer near 0 or 1)."""

    def fits(n: int) -> bool:
        low, high = auroc_interval(value, n, n)
        return (high - low) / 2 <= half_width

    return _smallest(fits)


def proportion_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95 % interval of a fraction ``p`` observed on ``n`` items."""
    if n < 1:
        raise ValueError(f"need at least one item, got {n}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_images_needed(p: float, threshold: float) -> int:
    """Items for a fraction ``p`` to be told apart from ``threshold``: the smallest ``n``
    whose Wilson interval leaves ``threshold`` out (``> 10**7``: none practical)."""

    def fits(n: int) -> bool:
        low, high = proportion_interval(p, n)
        return low > threshold or high < threshold

    return _smallest(fits)


@dataclass(frozen=True)
class DetectionMetrics:
    """AUROC and FPR at 95 % TPR of one score, and the set sizes behind them.

    ``n_id`` and ``n_ood`` (``None`` when not known) give AUROC's 95 % interval,
    :attr:`auroc_ci95`.
    """

    auroc: float
    fpr95: float
    n_id: int | None = None
    n_ood: int | None = None

    @property
    def auroc_ci95(self) -> tuple[float, float] | None:
        """:func:`auroc_interval` of this AUROC (``None`` without the set sizes)."""
        if not self.n_id or not self.n_ood:
            return None
        return auroc_interval(self.auroc, self.n_id, self.n_ood)

    def to_dict(self) -> dict[str, Any]:
        interval = self.auroc_ci95
        return {
            "auroc": self.auroc,
            "fpr95": self.fpr95,
            "auroc_ci95": None if interval is None else list(interval),
        }


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> DetectionMetrics:
    """:func:`auroc` and :func:`fpr_at_tpr` (95 %) together, with the set sizes."""
    return DetectionMetrics(
        auroc(id_scores, ood_scores),
        fpr_at_tpr(id_scores, ood_scores),
        int(np.size(id_scores)),
        int(np.size(ood_scores)),
    )
