"""Sampling noise of accuracy: Wilson intervals, the interval of ΔAcc, and the evaluation
size that would settle a verdict.

An accuracy measured on ``n`` images is a binomial proportion. Its 95 % Wilson score
interval (Wilson 1927) stays inside [0, 1] and keeps its coverage near 0 and 1 and at small
``n``, where the normal ("Wald") interval does not. The difference of two accuracies gets
Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two Wilson
intervals. Both accuracies of a sweep are taken on the same images, so the outcomes are
paired and positively correlated: the independent-samples interval is then conservative
(wider than the paired one), which errs towards "cannot tell", never towards a false
verdict. ΔAcc is relative, ``(base − tuned) / base``; its interval divides the interval of
``base − tuned`` by the measured ``base`` (the denominator's own noise is second order).
"""

from __future__ import annotations

import math

from vitres.stats import Z95, wilson_interval

__all__ = ["difference_interval", "limit_to_tell", "wilson_interval"]


def difference_interval(
    base: float, n_base: int, other: float, n_other: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``base − other`` (two proportions)."""
    l1, u1 = wilson_interval(base, n_base, z)
    l2, u2 = wilson_interval(other, n_other, z)
    diff = base - other
    low = diff - math.sqrt((base - l1) ** 2 + (u2 - other) ** 2)
    high = diff + math.sqrt((u1 - base) ** 2 + (other - l2) ** 2)
    return low, high


def limit_to_tell(low: float, high: float, estimate: float, threshold: float, n: int) -> int | None:
    """The evaluation size at which an interval ``[low, high]`` around ``estimate`` (taken
    on ``n`` images) would no longer straddle ``threshold``, if the estimate held.

    Interval widths shrink as ``1/√n``, so the side facing the threshold must shrink by
    ``distance / half-width``. Rounded up to a multiple of 500; ``None`` when the estimate
    sits on the threshold (no size would tell).
    """
    distance = abs(estimate - threshold)
    half = (estimate - low) if estimate > threshold else (high - estimate)
    if distance <= 1e-12 or half <= 0:
        return None
    needed = n * (half / distance) ** 2
    return int(math.ceil(needed / 500.0) * 500)
