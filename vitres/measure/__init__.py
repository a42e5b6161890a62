"""Measurement of what a model costs: timing, peak memory, FLOPs, the environment, and
process isolation. One module per concept:

- :mod:`vitres.measure.timing`: warm-up, call-by-call and interleaved timing, robust
  latency statistics;
- :mod:`vitres.measure.memory`: peak memory over a baseline;
- :mod:`vitres.measure.flops`: counted and closed-form FLOPs;
- :mod:`vitres.measure.env`: the environment fingerprint and thread settings;
- :mod:`vitres.measure.isolate`: running a function in a fresh child process;
- :mod:`vitres.measure.http_load`: an open-loop HTTP load generator (the server's load
  test), imported on its own.

This package measures what it is given; which configs to run is :mod:`vitres.tune`'s job.
"""

from vitres.measure.env import CPU_FLAGS_OF_INTEREST, cpu_info, env_fingerprint, set_threads
from vitres.measure.flops import analytic_flops, attention_flops, count_flops
from vitres.measure.isolate import IsolatedRunError, run_isolated
from vitres.measure.memory import PeakMemoryTracker, current_rss_mb, peak_memory_mb
from vitres.measure.timing import (
    UNSTABLE_IQR_RATIO,
    LatencyStats,
    TimingConfig,
    interleaved_latency,
    latency_stats,
    percentile,
    time_calls,
)

__all__ = [
    "CPU_FLAGS_OF_INTEREST",
    "UNSTABLE_IQR_RATIO",
    "IsolatedRunError",
    "LatencyStats",
    "PeakMemoryTracker",
    "TimingConfig",
    "analytic_flops",
    "attention_flops",
    "count_flops",
    "cpu_info",
    "current_rss_mb",
    "env_fingerprint",
    "interleaved_latency",
    "latency_stats",
    "peak_memory_mb",
    "percentile",
    "run_isolated",
    "set_threads",
    "time_calls",
]
