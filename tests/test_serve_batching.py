"""The server's batching policy against a fake clock and a scripted cost model: every
choice and every shed is checked exactly, against the rule the policy documents."""

import pytest

from vitres.serve.batching import (
    Admission,
    BatchDecision,
    FixedBatchingPolicy,
    SloBatchingPolicy,
)

R16, R28, R40 = (16, 16), (28, 28), (40, 40)
# scripted p95 latency (ms) of a batch of b: a fixed cost plus a per-image cost
COST = {R16: (1.0, 0.5), R28: (2.0, 1.0), R40: (4.0, 2.0)}


def scripted(size, batch):
    fixed, per_image = COST[size]
    return fixed + per_image * batch


def policy(**kwargs):
    options = {"slo_ms": 40.0, "max_batch": 8}
    options.update(kwargs)
    return SloBatchingPolicy([R16, R28, R40], scripted, **options)


def test_light_load_serves_one_request_at_the_most_accurate_resolution():
    assert policy().plan([0.0], now=0.0) == BatchDecision(0, 1, R40, 6.0, True)


def test_measured_accuracy_decides_the_order_not_the_pixel_count():
    # 28 px measured more accurate than 40 px: 28 px is chosen although 40 px fits
    p = policy(accuracy={R16: 0.80, R28: 0.90, R40: 0.88})
    assert p.by_accuracy == (R28, R40, R16)
    assert p.plan([0.0], now=0.0) == BatchDecision(0, 1, R28, 3.0, True)
    # a resolution without a known accuracy ranks below every known one
    q = policy(accuracy={R16: 0.80, R28: 0.90})
    assert q.by_accuracy == (R28, R16, R40)


def test_the_batch_takes_every_queued_request_and_the_slack_sets_the_resolution():
    queued = [i / 1000 for i in range(8)]  # 8 requests, 1 ms apart, the oldest at 0
    # now 8 ms: 40 px x 8 = 20 ms, within half the SLO; done at 28 ms <= 0 + 40 ms
    assert policy().plan(queued, now=0.008) == BatchDecision(0, 8, R40, 20.0, True)
    # the oldest arrived 23 ms ago: 40 px would finish it at 43 ms; 28 px (10 ms) fits
    late = [-0.015 + i / 1000 for i in range(8)]
    assert policy().plan(late, now=0.008) == BatchDecision(0, 8, R28, 10.0, True)
    # the oldest arrived 35 ms ago: 28 px (done at 45 ms) misses, 16 px (5 ms) fits
    later = [-0.027 + i / 1000 for i in range(8)]
    assert policy().plan(later, now=0.008) == BatchDecision(0, 8, R16, 5.0, True)


def test_a_batch_never_takes_more_than_its_share_of_the_slo():
    # every request just arrived, so 40 px x 8 (20 ms) would meet every deadline;
    # with batch_time_fraction 0.25 a batch may take 10 ms only: 28 px x 8
    p = policy(batch_time_fraction=0.25)
    assert p.plan([0.0] * 8, now=0.0) == BatchDecision(0, 8, R28, 10.0, True)


def test_requests_left_in_the_queue_must_still_drain_in_time():
    # 12 requests arrived together 18.5 ms ago; a batch holds 8. 40 px x 8 finishes the
    # batch at 20 ms <= 21.5 ms, but the 4 left (16 px x 4 = 3 ms) would finish at 23 ms,
    # past their deadline of 21.5 ms: 28 px x 8 (10 ms, then 3 ms) keeps everyone
    queued = [-0.0185] * 12
    assert policy().plan(queued, now=0.0) == BatchDecision(0, 8, R28, 10.0, True)
    # with more slack the left-over requests do not bind and 40 px is chosen
    assert policy().plan([-0.010] * 12, now=0.0) == BatchDecision(0, 8, R40, 20.0, True)


def test_expired_requests_at_the_head_are_shed_before_the_batch():
    # a single 16 px image takes 1.5 ms: requests whose deadline is less than 1.5 ms
    # away (or past) have expired
    queued = [-0.050, -0.0395, 0.0]
    assert policy().plan(queued, now=0.0) == BatchDecision(2, 1, R40, 6.0, True)
    assert policy().plan([-0.050, -0.045], now=0.0) == BatchDecision(2, 0, None, 0.0, True)


