"""Retention with a clock that may be wrong: a grace period after start and a bounded share."""

import time

from mqttbuffer.store import Store
from mqttbuffer.store.retention import GRACE, RetentionGuard

DAY = 86400.0
YEAR = 365 * DAY
T0 = 1_800_000_000.0  # wall clock at start


def test_no_pass_in_the_first_minutes_after_start():
    guard = RetentionGuard(7 * DAY, started_mono=100.0, started_wall=T0)
    assert guard.plan(100.0 + GRACE - 1, T0 + GRACE - 1, T0 - 30 * DAY, 1000) == (False, None)
    # A retention shorter than the grace period is its own grace.
    assert RetentionGuard(2.0, 100.0, T0).plan(102.5, T0 + 2.5, T0 + 0.1, 10) == (True, None)


def test_messages_from_before_this_start_expire_a_tenth_per_pass():
    # Restarted with the clock a year ahead: the backlog was received "a year ago".
    guard = RetentionGuard(7 * DAY, started_mono=0.0, started_wall=T0 + YEAR)
    assert guard.plan(GRACE + 1, T0 + YEAR + GRACE + 1, T0, 12_000) == (True, 1200)


def test_a_clock_jump_during_the_run_limits_the_pass():
    guard = RetentionGuard(7 * DAY, started_mono=0.0, started_wall=T0)
    assert guard.plan(1000.0, T0 + 1000.0, T0 + 10, 50) == (True, None)
    assert guard.plan(1000.0, T0 + 1000.0 + YEAR, T0 + 10, 50) == (True, 5)


def test_the_year_ahead_restart_keeps_the_backlog(tmp_path):
    store = Store.open(str(tmp_path / "buffer.db"))
    stamp = time.time()
    store.insert([(f"id{n}", "t", b"x", 1, 0, stamp + n * 0.001) for n in range(12_000)])
    wall = stamp + YEAR
    guard = RetentionGuard(7 * DAY, 0.0, wall)
    may_run, limit = guard.plan(GRACE + 1, wall + GRACE + 1, store.head()[1], store.totals()[0])
    assert may_run and store.expire(1_700_000_000.0, wall - 7 * DAY, wall, limit) == 1200
    assert store.totals()[0] == 10_800
    store.close()
