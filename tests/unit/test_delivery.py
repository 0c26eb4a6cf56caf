"""The delivery policy with a fake clock: the answer table, backoff, breaker, splitting, suspects,
holding the queue, and the rule that a message becomes a dead letter only while others go through."""

import random

import pytest

from mqttbuffer.delivery.policy import (
    DEAD_LETTER,
    DELETE,
    DELIVERED,
    DUPLICATE,
    FAILED,
    HOLD,
    REFUSED,
    REJECTED,
    RETRY,
    SUSPECT,
    TOO_LARGE,
    UNAVAILABLE,
    DeliveryPolicy,
    classify,
    parse_retry_after,
)


def policy(batch_size=500, max_retries=3, max_failures=5, timeout=30.0, cap=300.0, rng_state=1, hold_cap=300.0,
           duplicates=True):
    return DeliveryPolicy(batch_size, max_retries, max_failures, timeout, cap, random.Random(rng_state), hold_cap,
                          duplicates)


def seqs(n, start=0):
    return list(range(start, start + n))


@pytest.mark.parametrize("status, kind", [
    (200, DELIVERED), (201, DELIVERED), (204, DELIVERED),
    (301, REFUSED), (302, REFUSED), (307, REFUSED), (308, REFUSED),
    (401, REFUSED), (403, REFUSED), (404, REFUSED), (405, REFUSED), (407, REFUSED), (410, REFUSED),
    (411, REFUSED), (414, REFUSED), (415, REFUSED), (426, REFUSED), (431, REFUSED),
    (409, DUPLICATE), (413, TOO_LARGE),
    (400, REJECTED), (402, REJECTED), (406, REJECTED), (422, REJECTED), (451, REJECTED),
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
        waits.append(p.decide(UNAVAILABLE, seqs(10), now).wait)
        assert not p.may_send(now + waits[-1] - 0.01)
        now += waits[-1]
    for wait, step in zip(waits, (2, 4, 8, 16, 32, 32, 32), strict=True):
        assert step * 0.8 <= wait <= step * 1.2
    assert p.api_state == "unreachable"
    assert p.may_send(now)
    p.decide(DELIVERED, seqs(10), now)
    assert p.api_state == "ok"
    assert 1.6 <= p.decide(UNAVAILABLE, seqs(10), now).wait <= 2.4


def test_retry_after_is_a_floor_and_is_capped():
    p = policy(cap=60.0, max_failures=100)
    assert p.decide(UNAVAILABLE, seqs(1), 0.0, retry_after=5.0).wait == 5.0
    assert p.decide(UNAVAILABLE, seqs(1), 10.0, retry_after=3600.0).wait == 60.0
    assert 8 * 0.8 <= p.decide(UNAVAILABLE, seqs(1), 100.0, retry_after=1.0).wait <= 8 * 1.2


def test_breaker_opens_after_max_failures_then_half_open_probe_then_closes():
    p = policy(max_failures=3, timeout=30.0)
    now = 0.0
    for _ in range(3):
        now = max(now, p.next_attempt_at())
        assert p.may_send(now)
        p.decide(UNAVAILABLE, seqs(100), now)
    assert p.state_changes == ["open"]
    assert p.next_attempt_at() >= now + 30.0
    assert not p.may_send(now + 29.0)
    assert p.may_send(now + 30.0)
    assert p.state_changes[-1] == "half-open"
    assert p.batch_limit() == 10, "half-open sends one small probe batch"
    p.decide(DELIVERED, seqs(10), now + 30.0)
    assert p.state_changes[-1] == "closed"


def test_failed_probe_reopens_the_breaker():
    p = policy(max_failures=1, timeout=10.0)
    p.decide(UNAVAILABLE, seqs(5), 0.0)
    assert p.may_send(10.0)
    p.decide(UNAVAILABLE, seqs(5), 10.0)
    assert p.state_changes == ["open", "half-open", "open"]
    assert not p.may_send(19.0)


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 410, 411, 414, 415, 426, 431, 301, 302, 307, 308])
def test_an_endpoint_that_refuses_everything_holds_the_queue_with_a_long_backoff(status):
    p = policy(max_failures=5, timeout=30.0, hold_cap=300.0)
    now, waits = 0.0, []
    for _ in range(12):
        now = max(now, p.next_attempt_at())
        assert p.may_send(now)
        decision = p.decide(classify(status), seqs(500), now)
        assert decision.action == HOLD, "no split, no dead letter"
        waits.append(decision.wait)
    assert p.api_state == "refusing"
    assert p.breaker.state == "open", "holds count toward the breaker"
    assert max(waits) <= 300.0 and waits[-1] >= 240.0, "backs off up to the long cap"
    assert p.may_send(p.next_attempt_at()) and p.batch_limit() == 10
    assert p.decide(DELIVERED, seqs(10), now + 1000).action == DELETE
    assert p.api_state == "ok" and p.breaker.state == "closed"


