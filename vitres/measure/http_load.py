"""An open-loop HTTP load generator that accounts for every request it was asked to send.

Open loop: request ``i`` is due at a fixed time of a schedule (Poisson arrivals,
:func:`poisson_schedule`) and is sent then, whatever the server is doing, so a slow
server meets more load, not less -- the measurement closed-loop clients get wrong
("coordinated omission", Tene, "How NOT to Measure Latency", 2013). Latency is counted
from the moment a request was due, so time it spent waiting in the client counts too.

The client is deliberately small: raw HTTP/1.1 over asyncio streams, keep-alive
connections reused from a pool, one pre-built request head per body, no HTTP library in
the loop. A general client (httpx) spends about 2 ms of CPU per request, more than the
server under test spends on the same request; on a small machine the client would then
be what the load test measures.

Every scheduled request ends in exactly one :class:`RequestResult` with one of
:data:`OUTCOMES`:

* ``response`` -- a complete HTTP response (any status; ``status`` says which);
* ``timeout`` -- the *client* gave up after ``timeout_s`` without a complete response
  (the server may still answer it later: this is the client's verdict, not the server's);
* ``closed`` -- the connection was closed or reset before a complete response: the
  server did not answer;
* ``refused`` -- the connection could not be opened;
* ``protocol_error`` -- the bytes that came back were not an HTTP/1.1 response;
* ``not_sent`` -- the client already had ``max_in_flight`` requests outstanding and
  did not send it (the client's own limit, reported so that it is never hidden).

Idle connections are closed by the client after ``idle_expiry_s`` (shorter than the
server's keep-alive timeout: uvicorn's is 5 s), so a request is never written to a
connection the server is closing at the same moment -- the keep-alive race that would
otherwise lose a request without the server ever seeing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "OUTCOMES",
    "LoadRun",
    "RequestResult",
    "ScheduledRequest",
    "drive_load",
    "poisson_schedule",
    "run_load",
]

OUTCOMES = ("response", "timeout", "closed", "refused", "protocol_error", "not_sent")


@dataclass(frozen=True)
class ScheduledRequest:
    """One request of a schedule.

    Attributes:
        due_s: When it is due, seconds after the start of the run.
        body: Index into the bodies given to :func:`drive_load`.
    """

    due_s: float
    body: int


@dataclass
class RequestResult:
    """What happened to one scheduled request.

    Attributes:
        index: Its position in the schedule.
        due_s: When it was due (seconds after the start).
        outcome: One of :data:`OUTCOMES`.
        status: The HTTP status of a ``response``; ``None`` otherwise.
        latency_s: Due to complete response (``response``), or due to the client's
            verdict (the other outcomes but ``not_sent``).
        send_lag_s: How late the client wrote it (write time minus due time).
        body: The response body of a ``response``.
        headers: The response head of a ``response`` (status line and headers), lower
            case.
        error: What failed, for the transport outcomes.
    """

    index: int
    due_s: float
    outcome: str
    status: int | None = None
    latency_s: float | None = None
    send_lag_s: float | None = None
    body: bytes = b""
    headers: bytes = b""
    error: str = ""


@dataclass
class LoadRun:
    """A finished run: one result per scheduled request, in schedule order.

    Attributes:
        results: Per request.
        wall_s: From the first due time to the last verdict.
        client_cpu_s: CPU time of this process during the run (all threads).
        connections_opened: TCP connections the client opened.
    """

    results: list[RequestResult]
    wall_s: float
    client_cpu_s: float
    connections_opened: int
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {name: 0 for name in OUTCOMES}
        for result in self.results:
            self.counts[result.outcome] += 1

    @property
    def client_cpu_ms_per_request(self) -> float | None:
        """The client's CPU per request it sent, ms."""
        sent = len(self.results) - self.counts["not_sent"]
        return 1000.0 * self.client_cpu_s / sent if sent else None


def poisson_schedule(
    rate: float, duration_s: float, bodies: int, seed: int
) -> list[ScheduledRequest]:
    """Poisson arrivals at ``rate`` per second over ``duration_s``, each with a body
    drawn uniformly from ``bodies``.

    Raises:
        ValueError: a rate, duration or body count that is not positive.
    """
    if not rate > 0 or not duration_s > 0 or bodies < 1:
        raise ValueError(
            f"a schedule needs a positive rate, duration and body count; got rate {rate}, "
            f"duration {duration_s} s, {bodies} bodies"
        )
    rng = np.random.default_rng(seed)
    due = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.3) + 20))
    while due[-1] < duration_s:  # rare: the draw ran short of the horizon
        more = rng.exponential(1.0 / rate, size=int(rate * duration_s * 0.3) + 20)
        due = np.concatenate([due, due[-1] + np.cumsum(more)])
    due = due[due < duration_s]
    picks = rng.integers(0, bodies, size=len(due))
    return [ScheduledRequest(float(t), int(b)) for t, b in zip(due, picks)]


class _Protocol(Exception):
    pass


