"""The server's batching policy: batch size and input resolution chosen together, per
batch, so that every queued request meets a latency SLO; and load shedding.

Inference servers batch dynamically -- Clipper's adaptive batching (Crankshaw et al.,
"Clipper: A Low-Latency Online Prediction Serving System", NSDI 2017), Triton's dynamic
batcher, Ray Serve's ``@serve.batch`` -- but serve one fixed model input. A
resolution-flexible ViT has a second knob: a smaller input costs fewer tokens. This
module decides both from a latency predictor (the sweep's measurements, corrected online:
:mod:`vitres.runtime.latency`).

Everything here is pure: a policy is given the arrival times of the queued requests
(oldest first), the time now and a predictor, and returns a decision. It reads no clock
and runs no model, so tests drive it with a fake clock and a scripted cost model.

:class:`SloBatchingPolicy` (controller ``predictive``; with one resolution it is also the
rollback's safe configuration). With the SLO ``S``, request ``i`` (arrival ``a_i``) has
its deadline at ``a_i + S``; ``pred(r, b)`` is the predicted p95 latency of a batch of
``b`` at resolution ``r``; ``r_min`` is the cheapest resolution.

* **Admission** of a request arriving at ``t`` when the worker is busy until ``t_free``:
  the queue plus the newcomer is drained, in the order it arrived, in batches of
  ``max_batch`` at ``r_min`` from ``max(t, t_free)`` -- the fastest the server could
  serve them. If even that misses the newcomer's deadline, it is shed at once (the
  server answers 503 with ``Retry-After``) instead of growing a queue that would only
  answer late. A full queue (``queue_limit``) sheds too.
* **A batch** is planned when the worker is free. Requests at the head of the queue that
  cannot make their deadline even alone at ``r_min`` have expired and are shed. Of the
  rest, the batch takes the first ``b`` (oldest first) with ``b`` as large as possible
  (up to ``max_batch``) -- serving everyone waiting is what keeps the queue short and new
  requests admitted -- and, for that ``b``, the most accurate resolution ``r`` with
  (1) ``now + pred(r, b) <= a_1 + S`` (the oldest in the batch is the binding one),
  (2) ``pred(r, b) <= batch_time_fraction * S``, and
  (3) the requests left in the queue can still be drained in time at ``r_min`` after it.
  Condition (2) leaves room for the requests that arrive while the batch runs: with
  back-to-back batches a request may wait for one whole batch and then be served in the
  next, so the worst case is about twice the batch time (Shen et al., "Nexus: A GPU
  Cluster Engine for Accelerating DNN-Based Video Analysis", SOSP 2019); the default
  fraction is one half. When no ``(r, b)`` meets all three, the largest batch at
  ``r_min`` that still meets the oldest request's deadline is run.

**Time outside the worker.** A request also waits before the worker ever sees it (for
the server's event loop to read it and run its handler) and after its batch (for the
loop to write the answer). The server measures how late its event loop runs a callback
(:mod:`vitres.serve.loop_delay`) and accounts for both: a request's arrival is taken
to be that much before its handler started, and every call here takes the delay an
answer will take to leave the server as ``overhead_s``; each deadline becomes
``a_i + S - overhead_s`` (and the batch limit ``batch_time_fraction * (S -
overhead_s)``). An event loop that falls behind therefore makes admission shed at once,
cheaply, instead of accepting requests that its own backlog will make late.

Accuracy per resolution comes from the sweep (``accuracy``); where it is unknown
(speed-only records) a larger input is taken to be at least as accurate.

:class:`FixedBatchingPolicy` (controller ``fixed:R``) is the baseline the issue compares
against: the usual dynamic batcher, one resolution, batches of whatever is queued up to
``max_batch``, no deadline awareness; it sheds only when the queue is full.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Size = tuple[int, int]
#: ``predict_ms(resolution, batch_size)`` -> predicted p95 latency of that batch, ms.
Predictor = Callable[[Size, int], float]

__all__ = [
    "Admission",
    "BatchDecision",
    "BatchingPolicy",
    "FixedBatchingPolicy",
    "Predictor",
    "SloBatchingPolicy",
]


@dataclass(frozen=True)
class Admission:
    """Whether a new request joins the queue.

    Attributes:
        admitted: True to queue it; False to answer 503 now.
        reason: Why it was shed: ``"queue_full"`` or ``"slo"``; ``""`` when admitted.
        predicted_completion: When (same clock as the arrivals) the fastest drain would
            finish it; ``None`` when not computed.
    """

    admitted: bool
    reason: str = ""
    predicted_completion: float | None = None


@dataclass(frozen=True)
class BatchDecision:
    """What the worker does next with the queue.

    Attributes:
        expire: Requests at the head of the queue to shed first (their deadline can no
            longer be met); they come before the batch.
        batch_size: Requests after those to run now, oldest first (0: nothing to run).
        resolution: Input ``(height, width)`` of the batch; ``None`` when nothing runs.
        predicted_ms: Predicted latency of the batch, ms (0 when nothing runs).
        meets_slo: Whether the prediction keeps every queued request within the SLO
            (False for the fallback batch, and for policies that do not look).
    """

    expire: int
    batch_size: int
    resolution: Size | None
    predicted_ms: float
    meets_slo: bool


class BatchingPolicy(Protocol):
    """What the server's worker needs from a policy; times in seconds, any one clock."""

    slo_ms: float
    max_batch: int
    queue_limit: int
    resolutions: tuple[Size, ...]

    def admit(
        self,
        queued: Sequence[float],
        arrival: float,
        busy_until: float,
        overhead_s: float = 0.0,
    ) -> Admission:
        """Decides on a request arriving at ``arrival``, with ``queued`` arrival times
        already waiting (oldest first) and the worker busy until ``busy_until`` (not
        before now); an answer takes ``overhead_s`` to leave the server."""
        ...

    def plan(self, queued: Sequence[float], now: float, overhead_s: float = 0.0) -> BatchDecision:
        """The next batch when the worker is free at ``now``."""
        ...


