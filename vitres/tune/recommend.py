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
from dataclasses import dataclass, field
from typing import Any

from vitres.tokens.merge import merge_label
from vitres.tune.budget import Budget
from vitres.tune.costmodel import CostFit, fit_latency, fit_memory, memory_ceiling, naive_max_side
from vitres.tune.hostkind import describe_host, records_for_host, split_by_host
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


def resolution_label(m: Measurement) -> str:
    height, width = m.config.resolution
    return f"{height} px" if height == width else f"{height}x{width} px"


def describe_config(m: Measurement) -> str:
    """Short human label, e.g. ``28 px bf16 (eager-bf16, batch 1, patch 4)``."""
    c = m.config
    patch = "" if c.patch_size is None else f", patch {c.patch_size}"
    merge = "" if c.merge is None else f", merge {merge_label(c.merge)}"
    budget = "" if c.token_budget is None else f", ≤{c.token_budget} mixed-resolution tokens"
    extra = f"{patch}{merge}{budget}"
    return f"{resolution_label(m)} {c.precision} ({c.backend}, batch {c.batch_size}{extra})"


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


@dataclass(frozen=True)
class MemoryCeiling:
    """The largest square input whose predicted peak memory fits the memory limit, beside
    the seed's naive formula (:func:`vitres.tune.costmodel.naive_max_side`)."""

    group: GroupKey
    patch_size: int
    fitted_side_px: int | None
    naive_side_px: float | None


