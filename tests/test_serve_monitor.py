"""The band monitor against a fake clock: when it rolls back, and when it must not."""

import math

import pytest

from vitres.serve.monitor import BandMonitor, RollbackEvent


def feed(monitor, start, stop, step, measured_ms, band_ms=2.0, requests=4, errors=0):
    """Batches every ``step`` s from ``start`` to ``stop``; the first event, or None."""
    event = None
    t = start
    while t < stop - 1e-9:
        got = monitor.observe(t, measured_ms, band_ms, requests, errors)
        event = event or got
        t = round(t + step, 9)
    return event


def test_in_band_serving_never_rolls_back():
    monitor = BandMonitor(window_s=2.0, latency_tolerance=2.0)
    assert feed(monitor, 0.0, 30.0, 0.1, measured_ms=3.9) is None  # 1.95x < 2x
    assert monitor.state.latency_ratio == pytest.approx(1.95)
    assert monitor.state.out_of_band == ""


def test_latency_out_of_band_for_a_window_rolls_back_once_at_the_predicted_time():
    monitor = BandMonitor(window_s=2.0, latency_tolerance=2.0, min_batches=5)
    assert feed(monitor, 0.0, 10.0, 0.1, measured_ms=2.0) is None  # ratio 1
    # from t=10 every batch is 3x the band. The window (2 s, 20 batches) holds more slow
    # than fast batches from the 11th slow one on (t = 11.0); out of band from then, it
    # must stay so for 2 s: the rollback comes at t = 13.0.
    events = []
    t = 10.0
    while t < 20.0:
        event = monitor.observe(t, 6.0, 2.0, 4)
        if event:
            events.append(event)
        t = round(t + 0.1, 9)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RollbackEvent)
    assert event.reason == "latency"
    assert event.time == pytest.approx(13.0)
    assert "3.00x" in event.detail
    assert monitor.tripped


def test_a_burst_shorter_than_the_window_does_not_roll_back():
    monitor = BandMonitor(window_s=2.0, latency_tolerance=2.0)
    feed(monitor, 0.0, 5.0, 0.1, measured_ms=2.0)
    # 1.5 s of 4x slow batches: the window (20 batches) is half slow or more from 5.9 s to
    # 7.4 s -- it lags the burst -- which is shorter than the 2 s the rule asks for
    assert feed(monitor, 5.0, 6.5, 0.1, measured_ms=8.0) is None
    assert monitor.state.out_since == pytest.approx(5.9)
    assert feed(monitor, 6.5, 7.6, 0.1, measured_ms=2.0) is None
    assert monitor.state.out_of_band == ""
    assert feed(monitor, 7.6, 20.0, 0.1, measured_ms=2.0) is None
    assert not monitor.tripped


def test_single_slow_batches_do_not_move_the_median():
    monitor = BandMonitor(window_s=1.0, latency_tolerance=2.0)
    t = 0.0
    for i in range(400):  # every 3rd batch 10x slow: the median stays at 1x
        assert monitor.observe(t, 20.0 if i % 3 == 0 else 2.0, 2.0, 1) is None
        t += 0.05
    assert monitor.state.latency_ratio == pytest.approx(1.0)


def test_error_rate_out_of_band_rolls_back():
    monitor = BandMonitor(window_s=1.0, max_error_rate=0.05, min_batches=5)
    t, events = 0.0, []
    for i in range(100):  # every batch of 4 has one failure: 25 % > 5 %
        event = monitor.observe(t, 2.0, 2.0, requests=4, errors=1 if i >= 20 else 0)
        events += [event] if event else []
        t = round(t + 0.1, 9)
    assert [e.reason for e in events] == ["errors"]
    assert "error rate" in events[0].detail
    # errors from t=2.0; the window holds 10 batches = 40 requests: 1 error (2.5 %), 2
    # (5 %, not above), 3 (7.5 %) at t=2.2, out of band from then, rolled back at 3.2
    assert events[0].time == pytest.approx(3.2)


def test_failed_batches_count_as_errors_without_a_latency():
    monitor = BandMonitor(window_s=1.0, max_error_rate=0.5, min_batches=1)
    assert monitor.observe(0.0, None, 2.0, requests=3, errors=3) is None
    assert math.isnan(monitor.state.latency_ratio)
    assert monitor.state.error_rate == 1.0
    assert monitor.state.out_of_band == "errors"
    assert monitor.observe(0.5, None, 2.0, requests=3, errors=3) is None
    assert monitor.observe(1.2, None, 2.0, requests=3, errors=3).reason == "errors"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window_s"):
        BandMonitor(window_s=0)
    with pytest.raises(ValueError, match="max_error_rate"):
        BandMonitor(max_error_rate=1.0)
