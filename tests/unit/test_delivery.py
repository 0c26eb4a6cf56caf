"""The delivery policy with a fake clock: backoff, Retry-After, breaker, splitting, dead letters."""

import random

import pytest

from mqttbuffer.delivery import DELIVERED, FAILED, REJECTED, UNAVAILABLE, DeliveryPolicy, classify, parse_retry_after


def policy(batch_size=500, max_retries=3, max_failures=5, timeout=30.0, cap=300.0, seed=1):
    return DeliveryPolicy(batch_size, max_retries, max_failures, timeout, cap, random.Random(seed))


@pytest.mark.parametrize("status, kind", [
    (200, DELIVERED), (201, DELIVERED), (204, DELIVERED),
    (400, REJECTED), (404, REJECTED), (413, REJECTED), (422, REJECTED),
    (408, UNAVAILABLE), (429, UNAVAILABLE), (502, UNAVAILABLE), (503, UNAVAILABLE), (504, UNAVAILABLE),
    (None, UNAVAILABLE), (500, FAILED), (501, FAILED), (599, FAILED),
])
def test_classify(status, kind):
    assert classify(status) == kind


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("5", 1000.0) == 5.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 40.0) == 0.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


def test_unavailable_backs_off_2_4_8_16_32_with_jitter_and_resets_on_success():
    p = policy(max_failures=100)
    now = 0.0
    waits = []
    for _ in range(7):
        assert p.may_send(now)
        waits.append(p.decide(UNAVAILABLE, 10, now).wait)
        assert not p.may_send(now + waits[-1] - 0.01)
        now += waits[-1]
    for wait, step in zip(waits, (2, 4, 8, 16, 32, 32, 32), strict=True):
        assert step * 0.8 <= wait <= step * 1.2
    assert p.may_send(now)
    p.decide(DELIVERED, 10, now)
    assert 1.6 <= p.decide(UNAVAILABLE, 10, now).wait <= 2.4


def test_retry_after_is_a_floor_and_is_capped():
    p = policy(cap=60.0, max_failures=100)
    assert p.decide(UNAVAILABLE, 1, 0.0, retry_after=5.0).wait == 5.0
    assert p.decide(UNAVAILABLE, 1, 10.0, retry_after=3600.0).wait == 60.0
    assert 8 * 0.8 <= p.decide(UNAVAILABLE, 1, 100.0, retry_after=1.0).wait <= 8 * 1.2


def test_breaker_opens_after_max_failures_then_half_open_probe_then_closes():
    p = policy(max_failures=3, timeout=30.0)
    now = 0.0
    for _ in range(3):
        now = max(now, p.next_attempt_at())
        assert p.may_send(now)
        p.decide(UNAVAILABLE, 100, now)
    assert p.state_changes == ["open"]
    assert p.next_attempt_at() >= now + 30.0
    assert not p.may_send(now + 29.0)
    assert p.may_send(now + 30.0)
    assert p.state_changes[-1] == "half-open"
    assert p.batch_limit() == 10, "half-open sends one small probe batch"
    p.decide(DELIVERED, 10, now + 30.0)
    assert p.state_changes[-1] == "closed"


def test_failed_probe_reopens_the_breaker():
    p = policy(max_failures=1, timeout=10.0)
    p.decide(UNAVAILABLE, 5, 0.0)
    assert p.may_send(10.0)
    p.decide(UNAVAILABLE, 5, 10.0)
    assert p.state_changes == ["open", "half-open", "open"]
    assert not p.may_send(19.0)


def test_a_rejected_batch_is_split_until_the_one_message_is_dead_lettered():
    p = policy(batch_size=8)
    assert p.decide(REJECTED, 8, 0.0).action == "retry"
    assert p.batch_limit() == 4 and p.may_send(0.0), "splitting does not wait"
    assert p.decide(REJECTED, 4, 0.0).action == "retry"
    assert p.decide(REJECTED, 2, 0.0).action == "retry"
    decision = p.decide(REJECTED, 1, 0.0)
    assert (decision.action, decision.reason) == ("dead_letter", "rejected")
    assert p.may_send(0.0) and p.breaker.state == "closed"
    p.decide(DELIVERED, 1, 0.0)
    assert p.batch_limit() == 2, "after a success the batch grows back"
    for _ in range(5):
        p.decide(DELIVERED, p.batch_limit(), 0.0)
    assert p.batch_limit() == 8


def test_a_500_for_one_message_costs_it_max_retries_attempts_then_a_dead_letter():
    p = policy(batch_size=4, max_retries=3)
    assert p.decide(FAILED, 4, 0.0).action == "retry"
    assert p.decide(FAILED, 2, 0.0).action == "retry"
    now = 0.0
    for attempt in (1, 2):
        decision = p.decide(FAILED, 1, now, attempts_after=attempt)
        assert decision.action == "count_attempt" and decision.wait > 0
        now += decision.wait
    decision = p.decide(FAILED, 1, now, attempts_after=3)
    assert (decision.action, decision.reason) == ("dead_letter", "retries_exhausted")


def test_max_retries_0_retries_forever():
    p = policy(max_retries=0, max_failures=1000)
    for attempt in range(1, 50):
        assert p.decide(FAILED, 1, float(attempt * 100), attempts_after=attempt).action == "count_attempt"