def test_when_no_choice_keeps_everyone_the_oldest_are_served_at_the_cheapest_size():
    # batches of one; three requests whose deadlines are 3, 3 and 3.5 ms away. One at
    # 16 px takes 1.5 ms, so the second finishes at 3 ms (ok) and the third at 4.5 ms
    # (late): no choice keeps all three, so the fallback runs the oldest at 16 px
    p = policy(max_batch=1)
    decision = p.plan([-0.037, -0.037, -0.0365], now=0.0)
    assert decision == BatchDecision(0, 1, R16, 1.5, False)


def test_admission_sheds_when_even_the_fastest_drain_misses_the_new_deadline():
    p = policy()
    queued = [0.0] * 16
    # drain from 10 ms in batches of 8 at 16 px (5 ms, 5 ms) then the newcomer alone
    # (1.5 ms): finished at 21.5 ms, deadline 41 ms
    assert p.admit(queued, arrival=0.001, busy_until=0.010) == Admission(
        True, "", pytest.approx(0.0215)
    )
    # worker busy until 30 ms: the newcomer would finish at 41.5 ms > 41 ms
    shed = p.admit(queued, arrival=0.001, busy_until=0.030)
    assert (shed.admitted, shed.reason) == (False, "slo")
    assert shed.predicted_completion == pytest.approx(0.0415)
    # an idle worker drains from the arrival time, not from a busy_until in the past
    assert p.admit([], arrival=1.0, busy_until=0.0) == Admission(True, "", pytest.approx(1.0015))


def test_time_an_answer_needs_to_leave_the_server_shrinks_every_deadline():
    """``overhead_s`` (the event loop's delay) is taken off the SLO: the batch, the
    batch-time limit, expiry and admission all see ``S - overhead``."""
    p = policy()  # SLO 40 ms, batch at most half the budget
    assert p.budget_s(0.030) == pytest.approx(0.010)
    # one request that just arrived: 40 px alone (6 ms) fits 40 ms, and 14 ms (limit 7)
    assert p.plan([0.0], now=0.0, overhead_s=0.026) == BatchDecision(0, 1, R40, 6.0, True)
    # 10 ms left: 40 px (6 ms) is over the 5 ms batch limit, 28 px (3 ms) is not
    assert p.plan([0.0], now=0.0, overhead_s=0.030) == BatchDecision(0, 1, R28, 3.0, True)
    # 4 ms left: only 16 px (1.5 ms <= 2 ms)
    assert p.plan([0.0], now=0.0, overhead_s=0.036) == BatchDecision(0, 1, R16, 1.5, True)
    # 1 ms left: not even 16 px alone (1.5 ms) makes it; the request has expired
    assert p.plan([0.0], now=0.0, overhead_s=0.039) == BatchDecision(1, 0, None, 0.0, True)
    # admission: 16 queued at 0, worker busy until 10 ms; the newcomer (at 1 ms) would
    # finish at 21.5 ms (see the test above): in time for 41 - 19 = 22 ms, not for 21 ms
    queued = [0.0] * 16
    ok = p.admit(queued, arrival=0.001, busy_until=0.010, overhead_s=0.019)
    assert ok == Admission(True, "", pytest.approx(0.0215))
    late = p.admit(queued, arrival=0.001, busy_until=0.010, overhead_s=0.020)
    assert late == Admission(False, "slo", pytest.approx(0.0215))
    # a delay longer than the SLO sheds everything, even an idle worker's first request
    assert p.admit([], arrival=1.0, busy_until=0.0, overhead_s=0.05).reason == "slo"
    # the fixed baseline never looks at deadlines, so not at the delay either
    fixed = FixedBatchingPolicy(R28, slo_ms=40.0, max_batch=4, predict_ms=scripted)
    assert fixed.plan([0.0], now=0.0, overhead_s=1.0) == BatchDecision(0, 1, R28, 3.0, False)
    assert fixed.admit([], arrival=0.0, busy_until=0.0, overhead_s=1.0) == Admission(True)


