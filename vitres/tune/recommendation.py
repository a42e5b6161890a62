"""The result of :func:`vitres.tune.recommend.recommend` and how it reads.

:class:`Recommendation` carries the choice, the baseline, the verdict of the acceptance
rule and the evidence the report draws (Pareto front, cost-model fits, memory ceilings);
:func:`format_recommendation` writes it for a terminal, and :func:`describe_config` /
:func:`short_label` name a record in messages. Nothing here decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitres.tokens.merge import merge_label
from vitres.tune.budget import Budget
from vitres.tune.costmodel import CostFit
from vitres.tune.records import GroupKey, Measurement
from vitres.tune.rule import Judgement

__all__ = [
    "MemoryCeiling",
    "Recommendation",
    "describe_config",
    "format_recommendation",
    "resolution_label",
    "short_label",
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
