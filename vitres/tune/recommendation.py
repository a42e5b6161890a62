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
from vitres.tune.intervals import wilson_interval
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
            ``"no-accuracy"`` (accuracy not measured: the fastest config within the
            limits, never accepted by the rule),
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
    def deployable(self) -> bool:
        """A config to deploy was chosen: accepted by the rule, chosen within the limits with
        the rule switched off, or (no baseline) not judged. ``False`` for a speed-only
        file's fastest config and when nothing passes."""
        return self.choice is not None and self.status in ("accepted", "limits-only", "unjudged")

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
        """The answer in one plain sentence: it names the resolution to deploy, or the
        baseline to keep, and says when accuracy was not measured or is within noise."""
        if self.choice is None:
            return self._no_choice_sentence()
        c, j, b = self.choice, self.judgement, self.baseline
        if self.status == "no-accuracy":
            speed = (
                ""
                if j is None or j.speedup is None
                else f", {j.speedup:.2f}× faster than {short_label(b)}"
            )
            return (
                f"Fastest within the budget: {short_label(c)}{speed} — accuracy not measured, "
                "so the rule accepts nothing; sweep with --data DIR before deploying it."
            )
        acc = f": {accuracy_text(c)}"
        if j is None or b is None:
            return (
                f"Best within the budget: {short_label(c)}{acc} — not judged by the rule: no "
                "baseline was measured."
            )
        speed = "" if j.speedup is None else f", {j.speedup:.2f}× faster than {short_label(b)}"
        change = "" if j.delta_acc is None else f" ({delta_acc_words(j)})"
        head = deploy_phrase(c, b)
        if self.status == "limits-only":
            verdict = "the rule was not applied; it would " + (
                "accept it" if j.accepted else "not accept it"
            )
            return f"{head}{acc}{change}{speed} — within the limits ({verdict})."
        noise = j.noise_note(self.budget)
        return f"{head}{acc}{change}{speed} — accepted by the rule" + (
            f", but {noise}." if noise else "."
        )

    def _no_choice_sentence(self) -> str:
        limits = self.budget.limits()
        if self.status == "none-passes" and self.baseline is not None:
            keep = f"Keep {short_label(self.baseline)}: no other config passes the rule"
            if self.closest is None:
                return keep + " (only the baseline meets the limits)."
            j = self.closest_judgement
            miss = closest_miss_words(j, self.budget) if j is not None else "misses"
            noise = "" if j is None else j.noise_note(self.budget)
            return f"{keep} (the closest, {short_label(self.closest)}, {miss})" + (
                f"; {noise}." if noise else "."
            )
        what = "meets " + ", ".join(limits) if limits else "passes the acceptance rule"
        closest = ""
        if self.closest is not None:
            closest = f"; closest: {short_label(self.closest)}"
            if self.message:
                closest += f" ({self.message})"
        elif self.message:
            closest = f": {self.message}"
        return f"Nothing {what}{closest}."

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
                "accuracy_interval": None
                if m.accuracy is None or m.n_eval < 1
                else list(wilson_interval(m.accuracy, m.n_eval)),
                "n_eval": m.n_eval,
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
            "delta_acc_sign": "positive is a loss: (baseline - choice) / baseline",
            "acc_interval": judged.get("acc_interval"),
            "uncertain": judged.get("uncertain", False),
            "limit_to_tell": judged.get("limit_to_tell"),
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


def accuracy_text(m: Measurement) -> str:
    """``88.1 % (95 % interval 86.6–89.5, 2,000 images)``; no interval without ``n_eval``."""
    if m.accuracy is None:
        return "accuracy not measured"
    text = f"{100 * m.accuracy:.1f} %"
    if m.n_eval > 0:
        low, high = wilson_interval(m.accuracy, m.n_eval)
        text += f" (95 % interval {100 * low:.1f}–{100 * high:.1f}, {m.n_eval:,} images)"
    return text


def _accuracy_field(m: Measurement) -> str:
    return "accuracy not measured" if m.accuracy is None else f"accuracy {accuracy_text(m)}"


