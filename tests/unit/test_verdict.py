"""The health verdict from the shared facts, with a fake wall clock."""

import pytest

from mqttbuffer.control.verdict import GRACE, OLDEST_BOUND, WORKER_GRACE, Facts, Worker, assess, clock, duration
from mqttbuffer.stats import API_STATES, CIRCUIT_STATES, GAUGES, TEXTS

START = 1_800_000_000.0  # the daemon's start, wall clock


def facts(workers=None, texts=None, store_free=10 << 30, **gauges):
    """Facts at their zero defaults (nothing written yet), all workers RUNNING, plus overrides."""
    values = dict.fromkeys(GAUGES, 0.0)
    values.update(gauges)
    running = {name: Worker("RUNNING", None, None) for name in ("persister", "ingestor", "forwarder")}
    return Facts(values, {**dict.fromkeys(TEXTS, ""), **(texts or {})}, {**running, **(workers or {})},
                 START, 100_000, 1 << 20, store_free)


@pytest.mark.parametrize("after", [1, 3600])
def test_zero_defaults_mean_not_yet_known_and_are_healthy(after):
    health = assess(facts(), START + after)
    assert health.healthy and health.reasons == []
    assert health.line() == "HEALTHY: all workers running; nothing waiting"


def test_broker_disconnected_is_healthy_within_the_grace_then_degraded_with_its_error():
    down = facts(broker_connected=0, broker_since=START + 100,
                 texts={"broker_error": "connection refused by 127.0.0.1:1884"})
    assert assess(down, START + 100 + GRACE - 1).healthy
    health = assess(down, START + 100 + GRACE)
    assert not health.healthy
    assert health.reasons == [f"broker unreachable since {clock(START + 100, START)}:"
                              " connection refused by 127.0.0.1:1884"]
    assert health.line().startswith("DEGRADED: broker unreachable since ")


def test_a_broker_never_reached_counts_from_the_daemons_start():
    never = facts(texts={"broker_error": "connection refused"})
    assert assess(never, START + GRACE - 1).healthy
    assert not assess(never, START + GRACE).healthy


def test_a_connected_broker_is_healthy_whatever_its_old_error():
    assert assess(facts(broker_connected=1, broker_since=START, texts={"broker_error": "old"}), START + 999).healthy


def test_api_refusing_is_degraded_at_once_with_status_and_fix():
    refusing = facts(api_state=API_STATES.index("refusing"), api_since=START + 50, api_status=401,
                     pending=3214, oldest_received_at=START + 50 - 7 * 60,
                     texts={"api_error": "401 Unauthorized from http://127.0.0.1:8080/ingest: check api.key"})
    health = assess(refusing, START + 51)
    assert health.verdict == "degraded"
    assert health.line() == (f"DEGRADED: API refusing (401) since {clock(START + 50, START)}: 401 Unauthorized from"
                             " http://127.0.0.1:8080/ingest: check api.key; 3,214 waiting, oldest 7m")


@pytest.mark.parametrize("state", ["unreachable", "failing"])
def test_api_unreachable_or_failing_has_a_grace(state):
    failing = facts(api_state=API_STATES.index(state), api_since=START + 10, api_status=503)
    assert assess(failing, START + 10 + GRACE - 0.1).healthy
    assert assess(failing, START + 10 + GRACE).reasons[0].startswith(f"API {state} (503) since ")


def test_an_open_breaker_without_api_facts_is_degraded():
    health = assess(facts(circuit_state=CIRCUIT_STATES.index("open")), START + 5)
    assert health.reasons == ["circuit breaker open: requests to the API paused after repeated failures"]
    assert assess(facts(circuit_state=CIRCUIT_STATES.index("half-open")), START + 5).healthy


def test_a_blocked_persister_names_its_problem():
    blocked = facts(blocked=1, texts={"persister_problem": "no space left on the device"})
    assert assess(blocked, START + 1).reasons == ["persister not committing: no space left on the device"]


def test_a_blocked_persister_without_a_problem_text_names_a_full_disk():
    health = assess(facts(blocked=1, store_free=4096), START + 1)
    assert health.reasons == ["persister not committing: the store's disk is full (4 KiB free)"]


def test_a_blocked_persister_that_committed_moments_ago_is_within_the_grace():
    blocked = facts(blocked=1, last_commit_at=START + 100)
    assert assess(blocked, START + 100 + GRACE - 1).healthy
    assert "persister not committing since" in assess(blocked, START + 100 + GRACE).reasons[0]


def test_a_worker_down_longer_than_its_grace_is_degraded():
    restarting = {"forwarder": Worker("BACKOFF", WORKER_GRACE - 1, "killed by SIGKILL")}
    assert assess(facts(workers=restarting), START + 5).healthy
    down = {"forwarder": Worker("BACKOFF", WORKER_GRACE + 2, "killed by SIGKILL")}
    assert assess(facts(workers=down), START + 5).reasons == [
        "forwarder down or restarting for 12s (BACKOFF, last exit: killed by SIGKILL)"]


def test_an_old_backlog_and_a_nearly_full_buffer_are_degraded():
    old = facts(pending=5, oldest_received_at=START)
    assert assess(old, START + OLDEST_BOUND - 1).healthy
    assert assess(old, START + OLDEST_BOUND).reasons == ["oldest waiting message is 15m old (bound 15m)"]
    assert assess(facts(pending=95_000), START).reasons == [
        "buffer 95% full (buffer.max_size 100,000, max_bytes 1,048,576)"]


def test_every_reason_is_listed():
    health = assess(facts(blocked=1, api_state=API_STATES.index("refusing"), api_status=403,
                          texts={"broker_error": "timed out"}), START + GRACE)
    assert [r.split()[0] for r in health.reasons] == ["broker", "API", "persister"]
    assert health.to_dict()["verdict"] == "degraded" and health.to_dict()["summary"] == health.line()


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m"), (7 * 60 + 30, "7m"),
                                           (2 * 3600 + 5 * 60, "2h05m"), (3 * 86400 + 4 * 3600, "3d04h")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_clock_adds_the_date_for_old_times():
    assert len(clock(START, START + 60)) == 5
    assert len(clock(START, START + 2 * 86400)) == 16