def _check_common(slo_ms: float, max_batch: int, queue_limit: int) -> None:
    if not slo_ms > 0:
        raise ValueError(f"the SLO must be a positive number of milliseconds, got {slo_ms}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if queue_limit < 1:
        raise ValueError(f"queue_limit must be at least 1, got {queue_limit}")


def _sizes(resolutions: Sequence[Size]) -> tuple[Size, ...]:
    sizes = tuple(dict.fromkeys((int(h), int(w)) for h, w in resolutions))
    if not sizes:
        raise ValueError("a batching policy needs at least one resolution")
    if any(min(s) <= 0 for s in sizes):
        raise ValueError(f"resolutions must be positive, got {list(sizes)}")
    return sizes


class SloBatchingPolicy:
    """Batch size and resolution chosen together under a latency SLO, with shedding;
    see the module docstring for the rules.

    Args:
        resolutions: Resolutions the server may run, ``(height, width)``.
        predict_ms: Predicted p95 latency of a batch, ms (:data:`Predictor`).
        slo_ms: The latency objective per request, from arrival to answer, ms.
        max_batch: Largest batch.
        accuracy: Accuracy per resolution (any scale, higher is better); missing or
            ``None`` entries rank by pixel count below every known one of a larger size.
        queue_limit: Most requests waiting at once (default ``4 * max_batch``).
        batch_time_fraction: Most a batch's predicted latency may take of the SLO, in
            (0, 1].
    """

    def __init__(
        self,
        resolutions: Sequence[Size],
        predict_ms: Predictor,
        slo_ms: float,
        max_batch: int,
        *,
        accuracy: Mapping[Size, float | None] | None = None,
        queue_limit: int | None = None,
        batch_time_fraction: float = 0.5,
    ) -> None:
        queue_limit = 4 * max_batch if queue_limit is None else int(queue_limit)
        _check_common(slo_ms, max_batch, queue_limit)
        if not 0 < batch_time_fraction <= 1:
            raise ValueError(f"batch_time_fraction must be in (0, 1], got {batch_time_fraction}")
        self.resolutions = _sizes(resolutions)
        self.predict_ms = predict_ms
        self.slo_ms = float(slo_ms)
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.batch_time_fraction = float(batch_time_fraction)
        self.accuracy = dict(accuracy or {})

        def rank(size: Size) -> tuple[float, int]:
            known = self.accuracy.get(size)
            # unknown accuracy: order by pixels; known accuracy always decides first
            return (float("-inf") if known is None else float(known), size[0] * size[1])

        #: most accurate first
        self.by_accuracy: tuple[Size, ...] = tuple(sorted(self.resolutions, key=rank, reverse=True))

    @functools.cached_property
    def cheapest(self) -> Size:
        """The resolution with the smallest predicted single-image latency.

        Found once, at first use: admission asks for it on every request, and the
        server's predictor only ever scales every (resolution, batch) by one correction
        factor, which keeps the order."""
        return min(self.resolutions, key=lambda s: (self.predict_ms(s, 1), s[0] * s[1]))

    def _seconds(self, resolution: Size, batch: int) -> float:
        return self.predict_ms(resolution, batch) / 1000.0

    def drain_finish(
        self, queued: Sequence[float], start: float, cheapest: Size | None = None
    ) -> list[float]:
        """Predicted finish time of each queued request when the queue is served from
        ``start`` in arrival order, in batches of ``max_batch`` at the cheapest resolution."""
        cheapest = cheapest or self.cheapest
        finish: list[float] = []
        t = start
        for first in range(0, len(queued), self.max_batch):
            size = min(self.max_batch, len(queued) - first)
            t += self._seconds(cheapest, size)
            finish.extend([t] * size)
        return finish

    def _drains_in_time(
        self, queued: Sequence[float], start: float, cheapest: Size, budget: float
    ) -> bool:
        finish = self.drain_finish(queued, start, cheapest)
        return all(f <= a + budget for a, f in zip(queued, finish))

    def budget_s(self, overhead_s: float = 0.0) -> float:
        """Seconds from arrival to the end of a request's batch: the SLO less the time
        its answer takes to leave the server."""
        return self.slo_ms / 1000.0 - max(0.0, overhead_s)

    def admit(
        self,
        queued: Sequence[float],
        arrival: float,
        busy_until: float,
        overhead_s: float = 0.0,
    ) -> Admission:
        if len(queued) >= self.queue_limit:
            return Admission(False, "queue_full")
        # the newcomer is last in the drain: its finish is the drain's end, in closed form
        # (the same as drain_finish([*queued, arrival], ...)[-1], without the list)
        cheapest = self.cheapest
        full, rest = divmod(len(queued) + 1, self.max_batch)
        finish = max(arrival, busy_until) + full * self._seconds(cheapest, self.max_batch)
        if rest:
            finish += self._seconds(cheapest, rest)
        if finish > arrival + self.budget_s(overhead_s):
            return Admission(False, "slo", finish)
        return Admission(True, "", finish)

    def plan(self, queued: Sequence[float], now: float, overhead_s: float = 0.0) -> BatchDecision:
        budget = self.budget_s(overhead_s)
        cheapest = self.cheapest
        alone = self._seconds(cheapest, 1)
        expire = 0
        while expire < len(queued) and now + alone > queued[expire] + budget:
            expire += 1
        rest = queued[expire:]
        if not rest:
            return BatchDecision(expire, 0, None, 0.0, True)
        oldest = rest[0]
        limit = self.batch_time_fraction * budget
        most = min(len(rest), self.max_batch)
        for batch in range(most, 0, -1):
            for size in self.by_accuracy:
                ms = self.predict_ms(size, batch)
                if ms / 1000.0 > limit or now + ms / 1000.0 > oldest + budget:
                    continue
                left = rest[batch:]
                if left and not self._drains_in_time(left, now + ms / 1000.0, cheapest, budget):
                    continue
                return BatchDecision(expire, batch, size, ms, True)
        for batch in range(most, 0, -1):
            ms = self.predict_ms(cheapest, batch)
            if now + ms / 1000.0 <= oldest + budget or batch == 1:
                return BatchDecision(expire, batch, cheapest, ms, False)
        raise AssertionError("unreachable: a batch of one always qualifies")


class FixedBatchingPolicy:
    """One resolution, batches of what is queued up to ``max_batch``; sheds only when
    the queue is full (the dynamic batcher of Triton / Ray Serve, for comparison).

    Args:
        resolution: The one input ``(height, width)``.
        slo_ms: The latency objective (reported, not acted on).
        max_batch: Largest batch.
        predict_ms: Optional predictor, used only to report ``predicted_ms``.
        queue_limit: Most requests waiting at once (default ``4 * max_batch``).
    """

    def __init__(
        self,
        resolution: Size,
        slo_ms: float,
        max_batch: int,
        *,
        predict_ms: Predictor | None = None,
        queue_limit: int | None = None,
    ) -> None:
        queue_limit = 4 * max_batch if queue_limit is None else int(queue_limit)
        _check_common(slo_ms, max_batch, queue_limit)
        self.resolutions = _sizes([resolution])
        self.resolution = self.resolutions[0]
        self.slo_ms = float(slo_ms)
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.predict_ms = predict_ms

    def admit(
        self,
        queued: Sequence[float],
        arrival: float,
        busy_until: float,
        overhead_s: float = 0.0,
    ) -> Admission:
        if len(queued) >= self.queue_limit:
            return Admission(False, "queue_full")
        return Admission(True)

    def plan(self, queued: Sequence[float], now: float, overhead_s: float = 0.0) -> BatchDecision:
        batch = min(len(queued), self.max_batch)
        if batch == 0:
            return BatchDecision(0, 0, None, 0.0, True)
        predicted = 0.0 if self.predict_ms is None else self.predict_ms(self.resolution, batch)
        return BatchDecision(0, batch, self.resolution, predicted, False)