@dataclass
class Recommendation:
    """What :func:`recommend` decided, and why.

    Attributes:
        budget: The budget applied.
        choice: The recommended record; ``None`` when nothing is feasible or passes.
        baseline: The record compared against, ``None`` if not measured.
        judgement: The acceptance rule applied to the choice (``None`` without a choice
            or a baseline).
        status: ``"accepted"``, ``"limits-only"`` (``budget.apply_rule`` off),
            ``"unjudged"`` (no baseline to apply the rule to),
            ``"none-passes"`` (feasible configs exist, the rule accepts none),
            ``"infeasible"`` (nothing meets the limits) or ``"empty"`` (no ok records).
        message: Why there is no recommendation and what is closest (empty otherwise).
        closest: The record nearest to being recommended, when there is none.
        closest_judgement: The rule applied to ``closest``.
        feasible: Every feasible record.
        eligible: Every feasible record the rule accepts.
        front: The Pareto front of all ``ok`` records.
        records: All records considered (one per key: ok, error and predicted).
        latency_fits: Latency cost model per group.
        memory_fits: Memory cost model per group.
        ceilings: Memory ceilings per group, when a memory limit is set.
    """

    budget: Budget
    choice: Measurement | None
    baseline: Measurement | None
    judgement: Judgement | None
    status: str
    message: str = ""
    closest: Measurement | None = None
    closest_judgement: Judgement | None = None
    feasible: list[Measurement] = field(default_factory=list)
    eligible: list[Measurement] = field(default_factory=list)
    front: list[Measurement] = field(default_factory=list)
    records: list[Measurement] = field(default_factory=list)
    latency_fits: dict[GroupKey, CostFit] = field(default_factory=dict)
    memory_fits: dict[GroupKey, CostFit] = field(default_factory=dict)
    ceilings: list[MemoryCeiling] = field(default_factory=list)

    # convenience views of the judgement, in the seed's terms
    @property
    def accepted(self) -> bool | None:
        return None if self.judgement is None else self.judgement.accepted

    @property
    def verdict(self) -> str:
        if self.judgement is not None:
            return self.judgement.text
        if self.choice is not None and self.baseline is None:
            return "not judged: no baseline measured (native resolution, fp32 eager)"
        return self.message or "no recommendation"

    @property
    def delta_acc(self) -> float | None:
        return None if self.judgement is None else self.judgement.delta_acc

    @property
    def delta_acc_points(self) -> float | None:
        return None if self.judgement is None else self.judgement.delta_acc_points

    @property
    def delta_speed(self) -> float | None:
        return None if self.judgement is None else self.judgement.delta_speed

    @property
    def speedup(self) -> float | None:
        return None if self.judgement is None else self.judgement.speedup

    def sentence(self) -> str:
        """The answer in one plain sentence."""
        if self.choice is None:
            limits = self.budget.limits()
            what = "meets " + ", ".join(limits) if limits else "passes the acceptance rule"
            closest = ""
            if self.closest is not None:
                closest = f"; closest: {short_label(self.closest)}"
                if self.message:
                    closest += f" ({self.message})"
            elif self.message:
                closest = f": {self.message}"
            return f"Nothing {what}{closest}."
        c = self.choice
        acc = "" if c.accuracy is None else f": {100 * c.accuracy:.1f} %"
        j, b = self.judgement, self.baseline
        if j is not None and b is not None:
            change = "" if j.delta_acc is None else f" ({-100 * j.delta_acc:+.1f} %)"
            speed = "" if j.speedup is None else f", {j.speedup:.2f}× faster than {short_label(b)}"
            if self.status == "limits-only":
                verdict = "the rule was not applied; it would " + (
                    "accept it" if j.accepted else "not accept it"
                )
                return (
                    f"Deploy {short_label(c)}{acc}{change}{speed} — within the limits ({verdict})."
                )
            return f"Deploy {short_label(c)}{acc}{change}{speed} — accepted by the rule."
        return f"Deploy {short_label(c)}{acc} — not judged by the rule: no baseline was measured."

    def to_dict(self) -> dict[str, Any]:
        def brief(m: Measurement | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "key": m.key,
                "label": describe_config(m),
                "resolution": list(m.config.resolution),
                "patch_size": m.config.patch_size,
                "token_budget": m.config.token_budget,
                "batch_size": m.config.batch_size,
                "backend": m.config.backend,
                "precision": m.config.precision,
                "merge": m.config.merge,
                "accuracy": m.accuracy,
                "latency_ms": m.latency_ms,
                "throughput_ips": m.throughput_ips,
                "peak_mem_mb": m.peak_mem_mb,
            }

        judged = self.judgement.to_dict() if self.judgement is not None else {}
        return {
            "answer": self.sentence(),
            "status": self.status,
            "budget": self.budget.to_dict(),
            "rule": self.budget.rule_text(),
            "choice": brief(self.choice),
            "baseline": brief(self.baseline),
            "delta_acc": judged.get("delta_acc"),
            "delta_acc_points": judged.get("delta_acc_points"),
            "delta_speed": judged.get("delta_speed"),
            "speedup": judged.get("speedup"),
            "accepted": self.accepted,
            "verdict": self.verdict,
            "message": self.message,
            "closest": brief(self.closest),
            "closest_judgement": None
            if self.closest_judgement is None
            else self.closest_judgement.to_dict(),
            "feasible": [m.key for m in self.feasible],
            "eligible": [m.key for m in self.eligible],
            "pareto_front": [m.key for m in self.front],
        }


