"""Choosing a deployment configuration from sweep results under a budget.

A config is *feasible* when it meets every hardware limit of the :class:`Budget`
(latency, throughput, memory). Among feasible configs the recommendation is the most
accurate, ties broken by speed. It is then judged against a baseline (by default the
model's native resolution, fp32 eager, batch 1) by the acceptance rule

    |ΔAcc| < max_acc_drop (points)   and   ΔSpeed > min_speedup,

with ``ΔAcc = 100·(acc − acc_baseline)`` and ``ΔSpeed = baseline per-image latency /
per-image latency − 1`` (``baseline_latency / latency − 1`` at equal batch). The
Pareto front over accuracy ↑, latency ↓, memory ↓ shows the trade-off.

This module decides; it measures nothing. :func:`adaptive_candidates` is the decision
an adaptive sweep asks for: which unmeasured configs could still change the answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitres.records import Measurement, latest_by_key


@dataclass(frozen=True)
class Budget:
    """Deployment limits and the acceptance rule.

    Attributes:
        max_latency_ms: Median latency of one call must not exceed this.
        min_fps: Throughput (images/s) must reach this.
        max_memory_mb: Peak memory (MiB) must not exceed this.
        max_acc_drop: Accepted when the accuracy drop (``-ΔAcc``) is below this many
            points, i.e. ``|ΔAcc| < max_acc_drop`` for a drop; a gain never fails.
        min_speedup: Accepted when ``ΔSpeed`` exceeds this (0.25 = more than 25 % faster).
    """

    max_latency_ms: float | None = None
    min_fps: float | None = None
    max_memory_mb: float | None = None
    max_acc_drop: float = 1.5
    min_speedup: float = 0.25

    def limits(self) -> list[str]:
        """The hardware limits as text, e.g. ``["latency ≤ 5 ms"]``."""
        out = []
        if self.max_latency_ms is not None:
            out.append(f"latency ≤ {self.max_latency_ms:g} ms")
        if self.min_fps is not None:
            out.append(f"throughput ≥ {self.min_fps:g} img/s")
        if self.max_memory_mb is not None:
            out.append(f"memory ≤ {self.max_memory_mb:g} MiB")
        return out

    def violations(self, m: Measurement) -> list[str]:
        """Names of the limits ``m`` breaks (``latency``, ``fps``, ``memory``); a value
        the record lacks counts as breaking its limit."""
        out = []
        if self.max_latency_ms is not None and not (
            m.latency_ms is not None and m.latency_ms <= self.max_latency_ms
        ):
            out.append("latency")
        if self.min_fps is not None and not (
            m.throughput_ips is not None and m.throughput_ips >= self.min_fps
        ):
            out.append("fps")
        if self.max_memory_mb is not None and not (
            m.peak_mem_mb is not None and m.peak_mem_mb <= self.max_memory_mb
        ):
            out.append("memory")
        return out

    def feasible(self, m: Measurement) -> bool:
        return m.ok and not self.violations(m)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_latency_ms": self.max_latency_ms,
            "min_fps": self.min_fps,
            "max_memory_mb": self.max_memory_mb,
            "max_acc_drop": self.max_acc_drop,
            "min_speedup": self.min_speedup,
        }


def resolution_label(m: Measurement) -> str:
    height, width = m.config.resolution
    return f"{height} px" if height == width else f"{height}x{width} px"


def describe_config(m: Measurement) -> str:
    """Short human label, e.g. ``28 px bf16 (eager-bf16, batch 1, patch 4)``."""
    c = m.config
    patch = "" if c.patch_size is None else f", patch {c.patch_size}"
    return f"{resolution_label(m)} {c.precision} ({c.backend}, batch {c.batch_size}{patch})"


def _per_image_ms(m: Measurement) -> float | None:
    return None if m.latency_ms is None else m.latency_ms / m.config.batch_size


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
            (and native patch), fp32 ``eager``, batch 1. Without batch 1 the smallest
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
            m.native_resolution is not None
            and tuple(m.config.resolution) == tuple(m.native_resolution)
            and patch_native
        )

    candidates = [
        m for m in ok if native(m) and m.config.backend == "eager" and m.config.precision == "fp32"
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda m: (m.config.batch_size, m.config.threads or 0))


@dataclass
class Recommendation:
    """What :func:`recommend` decided, and why.

    Attributes:
        budget: The budget applied.
        choice: The recommended record, ``None`` when nothing is feasible.
        baseline: The record compared against, ``None`` if not measured.
        delta_acc_points: ``100·(acc − acc_baseline)``.
        delta_speed: ``baseline per-image latency / per-image latency − 1``.
        accepted: The acceptance verdict (``None`` when it cannot be judged).
        verdict: The verdict in words.
        message: Why nothing is feasible and what is closest (empty otherwise).
        closest: The record nearest to feasibility when nothing is feasible.
        feasible: Every feasible record.
        front: The Pareto front of all ``ok`` records.
    """

    budget: Budget
    choice: Measurement | None
    baseline: Measurement | None
    delta_acc_points: float | None
    delta_speed: float | None
    accepted: bool | None
    verdict: str
    message: str = ""
    closest: Measurement | None = None
    feasible: list[Measurement] = field(default_factory=list)
    front: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def brief(m: Measurement | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "key": m.key,
                "label": describe_config(m),
                "resolution": list(m.config.resolution),
                "patch_size": m.config.patch_size,
                "batch_size": m.config.batch_size,
                "backend": m.config.backend,
                "precision": m.config.precision,
                "accuracy": m.accuracy,
                "latency_ms": m.latency_ms,
                "throughput_ips": m.throughput_ips,
                "peak_mem_mb": m.peak_mem_mb,
            }

        return {
            "budget": self.budget.to_dict(),
            "choice": brief(self.choice),
            "baseline": brief(self.baseline),
            "delta_acc_points": self.delta_acc_points,
            "delta_speed": self.delta_speed,
            "accepted": self.accepted,
            "verdict": self.verdict,
            "message": self.message,
            "closest": brief(self.closest),
            "feasible": [m.key for m in self.feasible],
            "pareto_front": [m.key for m in self.front],
        }


def _rank(m: Measurement) -> tuple:
    """Sort key: known accuracy first, then most accurate, then fastest per image.

    Without accuracy (a latency-only sweep) the most tokens wins: the largest resolution
    the budget allows, the usual proxy for accuracy below the training resolution.
    """
    known = m.accuracy is not None
    return (
        known,
        m.accuracy if known else 0.0,
        0 if known else (m.tokens or 0),
        -(_per_image_ms(m) or math.inf),
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


def recommend(
    measurements: Iterable[Measurement],
    budget: Budget | None = None,
    baseline: str | Measurement | None = None,
) -> Recommendation:
    """The most accurate feasible config (ties: fastest), judged against the baseline.

    Args:
        measurements: Sweep records (``error``/``predicted`` ones are ignored; for a key
            recorded several times the last ``ok`` record counts).
        budget: Limits and acceptance rule; default: no limits, default rule.
        baseline: Config key or record; default: see :func:`select_baseline`.
    """
    budget = budget or Budget()
    ok = [m for m in latest_by_key(list(measurements)) if m.ok]
    base = select_baseline(ok, baseline)
    front = pareto_front(ok)
    feasible = [m for m in ok if budget.feasible(m)]
    if not feasible:
        message, closest = _infeasible_message(ok, budget)
        return Recommendation(
            budget, None, base, None, None, None, "nothing feasible", message, closest, [], front
        )
    choice = max(feasible, key=_rank)
    d_acc = d_speed = None
    if base is not None:
        if choice.accuracy is not None and base.accuracy is not None:
            d_acc = 100.0 * (choice.accuracy - base.accuracy)
        base_ms, ms = _per_image_ms(base), _per_image_ms(choice)
        if base_ms is not None and ms:
            d_speed = base_ms / ms - 1.0
    accepted, verdict = _verdict(d_acc, d_speed, budget, base)
    if base is None and choice.native_resolution is not None:
        height, width = choice.native_resolution
        verdict += (
            f"; measure {height}x{width} with the eager backend at batch 1, or pass a baseline key"
        )
    return Recommendation(
        budget, choice, base, d_acc, d_speed, accepted, verdict, "", None, feasible, front
    )


def _verdict(
    d_acc: float | None, d_speed: float | None, budget: Budget, base: Measurement | None
) -> tuple[bool | None, str]:
    if base is None:
        return (
            None,
            "no baseline measured (native resolution, fp32 eager); cannot judge ΔAcc/ΔSpeed",
        )
    parts, failed, unknown = [], [], []
    if d_acc is None:
        unknown.append("ΔAcc unknown (no accuracy data)")
    else:
        # |ΔAcc| < threshold for a drop; a gain never fails the rule
        ok_acc = d_acc > -budget.max_acc_drop
        parts.append(
            f"ΔAcc {d_acc:+.2f} points (drop {'<' if ok_acc else '≥'} {budget.max_acc_drop:g})"
        )
        if not ok_acc:
            failed.append("accuracy")
    if d_speed is None:
        unknown.append("ΔSpeed unknown")
    else:
        ok_speed = d_speed > budget.min_speedup
        parts.append(
            f"ΔSpeed {100 * d_speed:+.0f} % ({'>' if ok_speed else '≤'} {100 * budget.min_speedup:g} %)"
        )
        if not ok_speed:
            failed.append("speed")
    text = "; ".join(parts + unknown)
    if failed:
        return False, f"reject ({' and '.join(failed)}): {text}"
    if unknown:
        return None, f"cannot judge: {text}"
    return True, f"accept: {text}"


def format_recommendation(rec: Recommendation) -> str:
    """The recommendation as a few lines of text for a terminal."""
    limits = rec.budget.limits()
    lines = [f"Budget: {', '.join(limits) if limits else 'none'}"]
    if rec.choice is None:
        lines.append(f"No feasible config: {rec.message}")
    else:
        c = rec.choice
        acc = "n/a" if c.accuracy is None else f"{100 * c.accuracy:.2f} %"
        mem = "n/a" if c.peak_mem_mb is None else f"{c.peak_mem_mb:.1f} MiB"
        lines.append(f"Recommended: {describe_config(c)}")
        lines.append(
            f"  accuracy {acc}, latency {c.latency_ms:.3f} ms, "
            f"{c.throughput_ips or 0.0:.1f} img/s, memory {mem}"
        )
        lines.append(f"  key: {c.key}")
    if rec.baseline is not None:
        b = rec.baseline
        acc = "n/a" if b.accuracy is None else f"{100 * b.accuracy:.2f} %"
        lines.append(
            f"Baseline: {describe_config(b)}: accuracy {acc}, latency {b.latency_ms:.3f} ms"
        )
    if rec.choice is not None:
        lines.append(f"Verdict: {rec.verdict}")
    lines.append(f"Feasible configs: {len(rec.feasible)}; Pareto front: {len(rec.front)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- adaptive


def _group(m: Measurement) -> tuple:
    c = m.config
    return (c.model, c.backend, c.precision, c.batch_size, c.patch_size, c.device, c.threads)


def _side(m: Measurement) -> float:
    height, width = m.config.resolution
    return math.sqrt(height * width)


def adaptive_candidates(
    measured: Sequence[Measurement],
    predicted: Sequence[Measurement],
    budget: Budget,
    error_pct: dict[str, float] | float = 10.0,
) -> list[Measurement]:
    """Unmeasured configs that could still change the recommendation, most urgent first.

    A predicted config (latency/memory from the cost model, accuracy unknown) is
    uncertain when

    - its predicted latency, throughput or memory lies within the model's error band
      (``error_pct`` of the value) of a budget limit -- feasibility is unknown; or
    - it is feasible even at the edge of its band, and lies next to the best measured
      feasible config of its group (same backend, precision, batch, patch), between that
      config's measured neighbours, and that group's best is at least as accurate as the
      current choice -- accuracy, which usually rises and then falls with resolution,
      may peak there.

    Boundary points come first (closest to a limit first), then accuracy points (nearest
    to the group's best first). An empty list means the recommendation is stable.

    Args:
        measured: Measured records.
        predicted: ``status="predicted"`` records of the configs not measured yet.
        budget: The budget the recommendation is made for.
        error_pct: The cost model's error band in percent, per config key or one value.
    """
    ok = [m for m in latest_by_key(list(measured)) if m.ok]
    choice = recommend(ok, budget).choice

    def band(p: Measurement) -> float:
        value = error_pct.get(p.key, 10.0) if isinstance(error_pct, dict) else error_pct
        return max(0.0, float(value)) / 100.0

    boundary: list[tuple[float, Measurement]] = []
    surely_feasible: list[Measurement] = []
    for p in predicted:
        e = band(p)
        distances: list[float] = []
        reachable = True
        for limit, value, is_upper in (
            (budget.max_latency_ms, p.latency_ms, True),
            (budget.min_fps, p.throughput_ips, False),
            (budget.max_memory_mb, p.peak_mem_mb, True),
        ):
            if limit is None or value is None:
                continue
            if value * (1 - e) <= limit <= value * (1 + e):
                distances.append(abs(value - limit) / limit)
            elif (value > limit) == is_upper:
                reachable = False  # outside the band on the wrong side
        if not reachable:
            continue
        if distances:
            boundary.append((min(distances), p))
        else:
            surely_feasible.append(p)

    accuracy_points: list[tuple[float, Measurement]] = []
    if choice is not None and choice.accuracy is not None:
        by_group: dict[tuple, list[Measurement]] = {}
        for m in ok:
            by_group.setdefault(_group(m), []).append(m)
        for p in surely_feasible:
            group = by_group.get(_group(p), [])
            feasible = [m for m in group if budget.feasible(m) and m.accuracy is not None]
            if not feasible:
                continue
            best = max(feasible, key=_rank)
            if best.accuracy < choice.accuracy:
                continue
            sides = sorted(_side(m) for m in group)
            below = [s for s in sides if s < _side(best)]
            above = [s for s in sides if s > _side(best)]
            low = below[-1] if below else -math.inf
            high = above[0] if above else math.inf
            if low < _side(p) < high:
                accuracy_points.append((abs(_side(p) - _side(best)), p))
    boundary.sort(key=lambda t: t[0])
    accuracy_points.sort(key=lambda t: t[0])
    seen, out = set(), []
    for _, p in boundary + accuracy_points:
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out
