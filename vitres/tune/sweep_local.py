"""The local executor of a sweep: measure configs one after another in this process
(each in its own child process when isolated), again when disturbed.

A config whose timing window shows interference (:mod:`vitres.measure.interference`) is
measured again after its next two neighbours; once all are measured, a config slower than
its neighbours' cost model predicts (:func:`vitres.tune.costmodel.latency_outliers`) is
measured again too. Of several attempts the cleanest is kept. Ray is the other executor
(:mod:`vitres.tune.ray_executor`); :mod:`vitres.tune.sweep` runs either.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vitres.measure.interference import Interference
from vitres.tune.costmodel import latency_outliers
from vitres.tune.records import Measurement, SweepConfig, append_result


@dataclass(frozen=True)
class RetryPolicy:
    """When a config is measured again.

    Attributes:
        keep_unstable: On resume, keep records flagged ``unstable`` or with interference
            (by default they are measured again).
        max_attempts: Measurements of one config at most: a config whose timing window
            shows interference (:mod:`vitres.measure.interference`), or that is more than
            ``outlier_ratio`` times what the cost model of its neighbours predicts, is
            measured again after its neighbours, and the cleanest attempt is kept.
        outlier_ratio: See ``max_attempts``.
    """

    keep_unstable: bool = False
    max_attempts: int = 3
    outlier_ratio: float = 1.5


def measure_all(
    todo: list[SweepConfig],
    results: dict[str, Measurement],
    attempts: dict[str, list[Measurement]],
    run: Callable[[SweepConfig], Measurement],
    retry: RetryPolicy,
    say: Callable[[str], None],
) -> None:
    """Measures every config; a disturbed one again after its next two neighbours, and,
    once all are measured, the ones slower than their neighbours' cost model predicts.

    Args:
        todo: The configs to measure, in order.
        results: Records by key; ``run`` fills it, and outliers are flagged in it.
        attempts: Every attempt per key, as ``run`` records them.
        run: Measures one config and keeps its record.
        retry: How often a disturbed config is measured, and what counts as an outlier.
        say: Where the messages go.
    """
    queue = deque(todo)
    by_key = {c.key(): c for c in todo}
    checked_outliers = False
    while queue or not checked_outliers:
        if not queue:
            checked_outliers = True
            for key, ratio in latency_outliers(results.values(), retry.outlier_ratio).items():
                if key in by_key and len(attempts.get(key, [])) < retry.max_attempts:
                    _flag_outlier(results[key], ratio, key, say)
                    queue.append(by_key[key])
            continue
        config = queue.popleft()
        m = run(config)
        if m.ok and m.flagged and len(attempts[config.key()]) < retry.max_attempts:
            reasons = "; ".join((m.interference or {}).get("reasons", []))
            say(f"{config.key()}: interference ({reasons}); measuring again after its neighbours")
            queue.insert(min(2, len(queue)), config)


def _flag_outlier(m: Measurement, ratio: float, key: str, say: Callable[[str], None]) -> None:
    """Marks a record slower than its neighbours predict as disturbed, with the reason."""
    reason = f"latency {ratio:.2f}× what its neighbours' cost model predicts"
    evidence = dict(m.interference or {})
    evidence["flagged"] = True
    evidence["reasons"] = [*evidence.get("reasons", []), reason]
    m.interference = evidence
    say(f"{key}: {reason}; measuring again")


def keep_cleanest(
    attempts: dict[str, list[Measurement]],
    results: dict[str, Measurement],
    out_path: str | os.PathLike[str] | None,
    say: Callable[[str], None],
) -> None:
    """For a config measured more than once, keeps the cleanest attempt (least evidence of
    interference, then the lowest median) and records which one it was."""
    remeasured, still = 0, []
    for key, tries in attempts.items():
        ok = [m for m in tries if m.ok and m.interference is not None]
        if len(tries) < 2 or not ok:
            continue
        remeasured += 1

        def cleanliness(m: Measurement) -> tuple:
            return (m.flagged, Interference.from_dict(m.interference).score(), m.latency_ms)

        best = min(ok, key=cleanliness)
        index = tries.index(best) + 1
        best.interference = {**best.interference, "attempts": len(tries), "kept": index}
        if best is not tries[-1] and out_path is not None:
            append_result(out_path, best)  # the last line of a key is the one that counts
        results[key] = best
        if best.flagged:
            still.append(key)
    if remeasured:
        say(
            f"re-measured {remeasured} disturbed config(s), kept the cleanest attempt of each"
            + (f"; still disturbed after every attempt: {', '.join(still)}" if still else "")
        )