def test_a_full_queue_sheds_without_looking_at_the_clock():
    p = policy(queue_limit=3)
    assert p.admit([0.0] * 3, arrival=0.0, busy_until=0.0) == Admission(False, "queue_full")
    assert policy().queue_limit == 32  # default: 4 x max_batch


def test_cheapest_resolution_follows_the_predictor():
    # a predictor in which the largest input is cheapest (e.g. a warm cache) decides
    costs = {R16: 3.0, R28: 2.0, R40: 1.0}
    p = SloBatchingPolicy([R16, R28, R40], lambda s, b: costs[s] * b, slo_ms=10, max_batch=4)
    assert p.cheapest == R40


def test_fixed_policy_batches_what_is_queued_and_never_looks_at_deadlines():
    p = FixedBatchingPolicy(R28, slo_ms=40.0, max_batch=4, predict_ms=scripted)
    # requests long past their deadline are still run, four at a time
    assert p.plan([-10.0] * 6, now=0.0) == BatchDecision(0, 4, R28, 6.0, False)
    assert p.plan([-10.0] * 2, now=0.0) == BatchDecision(0, 2, R28, 4.0, False)
    assert p.plan([], now=0.0) == BatchDecision(0, 0, None, 0.0, True)
    assert p.admit([0.0] * 15, arrival=0.0, busy_until=100.0) == Admission(True)
    assert p.admit([0.0] * 16, arrival=0.0, busy_until=0.0) == Admission(False, "queue_full")


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="SLO"):
        policy(slo_ms=0)
    with pytest.raises(ValueError, match="max_batch"):
        policy(max_batch=0)
    with pytest.raises(ValueError, match="batch_time_fraction"):
        policy(batch_time_fraction=1.5)
    with pytest.raises(ValueError, match="at least one resolution"):
        SloBatchingPolicy([], scripted, slo_ms=10, max_batch=2)


def test_simulated_overload_never_answers_late_by_the_model():
    """A discrete-event run of the policy on its own cost model (a fake clock): arrivals
    at twice what 40 px can serve; every admitted request is answered by its deadline,
    and the policy moves to lower resolutions instead of shedding everything."""
    p = policy(slo_ms=40.0, max_batch=8)
    slo = 0.040
    arrivals = [i * 0.001 for i in range(2000)]  # 1000 requests/s
    queue: list[float] = []
    t_free = 0.0
    finished: list[tuple[float, float]] = []
    used: set = set()
    shed = 0
    index = 0
    while index < len(arrivals) or queue:
        next_arrival = arrivals[index] if index < len(arrivals) else float("inf")
        if queue and t_free <= next_arrival:
            decision = p.plan(queue, now=t_free)
            shed += decision.expire
            del queue[: decision.expire]
            if decision.batch_size:
                done = t_free + decision.predicted_ms / 1000
                finished += [(a, done) for a in queue[: decision.batch_size]]
                del queue[: decision.batch_size]
                used.add(decision.resolution)
                t_free = done
            continue
        if index >= len(arrivals):
            break
        a = arrivals[index]
        index += 1
        if p.admit(queue, a, t_free).admitted:
            queue.append(a)
        else:
            shed += 1
    assert len(finished) + shed == len(arrivals)  # everyone got exactly one outcome
    assert all(done <= a + slo + 1e-12 for a, done in finished)
    assert shed < 0.05 * len(arrivals)
    assert R16 in used or R28 in used


def test_admission_finish_is_the_end_of_the_full_drain_for_every_queue_length():
    # admit computes the newcomer's finish in closed form; it must be the last finish of
    # drain_finish over the queue plus the newcomer, batch boundaries included
    p = policy(slo_ms=1000.0, max_batch=4, queue_limit=64)
    for n in range(0, 20):
        queued = [i / 1000 for i in range(n)]
        arrival, busy = 0.5, 0.5 + (n % 3) / 100
        drained = p.drain_finish([*queued, arrival], max(arrival, busy))[-1]
        admission = p.admit(queued, arrival, busy)
        assert admission.predicted_completion == pytest.approx(drained, abs=1e-12), n
        assert admission.admitted == (drained <= arrival + 1.0)
