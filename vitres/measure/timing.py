"""Timing of a call: warm-up, call-by-call samples and robust latency statistics.

Latency is timed call by call after a warm-up that lasts both a number of calls and a
time (timm's ``benchmark.py`` and torchao's benchmarks do the same), and summarised by
robust statistics (median, IQR, tail percentiles) with an ``unstable`` flag when the
spread is large. The clock is injectable, so tests use a fake one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

UNSTABLE_IQR_RATIO = 0.10


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-call latency in milliseconds.

    Attributes:
        median_ms: Median of all timed calls.
        iqr_ms: 75th minus 25th percentile.
        p90_ms: 90th percentile (percentiles linearly interpolated, numpy's default).
        p95_ms: 95th percentile.
        p99_ms: 99th percentile.
        min_ms: The fastest call.
        mean_ms: Mean.
        count: Timed calls.
        unstable: ``iqr_ms / median_ms > 0.10``: the timing is noisy.
        robust_ms: Median of the per-round medians (the calls split into ``rounds``
            consecutive rounds), the statistic a short burst of load moves least.
        ci_low_ms: Lower end of the 95 % confidence interval of the median (distribution
            free: order statistics of the binomial(n, 1/2) ranks).
        ci_high_ms: Upper end of that interval.
        rounds: Rounds the calls were split into.
    """

    median_ms: float
    iqr_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    count: int
    unstable: bool
    robust_ms: float | None = None
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    rounds: int | None = None

    @property
    def tail_ratio(self) -> float | None:
        """Median over the fastest call; near 1 on a quiet machine."""
        return self.median_ms / self.min_ms if self.min_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and to measure; both a call count and a time must be reached."""

    warmup_calls: int = 10
    warmup_s: float = 0.2
    min_calls: int = 30
    min_s: float = 2.0

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "warmup_calls": self.warmup_calls,
            "warmup_s": self.warmup_s,
            "min_calls": self.min_calls,
            "min_s": self.min_s,
        }


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup_calls: int = 10,
    warmup_s: float = 0.2,
    min_calls: int = 30,
    min_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Times ``fn()`` call by call.

    Warm-up runs until at least ``warmup_calls`` calls AND ``warmup_s`` seconds have
    passed; then calls are timed until at least ``min_calls`` calls AND ``min_s`` seconds
    (from the start of the first timed call to the end of the last) have passed.

    The clock is read once at the start of the warm-up and once after each warm-up call,
    and twice around each timed call (``t0``, ``fn()``, ``sync()``, ``t1``).

    Args:
        fn: The call to time.
        warmup_calls: Minimum warm-up calls.
        warmup_s: Minimum warm-up seconds.
        min_calls: Minimum timed calls.
        min_s: Minimum timed seconds.
        clock: Seconds as a float; injectable so tests can use a fake clock.
        sync: Called after each ``fn()`` before reading the clock (e.g.
            ``torch.cuda.synchronize`` for asynchronous devices).

    Returns:
        The duration of every timed call, in seconds.
    """
    if min_calls < 1:
        raise ValueError(f"min_calls must be at least 1, got {min_calls}")
    start = clock()
    calls = 0
    while calls < warmup_calls or clock() - start < warmup_s:
        fn()
        if sync is not None:
            sync()
        calls += 1
    samples: list[float] = []
    first = None
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        t1 = clock()
        if first is None:
            first = t0
        samples.append(t1 - t0)
        if len(samples) >= min_calls and t1 - first >= min_s:
            return samples


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated
    between closest ranks (numpy's default ``method="linear"``)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def median_ci_ranks(n: int, z: float = 1.959964) -> tuple[int, int]:
    """0-based ranks ``(lo, hi)`` of the sorted sample bounding a ~95 % confidence interval
    of the median: the normal approximation of the binomial(n, 1/2) rank distribution,
    ``n/2 ± z·sqrt(n)/2``, clamped to the sample."""
    if n < 1:
        raise ValueError("need at least one sample")
    half = z * math.sqrt(n) / 2.0
    lo = max(0, math.floor(n / 2.0 - half))
    hi = min(n - 1, math.ceil(n / 2.0 + half) - 1)
    return lo, max(lo, hi)


def latency_stats(samples_s: Sequence[float], rounds: int = 5) -> LatencyStats:
    """Summarises call durations (seconds, in call order) as :class:`LatencyStats` in ms.

    Args:
        samples_s: Durations of the timed calls, in the order they ran.
        rounds: Consecutive rounds the calls are split into for ``robust_ms`` (fewer when
            there are fewer than ``2·rounds`` calls; one round per call at the least).
    """
    if len(samples_s) == 0:
        raise ValueError("latency_stats needs at least one sample")
    in_order = [float(s) * 1000.0 for s in samples_s]
    ms = sorted(in_order)
    median = percentile(ms, 50)
    iqr = percentile(ms, 75) - percentile(ms, 25)
    count = len(ms)
    n_rounds = max(1, min(rounds, count // 2))
    size = count / n_rounds
    chunks = [in_order[round(i * size) : round((i + 1) * size)] for i in range(n_rounds)]
    round_medians = sorted(percentile(sorted(c), 50) for c in chunks if c)
    lo, hi = median_ci_ranks(count)
    return LatencyStats(
        median_ms=median,
        iqr_ms=iqr,
        p90_ms=percentile(ms, 90),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        min_ms=ms[0],
        mean_ms=sum(ms) / count,
        count=count,
        unstable=bool(median > 0 and iqr / median > UNSTABLE_IQR_RATIO),
        robust_ms=percentile(round_medians, 50),
        ci_low_ms=ms[lo],
        ci_high_ms=ms[hi],
        rounds=n_rounds,
    )


def interleaved_latency(
    runs: dict[str, Callable[[Any], Any]],
    x: Any,
    rounds: int,
    calls: int,
    *,
    warmup_calls: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Per-call seconds of every ``run(x)``, timed round-robin so that a change of load
    hits every candidate alike.

    Each run is warmed up ``warmup_calls`` times (and recompiles for this shape, if it
    does) before any timing; then every round times ``calls`` calls of each run in turn,
    the first run rotating from round to round.

    Args:
        runs: name -> the call to time, given ``x``.
        x: the argument of every call (``None`` for calls that carry their own input).
        rounds: rounds of timing.
        calls: timed calls per run per round.
        warmup_calls: untimed calls per run before the first round.
        clock: seconds as a float; injectable so tests can use a fake clock.

    Returns:
        name -> the duration of each timed call, in seconds, in call order.
    """
    if rounds < 1 or calls < 1:
        raise ValueError(f"rounds and calls must be at least 1, got {rounds} and {calls}")
    names = list(runs)
    for name in names:
        for _ in range(warmup_calls):
            runs[name](x)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run = runs[name]
            for _ in range(calls):
                start = clock()
                run(x)
                samples[name].append(clock() - start)
    return samples
