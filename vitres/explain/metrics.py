"""Detection metrics for OOD scores: AUROC and the false-positive rate at 95 % TPR.

In-distribution examples are the positives and every score is "higher = more
in-distribution". AUROC is the Mann-Whitney statistic: the probability that a random
in-distribution example scores above a random OOD one, ties counting one half. FPR at
``tpr`` is the fraction of OOD examples accepted by the highest threshold that still
accepts at least ``tpr`` of the in-distribution examples (the usual "FPR95").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DetectionMetrics", "auroc", "average_ranks", "detection_metrics", "fpr_at_tpr"]


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


@dataclass(frozen=True)
class DetectionMetrics:
    """AUROC and FPR at 95 % TPR of one score."""

    auroc: float
    fpr95: float

    def to_dict(self) -> dict[str, float]:
        return {"auroc": self.auroc, "fpr95": self.fpr95}


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> DetectionMetrics:
    """:func:`auroc` and :func:`fpr_at_tpr` (95 %) together."""
    return DetectionMetrics(auroc(id_scores, ood_scores), fpr_at_tpr(id_scores, ood_scores))
