"""The batching worker: one thread that owns the model, a bounded queue in front of it,
and the switch to the safe configuration when the monitor asks for a rollback.

Requests enter through :meth:`BatchingWorker.submit` (from the HTTP handlers, any
thread); the policy (:mod:`vitres.serve.batching`) admits or sheds each one at once
(:meth:`BatchingWorker.check_admission` asks the same question before a request's body
is even read, so that an overloaded server sheds cheaply). Both count the delay of the
server's event loop (:class:`vitres.serve.loop_delay.LoopDelay`) against the SLO: a
request is taken to have arrived that much before its handler started, and its answer
to need that much to leave the server.
The worker thread takes the queue's arrival times and the time now to the policy, sheds
the requests it says have expired, runs the batch it chose, and answers each request
through its own :class:`concurrent.futures.Future` -- exactly once: with a result, or
with a :class:`RequestRejected` that says why. A failing batch fails its requests, not
the worker. Each measured batch corrects the latency model online
(:class:`vitres.runtime.latency.OnlineCorrection`, shared with the stream controller)
and is shown to the band monitor (:mod:`vitres.serve.monitor`).

On :meth:`BatchingWorker.stop` it stops admitting, finishes every queued request, then
exits; anything still unanswered after the timeout is answered "shutting down".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from vitres.runtime.latency import OnlineCorrection
from vitres.serve.batching import Admission, BatchDecision, BatchingPolicy
from vitres.serve.engine import ServingEngine
from vitres.serve.loop_delay import LoopDelay
from vitres.serve.metrics import ServerMetrics
from vitres.serve.monitor import BandMonitor, RollbackEvent

Size = tuple[int, int]

__all__ = [
    "BatchFailed",
    "BatchingWorker",
    "CorrectedPredictor",
    "RequestRejected",
    "ServingMode",
    "Shed",
    "ShuttingDown",
]

logger = logging.getLogger("vitres.serve")


class RequestRejected(Exception):
    """A request answered without a prediction.

    Attributes:
        status: The HTTP status to answer with.
        kind: Short machine-readable reason (``"shed"``, ``"shutting_down"``...).
        retry_after_s: Seconds a client should wait before retrying, when it should.
    """

    status = 503
    kind = "unavailable"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Shed(RequestRejected):
    """Shed to hold the SLO: admission found no way to answer it in time, the queue was
    full, or it waited until it could no longer make its deadline."""

    kind = "shed"

    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s)
        self.reason = reason


class ShuttingDown(RequestRejected):
    """The server is stopping and takes no new work."""

    kind = "shutting_down"


class BatchFailed(RequestRejected):
    """The batch holding the request raised; the message names the error."""

    status = 500
    kind = "inference_error"


class CorrectedPredictor:
    """The shared latency model as the policy's predictor: the sweep's p95 per
    (resolution, batch), looked up once and kept, times the online correction factor.

    Args:
        correction: The latency model wrapped in its online correction.
    """

    def __init__(self, correction: OnlineCorrection) -> None:
        self.correction = correction
        self._p95: dict[tuple[Size, int], float] = {}

    def band_ms(self, resolution: Size, batch: int) -> float:
        """The sweep's p95 (uncorrected) for ``resolution`` and ``batch``, ms."""
        key = (tuple(resolution), int(batch))
        value = self._p95.get(key)
        if value is None:
            value = self._p95[key] = self.correction.model.p95_ms(key[0], key[1])
        return value

    def __call__(self, resolution: Size, batch: int) -> float:
        """Corrected p95 latency, ms (the :data:`~vitres.serve.batching.Predictor`)."""
        return self.band_ms(resolution, batch) * self.correction.factor

    def observe(self, resolution: Size, batch: int, measured_ms: float) -> float:
        """Feeds one measured batch to the correction; returns the new factor."""
        return self.correction.observe(tuple(resolution), int(batch), max(measured_ms, 1e-6))