class _Connection:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes, bool]:
    """One HTTP/1.1 response: status, head (lower case), body, whether the connection
    may be reused."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Protocol("a response head over 64 KiB") from None
    if not head.startswith(b"HTTP/1.") or len(head) < 12 or not head[9:12].isdigit():
        raise _Protocol(f"not an HTTP/1.x status line: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    keep_alive = b"\r\nconnection: close" not in lower and head.startswith(b"HTTP/1.1")
    start = lower.find(b"\r\ncontent-length:")
    if start >= 0:
        end = lower.index(b"\r\n", start + 2)
        length = int(lower[start + 17 : end])
        return status, lower, await reader.readexactly(length), keep_alive
    if b"\r\ntransfer-encoding: chunked" in lower:
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                while chunk != b"\r\n":  # trailers, then the blank line
                    chunk = await reader.readuntil(b"\r\n")
                break
            chunks.append(chunk[:-2])
        return status, lower, b"".join(chunks), keep_alive
    return status, lower, await reader.read(), False  # delimited by the connection's end


async def drive_load(
    host: str,
    port: int,
    path: str,
    schedule: Sequence[ScheduledRequest],
    bodies: Sequence[bytes],
    *,
    content_type: str = "application/octet-stream",
    timeout_s: float = 10.0,
    max_in_flight: int = 1024,
    idle_expiry_s: float = 2.0,
) -> LoadRun:
    """Sends ``schedule`` (open loop) as ``POST path`` to ``host:port``; see the module
    docstring for the outcomes.

    Args:
        host: Server address.
        port: Server port.
        path: Request target, e.g. ``"/v1/classify"``.
        schedule: What to send when (:func:`poisson_schedule`).
        bodies: Request bodies, indexed by :attr:`ScheduledRequest.body`.
        content_type: ``Content-Type`` of every request.
        timeout_s: The client gives up on a request this long after writing it.
        max_in_flight: Most requests outstanding at once; more are ``not_sent``.
        idle_expiry_s: Idle connections older than this are closed, not reused.

    Returns:
        One result per scheduled request, in schedule order.
    """
    if not timeout_s > 0 or max_in_flight < 1 or not idle_expiry_s > 0:
        raise ValueError(
            f"timeout_s and idle_expiry_s must be positive and max_in_flight at least 1; got "
            f"{timeout_s}, {idle_expiry_s}, {max_in_flight}"
        )
    prefix = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
    ).encode("latin-1")
    requests = [prefix + b"Content-Length: %d\r\n\r\n" % len(body) + body for body in bodies]
    driver = _LoadDriver(host, port, requests, len(schedule), timeout_s, idle_expiry_s)
    return await driver.run(schedule, max_in_flight)


class _LoadDriver:
    """The state of one open-loop load run: the connections, what is in flight, and one
    result slot per scheduled request."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: list[bytes],
        count: int,
        timeout_s: float,
        idle_expiry_s: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.requests = host, port, requests
        self.timeout_s, self.idle_expiry_s = timeout_s, idle_expiry_s
        self.results: list[RequestResult | None] = [None] * count
        self.idle: deque[_Connection] = deque()
        self.opened = 0
        self.in_flight = 0
        self.start = 0.0

    async def run(self, schedule: Sequence[ScheduledRequest], max_in_flight: int) -> LoadRun:
        """Sends every request at its due time (or marks it ``not_sent`` when
        ``max_in_flight`` are outstanding) and waits for all of them."""
        loop = self.loop
        cpu_start = time.process_time()
        self.start = start = loop.time() + 0.05
        tasks: set[asyncio.Task] = set()
        for index, item in enumerate(schedule):
            due = start + item.due_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.in_flight >= max_in_flight:
                self.results[index] = RequestResult(index, item.due_s, "not_sent")
                continue
            self.in_flight += 1
            task = loop.create_task(self.one(index, due, item.body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))
        wall = loop.time() - start
        for conn in self.idle:
            conn.close()
        finished = [r for r in self.results if r is not None]
        if len(finished) != len(schedule):  # every path above stores one; a bug if not
            raise RuntimeError(f"{len(schedule) - len(finished)} requests have no recorded outcome")
        return LoadRun(finished, wall, time.process_time() - cpu_start, self.opened)

    async def connection(self) -> tuple[_Connection, bool]:
        """A warm idle connection (the most recently used), else a new one; and whether
        it was reused."""
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the warmest
            if now - conn.idle_since < self.idle_expiry_s and not conn.reader.at_eof():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return _Connection(reader, writer), False

    async def one(self, index: int, due: float, body: int) -> None:
        """Sends request ``index`` and records its outcome."""
        loop = self.loop
        conn: _Connection | None = None
        # timers fire up to a clock tick early (uvloop: 1 ms), which is no lag at all
        send_lag = max(0.0, loop.time() - due)
        result = RequestResult(index, due - self.start, "timeout", send_lag_s=send_lag)
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    conn, _ = await self.connection()
                except OSError as error:
                    result.outcome, result.error = "refused", f"{type(error).__name__}: {error}"
                    return
                conn.writer.write(self.requests[body])
                await conn.writer.drain()
                status, head, content, keep_alive = await _read_response(conn.reader)
            result.outcome, result.status = "response", status
            result.body, result.headers = content, head
            if keep_alive:
                conn.idle_since = loop.time()
                self.idle.append(conn)
                conn = None
        except TimeoutError:
            result.outcome = "timeout"
            result.error = f"no complete response in {self.timeout_s:g} s"
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as error:
            result.outcome, result.error = "closed", f"{type(error).__name__}: {error}"
        except (_Protocol, ValueError) as error:
            result.outcome, result.error = "protocol_error", str(error)
        finally:
            self.in_flight -= 1
            result.latency_s = max(0.0, loop.time() - due)
            self.results[index] = result
            if conn is not None:
                conn.close()


def run_load(*args: object, **kwargs: object) -> LoadRun:
    """:func:`drive_load` on a fresh event loop (uvloop's when it is installed: cheaper
    per request, so the client stays out of the measurement)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(drive_load(*args, **kwargs))  # type: ignore[arg-type]
