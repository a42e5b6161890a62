"""Latency and memory as functions of the token count, fitted on measurements.

A ViT's cost per block is linear in the token count ``N`` (qkv, projection, MLP) plus a
quadratic attention term (``4·N²·D`` FLOPs); on real hardware fixed overheads add a
constant, and small ``N`` often looks linear. So three forms are fitted -- ``c``,
``b·N + c`` and ``a·N² + b·N + c`` -- with non-negative coefficients (cost does not
fall as ``N`` grows), and the form is chosen by leave-one-out (LOO) error: each point
is predicted by the fit to the others, and the form with the smallest median absolute
percentage error wins, the simpler one when within 25 % of the best (the data must
earn the extra term). Fits are made per :class:`~vitres.tune.records.GroupKey` (every config field but
the resolution), minimising relative error (rows weighted by ``1/y``), since latencies span
orders of magnitude and the error is judged in percent.

This module fits and predicts; it runs no model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitres.measure.timing import LatencyStats
from vitres.tune.records import GroupKey, Measurement, SweepConfig, group_key, latest_by_key

FORMS: dict[str, tuple[int, ...]] = {
    # which of (a, b, c) of a·N² + b·N + c the form uses
    "constant": (2,),
    "linear": (1, 2),
    "quadratic": (0, 1, 2),
}
PARSIMONY = 0.25


@dataclass
class CostFit:
    """A fitted cost curve ``y = a·N² + b·N + c`` over patch tokens ``N``.

    Attributes:
        form: ``"constant"``, ``"linear"`` or ``"quadratic"``.
        a, b, c: Coefficients (unused ones are 0).
        loo_error_pct: Median absolute percentage error of leave-one-out predictions of
            the chosen form (``nan`` with too few points to leave one out).
        candidates: LOO error of every form tried.
        n_points: Points fitted.
        tokens_range: ``(min N, max N)`` of the data; predictions outside extrapolate.
    """

    form: str
    a: float
    b: float
    c: float
    loo_error_pct: float
    candidates: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    tokens_range: tuple[float, float] = (0.0, 0.0)

    def predict(self, tokens: float | Sequence[float] | np.ndarray) -> Any:
        """Predicted value at ``tokens`` (a number or an array)."""
        n = np.asarray(tokens, dtype=float)
        y = self.a * n * n + self.b * n + self.c
        return float(y) if y.ndim == 0 else y

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "loo_error_pct": self.loo_error_pct,
            "candidates": dict(self.candidates),
            "n_points": self.n_points,
            "tokens_range": list(self.tokens_range),
        }

    def describe(self, unit: str = "ms") -> str:
        terms = {"constant": f"{self.c:.4g}", "linear": f"{self.b:.4g}·N + {self.c:.4g}"}
        formula = terms.get(self.form, f"{self.a:.4g}·N² + {self.b:.4g}·N + {self.c:.4g}")
        loo = "n/a" if math.isnan(self.loo_error_pct) else f"{self.loo_error_pct:.1f} %"
        return f"{formula} {unit} ({self.form}, LOO error {loo}, {self.n_points} points)"


def _design(tokens: np.ndarray) -> np.ndarray:
    return np.stack([tokens * tokens, tokens, np.ones_like(tokens)], axis=1)


def nonnegative_lstsq(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a few columns: the best unconstrained
    solution over every subset of columns whose coefficients are all non-negative."""
    columns = matrix.shape[1]
    best, best_residual = np.zeros(columns), float(np.sum(target**2))
    for size in range(1, columns + 1):
        for subset in itertools.combinations(range(columns), size):
            sub = matrix[:, subset]
            coef, *_ = np.linalg.lstsq(sub, target, rcond=None)
            if np.any(coef < 0):
                continue
            residual = float(np.sum((sub @ coef - target) ** 2))
            if residual < best_residual - 1e-15 * max(1.0, best_residual):
                best, best_residual = np.zeros(columns), residual
                best[list(subset)] = coef
    return best


def _fit_form(tokens: np.ndarray, values: np.ndarray, form: str, relative: bool) -> np.ndarray:
    """``(a, b, c)`` of ``form`` fitted with non-negative coefficients."""
    used = FORMS[form]
    matrix = _design(tokens)[:, used]
    target = values.copy()
    if relative:
        weights = 1.0 / values
        matrix = matrix * weights[:, None]
        target = target * weights
    coef = np.zeros(3)
    coef[list(used)] = nonnegative_lstsq(matrix, target)
    return coef


