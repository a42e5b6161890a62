"""Watching the served latency and error rate against the band the sweep measured, and
deciding when to roll back to a safe configuration.

The sweep measured, on a quiet machine, what every (resolution, batch) costs
(:mod:`vitres.runtime.latency`); serving should stay near those numbers, and the sweep
saw no errors. When it does not -- a noisy neighbour, thermal throttling, a backend that
degrades, a model that starts failing -- the server falls back to a configuration it
trusts (by default the smallest resolution in fp32 eager PyTorch), the rollback the
seed asks for on anomalies.

The rule, checked at every batch with the time ``now`` it finished:

* each batch contributes its latency ratio ``measured / band`` (``band`` = the sweep's
  p95 for that resolution and batch size, uncorrected) and its requests and errors;
* over the batches of the last ``window_s`` seconds (at least ``min_batches`` of them),
  the served latency is *out of band* when the median ratio exceeds
  ``latency_tolerance``, and the error rate is out of band when errors / requests
  exceeds ``max_error_rate``;
* when either has been out of band continuously for ``window_s`` seconds, the monitor
  reports one :class:`RollbackEvent` and reports no other.

A single slow batch never trips it (the median needs half the window to be slow), and
a short burst does not either (it must last a window). The monitor is pure: it is given
the time and reads no clock, so tests drive it with a fake one.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["BandMonitor", "BandState", "RollbackEvent"]


@dataclass(frozen=True)
class RollbackEvent:
    """The monitor's decision to roll back.

    Attributes:
        time: When it was decided (the monitor's clock, seconds).
        reason: ``"latency"`` or ``"errors"``.
        detail: A sentence with the numbers, for the log.
    """

    time: float
    reason: str
    detail: str


@dataclass(frozen=True)
class BandState:
    """The windowed statistics after the last observation.

    Attributes:
        batches: Batches in the window.
        latency_ratio: Median measured / band latency ratio in the window (``nan``
            without timed batches).
        error_rate: Errors / requests in the window (0 without requests).
        out_of_band: ``""``, ``"latency"`` or ``"errors"``.
        out_since: When the current out-of-band stretch began, ``None`` when in band.
    """

    batches: int
    latency_ratio: float
    error_rate: float
    out_of_band: str
    out_since: float | None


@dataclass(frozen=True)
class _Observation:
    time: float
    ratio: float | None
    requests: int
    errors: int


class BandMonitor:
    """Rolls back when latency or errors leave the sweep's band for a window.

    Args:
        window_s: Length of the statistics window and of the stretch out of band that
            triggers a rollback, seconds.
        latency_tolerance: Largest acceptable median of measured / sweep p95 (> 0).
        max_error_rate: Largest acceptable fraction of failed requests, in [0, 1).
        min_batches: Batches the window must hold before it is judged.
    """

    def __init__(
        self,
        window_s: float = 10.0,
        latency_tolerance: float = 2.0,
        max_error_rate: float = 0.05,
        min_batches: int = 5,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s}")
        if not latency_tolerance > 0:
            raise ValueError(f"latency_tolerance must be > 0, got {latency_tolerance}")
        if not 0 <= max_error_rate < 1:
            raise ValueError(f"max_error_rate must be in [0, 1), got {max_error_rate}")
        if min_batches < 1:
            raise ValueError(f"min_batches must be at least 1, got {min_batches}")
        self.window_s = float(window_s)
        self.latency_tolerance = float(latency_tolerance)
        self.max_error_rate = float(max_error_rate)
        self.min_batches = int(min_batches)
        self._window: deque[_Observation] = deque()
        self._out_since: float | None = None
        self._out_reason = ""
        self.event: RollbackEvent | None = None
        self.state = BandState(0, math.nan, 0.0, "", None)

    @property
    def tripped(self) -> bool:
        """True once a rollback was reported."""
        return self.event is not None

    def observe(
        self,
        now: float,
        measured_ms: float | None,
        band_ms: float | None,
        requests: int,
        errors: int = 0,
    ) -> RollbackEvent | None:
        """Adds one finished batch; returns the rollback event the first time the rule
        fires, else ``None``.

        Args:
            now: When the batch finished (monotonic seconds, any origin).
            measured_ms: Its measured latency; ``None`` for a batch that failed.
            band_ms: The sweep's p95 for its resolution and batch size; ``None`` if unknown.
            requests: Requests in the batch.
            errors: Requests of the batch that failed.
        """
        ratio = None
        if measured_ms is not None and band_ms is not None and band_ms > 0:
            ratio = measured_ms / band_ms
        self._window.append(_Observation(now, ratio, requests, errors))
        while self._window and self._window[0].time <= now - self.window_s:
            self._window.popleft()
        ratios = [o.ratio for o in self._window if o.ratio is not None]
        total = sum(o.requests for o in self._window)
        error_rate = sum(o.errors for o in self._window) / total if total else 0.0
        median = statistics.median(ratios) if ratios else math.nan
        reason = ""
        if len(self._window) >= self.min_batches:
            if error_rate > self.max_error_rate:
                reason = "errors"
            elif ratios and median > self.latency_tolerance:
                reason = "latency"
        if not reason:
            self._out_since, self._out_reason = None, ""
        elif self._out_since is None:
            self._out_since, self._out_reason = now, reason
        self.state = BandState(len(self._window), median, error_rate, reason, self._out_since)
        if self.tripped or self._out_since is None or now - self._out_since < self.window_s:
            return None
        if reason == "errors":
            detail = (
                f"error rate {error_rate:.1%} over the last {self.window_s:g} s, above the "
                f"allowed {self.max_error_rate:.1%}, for {now - self._out_since:.1f} s"
            )
        else:
            detail = (
                f"served latency {median:.2f}x the sweep's p95 (median over the last "
                f"{self.window_s:g} s), above the allowed {self.latency_tolerance:g}x, for "
                f"{now - self._out_since:.1f} s"
            )
        self.event = RollbackEvent(now, reason, detail)
        return self.event
