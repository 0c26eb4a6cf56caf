"""End to end through a real mosquitto and a real HTTP server: nothing the broker accepted is lost."""

import os
import re
import signal

import pytest

from tests.conftest import WORKERS, assert_all_arrived, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.paho]


def test_5000_messages_arrive_in_wire_format(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, api={"key": "sekrit-api-key"}).start()
    accepted = publisher.publish(5000).accepted()
    assert len(accepted) == 5000
    assert_all_arrived(sink, accepted)
    messages = sink.delivered()
    ids = [m["id"] for m in messages]
    assert len(ids) == len(set(ids)), "every message has its own id"
    first = messages[0]
    assert set(first) == {"id", "topic", "payload", "qos", "retain", "received_at", "payload_encoding"}
    assert first["topic"] == "test/data" and first["qos"] == 1 and first["retain"] is False
    assert first["payload"]["n"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["received_at"])
    headers = sink.requests[0][3]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer sekrit-api-key" and headers["apikey"] == "sekrit-api-key"
    assert headers["User-Agent"].startswith("mqttbuffer/")
    assert "sekrit-api-key" not in daemon.log()


def test_sigkill_of_the_whole_daemon_loses_nothing(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()

    def kill_midway(n):
        if n == 1000:
            daemon.kill_group()
        if n == 2000:
            daemon.start(wait_ready=False)

    accepted = publisher.publish(3000, rate=1000, during=kill_midway).accepted()
    assert len(accepted) == 3000
    assert_all_arrived(sink, accepted)


@pytest.mark.parametrize("worker", WORKERS)
def test_sigkill_of_one_worker_loses_nothing(worker, mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    before = daemon.worker_pid(worker)
    others = {name: daemon.worker_pid(name) for name in WORKERS if name != worker}

    def kill_midway(n):
        if n == 1000:
            os.kill(before, signal.SIGKILL)

    accepted = publisher.publish(2500, rate=1000, during=kill_midway).accepted()
    assert len(accepted) == 2500
    assert_all_arrived(sink, accepted)
    replacement = wait_until(lambda: daemon.worker_pid(worker), 10, f"a new {worker}")
    assert replacement != before
    assert {name: daemon.worker_pid(name) for name in others} == others, "the other workers kept running"
    assert f"{worker} (pid {before}): RUNNING -> BACKOFF, killed by SIGKILL" in daemon.log()
    assert daemon.process.poll() is None


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_messages_published_while_stopped_arrive_after_start(protocol, mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, mqtt={"protocol": protocol}).start()
    publisher.publish(10)
    wait_until(lambda: len(sink.delivered()) >= 10, 20, "the first 10 messages")
    code, _ = daemon.terminate()
    assert code == 0
    accepted = publisher.publish(500).accepted()
    assert len(sink.delivered()) < 510, "nothing can arrive while the daemon is stopped"
    daemon.start()
    assert_all_arrived(sink, accepted)


def test_sigterm_under_load_exits_0_quickly_and_loses_nothing(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    results = {}

    def stop_midway(n):
        if n == 1000:
            results["exit"] = daemon.terminate()
        if n == 2000:
            daemon.start(wait_ready=False)

    accepted = publisher.publish(3000, rate=1000, during=stop_midway).accepted()
    code, seconds = results["exit"]
    assert code == 0, daemon.log()
    assert seconds < 10
    print(f"SIGTERM under load: exit {code} after {seconds:.2f}s")
    assert len(accepted) == 3000
    assert_all_arrived(sink, accepted)


def test_nothing_is_acked_before_it_is_on_disk(mosquitto, sink, make_daemon, publisher):
    """With the persister frozen, messages reach the ingestor but must not be acked: killing the
    ingestor then must leave them with the broker, which redelivers them to its successor."""
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    persister, ingestor = daemon.worker_pid("persister"), daemon.worker_pid("ingestor")
    os.kill(persister, signal.SIGSTOP)
    try:
        accepted = publisher.publish(200).accepted()
        assert len(accepted) == 200
        os.kill(ingestor, signal.SIGKILL)
        wait_until(lambda: daemon.worker_pid("ingestor") not in (None, ingestor), 10, "a new ingestor")
    finally:
        os.kill(persister, signal.SIGCONT)
    assert_all_arrived(sink, accepted)