def loo_error_pct(
    tokens: Sequence[float], values: Sequence[float], form: str, weighting: str = "relative"
) -> float:
    """Median absolute percentage error of leave-one-out predictions of ``form``.

    Each point is predicted by the form fitted to all other points; the error of that
    prediction is ``100 · |pred − y| / |y|`` (points with ``y = 0`` are not scored). ``nan``
    when fewer points remain than the form has coefficients.
    """
    n, v = np.asarray(tokens, float), np.asarray(values, float)
    if len(n) - 1 < len(FORMS[form]):
        return math.nan
    relative = weighting == "relative" and bool(np.all(v > 0))
    errors = []
    for i in range(len(n)):
        if v[i] == 0:
            continue  # a percentage of 0 is undefined; the point still takes part in fits
        keep = np.arange(len(n)) != i
        a, b, c = _fit_form(n[keep], v[keep], form, relative)
        errors.append(100.0 * abs(a * n[i] ** 2 + b * n[i] + c - v[i]) / abs(v[i]))
    return float(np.median(errors)) if errors else math.nan


def fit_cost(
    tokens: Sequence[float],
    values: Sequence[float],
    *,
    forms: Sequence[str] = ("constant", "linear", "quadratic"),
    weighting: str = "relative",
    parsimony: float = PARSIMONY,
) -> CostFit:
    """Fits ``values`` (latency ms, memory MiB...) against patch token counts.

    Args:
        tokens: Token count ``N`` of each point.
        values: Measured value of each point.
        forms: Candidate forms, simplest first.
        weighting: ``"relative"`` (minimise relative error; used when every value is
            positive) or ``"none"`` (ordinary least squares).
        parsimony: The simplest form whose LOO error is within ``(1 + parsimony)`` of the
            best is chosen.

    Raises:
        ValueError: no points, mismatched lengths, or an unknown form.
    """
    n, v = np.asarray(tokens, float), np.asarray(values, float)
    if len(n) == 0 or len(n) != len(v):
        raise ValueError(
            f"need the same number (> 0) of tokens and values, got {len(n)} and {len(v)}"
        )
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise ValueError(f"unknown forms {unknown}; expected some of {list(FORMS)}")
    relative = weighting == "relative" and bool(np.all(v > 0))
    candidates = {f: loo_error_pct(n, v, f, "relative" if relative else "none") for f in forms}
    scored = {f: e for f, e in candidates.items() if not math.isnan(e)}
    if scored:
        best = min(scored.values())
        chosen = next(
            f for f in forms if f in scored and scored[f] <= best * (1 + parsimony) + 1e-12
        )
    else:
        # too few points to leave one out: the richest form the points determine
        chosen = [f for f in forms if len(FORMS[f]) <= len(n)][-1] if len(n) > 1 else forms[0]
    a, b, c = _fit_form(n, v, chosen, relative)
    return CostFit(
        form=chosen,
        a=float(a),
        b=float(b),
        c=float(c),
        loo_error_pct=candidates.get(chosen, math.nan),
        candidates=candidates,
        n_points=len(n),
        tokens_range=(float(n.min()), float(n.max())),
    )


def _fit_groups(
    measurements: Iterable[Measurement], value: str, min_points: int
) -> dict[GroupKey, CostFit]:
    groups: dict[GroupKey, list[tuple[float, float]]] = {}
    for m in latest_by_key(list(measurements)):
        if not m.ok or m.tokens is None:
            continue
        y = m.latency_ms if value == "latency" else m.peak_mem_mb
        if y is None:
            continue
        groups.setdefault(group_key(m), []).append((float(m.tokens), float(y)))
    fits = {}
    for key, points in groups.items():
        if len(points) >= min_points:
            tokens, values = zip(*points)
            fits[key] = fit_cost(tokens, values)
    return fits


def fit_latency(
    measurements: Iterable[Measurement], min_points: int = 2
) -> dict[GroupKey, CostFit]:
    """Median latency (ms) vs tokens, one fit per :func:`group_key` with ``min_points``."""
    return _fit_groups(measurements, "latency", min_points)


def fit_memory(measurements: Iterable[Measurement], min_points: int = 2) -> dict[GroupKey, CostFit]:
    """Peak memory (MiB) vs tokens, one fit per :func:`group_key` with ``min_points``."""
    return _fit_groups(measurements, "memory", min_points)


