"""Delivery policy against a real broker and an HTTP API that misbehaves on command."""

import os
import re
import subprocess
import time

import pytest

from tests.conftest import assert_all_arrived, wait_until

pytestmark = pytest.mark.integration

FAST_BREAKER = {"max_failures": 5, "timeout": 2}


def requests_between(sink, start, end):
    with sink.lock:
        return [r for r in sink.requests if start <= r[0] < end]


def test_503_with_retry_after_is_honoured_and_nothing_is_lost(mosquitto, sink, make_daemon, publisher):
    # Retry-After 3 s against backoff steps of a fifth of a second (delays scaled in tests) and a
    # breaker that never opens: only honouring the header keeps the requests this few.
    sink.status, sink.headers = 503, {"Retry-After": "3"}
    make_daemon(mosquitto, sink, circuit_breaker={"max_failures": 100}).start()
    start = time.monotonic()
    publisher.publish(300, rate=50)  # 6 s of traffic while the API answers 503
    end = time.monotonic()
    sink.status, sink.headers = 200, {}
    during = requests_between(sink, start, end)
    print(f"{len(during)} requests in {end - start:.1f}s of 503")
    assert 1 <= len(during) <= 3
    assert_all_arrived(sink, publisher.accepted(), timeout=30)


def test_429_retry_after_delays_the_next_request(mosquitto, sink, make_daemon, publisher):
    sink.plan.append((429, {"Retry-After": "1"}))
    make_daemon(mosquitto, sink).start()
    publisher.publish(20)
    assert_all_arrived(sink, publisher.accepted())
    first, second = sink.requests[0][0], sink.requests[1][0]
    print(f"next request {second - first:.2f}s after the 429")
    assert sink.requests[0][1] == 429 and second - first >= 1.0


def test_three_rejected_messages_are_isolated_and_the_rest_delivered(mosquitto, sink, make_daemon, publisher):
    bad = {100, 500, 900}
    sink.reject = lambda m: 400 if m["payload"]["n"] in bad else None
    daemon = make_daemon(mosquitto, sink, buffer={"batch_size": 500, "flush_interval": 0.2}).start()
    accepted = publisher.publish(1000).accepted()
    good = accepted - bad
    wait_until(lambda: good <= set(sink.delivered_numbers()), 60, "997 good messages")
    last_good = max(t for t, status, body, _ in sink.requests if status == 200)
    last_rejected = max(t for t, status, body, _ in sink.requests if status == 400 and len(body) == 1)
    print(f"{len(sink.requests)} requests; last good delivery {last_good - last_rejected:+.2f}s"
          " after the last bad message was isolated")
    assert last_good - last_rejected < 3.0
    assert not bad & set(sink.delivered_numbers())
    store = daemon.store()
    letters = wait_until(lambda: store.dead_letters() if store.dead_letter_count() == 3 else None, 10,
                         "3 dead letters")
    assert {int(re.search(rb'"n": (\d+)', d["payload"]).group(1)) for d in letters} == bad
    assert all(d["reason"] == "rejected" and d["status"] == 400 and "rejected by the test API" in d["excerpt"]
               for d in letters)
    # The gauges follow within a second (forwarder.GAUGE_INTERVAL).
    status = wait_until(lambda: (s := daemon.status())["buffer"]["dead_letters"] == 3 and s, 5, "the gauge")
    assert status["counters"]["rejected"] == 3


def test_an_api_that_never_answers_is_abandoned_at_the_timeout(mosquitto, sink, make_daemon, publisher):
    sink.mode = "hang"
    daemon = make_daemon(mosquitto, sink, api={"timeout": 1}, circuit_breaker=FAST_BREAKER).start()
    accepted = publisher.publish(100).accepted()
    wait_until(lambda: len(sink.requests) >= 2, 20, "a second request after the first timed out")
    gap = sink.requests[1][0] - sink.requests[0][0]
    print(f"second request {gap:.2f}s after the first hung")
    assert 1.0 <= gap < 10
    assert re.search(r"API unreachable: (timed out|no complete answer within 1s) from http://127\.0\.0\.1:",
                     daemon.log())
    sink.mode = "answer"
    assert_all_arrived(sink, accepted, timeout=60)


def test_an_api_that_resets_connections_is_retried(mosquitto, sink, make_daemon, publisher):
    sink.plan.extend([("reset", {})] * 3)
    daemon = make_daemon(mosquitto, sink, circuit_breaker=FAST_BREAKER).start()
    accepted = publisher.publish(100).accepted()
    assert_all_arrived(sink, accepted, timeout=60)
    assert sum(1 for r in sink.requests if r[1] == "reset") == 3
    assert re.search(r"API unreachable: connection (reset by peer|closed without an answer) from http://127\.0\.0\.1:",
                     daemon.log())


def test_a_persistent_500_for_one_message_ends_in_dead_letters(mosquitto, sink, make_daemon, publisher):
    sink.reject = lambda m: 500 if m["payload"]["n"] == 50 else None
    daemon = make_daemon(mosquitto, sink, buffer={"max_retries": 3}).start()
    accepted = publisher.publish(200).accepted()
    good = accepted - {50}
    wait_until(lambda: good <= set(sink.delivered_numbers()), 90, "the 199 other messages")
    store = daemon.store()
    letter = wait_until(lambda: store.dead_letters(), 10, "a dead letter")[0]
    assert letter["reason"] == "retries_exhausted" and letter["status"] == 500 and letter["attempts"] == 3
    single_tries = [r for r in sink.requests if r[1] == 500 and len(r[2]) == 1]
    assert len(single_tries) == 3
    print(f"{len(sink.requests)} requests; dead letter after {letter['attempts']} attempts")