def short_label(m: Measurement) -> str:
    """``24 px fp32 eager`` (batch, patch and merging added when not 1 / native / none)."""
    c = m.config
    extra = "" if c.batch_size == 1 else f" b{c.batch_size}"
    extra += "" if c.patch_size is None else f" p{c.patch_size}"
    extra += "" if c.merge is None else f" merge {merge_label(c.merge)}"
    extra += "" if c.token_budget is None else f" K{c.token_budget}"
    return f"{resolution_label(m)} {c.precision} {c.backend}{extra}"


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
) -> Recommendation:
    """The most accurate feasible config that the acceptance rule accepts (ties: fastest).

    Args:
        measurements: Sweep records; for a key recorded several times the last ``ok``
            record counts; ``error`` and ``predicted`` records are never chosen.
        budget: Limits and the rule; default: no limits, the seed's rule.
        baseline: Config key or record; default: see :func:`select_baseline`.
        host: The machine kind (:func:`vitres.tune.hostkind.host_fingerprint`, or a
            unique prefix) whose records to use. Records of several kinds are never mixed:
            without ``host`` they must all be of one kind (see :func:`recommend_per_host`).

    Raises:
        ValueError: the records come from several machine kinds and no ``host`` is given.

    Returns:
        The :class:`Recommendation`; its ``choice`` is ``None`` when nothing is feasible
        or nothing passes the rule (``message`` then says what is closest).
    """
    budget = budget or Budget()
    measurements = list(measurements)
    if host is not None:
        measurements = records_for_host(measurements, host)
    else:
        kinds = split_by_host(m for m in measurements if m.ok)
        if len(kinds) > 1:
            listing = "; ".join(f"{k} ({describe_host(g[0].env)})" for k, g in kinds.items())
            raise ValueError(
                f"the records come from {len(kinds)} machine kinds, which are never mixed: "
                f"{listing}; choose one with --host KIND (host=) or see recommend_per_host"
            )
    records = latest_by_key(measurements)
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
        choice = max(feasible, key=rank_key)
        message = "no baseline measured: the rule was not applied"
        if choice.native_resolution is not None:
            height, width = choice.native_resolution
            message += (
                f"; measure {height}x{width} with the eager backend (fp32), or pass a baseline key"
            )
        return Recommendation(
            budget,
            choice,
            None,
            None,
            "unjudged",
            message,
            feasible=feasible,
            eligible=[],
            **common,
        )
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
    # A config passes when no half of the rule fails and its speed gain is known; when the
    # sweep measured no accuracy at all, the speed half alone decides (and says so).
    eligible = [
        m
        for m in feasible
        if judged[m.key].accepted or (judged[m.key].acc_ok is None and judged[m.key].speed_ok)
    ]
    if not eligible:
        others = [m for m in feasible if m.key != base.key]
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


def recommend_per_host(
    measurements: Iterable[Measurement],
    budget: Budget | None = None,
    baseline: str | Measurement | None = None,
) -> dict[str, Recommendation]:
    """One :func:`recommend` per machine kind in the records: ``{kind: Recommendation}``."""
    return {
        kind: recommend(group, budget, baseline, host=kind)
        for kind, group in split_by_host(list(measurements)).items()
    }


def format_recommendation(rec: Recommendation) -> str:
    """The recommendation as a few lines of text for a terminal; the first line is the
    answer in one sentence."""
    limits = rec.budget.limits()
    lines = [
        rec.sentence(),
        f"Budget: {', '.join(limits) if limits else 'none'} — {rec.budget.source}",
        f"Rule: {rec.budget.rule_text()}",
    ]
    if rec.choice is not None:
        c = rec.choice
        acc = "n/a" if c.accuracy is None else f"{100 * c.accuracy:.2f} %"
        mem = "n/a" if c.peak_mem_mb is None else f"{c.peak_mem_mb:.1f} MiB"
        lines.append(f"Recommended: {describe_config(c)}")
        lines.append(
            f"  accuracy {acc}, latency {c.latency_ms:.3f} ms, "
            f"{c.throughput_ips or 0.0:.1f} img/s, memory {mem}"
        )
        lines.append(f"  key: {c.key}")
    elif rec.closest is not None:
        lines.append(f"None passes. Closest: {describe_config(rec.closest)} — {rec.message}")
    else:
        lines.append(f"No recommendation: {rec.message}")
    if rec.baseline is not None:
        b = rec.baseline
        acc = "n/a" if b.accuracy is None else f"{100 * b.accuracy:.2f} %"
        lines.append(
            f"Baseline: {describe_config(b)}: accuracy {acc}, latency {b.latency_ms:.3f} ms"
        )
    lines.append(f"Verdict: {rec.verdict}")
    lines.append(
        f"Feasible configs: {len(rec.feasible)}; accepted by the rule: {len(rec.eligible)}; "
        f"Pareto front: {len(rec.front)}"
    )
    return "\n".join(lines)