@dataclass
class ServingMode:
    """One way of serving: an engine, the policy that drives it, its predictor.

    Attributes:
        name: Shown in answers and logs, e.g. ``"predictive"``, ``"fixed:28x28"``,
            ``"safe:16x16/eager"``.
        engine: Runs the batches.
        policy: Chooses them.
        predictor: The corrected latency model (``None``: no correction, no band).
    """

    name: str
    engine: ServingEngine
    policy: BatchingPolicy
    predictor: CorrectedPredictor | None = None

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.policy.resolutions)
        return (
            f"{self.name}: {self.engine.backend_name} ({self.engine.precision}), resolutions "
            f"{sizes}, batches up to {self.policy.max_batch}"
        )


@dataclass
class _Pending:
    image: torch.Tensor
    arrival: float  # what the policy sees: the handler's start less the loop's delay
    started: float  # the handler's start (answers report their times from it)
    top_k: int
    future: Future = field(default_factory=Future)


@dataclass
class WorkerStats:
    """Counts since start: answered with a prediction, shed, failed, batches run."""

    answered: int = 0
    shed: int = 0
    failed: int = 0
    batches: int = 0
    rollbacks: list[RollbackEvent] = field(default_factory=list)


class BatchingWorker:
    """The queue and the thread that serves it.

    Args:
        mode: How to serve.
        metrics: Where to count.
        safe: What to roll back to; ``None`` disables rollback (it is still logged).
        monitor: Watches served latency and errors; ``None`` disables monitoring.
        clock: Monotonic seconds; requests' arrival times must come from the same clock.
        retry_after_s: What a shed request is told to wait.
        loop_delay: The serving event loop's delay (the app runs its heartbeat); ``None``
            counts none.
    """

    def __init__(
        self,
        mode: ServingMode,
        metrics: ServerMetrics,
        *,
        safe: ServingMode | None = None,
        monitor: BandMonitor | None = None,
        clock: Callable[[], float] = time.perf_counter,
        retry_after_s: float = 1.0,
        loop_delay: LoopDelay | None = None,
    ) -> None:
        self.mode = mode
        self.primary = mode
        self.safe = safe
        self.metrics = metrics
        self.monitor = monitor
        self.clock = clock
        self.retry_after_s = float(retry_after_s)
        self.loop_delay = loop_delay or LoopDelay(clock=clock)
        self.stats = WorkerStats()
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._busy_until = 0.0
        self._in_flight_limit = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        metrics.queue_depth.set_function(lambda: float(len(self._queue)))

    # ------------------------------------------------------------------ state

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def running(self) -> bool:
        """True while the worker thread is alive (started, not yet stopped)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def rolled_back(self) -> bool:
        return self.mode is not self.primary

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def num_classes(self) -> int:
        return self.mode.engine.num_classes

    @property
    def in_chans(self) -> int:
        return self.mode.engine.in_chans

    # ------------------------------------------------------------------ requests

    def _admission(self, arrival: float, now: float) -> Admission:
        """The policy's verdict on a request arriving at ``arrival`` (under the lock)."""
        return self.mode.policy.admit(
            [p.arrival for p in self._queue],
            arrival,
            max(self._busy_until, now),
            self.loop_delay.delay_s(now),
        )

    def _shed(self, reason: str) -> Shed:
        """Counts one request shed at admission and says why."""
        policy = self.mode.policy
        self.stats.shed += 1
        self.metrics.shed.labels(reason=reason).inc()
        if reason == "queue_full":
            message = f"the queue is full ({policy.queue_limit} requests waiting); retry later"
        elif reason == "in_flight":
            message = (
                f"overloaded: {self._in_flight_limit} requests are already inside the server; "
                "retry later"
            )
        else:
            message = (
                f"overloaded: even the smallest resolution cannot answer within the "
                f"{policy.slo_ms:g} ms SLO now; retry later"
            )
        return Shed(reason, message, self.retry_after_s)

    def shed_in_flight(self, limit: int) -> Shed:
        """Counts a request the HTTP layer sheds because ``limit`` requests are already
        inside it (reason ``"in_flight"``), and says why."""
        with self._cond:
            self._in_flight_limit = limit
            return self._shed("in_flight")

    def check_admission(self, started: float) -> float:
        """Decides, without queueing anything, whether a request whose handler started at
        ``started`` would be admitted now; the HTTP layer asks before it reads and
        decodes the body, so that shedding under overload costs little.

        Returns:
            The delay the event loop has now, seconds (pass it on to :meth:`submit`).

        Raises:
            ShuttingDown: the worker is stopping.
            Shed: the policy would refuse it (counted as shed, like :meth:`submit`).
        """
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            now = self.clock()
            waited = self.loop_delay.waited_s(now)
            admission = self._admission(started - waited, now)
            if not admission.admitted:
                raise self._shed(admission.reason)
        return waited

    def submit(
        self,
        image: torch.Tensor,
        arrival: float,
        top_k: int = 5,
        *,
        waited_s: float = 0.0,
    ) -> Future:
        """Queues a decoded image; its future answers it (a result dict, or an exception).

        Args:
            image: uint8 ``(C, H, W)``, as :func:`vitres.data.decode.decode_image` gives.
            arrival: When the request's handler started (``self.clock`` time).
            top_k: Classes to return.
            waited_s: How long the request is taken to have waited before its handler
                started (the event loop's delay then); its deadline counts from
                ``arrival - waited_s``.

        Raises:
            ShuttingDown: the worker is stopping.
            Shed: the policy refused it (reason ``"slo"`` or ``"queue_full"``).
        """
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            effective = arrival - max(0.0, waited_s)
            admission = self._admission(effective, self.clock())
            if not admission.admitted:
                raise self._shed(admission.reason)
            pending = _Pending(image, effective, arrival, int(top_k))
            self._queue.append(pending)
            self._cond.notify()
        return pending.future

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Starts the worker thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="vitres-batching", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = 30.0) -> None:
        """Stops admitting, lets the thread finish every queued request, waits for it
        (at most ``timeout_s``), then answers whatever is left "shutting down"."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for pending in left:
            self._reject(pending, ShuttingDown("the server stopped before this request ran"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything queued is answered
                mode = self.mode
                now = self.clock()
                try:
                    decision = mode.policy.plan(
                        [p.arrival for p in self._queue], now, self.loop_delay.delay_s(now)
                    )
                except Exception:  # noqa: BLE001 - a broken policy must not kill the thread
                    logger.exception("the batching policy failed; running the oldest request")
                    decision = BatchDecision(0, 1, mode.policy.resolutions[0], 0.0, False)
                decision = self._sane(decision, mode, len(self._queue))
                expired = [self._queue.popleft() for _ in range(decision.expire)]
                batch = [self._queue.popleft() for _ in range(decision.batch_size)]
                if batch:
                    self._busy_until = now + decision.predicted_ms / 1000.0
            for pending in expired:
                self.stats.shed += 1
                self.metrics.shed.labels(reason="expired").inc()
                self._reject(
                    pending,
                    Shed(
                        "expired",
                        f"overloaded: the request waited until no resolution could answer it "
                        f"within the {mode.policy.slo_ms:g} ms SLO; retry later",
                        self.retry_after_s,
                    ),
                )
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if batch:
                try:
                    self._run_batch(
                        mode, decision.resolution or mode.policy.resolutions[0], batch, now
                    )
                except Exception as error:  # noqa: BLE001 - the worker outlives any batch
                    logger.exception("batch bookkeeping failed")
                    for pending in batch:
                        self._fail(pending, f"{type(error).__name__}: {error}")

    @staticmethod
    def _sane(decision: BatchDecision, mode: ServingMode, queued: int) -> BatchDecision:
        """The decision clamped to the queue; one that makes no progress (or names no
        resolution for its batch) becomes "run the oldest request"."""
        expire = max(0, min(decision.expire, queued))
        batch = max(0, min(decision.batch_size, queued - expire))
        if expire + batch == 0 or (batch and decision.resolution is None):
            size = decision.resolution or mode.policy.resolutions[0]
            return BatchDecision(0, 1, size, decision.predicted_ms, False)
        if (expire, batch) != (decision.expire, decision.batch_size):
            return BatchDecision(
                expire, batch, decision.resolution, decision.predicted_ms, decision.meets_slo
            )
        return decision

    # ------------------------------------------------------------------ one batch

    def _run_batch(self, mode: ServingMode, size: Size, batch: list[_Pending], now: float) -> None:
        engine, count = mode.engine, len(batch)
        start = self.clock()
        try:
            x = engine.preprocess([p.image for p in batch], size)
            forward_start = self.clock()
            logits = engine.forward(x, size)
            end = self.clock()
            if logits.shape != (count, engine.num_classes):
                raise RuntimeError(
                    f"the backend returned logits of shape {tuple(logits.shape)} for a batch "
                    f"of {count}, expected ({count}, {engine.num_classes})"
                )
            probabilities = torch.softmax(logits.float(), dim=-1)
        except Exception as error:  # noqa: BLE001 - answer the batch, keep serving
            logger.exception("a batch of %d at %dx%d failed", count, *size)
            for pending in batch:
                self._fail(pending, f"{type(error).__name__}: {error}")
            self._observe(mode, size, count, None, None, errors=count)
            return
        service_ms = (end - start) * 1000.0
        forward_ms = (end - forward_start) * 1000.0
        # one top-k for the whole batch, as Python numbers at once (not per element)
        k_most = min(max(p.top_k for p in batch), engine.num_classes)
        top = torch.topk(probabilities, k_most, dim=-1)
        names = engine.class_names
        results: list[dict[str, Any]] = []
        for values, indices, pending in zip(top.values.tolist(), top.indices.tolist(), batch):
            k = min(pending.top_k, engine.num_classes)
            ranked = [
                {"label": names[i], "index": i, "probability": p}
                for p, i in zip(values[:k], indices[:k])
            ]
            results.append(
                {
                    **ranked[0],
                    "top_k": ranked,
                    "resolution": list(size),
                    "batch_size": count,
                    "queue_ms": (now - pending.started) * 1000.0,
                    "latency_ms": (end - pending.started) * 1000.0,
                    "controller": mode.name,
                }
            )
        # the batch is counted before anyone is answered, so /metrics never lags an answer
        self.stats.answered += count
        self.stats.batches += 1
        m = self.metrics
        m.batch_latency.observe(service_ms / 1000.0)
        m.batch_size.observe(count)
        m.current_batch.set(count)
        m.resolution.labels(side="height").set(size[0])
        m.resolution.labels(side="width").set(size[1])
        for pending in batch:
            m.queue_wait.observe(max(0.0, now - pending.started))
        for pending, result in zip(batch, results):
            pending.future.set_result(result)
        if mode.predictor is not None:
            m.correction.set(mode.predictor.observe(size, count, service_ms))
        self._observe(mode, size, count, forward_ms, end, errors=0)

    def _observe(
        self,
        mode: ServingMode,
        size: Size,
        count: int,
        forward_ms: float | None,
        end: float | None,
        errors: int,
    ) -> None:
        if self.monitor is None:
            return
        band = None if mode.predictor is None else mode.predictor.band_ms(size, count)
        event = self.monitor.observe(
            self.clock() if end is None else end, forward_ms, band, count, errors
        )
        state = self.monitor.state
        if state.latency_ratio == state.latency_ratio:  # not nan
            self.metrics.band_ratio.set(state.latency_ratio)
        self.metrics.error_rate.set(state.error_rate)
        if event is not None:
            self._roll_back(event)

    def _roll_back(self, event: RollbackEvent) -> None:
        self.stats.rollbacks.append(event)
        self.metrics.rollbacks.labels(reason=event.reason).inc()
        if self.safe is None or self.mode is self.safe:
            logger.warning("out of band (%s); no safe configuration to roll back to", event.detail)
            return
        with self._cond:
            self.mode = self.safe
        self.metrics.rolled_back.set(1)
        logger.warning(
            "rollback: %s; now serving the safe configuration (%s)",
            event.detail,
            self.safe.describe(),
        )

    # ------------------------------------------------------------------ answers

    def _reject(self, pending: _Pending, error: RequestRejected) -> None:
        future = pending.future
        if future.done() or (not future.running() and not future.set_running_or_notify_cancel()):
            return  # already answered, or its handler gave up (it answered the client)
        future.set_exception(error)

    def _fail(self, pending: _Pending, message: str) -> None:
        self.stats.failed += 1
        if not pending.future.done():
            pending.future.set_exception(BatchFailed(f"inference failed: {message}"))
