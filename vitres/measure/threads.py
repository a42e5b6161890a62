"""Choosing the intra-op thread count by measurement, under the load actually present.

All cores is not always fastest: on a small machine shared with other work, a
multi-threaded PyTorch call waits for its slowest thread, and one busy neighbour can
make two threads 3× slower than one. :func:`choose_threads` times the real call at
each candidate count, interleaved in rounds so a load change hits every candidate, and
keeps the fastest; within ``tie`` of it, the fewer threads win (they leave cores free
and suffer less from neighbours).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vitres.measure.interference import usable_cores
from vitres.measure.timing import percentile


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and the evidence.

    Attributes:
        threads: The chosen count.
        median_ms: Median call time per candidate count.
        reason: Why, in words.
    """

    threads: int
    median_ms: dict[int, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_ms"] = {str(k): v for k, v in self.median_ms.items()}
        return d


def thread_candidates(cores: int | None = None) -> list[int]:
    """``[1, all usable cores]`` (one entry on a single core)."""
    cores = usable_cores() if cores is None else cores
    return sorted({1, max(1, cores)})


def choose_threads(
    fn: Callable[[], Any],
    candidates: Sequence[int] | None = None,
    *,
    rounds: int = 3,
    calls: int = 5,
    tie: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
    set_threads: Callable[[int], None] = torch.set_num_threads,
) -> ThreadChoice:
    """Times ``fn()`` at each candidate thread count and returns the fastest.

    Args:
        fn: The call to time (e.g. one forward pass at the native size).
        candidates: Thread counts (default: 1 and all usable cores).
        rounds: Interleaved rounds; each runs one warm-up and ``calls`` timed calls per
            candidate.
        calls: Timed calls per candidate per round.
        tie: Relative margin within which the fewer threads win.
        clock: Seconds as a float (injectable for tests).
        set_threads: Sets the thread count (injectable for tests).
    """
    counts = sorted(set(candidates or thread_candidates()))
    if not counts or min(counts) < 1:
        raise ValueError(f"thread candidates must be positive, got {candidates!r}")
    previous = torch.get_num_threads()
    samples: dict[int, list[float]] = {t: [] for t in counts}
    try:
        for _ in range(rounds):
            for t in counts:
                set_threads(t)
                fn()  # warm-up after the switch
                for _ in range(calls):
                    t0 = clock()
                    fn()
                    samples[t].append((clock() - t0) * 1000.0)
    finally:
        set_threads(previous)
    medians = {t: percentile(sorted(v), 50) for t, v in samples.items()}
    best = min(medians.values())
    chosen = min(t for t in counts if medians[t] <= best * (1 + tie))
    text = ", ".join(f"{t} thread{'s' if t > 1 else ''} {medians[t]:.3g} ms" for t in counts)
    return ThreadChoice(chosen, medians, f"measured {text}; chose {chosen}")
