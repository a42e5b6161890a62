"""The load generator's bookkeeping against a scripted HTTP server on loopback: every
scheduled request ends in exactly one outcome, and a client timeout, a connection the
server closed without answering, a refused connection and the client's own in-flight
limit are told apart (the load test once counted them all as "no response")."""

import asyncio
import socket
import threading

import numpy as np
import pytest

from vitres.measure.http_load import OUTCOMES, ScheduledRequest, poisson_schedule, run_load

# what the scripted server does with a request, chosen by its body
BODIES = [b"ok", b"chunked", b"close", b"stall", b"shed", b"garbage"]
OK, CHUNKED, CLOSE, STALL, SHED, GARBAGE = range(len(BODIES))


async def scripted_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            if body == b"ok":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nfine:ok")
            elif body == b"chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                )
            elif body == b"shed":
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
                    b"content-length: 4\r\n\r\nshed"
                )
            elif body == b"garbage":
                writer.write(b"SMTP ready\r\n\r\n")
            elif body == b"close":
                writer.close()  # read the request, answer nothing
                return
            elif body == b"stall":
                await asyncio.sleep(3600)  # never answers (cancelled at shutdown)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class ServerThread:
    """The scripted server on its own event loop in a thread (as a real server would be
    another process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(scripted_server, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture()
def server():
    running = ServerThread()
    yield running
    running.close()


def at(*kinds: int, gap: float = 0.0) -> list[ScheduledRequest]:
    return [ScheduledRequest(i * gap, kind) for i, kind in enumerate(kinds)]


def test_every_request_gets_exactly_one_outcome_and_each_failure_its_own(server):
    schedule = at(OK, CHUNKED, SHED, CLOSE, STALL, GARBAGE, OK, gap=0.01)
    run = run_load("127.0.0.1", server.port, "/v1/x", schedule, BODIES, timeout_s=0.5)
    assert [r.index for r in run.results] == list(range(len(schedule)))
    outcomes = [(r.outcome, r.status) for r in run.results]
    assert outcomes == [
        ("response", 200),
        ("response", 200),
        ("response", 503),
        ("closed", None),  # the server read it and closed: it did not answer
        ("timeout", None),  # the client gave up: its own verdict, not the server's
        ("protocol_error", None),
        ("response", 200),
    ]
    assert run.results[0].body == b"fine:ok" and run.results[1].body == b"abcde"
    assert b"retry-after: 1" in run.results[2].headers
    assert "0.5 s" in run.results[4].error
    assert run.counts == {
        "response": 4,
        "timeout": 1,
        "closed": 1,
        "refused": 0,
        "protocol_error": 1,
        "not_sent": 0,
    }
    assert set(run.counts) == set(OUTCOMES)
    # a timed-out request is given up only after the client's timeout (the event loop's
    # timer may fire within its clock resolution of the deadline, and the latency is a
    # difference of two float clock readings: allow a microsecond for both)
    assert run.results[4].latency_s >= 0.5 - 1e-6
    assert all(r.latency_s >= 0 and r.send_lag_s >= 0 for r in run.results)


def test_a_port_nobody_listens_on_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    run = run_load("127.0.0.1", port, "/", at(OK, OK), BODIES, timeout_s=5)
    assert [r.outcome for r in run.results] == ["refused", "refused"]
    assert "ConnectionRefusedError" in run.results[0].error


def test_requests_over_the_in_flight_limit_are_not_sent_and_say_so(server):
    # three due at once, at most one outstanding: the first stalls, the others wait for
    # nothing -- they are counted, not silently dropped
    schedule = at(STALL, OK, OK)
    run = run_load("127.0.0.1", server.port, "/", schedule, BODIES, timeout_s=0.3, max_in_flight=1)
    assert [r.outcome for r in run.results] == ["timeout", "not_sent", "not_sent"]
    assert run.client_cpu_ms_per_request is not None  # one was sent


def test_connections_are_kept_alive_unless_idle_past_the_expiry(server):
    schedule = at(*[OK] * 6, gap=0.02)
    # an expiry shorter than any gap: every request needs a new connection
    fresh = run_load("127.0.0.1", server.port, "/", schedule, BODIES, idle_expiry_s=1e-9)
    assert fresh.connections_opened == 6
    assert all(r.status == 200 for r in fresh.results)

    # at most one outstanding: every request that is sent finds the one before it
    # answered and its connection idle in the pool, however the timing falls
    reused = run_load(
        "127.0.0.1", server.port, "/", schedule, BODIES, max_in_flight=1, idle_expiry_s=60
    )
    assert reused.connections_opened == 1
    assert reused.counts["response"] + reused.counts["not_sent"] == 6
    assert reused.results[0].status == 200


def test_the_poisson_schedule_is_reproducible_and_has_the_asked_rate():
    a = poisson_schedule(200.0, 50.0, bodies=7, seed=3)
    assert a == poisson_schedule(200.0, 50.0, bodies=7, seed=3)
    due = np.array([r.due_s for r in a])
    assert np.all(np.diff(due) >= 0) and due[0] >= 0 and due[-1] < 50.0
    # 10 000 arrivals expected; a Poisson count is within 4 standard deviations (400)
    assert abs(len(a) - 10_000) < 400
    gaps = np.diff(due)
    assert gaps.mean() == pytest.approx(1 / 200.0, rel=0.05)
    assert gaps.std() == pytest.approx(1 / 200.0, rel=0.05)  # exponential: std = mean
    assert {r.body for r in a} == set(range(7))
    with pytest.raises(ValueError, match="positive rate"):
        poisson_schedule(0.0, 1.0, bodies=1, seed=0)