def test_a_refusal_right_after_a_success_is_explored_but_ends_in_a_hold_without_dead_letters():
    p = policy(batch_size=8)
    p.decide(DELIVERED, seqs(8), 0.0)
    actions = []
    batch = seqs(8, 8)
    while True:
        decision = p.decide(REFUSED, batch, 0.0)
        actions.append(decision.action)
        if decision.action == HOLD:
            break
        assert decision.action in (RETRY, SUSPECT)
        nxt = [s for s in seqs(100, 8) if s not in p.suspects][:p.batch_limit()]
        batch = nxt
    assert DEAD_LETTER not in actions
    assert len(actions) <= 8, actions
    assert p.api_state == "refusing" and not p.suspects


def test_a_schema_change_answering_400_to_everything_holds_instead_of_dead_lettering():
    p = policy(batch_size=500)
    p.decide(DELIVERED, seqs(500), 0.0)
    requests, now, dead = 0, 0.0, 0
    for _ in range(3):  # three rounds of holding
        while True:
            batch = [s for s in seqs(5000, 500) if s not in p.suspects][:p.batch_limit()]
            now = max(now, p.next_attempt_at())
            assert p.may_send(now)
            decision = p.decide(REJECTED, batch, now)
            requests += 1
            dead += decision.action == DEAD_LETTER
            if decision.action == HOLD:
                break
    assert dead == 0
    assert p.api_state == "refusing"
    print(f"{requests} requests over three rounds")
    assert requests <= 3 * 14


def isolate(p, bad, n, kind=REJECTED):
    """Send n messages through p against an API that refuses ``bad``; return what happened."""
    pending = list(range(n))
    dead, delivered, now = [], [], 0.0
    for _ in range(10 * n):
        batch = [s for s in pending if s not in p.suspects][:p.batch_limit()]
        if not batch:
            break
        now = max(now, p.next_attempt_at())
        assert p.may_send(now)
        refused = bad & set(batch)
        decision = p.decide(kind if refused else DELIVERED, batch, now, attempts_after=3)
        if decision.action == DELETE:
            delivered += batch
            pending = [s for s in pending if s not in batch]
        elif decision.action == DEAD_LETTER:
            dead += batch
            pending.remove(batch[0])
        for seq, _, _ in decision.released:
            dead.append(seq)
            pending.remove(seq)
    return dead, delivered, pending


@pytest.mark.parametrize("bad", [{0}, {3}, {7}, {0, 1}, {2, 5}, {0, 7}])
@pytest.mark.parametrize("kind", [REJECTED, TOO_LARGE, DUPLICATE])
def test_refused_messages_are_isolated_while_the_others_go_through(bad, kind):
    p = policy(batch_size=8, duplicates=False)
    p.decide(DELIVERED, seqs(1, 100), 0.0)
    dead, delivered, pending = isolate(p, bad, 24, kind)
    assert sorted(dead) == sorted(bad)
    assert sorted(delivered) == sorted(set(range(24)) - bad)
    assert not pending and p.api_state == "ok"


def test_a_row_refused_with_403_among_accepted_ones_is_isolated():
    p = policy(batch_size=8)
    p.decide(DELIVERED, seqs(1, 100), 0.0)
    dead, delivered, _ = isolate(p, {0}, 16, REFUSED)
    assert dead == [0] and len(delivered) == 15