def delta_acc_words(j: Judgement) -> str:
    """ΔAcc with the sign of the acceptance rule (positive is a loss) and in words:
    ``ΔAcc +1.60 %, a loss of 1.4 points``."""
    if j.delta_acc is None:
        return "ΔAcc unknown"
    points = j.delta_acc_points or 0.0
    if abs(points) < 0.005:
        return f"ΔAcc {100 * j.delta_acc:+.2f} %, no change"
    word = "a loss" if points > 0 else "a gain"
    return f"ΔAcc {100 * j.delta_acc:+.2f} %, {word} of {abs(points):.2f} points"


def closest_miss_words(j: Judgement, budget: Budget) -> str:
    """How the closest config misses the rule, in words: ``loses 1.6 % (ΔAcc +1.60 %)``."""
    parts = []
    if j.acc_ok is False and j.delta_acc is not None:
        if budget.acc_form == "relative":
            parts.append(
                f"loses {100 * j.delta_acc:.1f} % of the accuracy (ΔAcc {100 * j.delta_acc:+.2f} %)"
            )
        else:
            parts.append(f"loses {j.delta_acc_points:.2f} accuracy points")
    if j.speed_ok is False and j.delta_speed is not None:
        parts.append(f"saves only {100 * j.delta_speed:.0f} % of the time per image")
    return " and ".join(parts) or "is not judged"


def deploy_phrase(choice: Measurement, baseline: Measurement) -> str:
    """``Deploy 20 px fp32 eager`` or, at the baseline's resolution, ``Keep 28 px, run it
    as fp32 onnxruntime``: the sentence always names the resolution."""
    c, b = choice.config, baseline.config
    if tuple(c.resolution) != tuple(b.resolution):
        return f"Deploy {short_label(choice)}"
    changes = short_label(choice).removeprefix(resolution_label(choice)).strip()
    return f"Keep {resolution_label(choice)}, run it as {changes}"


def short_label(m: Measurement) -> str:
    """``24 px fp32 eager`` (batch, patch and merging added when not 1 / native / none)."""
    c = m.config
    extra = "" if c.batch_size == 1 else f" b{c.batch_size}"
    extra += "" if c.patch_size is None else f" p{c.patch_size}"
    extra += "" if c.merge is None else f" merge {merge_label(c.merge)}"
    extra += "" if c.token_budget is None else f" K{c.token_budget}"
    return f"{resolution_label(m)} {c.precision} {c.backend}{extra}"


def budget_line(budget: Budget) -> str:
    """``Budget: latency ≤ 2 ms (limits given on the command line)``, or, without limits,
    ``Budget: none given; the most accurate config the acceptance rule accepts``."""
    limits = budget.limits()
    if not limits:
        return (
            "Budget: none given; the answer is the most accurate config the acceptance rule accepts"
        )
    return f"Budget: {', '.join(limits)} ({budget.source})"


def format_recommendation(rec: Recommendation) -> str:
    """The recommendation as a few lines of text for a terminal; the first line is the
    answer in one sentence."""
    lines = [rec.sentence(), budget_line(rec.budget), f"Rule: {rec.budget.rule_text()}"]
    if rec.choice is not None:
        c = rec.choice
        mem = "n/a" if c.peak_mem_mb is None else f"{c.peak_mem_mb:.1f} MiB"
        what = "Recommended" if rec.status in ("accepted", "limits-only") else "Candidate"
        lines.append(f"{what}: {describe_config(c)}")
        lines.append(
            f"  {_accuracy_field(c)}, latency {c.latency_ms:.3f} ms, "
            f"{c.throughput_ips or 0.0:.1f} img/s, memory {mem}"
        )
        lines.append(f"  key: {c.key}")
    elif rec.closest is not None:
        lines.append(f"None passes. Closest: {describe_config(rec.closest)} — {rec.message}")
    else:
        lines.append(f"No recommendation: {rec.message}")
    if rec.baseline is not None:
        b = rec.baseline
        lines.append(
            f"Baseline: {describe_config(b)}: {_accuracy_field(b)}, latency {b.latency_ms:.3f} ms"
        )
    lines.append(f"Verdict: {rec.verdict}")
    measured = sum(m.ok for m in rec.records)
    lines.append(
        f"Of {measured} configs measured: {len(rec.feasible)} within the limits, "
        f"{len(rec.eligible)} accepted by the rule; {len(rec.front)} of the {measured} are "
        "on the accuracy/latency/memory trade-off front"
    )
    return "\n".join(lines)
