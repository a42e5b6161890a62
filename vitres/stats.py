"""Small statistics every layer uses, with no dependencies: the Wilson interval of an
accuracy (the analyses above it live in :mod:`vitres.tune.intervals`)."""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["Z95", "wilson_interval"]

Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``accuracy`` measured on ``n`` trials.

    Raises:
        ValueError: ``n`` < 1 or ``accuracy`` outside [0, 1].

    Example:
        >>> low, high = wilson_interval(0.9, 100)
        >>> round(low, 4), round(high, 4)
        (0.8256, 0.9448)
    """
    if n < 1:
        raise ValueError(f"an interval needs at least one evaluated image, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