def max_tokens_within(fit: CostFit, budget: float) -> float | None:
    """Largest ``N ≥ 0`` with ``fit.predict(N) ≤ budget`` (the fit is non-decreasing in
    ``N``); ``None`` if even ``N = 0`` exceeds it, ``inf`` if it never does."""
    if fit.c > budget:
        return None
    if fit.a > 0:
        return (-fit.b + math.sqrt(fit.b**2 + 4 * fit.a * (budget - fit.c))) / (2 * fit.a)
    if fit.b > 0:
        return (budget - fit.c) / fit.b
    return math.inf


def memory_ceiling(
    fit: CostFit, budget_mb: float, patch_size: int, max_side: int = 8192
) -> int | None:
    """Largest square side (pixels, a multiple of ``patch_size``) whose predicted peak
    memory fits ``budget_mb``; ``None`` if none does; at most ``max_side``."""
    tokens = max_tokens_within(fit, budget_mb)
    if tokens is None:
        return None
    side_tokens = (
        max_side // patch_size if math.isinf(tokens) else math.floor(math.sqrt(tokens) + 1e-9)
    )
    if side_tokens < 1:
        return None
    return min(side_tokens * patch_size, max_side)


def naive_max_side(mem_bytes: float, patch_size: int, embed_dim: int) -> float:
    """The seed's back-of-envelope ceiling ``side = p · sqrt(mem / (p² · D · 4))``.

    Taken literally, as the seed states it, for a ``D``-wide model in fp32 (4 bytes per
    value), the result read as a side length in pixels. Algebraically it is
    ``sqrt(mem / (4·D))``: the side of a square grid of fp32 ``D``-vectors that fill
    ``mem`` -- so it counts one activation tensor of tokens, and calls its side pixels
    although it is a token count (a factor ``p`` off). It ignores the weights, the
    ``mlp_ratio·D`` MLP hidden layer, the ``N²`` attention matrix, workspace and batch.
    The report sets it beside :func:`memory_ceiling` to show how far off it is.
    """
    return patch_size * math.sqrt(mem_bytes / (patch_size**2 * embed_dim * 4))


def predicted_measurement(
    config: SweepConfig,
    tokens: int,
    latency_fit: CostFit | None,
    memory_fit: CostFit | None = None,
    like: Measurement | None = None,
) -> Measurement:
    """A ``status="predicted"`` record for an unmeasured config: latency and memory from
    the fits (accuracy unknown); model facts copied from ``like`` (a measured record of
    the same model)."""
    latency = None
    throughput = None
    if latency_fit is not None:
        ms = float(latency_fit.predict(tokens))
        latency = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 0, False)
        throughput = config.batch_size / (ms / 1000.0) if ms > 0 else None
    return Measurement(
        config=config,
        status="predicted",
        source="predicted",
        latency=latency,
        throughput_ips=throughput,
        peak_mem_mb=None if memory_fit is None else float(memory_fit.predict(tokens)),
        mem_method="predicted" if memory_fit is not None else None,
        tokens=int(tokens),
        native_resolution=None if like is None else like.native_resolution,
        native_patch_size=None if like is None else like.native_patch_size,
        embed_dim=None if like is None else like.embed_dim,
        params=None if like is None else like.params,
        num_prefix_tokens=None if like is None else like.num_prefix_tokens,
    )


def latency_outliers(
    measurements: Iterable[Measurement], threshold: float = 1.5, min_points: int = 4
) -> dict[str, float]:
    """Records slower than their neighbours say they should be: ``{key: ratio}``.

    Per :class:`~vitres.tune.records.GroupKey` with at least ``min_points`` measured
    records, each record's latency is predicted by the cost model fitted to the others
    (leave one out); a record more than ``threshold`` times its prediction is returned
    with the ratio. Load makes timings slower, never faster, so only slow outliers count.
    """
    groups: dict[GroupKey, list[Measurement]] = {}
    for m in latest_by_key(list(measurements)):
        if m.ok and m.source == "measured" and m.tokens and m.latency_ms:
            groups.setdefault(group_key(m), []).append(m)
    out: dict[str, float] = {}
    for members in groups.values():
        if len(members) < min_points:
            continue
        for i, m in enumerate(members):
            others = members[:i] + members[i + 1 :]
            fit = fit_cost([o.tokens for o in others], [o.latency_ms for o in others])
            predicted = float(fit.predict(m.tokens))
            if predicted > 0 and m.latency_ms / predicted > threshold:
                out[m.key] = m.latency_ms / predicted
    return out