def _watch_store(daemon, stop_when, largest):
    store = daemon.store()

    def check():
        largest.append(store.totals()[0])
        return stop_when()

    return check


def test_drop_oldest_keeps_the_store_within_max_size(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    batch = 500
    daemon = make_daemon(mosquitto, sink, buffer={"max_size": 1000, "batch_size": batch},
                         circuit_breaker=FAST_BREAKER).start()
    store, largest = daemon.store(), []
    accepted = publisher.publish(5000, rate=2500, during=lambda n: n % 50 or largest.append(store.totals()[0]))
    accepted = accepted.accepted()
    wait_until(lambda: largest.append(store.totals()[0]) or daemon.status()["counters"]["persisted"] >= 5000,
               30, "all 5000 persisted")
    status = daemon.status()
    print(f"largest store seen: {max(largest)}; dropped {status['counters']['dropped']}")
    assert max(largest) <= 1000
    assert status["counters"]["dropped"] == 4000
    wait_until(lambda: "dropped the" in daemon.log(), 15, "the drop log line")
    sink.status = 200
    # The batch the forwarder was sending when a drop came is kept (README, "Bounds"), so up to
    # one batch of older messages may survive in place of as many of the newest.
    assert_all_arrived(sink, set(range(4000 + batch, 5000)), timeout=60)
    wait_until(lambda: len(set(sink.delivered_numbers())) == 1000, 30, "1000 distinct messages delivered")
    assert len(set(range(4000)) & set(sink.delivered_numbers())) <= batch


def test_block_drops_nothing_and_delivers_all_when_the_api_returns(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, buffer={"max_size": 1000, "overflow": "block"},
                         circuit_breaker=FAST_BREAKER).start()
    store, largest = daemon.store(), []
    accepted = publisher.publish(5000, rate=2500, during=lambda n: n % 50 or largest.append(store.totals()[0]))
    accepted = accepted.accepted()
    wait_until(lambda: daemon.status()["buffer"]["blocked"], 20, "the persister to block")
    assert "Buffer full" in daemon.log()
    largest.append(store.totals()[0])
    print(f"largest store seen under block: {max(largest)}")
    assert max(largest) <= 1000
    sink.status = 200
    assert_all_arrived(sink, accepted, timeout=90)
    assert daemon.status()["counters"]["dropped"] == 0


def test_retention_moves_old_messages_to_dead_letters(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker=FAST_BREAKER,
                         buffer={"message_retention_days": 2 / 86400, "cleanup_interval": 1}).start()
    publisher.publish(30).accepted()
    wait_until(lambda: daemon.status()["counters"]["expired"] == 30, 20, "30 expired messages")
    assert "Moved 30 messages older than" in daemon.log()
    assert {d["reason"] for d in daemon.store().dead_letters()} == {"expired"}


def test_breaker_and_stats_lines_are_logged(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker={"max_failures": 2, "timeout": 1},
                         logging={"level": "info", "stats_interval": 0.5}).start()
    accepted = publisher.publish(10).accepted()
    wait_until(lambda: "Circuit breaker opened" in daemon.log(), 30, "the breaker to open")
    sink.status = 200
    assert_all_arrived(sink, accepted, timeout=60)
    # The forwarder logs the state change after the API's answer, so after the sink has the messages.
    wait_until(lambda: "Circuit breaker closed" in daemon.log(), 10, "the breaker to close")
    log = daemon.log()
    assert "Circuit breaker half-open" in log
    assert re.search(r"Buffer stats: pending=\d+ oldest=\S+ dead_letters=0 circuit=\S+ in=[\d.]+/s out=[\d.]+/s", log)
    assert re.search(r"Successfully sent \d+ messages", log)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs of the test's own (needs root, as in CI), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_blocks_acking_until_space_returns(small_disk, mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker=FAST_BREAKER,
                         buffer={"persist_file": str(small_disk / "buffer.db")}).start()
    publisher.publish(50).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] == 50, 20, "the first 50 on disk")
    filler = small_disk / "filler"
    # Unbuffered: a buffered file would raise ENOSPC again when it is closed.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    accepted = publisher.publish(2000).accepted()
    wait_until(lambda: "no space left on the device" in daemon.log(), 20, "the disk-full log line")
    assert daemon.status()["buffer"]["blocked"]
    assert daemon.process.poll() is None and daemon.all_workers_running()
    code, out, _ = wait_until(lambda: (r := daemon.ctl("status"))[0] == 1 and r, 30, "status to say degraded")
    print(out.splitlines()[0])
    assert out.startswith("DEGRADED: ") and "persister not committing" in out and "disk" in out.split("\n")[0]
    filler.unlink()
    sink.status = 200
    assert_all_arrived(sink, accepted, timeout=60)
    assert "Committing again" in daemon.log()
    assert daemon.status()["counters"]["dropped"] == 0
