"""The event-loop delay the server's admission counts: the bookkeeping against a fake
clock (every value checked exactly against the rule LoopDelay documents), and the
heartbeat on a real event loop that is made to stall."""

import asyncio
import time

import pytest

from vitres.serve.loop_delay import LoopDelay


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def beats(delay: LoopDelay, clock: FakeClock, latenesses) -> None:
    """Beats that each slept the interval and woke ``lateness`` late."""
    for lateness in latenesses:
        clock.now += delay.interval_s + lateness
        delay.observe(clock.now, lateness)


def test_without_a_heartbeat_the_delay_is_zero():
    clock = FakeClock()
    delay = LoopDelay(clock=clock)
    clock.now = 100.0
    assert not delay.running
    assert delay.delay_s() == 0.0 and delay.waited_s() == 0.0


def test_the_delay_is_the_windows_quantile_of_lateness():
    clock = FakeClock()
    delay = LoopDelay(interval_s=0.01, window_s=1.0, quantile=0.9, clock=clock)
    # 20 beats: 18 at 1 ms, two at 4 ms and 5 ms
    beats(delay, clock, [0.001] * 9 + [0.004] + [0.001] * 9 + [0.005])
    clock.now += delay.interval_s / 2  # between beats: nothing overdue
    # the 90th percentile of 20 = the 18th smallest = 1 ms: what an answer handed over
    # now waits; a handler starting now has waited up to the last beat's 5 ms (it counts
    # for the 10 ms after that beat)
    assert delay.delay_s() == pytest.approx(0.001)
    assert delay.waited_s() == pytest.approx(0.005)
    clock.now += delay.interval_s  # those 10 ms are over; the next beat is 5 ms overdue
    assert delay.delay_s() == pytest.approx(0.005)
    assert delay.waited_s() == pytest.approx(0.005)
    beats(delay, clock, [0.001])  # the next beat comes, on time; the 19th smallest of 21
    assert delay.delay_s() == pytest.approx(0.001)
    assert delay.waited_s() == pytest.approx(0.001)
    beats(delay, clock, [0.004, 0.006])  # now 4 of 23 beats are late: the 21st smallest
    clock.now += 0.005
    assert delay.delay_s() == pytest.approx(0.004)
    assert delay.waited_s() == pytest.approx(0.006)  # the last beat still counts
    clock.now += 0.006
    assert delay.waited_s() == pytest.approx(0.004)  # the quantile: 4 ms


def test_one_long_stall_counts_for_as_long_as_it_lasted_then_the_quantile_decides():
    clock = FakeClock()
    delay = LoopDelay(interval_s=0.01, window_s=0.5, quantile=0.9, clock=clock)
    beats(delay, clock, [0.0] * 30)
    beats(delay, clock, [0.3])  # the loop was stuck for 300 ms
    assert delay.waited_s() == pytest.approx(0.3)
    clock.now += 0.29
    assert delay.waited_s() == pytest.approx(0.3)  # the backlog behind it is still there
    beats(delay, clock, [0.0] * 3)  # the loop runs on time again, 0.32 s after the stall
    # still in the window, and 1 beat of 4 there: above the 90th percentile's rank
    assert delay.delay_s() == pytest.approx(0.3)
    beats(delay, clock, [0.0] * 6)  # 1 late beat of 10 is no longer the 90th percentile
    assert delay.delay_s() == 0.0 and delay.waited_s() == 0.0


def test_an_overdue_heartbeat_shows_a_stall_that_is_still_going_on():
    clock = FakeClock()
    delay = LoopDelay(interval_s=0.01, window_s=0.25, clock=clock)
    beats(delay, clock, [0.0] * 5)
    due = clock.now + delay.interval_s
    clock.now = due + 0.2  # 200 ms past the next beat's time, and no beat yet
    assert delay.delay_s() == pytest.approx(0.2)
    assert delay.waited_s() == pytest.approx(0.2)


def test_beats_older_than_the_window_are_forgotten():
    clock = FakeClock()
    delay = LoopDelay(interval_s=0.01, window_s=0.1, quantile=1.0, clock=clock)
    beats(delay, clock, [0.02])
    beats(delay, clock, [0.0] * 12)  # 0.12 s later: the late beat has left the window
    assert delay.delay_s() == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        LoopDelay(interval_s=0)
    with pytest.raises(ValueError, match="quantile"):
        LoopDelay(quantile=0)


def test_the_heartbeat_sees_a_blocked_event_loop_and_stops_cleanly():
    async def scenario() -> tuple[float, float, bool]:
        delay = LoopDelay(interval_s=0.005)
        task = asyncio.get_running_loop().create_task(delay.run())
        await asyncio.sleep(0.02)
        time.sleep(0.2)  # block the loop: anything ready now waits 200 ms
        await asyncio.sleep(0)  # the heartbeat, due long ago, runs first or next
        await asyncio.sleep(0.006)
        seen = delay.waited_s()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen, delay.waited_s(), delay.running

    seen, after, running = asyncio.run(scenario())
    assert seen >= 0.15  # at least the blocked time less a beat (sleep never wakes early)
    assert after == 0.0 and not running