@pytest.mark.parametrize("answer", [REFUSED, REJECTED])
def test_an_api_refusing_to_skip_duplicates_falls_back_to_splitting_and_is_not_asked_again(answer):
    p = policy(batch_size=4)
    assert p.decide(DUPLICATE, seqs(4), 0.0).action == RETRY and p.skip_duplicates
    decision = p.decide(answer, seqs(4), 0.0)
    assert decision.action == RETRY and p.batch_limit() == 2, "split, not held"
    assert not p.skip_duplicates and p.skip_refused
    p.decide(DELIVERED, seqs(2), 0.0)
    assert p.decide(DUPLICATE, seqs(4, 10), 0.0).action == RETRY and not p.skip_duplicates
    assert p.api_state == "ok"


def test_skipping_duplicates_that_works_ends_with_one_delete():
    p = policy(batch_size=4)
    p.decide(DUPLICATE, seqs(4), 0.0)
    assert p.decide(DELIVERED, seqs(4), 0.0).action == DELETE
    assert not p.skip_duplicates and not p.skip_refused


def test_a_suspect_at_the_head_becomes_a_dead_letter_only_after_the_next_message_goes_through():
    p = policy(batch_size=4)
    assert p.decide(REJECTED, seqs(4), 0.0).action == RETRY
    assert p.decide(REJECTED, seqs(2), 0.0).action == RETRY
    decision = p.decide(REJECTED, [0], 0.0, note="why")
    assert (decision.action, decision.reason) == (SUSPECT, "rejected")
    assert 0 in p.suspects
    decision = p.decide(DELIVERED, [1], 0.0)
    assert decision.action == DELETE and decision.released == ((0, "rejected", "why"),)
    assert not p.suspects


def test_a_409_for_one_message_counts_as_delivered_unless_configured_otherwise():
    p = policy(batch_size=4)
    assert p.decide(DUPLICATE, seqs(4), 0.0).action == RETRY
    assert p.skip_duplicates and p.batch_limit() == 4, "first resent whole, asking to skip held rows"
    assert p.decide(DUPLICATE, seqs(4), 0.0).action == RETRY
    assert p.batch_limit() == 2, "an API that ignores the preference gets the batch split"
    assert p.decide(DUPLICATE, seqs(2), 0.0).action == RETRY
    assert p.decide(DUPLICATE, [0], 0.0).action == DELETE
    assert not p.skip_duplicates and p.skip_refused, "asked once, never again"
    q = policy(batch_size=4, duplicates=False)
    q.decide(DELIVERED, [9], 0.0)
    q.decide(DUPLICATE, seqs(2), 0.0)
    assert q.decide(DUPLICATE, [0], 0.0).action == SUSPECT


def test_a_500_for_one_message_costs_it_max_retries_attempts_then_a_dead_letter():
    p = policy(batch_size=4, max_retries=3)
    assert p.decide(FAILED, seqs(4), 0.0).action == RETRY
    assert p.decide(FAILED, seqs(2), 0.0).action == RETRY
    now = 0.0
    for attempt in (1, 2):
        decision = p.decide(FAILED, [0], now, attempts_after=attempt)
        assert decision.action == "count_attempt" and decision.wait > 0
        assert p.api_state == "failing"
        now += decision.wait
    decision = p.decide(FAILED, [0], now, attempts_after=3)
    assert decision.action == SUSPECT, "nothing went through yet: it may be the API, not the message"
    decision = p.decide(DELIVERED, [1], now)
    assert [(seq, reason) for seq, reason, _ in decision.released] == [(0, "retries_exhausted")]
    assert p.decide(FAILED, [5], now, attempts_after=3).action == DEAD_LETTER, "others go through"


def test_an_api_failing_on_everything_ends_in_a_hold_not_dead_letters():
    p = policy(batch_size=4, max_retries=2, max_failures=1000)
    dead, delivered, pending = isolate(p, set(range(12)), 12, FAILED)
    assert not dead and not delivered
    assert p.api_state == "failing"


def test_max_retries_0_retries_forever():
    p = policy(max_retries=0, max_failures=1000)
    for attempt in range(1, 50):
        assert p.decide(FAILED, [1], float(attempt * 100), attempts_after=attempt).action == "count_attempt"
