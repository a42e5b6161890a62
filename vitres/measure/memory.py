"""Peak memory of model work, over a baseline taken just before it.

On CUDA: ``max_memory_allocated``. On CPU: the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``) over the resident set at the start; exact in a fresh
child process (:mod:`vitres.measure.isolate`), an approximation in a long-lived one.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

import torch

from vitres.measure.isolate import run_isolated

_MIB = float(2**20)


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident set size of this process in MiB (Linux), ``None`` where unknown."""
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (``VmHWM``) of this process; Linux ≥ 4.0."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class PeakMemoryTracker:
    """Peak memory over a baseline taken at :meth:`start`, in MiB.

    On CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated at start. On CPU: the peak resident set (``VmHWM``, reset at start through
    ``/proc/self/clear_refs``) minus the resident set at start. In a fresh child process
    this is the memory of the model work; in a long-lived process it is less exact (the
    allocator keeps memory freed earlier, which hides part of the new peak).
    """

    def __init__(self, device: str | torch.device = "cpu", isolated: bool = False) -> None:
        self.device = torch.device(device)
        self.isolated = isolated
        self.baseline_mb = 0.0
        self.method = "none"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / _MIB
            self.method = "cuda_max_allocated"
            return
        rss = current_rss_mb()
        reset = _reset_peak_rss()
        if rss is None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        self.baseline_mb = rss
        if reset:
            self.method = "rss_hwm_child" if self.isolated else "rss_hwm_inproc"
        else:
            self.method = "rss_maxrss"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / _MIB - self.baseline_mb
        return max(0.0, _peak_rss_mb() - self.baseline_mb)


def _peak_of_call(
    fn: Callable[..., Any], args: tuple, kwargs: dict, device: str, isolated: bool
) -> float:
    tracker = PeakMemoryTracker(device, isolated=isolated)
    tracker.start()
    fn(*args, **kwargs)
    return tracker.peak_mb()


def peak_memory_mb(
    fn: Callable[..., Any],
    *args: Any,
    device: str = "cpu",
    isolate: bool = True,
    **kwargs: Any,
) -> float:
    """Peak memory (MiB) of ``fn(*args, **kwargs)`` over the baseline just before it.

    On CUDA the call runs here and ``torch.cuda.max_memory_allocated`` is used. On CPU
    with ``isolate`` it runs in a fresh child process (``fn`` must be a module-level
    function) and the peak resident set over the child's baseline is returned.
    """
    if torch.device(device).type == "cpu" and isolate:
        return run_isolated(_peak_of_call, fn, args, kwargs, device, True)
    return _peak_of_call(fn, args, kwargs, device, False)
