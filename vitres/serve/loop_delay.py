"""How late the server's event loop runs work that is ready: the delay a request meets
before its handler starts and again before its answer is written, which the batching
worker cannot see from its own queue.

A heartbeat task asks to sleep ``interval_s`` and measures how much later than that it
woke -- the event-loop delay that Node.js exposes as ``monitorEventLoopDelay`` and that
asyncio's debug mode warns about. Anything that became ready at the same moment (a
socket with a new request on it, the answer the worker just handed over) waited about as
long: the loop was busy with other callbacks, was waiting for the GIL, or the process
was not given a CPU. :class:`LoopDelay` keeps

* a high quantile (default the 90th percentile) of the lateness of the last
  ``window_s`` seconds -- the delay the loop keeps having;
* the lateness of the last beat -- a stall of 300 ms leaves 300 ms of work that piled up
  behind it, which the loop clears in the time that follows (a quantile alone would
  ignore one long stall);
* how overdue the next beat already is -- the loop is stuck right now.

Work the loop runs now (a request whose handler starts) has probably waited the largest
of the three (:meth:`LoopDelay.waited_s`); work handed to it now (an answer from the
worker) will wait the largest of the first and the last (:meth:`LoopDelay.delay_s`): a
stall that is over does not delay what comes after it. The server's admission
(:mod:`vitres.serve.batching`) counts both against the SLO, so a loop that falls
behind sheds at once instead of accepting work its own backlog will make late.

The statistics are plain floats written by the loop's thread and read by any other (the
batching worker), so reading them needs no lock; the bookkeeping takes a fake clock in
tests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoopDelay"]


class LoopDelay:
    """The event loop's recent delay, from a heartbeat.

    Args:
        interval_s: How long the heartbeat sleeps between beats.
        window_s: How far back the beats count.
        quantile: Which quantile of the window's lateness is the delay (0.9: a delay
            that 9 beats in 10 met or beat). The largest (``1.0``) would let one
            descheduling of the process shed everything for a whole window; the median
            would miss a backlog that half the beats escape.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        interval_s: float = 0.01,
        window_s: float = 0.25,
        quantile: float = 0.9,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not interval_s > 0 or not window_s > 0:
            raise ValueError(
                f"interval_s and window_s must be positive, got {interval_s} and {window_s}"
            )
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.interval_s = float(interval_s)
        self.window_s = float(window_s)
        self.quantile = float(quantile)
        self.clock = clock
        self._recent: deque[tuple[float, float]] = deque()  # (woke, lateness), oldest first
        self._window_delay = 0.0
        self._last_woke = 0.0
        self._last_lateness = 0.0
        self._next_due: float | None = None  # None: no heartbeat running

    @property
    def running(self) -> bool:
        """Whether a heartbeat is running (without one the delay reads 0)."""
        return self._next_due is not None

    def observe(self, woke: float, lateness: float) -> None:
        """Records one beat that woke at ``woke``, ``lateness`` seconds after it asked to."""
        lateness = max(0.0, float(lateness))
        recent = self._recent
        recent.append((woke, lateness))
        while recent[0][0] < woke - self.window_s:
            recent.popleft()
        ranked = sorted(late for _, late in recent)
        # the smallest lateness that a `quantile` share of the window's beats did not pass
        index = max(0, math.ceil(self.quantile * len(ranked)) - 1)
        self._window_delay = ranked[index]
        self._last_woke, self._last_lateness = woke, lateness
        self._next_due = woke + self.interval_s

    def delay_s(self, now: float | None = None) -> float:
        """How long a callback made ready ``now`` should expect to wait, seconds -- an
        answer the worker hands over now, say: the window's quantile of lateness, or
        how overdue the next beat already is, whichever is larger; 0 while no heartbeat
        runs."""
        due = self._next_due
        if due is None:
            return 0.0
        now = self.clock() if now is None else now
        return max(self._window_delay, now - due)

    def waited_s(self, now: float | None = None) -> float:
        """How long work the loop runs ``now`` has probably waited for it, seconds -- a
        request whose handler starts now, say: :meth:`delay_s`, or the lateness of the
        last beat while that beat's stall is no older than itself (the backlog it left
        is still being cleared); 0 while no heartbeat runs."""
        due = self._next_due
        if due is None:
            return 0.0
        now = self.clock() if now is None else now
        last = self._last_lateness
        stall = last if now - self._last_woke < max(self.interval_s, last) else 0.0
        return max(self._window_delay, stall, now - due)

    async def run(self) -> None:
        """The heartbeat: beats until cancelled (then the delay reads 0 again)."""
        try:
            self._next_due = self.clock() + self.interval_s
            while True:
                asked = self.clock()
                await asyncio.sleep(self.interval_s)
                woke = self.clock()
                self.observe(woke, woke - asked - self.interval_s)
        finally:
            self._next_due = None
            self._recent.clear()
            self._window_delay = self._last_lateness = 0.0
