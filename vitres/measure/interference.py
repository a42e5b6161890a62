"""Is something else using the machine while we time? Evidence of interference.

A latency measured while other processes compete for the cores can be many times the
real figure (two-thread PyTorch slows down 3× or more on a 2-core machine with one
other busy process). Each timing window therefore collects evidence:

- **other processes' CPU time**: the busy time of the cores this process may run on,
  from ``/proc/stat`` over the window, minus this process's own CPU time, in cores (1.0 = one core kept busy by
  someone else), and the 1-minute load average from ``/proc/loadavg``;
- **a reference kernel** (a fixed float32 matrix product at the measurement's thread
  count, median of 9) timed before and after the window: its slowdown against the
  fastest time seen for it in the same sweep says the cores were slower than when quiet;
- **the tail**: the median call against the fastest call (``LatencyStats.tail_ratio``).

:func:`assess` turns the evidence into a verdict with its reasons. The readers are
injectable, so tests use scripted ``/proc`` readings and a fake clock; nothing here
decides what to re-measure (that is :mod:`vitres.tune.sweep`'s job).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# thresholds of the verdict (see assess)
OTHER_CORES_MARGIN = 0.3  # other processes' cores beyond the cores we leave free
REFERENCE_SLOWDOWN = 1.25  # reference kernel slower than its best seen in the sweep
TAIL_RATIO = 1.6  # median call slower than the fastest by this factor
LOADAVG_MARGIN = 0.75  # 1-minute load above the cores we leave free (a hint only)


@dataclass(frozen=True)
class CpuSample:
    """One reading of the machine's and this process's CPU time.

    Attributes:
        wall_s: Monotonic wall time (seconds).
        busy_s: CPU seconds every core spent busy since boot (``/proc/stat``), ``None``
            where unknown.
        self_s: CPU seconds this process spent (all its threads).
        loadavg_1m: 1-minute load average, ``None`` where unknown.
    """

    wall_s: float
    busy_s: float | None
    self_s: float
    loadavg_1m: float | None


def read_proc_stat(path: str = "/proc/stat", cpus: set[int] | None = None) -> float | None:
    """Busy CPU seconds since boot (user, nice, system, irq, softirq, steal) of the CPUs
    this process may run on (``cpus``; default its affinity set), so work pinned to other
    cores does not count as interference."""
    if cpus is None:
        cpus = _affinity()
    try:
        with open(path, encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    per_cpu = {int(p[0][3:]): p[1:] for p in lines if p and p[0][3:].isdigit()}
    chosen = [per_cpu[c] for c in sorted(cpus) if c in per_cpu] if cpus else []
    if not chosen:  # no per-CPU lines: the aggregate
        chosen = [p[1:] for p in lines if p and p[0] == "cpu"]
    if not chosen:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
    busy = sum(int(v[i]) for v in chosen for i in (0, 1, 2, 5, 6, 7) if i < len(v))
    return busy / os.sysconf("SC_CLK_TCK")


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def read_loadavg(path: str = "/proc/loadavg") -> float | None:
    """The 1-minute load average."""
    try:
        with open(path, encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sample_cpu(
    clock: Callable[[], float] = time.monotonic,
    busy: Callable[[], float | None] = read_proc_stat,
    self_time: Callable[[], float] = time.process_time,
    loadavg: Callable[[], float | None] = read_loadavg,
) -> CpuSample:
    """A :class:`CpuSample` now; every reader is injectable."""
    return CpuSample(clock(), busy(), self_time(), loadavg())


def other_cores(before: CpuSample, after: CpuSample) -> float | None:
    """Cores other processes kept busy between two samples (never below 0)."""
    wall = after.wall_s - before.wall_s
    if before.busy_s is None or after.busy_s is None or wall <= 0:
        return None
    others = (after.busy_s - before.busy_s) - (after.self_s - before.self_s)
    return max(0.0, others / wall)


def reference_kernel_ms(
    threads: int | None = None,
    size: int = 320,
    repeats: int = 9,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median milliseconds of ``repeats`` fixed ``size``² float32 matrix products (after one
    warm-up product), at ``threads`` torch threads (the current setting when ``None``).

    The median of a few-millisecond kernel, not the fastest of a sub-millisecond one: a
    sub-millisecond minimum varies by 1.5× on a quiet machine and would flag everything."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.ones(size, size)
        b = torch.ones(size, size)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t0 = clock()
            torch.mm(a, b)
            times.append(clock() - t0)
        return sorted(times)[len(times) // 2] * 1000.0
    finally:
        torch.set_num_threads(previous)


@dataclass
class Interference:
    """The evidence of one timing window and the verdict on it.

    Attributes:
        flagged: Evidence of interference was found.
        reasons: What was found, in words.
        other_cores: Cores other processes kept busy during the window.
        loadavg_1m: 1-minute load average at the end of the window.
        reference_ms: Reference kernel before and after the window (ms).
        reference_best_ms: Fastest reference time seen in the sweep (the quiet figure).
        reference_slowdown: Slower of the two reference times over the best one.
        tail_ratio: Median call over the fastest call.
        free_cores: Cores the measurement left free (usable cores − threads).
        attempts: Times this config was measured (1 = no re-measurement).
        kept: Which attempt this record is (1-based), the cleanest of them.
    """

    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    other_cores: float | None = None
    loadavg_1m: float | None = None
    reference_ms: tuple[float, float] | None = None
    reference_best_ms: float | None = None
    reference_slowdown: float | None = None
    tail_ratio: float | None = None
    free_cores: float | None = None
    attempts: int = 1
    kept: int = 1

    def score(self) -> float:
        """How disturbed the window was (0 = clean); used to keep the cleanest attempt."""
        value = 0.0
        if self.other_cores is not None and self.free_cores is not None:
            value += max(0.0, self.other_cores - self.free_cores)
        if self.reference_slowdown is not None:
            value += max(0.0, self.reference_slowdown - 1.0)
        if self.tail_ratio is not None:
            value += max(0.0, self.tail_ratio - 1.0) / 2
        return value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.reference_ms is not None:
            d["reference_ms"] = list(self.reference_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interference:
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("reference_ms") is not None:
            kwargs["reference_ms"] = tuple(kwargs["reference_ms"])
        return cls(**kwargs)


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def assess(
    *,
    other: float | None,
    loadavg: float | None,
    reference_ms: tuple[float, float] | None,
    reference_best_ms: float | None,
    tail_ratio: float | None,
    threads: int,
    cores: int | None = None,
) -> Interference:
    """The verdict on one timing window from its evidence.

    Flagged when any of: other processes kept more than ``free cores + 0.3`` cores busy
    (free cores = usable cores − the measurement's threads); the reference kernel ran
    ``REFERENCE_SLOWDOWN``× slower than its best in the sweep; the median call was
    ``TAIL_RATIO``× the fastest. A high load average alone is reported, not flagged
    (it lags by a minute).
    """
    cores = usable_cores() if cores is None else cores
    free = max(0.0, float(cores - threads))
    reasons = []
    if other is not None and other > free + OTHER_CORES_MARGIN:
        reasons.append(
            f"other processes used {other:.2f} cores while {free:g} were free "
            f"({cores} cores, {threads} threads timed)"
        )
    slowdown = None
    if reference_ms is not None and reference_best_ms:
        slowdown = max(reference_ms) / reference_best_ms
        if slowdown > REFERENCE_SLOWDOWN:
            reasons.append(
                f"reference kernel {slowdown:.2f}× slower than its best in this sweep "
                f"({max(reference_ms):.3g} vs {reference_best_ms:.3g} ms)"
            )
    if tail_ratio is not None and tail_ratio > TAIL_RATIO:
        reasons.append(f"median call {tail_ratio:.2f}× the fastest")
    flagged = bool(reasons)
    if loadavg is not None and loadavg > free + threads + LOADAVG_MARGIN and not flagged:
        reasons.append(f"load average {loadavg:.2f} (a hint: it lags by a minute)")
    return Interference(
        flagged=flagged,
        reasons=reasons,
        other_cores=other,
        loadavg_1m=loadavg,
        reference_ms=reference_ms,
        reference_best_ms=reference_best_ms,
        reference_slowdown=slowdown,
        tail_ratio=tail_ratio,
        free_cores=free,
    )


def reassess(
    evidence: dict[str, Any], reference_best_ms: float | None, threads: int, cores: int | None
) -> Interference:
    """The verdict on stored evidence again, against a better (lower) reference time seen
    since; earlier findings and the attempt counters are kept."""
    previous = Interference.from_dict(evidence)
    reference = previous.reference_ms
    best = previous.reference_best_ms
    if reference_best_ms is not None:
        best = reference_best_ms if best is None else min(best, reference_best_ms)
    verdict = assess(
        other=previous.other_cores,
        loadavg=previous.loadavg_1m,
        reference_ms=reference,
        reference_best_ms=best,
        tail_ratio=previous.tail_ratio,
        threads=threads,
        cores=cores,
    )
    verdict.attempts, verdict.kept = previous.attempts, previous.kept
    # a lower best reference can only add evidence; what was found before stays
    kept = [r for r in previous.reasons if r not in verdict.reasons and "load average" not in r]
    verdict.reasons = kept + verdict.reasons
    verdict.flagged = verdict.flagged or previous.flagged
    return verdict
