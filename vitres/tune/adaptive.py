"""The adaptive sweep: measure anchor resolutions, predict the rest with the cost model,
then measure only the configs that could still change the recommendation.

Only anchor resolutions are measured first (the smallest, the largest and two in
between); :mod:`vitres.tune.costmodel` predicts the rest, and only the configs
:func:`adaptive_candidates` finds uncertain for the budget are measured, until none is.
The configs left unmeasured are recorded as ``status="predicted"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vitres.tune.costmodel import fit_latency, fit_memory, predicted_measurement
from vitres.tune.grid import anchor_resolutions, estimate_tokens
from vitres.tune.recommend import Budget, rank_key, recommend
from vitres.tune.records import Measurement, SweepConfig, append_result, group_key, latest_by_key


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
        distance = _limit_distance(p, budget, band(p))
        if distance is None:
            continue  # outside the band on the wrong side of a limit
        if distance < math.inf:
            boundary.append((distance, p))
        else:
            surely_feasible.append(p)
    accuracy_points: list[tuple[float, Measurement]] = []
    if choice is not None and choice.accuracy is not None:
        accuracy_points = _accuracy_points(ok, surely_feasible, budget, choice.accuracy)
    boundary.sort(key=lambda t: t[0])
    accuracy_points.sort(key=lambda t: t[0])
    seen, out = set(), []
    for _, p in boundary + accuracy_points:
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def _limit_distance(p: Measurement, budget: Budget, band: float) -> float | None:
    """How close a predicted config lies to a budget limit it may or may not meet.

    Returns:
        The smallest relative distance to a limit whose error band contains it;
        ``math.inf`` when every limit is met even at the edge of the band; ``None`` when
        a limit is missed even at the edge of the band.
    """
    distances: list[float] = []
    for limit, value, is_upper in (
        (budget.max_latency_ms, p.latency_ms, True),
        (budget.min_fps, p.throughput_ips, False),
        (budget.max_memory_mb, p.peak_mem_mb, True),
    ):
        if limit is None or value is None:
            continue
        if value * (1 - band) <= limit <= value * (1 + band):
            distances.append(abs(value - limit) / limit)
        elif (value > limit) == is_upper:
            return None
    return min(distances) if distances else math.inf


def _accuracy_points(
    ok: list[Measurement],
    surely_feasible: list[Measurement],
    budget: Budget,
    chosen_accuracy: float,
) -> list[tuple[float, Measurement]]:
    """Surely feasible predicted configs between the measured neighbours of their group's
    best feasible config, when that best is at least as accurate as the current choice;
    each with its distance (in side length) to that best."""
    by_group: dict[tuple, list[Measurement]] = {}
    for m in ok:
        by_group.setdefault(group_key(m), []).append(m)
    points: list[tuple[float, Measurement]] = []
    for p in surely_feasible:
        group = by_group.get(group_key(p), [])
        feasible = [m for m in group if budget.feasible(m) and m.accuracy is not None]
        if not feasible:
            continue
        best = max(feasible, key=rank_key)
        if best.accuracy < chosen_accuracy:
            continue
        sides = sorted(_side(m) for m in group)
        below = [s for s in sides if s < _side(best)]
        above = [s for s in sides if s > _side(best)]
        low = below[-1] if below else -math.inf
        high = above[0] if above else math.inf
        if low < _side(p) < high:
            points.append((abs(_side(p) - _side(best)), p))
    return points


def _groups(configs: Iterable[SweepConfig]) -> dict[tuple, list[SweepConfig]]:
    groups: dict[tuple, list[SweepConfig]] = {}
    for c in configs:
        groups.setdefault(group_key(c), []).append(c)
    return groups


def run_adaptive(
    configs: list[SweepConfig],
    results: dict[str, Measurement],
    run: Callable[[SweepConfig], Measurement],
    budget: Budget,
    anchors: int,
    per_round: int,
    out_path: str | os.PathLike[str] | None,
    bar: Any,
) -> None:
    for group in _groups(configs).values():
        picked = set(anchor_resolutions([c.resolution for c in group], anchors))
        for c in group:
            if c.resolution in picked and c.key() not in results:
                run(c)
    predicted: list[Measurement] = []
    for _ in range(len(configs)):
        measured = [m for m in results.values() if m.source == "measured"]
        lat_fits, mem_fits = fit_latency(measured), fit_memory(measured)
        like = next((m for m in measured if m.ok), None)
        predicted, bands = [], {}
        for c in configs:
            if c.key() in results:
                continue
            tokens = estimate_tokens(c, measured)
            lat_fit = lat_fits.get(group_key(c))
            if tokens is None or lat_fit is None:
                continue
            p = predicted_measurement(c, tokens, lat_fit, mem_fits.get(group_key(c)), like)
            predicted.append(p)
            loo = lat_fit.loo_error_pct
            bands[p.key] = 15.0 if math.isnan(loo) else max(loo, 5.0)
        unknown = [c for c in configs if c.key() not in results and c.key() not in bands]
        candidates = adaptive_candidates(measured, predicted, budget, bands)
        todo = [
            c for c in configs if c.key() in {p.key for p in candidates[:per_round]}
        ] or unknown[:per_round]
        if not todo:
            break
        for c in todo:
            run(c)
    bar.set_description_str(f"sweep (adaptive, {len(predicted)} predicted)")
    for p in predicted:
        if p.key in results:
            continue
        if out_path is not None:
            append_result(out_path, p)
        results[p.key] = p
