"""The one decision: which config to deploy, under a budget, by the acceptance rule.

:func:`recommend` is the only place a choice is made; ``vitres demo``, ``recommend``,
``report`` (and the run-time and serving commands) call it, so the same results file
and flags give the same answer everywhere.

A config is *feasible* when it meets every limit of the :class:`~vitres.tune.budget.Budget`
(latency, throughput, memory, input size). Records with a token budget
(mixed-resolution tokens) are candidates like any other; the baseline never has one.
When the baseline (by default the model's
native resolution, fp32 eager, at the smallest batch) is measured, a config is
*eligible* when it is feasible and the acceptance rule (:mod:`vitres.tune.rule`) accepts
it; the recommendation is the most accurate eligible config, ties broken by speed. So
with no limits at all the answer is "the most accurate config that passes the rule". If
nothing passes, there is no recommendation: :attr:`Recommendation.message` names the
closest config and by how much it misses. Without a measured baseline the rule cannot be
applied: the most accurate feasible config is returned, marked as not judged.

The recommendation also carries the evidence the report draws: the Pareto front over
accuracy ↑, latency ↓, memory ↓, the cost-model fits and the memory ceilings. This module
decides; it measures nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from vitres.tune.budget import Budget
from vitres.tune.costmodel import CostFit, fit_latency, fit_memory, memory_ceiling, naive_max_side
from vitres.tune.hostkind import describe_host, records_for_host, split_by_host
from vitres.tune.modelkind import check_one_model, records_for_model
from vitres.tune.recommendation import (
    MemoryCeiling,
    Recommendation,
    describe_config,
    format_recommendation,
    resolution_label,
)
from vitres.tune.records import GroupKey, Measurement, group_key, latest_by_key
from vitres.tune.rule import Judgement, judge, per_image_ms

__all__ = [
    "Budget",
    "MemoryCeiling",
    "Recommendation",
    "describe_config",
    "format_recommendation",
    "pareto_front",
    "rank_key",
    "recommend",
    "recommend_per_host",
    "select_baseline",
]


def _dominates(p: Measurement, q: Measurement) -> bool:
    """``p`` is at least as good as ``q`` in accuracy ↑, latency ↓, memory ↓ and better
    in one. Unknown accuracy counts as worst; unknown memory is not compared."""
    acc_p = -math.inf if p.accuracy is None else p.accuracy
    acc_q = -math.inf if q.accuracy is None else q.accuracy
    pairs = [(acc_p, acc_q), (-(p.latency_ms or math.inf), -(q.latency_ms or math.inf))]
    if p.peak_mem_mb is not None and q.peak_mem_mb is not None:
        pairs.append((-p.peak_mem_mb, -q.peak_mem_mb))
    return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)


def pareto_front(measurements: Iterable[Measurement]) -> list[Measurement]:
    """The ``ok`` records no other ``ok`` record dominates (accuracy ↑, latency ↓, memory ↓),
    sorted by latency."""
    ok = [m for m in latest_by_key(list(measurements)) if m.ok and m.latency_ms is not None]
    front = [m for m in ok if not any(_dominates(o, m) for o in ok if o is not m)]
    return sorted(front, key=lambda m: m.latency_ms)


def select_baseline(
    measurements: Sequence[Measurement], baseline: str | Measurement | None = None
) -> Measurement | None:
    """The baseline record.

    Args:
        measurements: Candidate records.
        baseline: A config key or a record; ``None`` = the model's native resolution
            (and native patch, no token merging), fp32 ``eager``, batch 1. Without batch 1 the smallest
            batch measured is used.

    Raises:
        ValueError: ``baseline`` is a key that no ``ok`` record has.
    """
    ok = [m for m in latest_by_key(list(measurements)) if m.ok]
    if isinstance(baseline, Measurement):
        return baseline
    if isinstance(baseline, str):
        for m in ok:
            if m.key == baseline:
                return m
        known = ", ".join(m.key for m in ok[:5])
        raise ValueError(f"no ok record has the baseline key {baseline!r}; keys look like: {known}")

    def native(m: Measurement) -> bool:
        patch_native = m.config.patch_size is None or m.config.patch_size == m.native_patch_size
        return (
            m.config.token_budget is None
            and m.native_resolution is not None
            and tuple(m.config.resolution) == tuple(m.native_resolution)
            and patch_native
            and m.config.merge is None
        )

    candidates = [
        m for m in ok if native(m) and m.config.backend == "eager" and m.config.precision == "fp32"
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda m: (m.config.batch_size, m.config.threads or 0))


def rank_key(m: Measurement) -> tuple:
    """Sort key of the choice: known accuracy first, then most accurate, then fastest per
    image. Without accuracy (a latency-only sweep) the most tokens wins: the largest
    resolution allowed, the usual proxy for accuracy below the training resolution."""
    known = m.accuracy is not None
    return (
        known,
        m.accuracy if known else 0.0,
        0 if known else (m.tokens or 0),
        -(per_image_ms(m) or math.inf),
    )


def _infeasible_message(ok: list[Measurement], budget: Budget) -> tuple[str, Measurement | None]:
    if not ok:
        return "no successful measurements to choose from", None
    limits = budget.limits()
    singles = []
    if budget.max_latency_ms is not None:
        fastest = min(ok, key=lambda m: m.latency_ms if m.latency_ms is not None else math.inf)
        if fastest.latency_ms is None or fastest.latency_ms > budget.max_latency_ms:
            singles.append(
                (
                    f"no config meets {budget.max_latency_ms:g} ms; the fastest is "
                    f"{resolution_label(fastest)} {fastest.config.precision} at {fastest.latency_ms:.3g} ms",
                    fastest,
                )
            )
    if budget.min_fps is not None:
        quickest = max(ok, key=lambda m: m.throughput_ips or 0.0)
        if (quickest.throughput_ips or 0.0) < budget.min_fps:
            singles.append(
                (
                    f"no config reaches {budget.min_fps:g} img/s; the highest throughput is "
                    f"{resolution_label(quickest)} {quickest.config.precision} at "
                    f"{quickest.throughput_ips or 0.0:.3g} img/s",
                    quickest,
                )
            )
    if budget.max_memory_mb is not None:
        with_mem = [m for m in ok if m.peak_mem_mb is not None]
        smallest = min(with_mem, key=lambda m: m.peak_mem_mb) if with_mem else None
        if smallest is None:
            singles.append(
                ("no config has a memory measurement to check against the memory limit", None)
            )
        elif smallest.peak_mem_mb > budget.max_memory_mb:
            singles.append(
                (
                    f"no config fits {budget.max_memory_mb:g} MiB; the smallest is "
                    f"{resolution_label(smallest)} {smallest.config.precision} at {smallest.peak_mem_mb:.3g} MiB",
                    smallest,
                )
            )
    if budget.min_ood_auroc is not None:
        scored = [m for m in ok if m.ood_auroc is not None]
        best = max(scored, key=lambda m: m.ood_auroc) if scored else None
        if best is None:
            singles.append(("no config has an OOD AUROC (sweep with --ood DATA)", None))
        elif best.ood_auroc < budget.min_ood_auroc:
            singles.append(
                (
                    f"no config reaches OOD AUROC {budget.min_ood_auroc:g}; the best is "
                    f"{resolution_label(best)} at {best.ood_auroc:.3f}",
                    best,
                )
            )
    if singles:
        return "; ".join(text for text, _ in singles), singles[0][1]

    def excess(m: Measurement) -> float:
        worst = 0.0
        if budget.max_latency_ms is not None and m.latency_ms is not None:
            worst = max(worst, m.latency_ms / budget.max_latency_ms - 1)
        if budget.min_fps is not None and m.throughput_ips:
            worst = max(worst, budget.min_fps / m.throughput_ips - 1)
        if budget.max_memory_mb is not None and m.peak_mem_mb is not None:
            worst = max(worst, m.peak_mem_mb / budget.max_memory_mb - 1)
        return worst

    closest = min(ok, key=excess)
    return (
        f"no config meets all of {', '.join(limits)} at once; the closest is {describe_config(closest)} "
        f"(misses by {100 * excess(closest):.0f} %: {', '.join(budget.violations(closest))})",
        closest,
    )


def _closest_to_passing(
    feasible: list[Measurement], judged: dict[str, Judgement], budget: Budget
) -> tuple[Measurement, str]:
    """The feasible record that misses the rule by the least, and by how much."""

    def miss(m: Measurement) -> tuple[float, tuple]:
        j = judged[m.key]
        return (
            max(j.acc_excess(budget), j.speed_shortfall(budget)),
            tuple(-v for v in rank_key(m)[:2]),
        )

    best = min(feasible, key=miss)
    j = judged[best.key]
    parts = []
    if j.speed_ok is False:
        parts.append(f"ΔSpeed misses by {j.speed_shortfall(budget):.1f} %")
    if j.acc_ok is False:
        unit = "%" if budget.acc_form == "relative" else "points"
        parts.append(f"ΔAcc misses by {j.acc_excess(budget):.2f} {unit}")
    return best, f"{'; '.join(parts) or 'not judged'}: {j.text}"


def _ceilings(
    ok: Sequence[Measurement], memory_fits: dict[GroupKey, CostFit], budget: Budget
) -> list[MemoryCeiling]:
    if budget.max_memory_mb is None:
        return []
    out = []
    for key, fit in memory_fits.items():
        like = next((m for m in ok if group_key(m) == key and m.patch_size), None)
        if like is None:
            continue
        patch = int(like.patch_size)
        naive = (
            naive_max_side(budget.max_memory_mb * 2**20, patch, like.embed_dim)
            if like.embed_dim
            else None
        )
        out.append(
            MemoryCeiling(key, patch, memory_ceiling(fit, budget.max_memory_mb, patch), naive)
        )
    return out


def recommend(
    measurements: Iterable[Measurement],
    budget: Budget | None = None,
    baseline: str | Measurement | None = None,
    host: str | None = None,
    model: str | None = None,
) -> Recommendation:
    """The most accurate feasible config that the acceptance rule accepts (ties: fastest).

    No accuracy, no acceptance: when the sweep measured no accuracy for the baseline or
    for any other feasible config, nothing is "accepted"; the answer is the fastest
    config within the limits, with status ``"no-accuracy"``, and says so.

    Args:
        measurements: Sweep records; for a key recorded several times the last ``ok``
            record counts; ``error`` and ``predicted`` records are never chosen.
        budget: Limits and the rule; default: no limits, the seed's rule.
        baseline: Config key or record; default: see :func:`select_baseline`.
        host: The machine kind (:func:`vitres.tune.hostkind.host_fingerprint`, or a
            unique prefix) whose records to use. Records of several kinds are never mixed:
            without ``host`` they must all be of one kind (see :func:`recommend_per_host`).
        model: The model whose records to use (a reference as given to the sweep, or a
            weights digest prefix, :mod:`vitres.tune.modelkind`). Records of several models
            are never ranked against each other: without ``model`` they must be of one.

    Raises:
        ValueError: the records come from several machine kinds and no ``host`` is given,
            or from several models and no ``model`` is given.

    Returns:
        The :class:`Recommendation`; its ``choice`` is ``None`` when nothing is feasible
        or nothing passes the rule (``message`` then says what is closest).
    """
    budget = budget or Budget()
    records = _one_host(list(measurements), host)
    if model is not None:
        records = records_for_model(records, model)
    else:
        check_one_model(records)
    records = latest_by_key(records)
    ok = [m for m in records if m.ok]
    base = select_baseline(ok, baseline)
    lat_fits, mem_fits = fit_latency(ok), fit_memory(ok)
    common = {
        "records": records,
        "front": pareto_front(ok),
        "latency_fits": lat_fits,
        "memory_fits": mem_fits,
        "ceilings": _ceilings(ok, mem_fits, budget),
    }
    feasible = [m for m in ok if budget.feasible(m)]
    if not feasible:
        message, closest = _infeasible_message(ok, budget)
        status = "infeasible" if ok else "empty"
        return Recommendation(budget, None, base, None, status, message, closest, **common)
    if base is None:
        return _unjudged(feasible, budget, common)
    judged = {m.key: judge(m, base, budget) for m in feasible}
    if not budget.apply_rule:
        choice = max(feasible, key=rank_key)
        return Recommendation(
            budget,
            choice,
            base,
            judged[choice.key],
            "limits-only",
            feasible=feasible,
            eligible=feasible,
            **common,
        )
    return _apply_rule(feasible, base, judged, budget, common)


def _one_host(measurements: list[Measurement], host: str | None) -> list[Measurement]:
    """The records of machine kind ``host``; without it, all records, which must then
    come from one machine kind.

    Raises:
        ValueError: the records come from several machine kinds and no ``host`` is given.
    """
    if host is not None:
        return records_for_host(measurements, host)
    kinds = split_by_host(m for m in measurements if m.ok)
    if len(kinds) > 1:
        listing = "; ".join(f"{k} ({describe_host(g[0].env)})" for k, g in kinds.items())
        raise ValueError(
            f"the records come from {len(kinds)} machine kinds, which are never mixed: "
            f"{listing}; choose one with --host KIND (host=) or see recommend_per_host"
        )
    return measurements


def _unjudged(
    feasible: list[Measurement], budget: Budget, common: dict[str, Any]
) -> Recommendation:
    """The most accurate feasible config when no baseline was measured (no rule applied)."""
    choice = max(feasible, key=rank_key)
    message = "no baseline measured: the rule was not applied"
    if choice.native_resolution is not None:
        height, width = choice.native_resolution
        message += (
            f"; measure {height}x{width} with the eager backend (fp32), or pass a baseline key"
        )
    return Recommendation(
        budget, choice, None, None, "unjudged", message, feasible=feasible, eligible=[], **common
    )


def _apply_rule(
    feasible: list[Measurement],
    base: Measurement,
    judged: dict[str, Judgement],
    budget: Budget,
    common: dict[str, Any],
) -> Recommendation:
    """The most accurate feasible config the acceptance rule accepts, else the closest miss;
    without measured accuracy, the fastest feasible config, never called accepted."""
    others = [m for m in feasible if m.key != base.key]
    if base.accuracy is None or not any(m.accuracy is not None for m in others):
        return _speed_only(feasible, base, judged, budget, common)
    eligible = [m for m in feasible if judged[m.key].accepted]
    if not eligible:
        if not others:
            message = "only the baseline itself meets the limits"
            return Recommendation(
                budget, None, base, None, "none-passes", message, feasible=feasible, **common
            )
        closest, message = _closest_to_passing(others, judged, budget)
        return Recommendation(
            budget,
            None,
            base,
            None,
            "none-passes",
            message,
            closest,
            judged[closest.key],
            feasible=feasible,
            **common,
        )
    choice = max(eligible, key=rank_key)
    return Recommendation(
        budget,
        choice,
        base,
        judged[choice.key],
        "accepted",
        feasible=feasible,
        eligible=eligible,
        **common,
    )


def _speed_only(
    feasible: list[Measurement],
    base: Measurement,
    judged: dict[str, Judgement],
    budget: Budget,
    common: dict[str, Any],
) -> Recommendation:
    """No accuracy to judge: the fastest feasible config per image, marked as such."""
    choice = min(feasible, key=lambda m: (per_image_ms(m) or math.inf, -(m.tokens or 0)))
    message = (
        "accuracy not measured: the rule cannot accept any config; sweep with --data DIR "
        "to measure accuracy"
    )
    return Recommendation(
        budget,
        choice,
        base,
        judged[choice.key],
        "no-accuracy",
        message,
        feasible=feasible,
        eligible=[],
        **common,
    )


def recommend_per_host(
    measurements: Iterable[Measurement],
    budget: Budget | None = None,
    baseline: str | Measurement | None = None,
    model: str | None = None,
) -> dict[str, Recommendation]:
    """One :func:`recommend` per machine kind in the records: ``{kind: Recommendation}``."""
    return {
        kind: recommend(group, budget, baseline, host=kind, model=model)
        for kind, group in split_by_host(list(measurements)).items()
    }
