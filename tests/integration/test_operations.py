"""Operating the daemon: mqttbufferctl, restarts, hang detection, memory limits, systemd, secrets."""

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import WORKERS, assert_all_arrived, wait_until

pytestmark = pytest.mark.integration


def test_status_json_and_summary(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    publisher.publish(20)
    assert_all_arrived(sink, publisher.accepted())
    status = wait_until(lambda: (s := daemon.status())["counters"]["delivered"] == 20 and s, 10, "counters")
    for name in WORKERS:
        worker = status["workers"][name]
        assert worker["pid"] == daemon.worker_pid(name) and worker["alive"] is True
        assert worker["state"] in ("STARTING", "RUNNING") and worker["restarts"] == 0
        assert worker["rss_bytes"] > 1_000_000
    assert status["buffer"]["pending"] == 0 and status["buffer"]["dead_letters"] == 0
    assert status["circuit"]["state"] == "closed"
    assert status["counters"]["received"] == 20 and status["counters"]["persisted"] == 20
    assert status["health"] == {"verdict": "healthy", "reasons": [],
                                "summary": "HEALTHY: all workers running; nothing waiting"}
    code, out, _ = daemon.ctl("status")
    assert code == 0 and out.startswith("HEALTHY: all workers running; nothing waiting\n")
    assert "workers:" in out and "ingestor" in out and "circuit:   closed" in out and "delivered 20" in out


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]], ids=["text", "json"])
def test_status_when_nothing_runs_exits_3_with_a_hint(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--socket", str(tmp_path / "none.sock"),
                             *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 3
    assert "not running" in result.stderr and "systemctl start mqttbuffer" in result.stderr


def test_restart_worker_forwarder(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    forwarder, ingestor = daemon.worker_pid("forwarder"), daemon.worker_pid("ingestor")
    results = {}

    def restart_midway(n):
        if n == 1000:
            results["reply"] = daemon.request("restart-worker", name="forwarder")

    accepted = publisher.publish(3000, rate=1000, during=restart_midway).accepted()
    # The command returns at once: the old forwarder is still stopping when the reply comes.
    assert results["reply"]["status"] == "ok"
    assert results["reply"]["data"] == {"name": "forwarder", "pid": forwarder, "state": "STOPPING"}
    new = wait_until(lambda: daemon.worker_pid("forwarder") not in (None, forwarder) and daemon.worker_pid("forwarder"),
                     5, "a new forwarder")
    print(f"forwarder {forwarder} -> {new}")
    assert_all_arrived(sink, accepted)
    assert daemon.worker_pid("ingestor") == ingestor
    assert daemon.status()["workers"]["forwarder"]["restarts"] == 1


def test_random_worker_kills_every_second_lose_nothing(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    rng, kills = random.Random(7), []

    def kill_every_second(n):
        if n and n % 1000 == 0:
            running = [(name, daemon.worker_pid(name)) for name in WORKERS]
            name, pid = rng.choice([w for w in running if w[1]])
            os.kill(pid, signal.SIGKILL)
            kills.append(name)

    accepted = publisher.publish(10000, rate=1000, during=kill_every_second).accepted(timeout=60)
    assert len(accepted) == 10000
    assert_all_arrived(sink, accepted, timeout=120)
    assert daemon.process.poll() is None
    wait_until(daemon.all_workers_running, 60, "all workers back")
    restarts = sum(w["restarts"] for w in daemon.status()["workers"].values())
    print(f"kills: {kills}; restarts counted: {restarts}")
    assert restarts == len(kills) == 9


def test_a_stopped_worker_is_detected_by_its_heartbeat(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, limits={"heartbeat_timeout": 2}).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    forwarder = daemon.worker_pid("forwarder")
    os.kill(forwarder, signal.SIGSTOP)
    accepted = publisher.publish(500).accepted()
    new = wait_until(lambda: daemon.worker_pid("forwarder") not in (None, forwarder), 20, "a new forwarder")
    assert new
    assert f"forwarder (pid {forwarder}) sent no heartbeat" in daemon.log()
    assert_all_arrived(sink, accepted)
    assert daemon.status()["workers"]["forwarder"]["hangs"] == 1


def test_memory_limit_restarts_the_worker_and_ingestion_goes_on(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, limits={"forwarder_memory_mb": 5, "memory_check_interval": 0.3}).start()
    wait_until(lambda: "over the 5 MiB limit for 3 samples" in daemon.log(), 20, "a memory restart")
    wait_until(lambda: daemon.status()["workers"]["forwarder"]["memory_restarts"] >= 2, 30, "a second restart")
    ingestor = daemon.worker_pid("ingestor")
    accepted = publisher.publish(300).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] >= 300, 10, "ingestion to keep acking")
    status = daemon.status()
    assert status["workers"]["forwarder"]["memory_restarts"] >= 2
    assert daemon.worker_pid("ingestor") == ingestor and daemon.worker_pid("persister")
    assert len(accepted) == 300


def test_dead_letters_list_replay_purge(mosquitto, sink, make_daemon, publisher):
    sink.reject = lambda m: 400 if m["payload"]["n"] in (3, 7) else None
    daemon = make_daemon(mosquitto, sink).start()
    publisher.publish(10)
    wait_until(lambda: daemon.status()["buffer"]["dead_letters"] == 2, 30, "2 dead letters")
    code, out, _ = daemon.ctl("dead-letters", "list")
    assert code == 0 and "2 dead letters" in out and out.count("rejected HTTP 400") == 2
    code, out, _ = daemon.ctl("dead-letters", "list", "--json")
    letters = __import__("json").loads(out)
    sink.reject = None
    code, out, _ = daemon.ctl("dead-letters", "replay", letters[0]["id"])
    assert code == 0 and "replayed 1" in out
    assert_all_arrived(sink, set(range(10)) - {3, 7} | {int(letters[0]["payload"].split('"n": ')[1].split(",")[0])})
    code, out, _ = daemon.ctl("dead-letters", "purge")
    assert code == 0 and "purged 1" in out
    wait_until(lambda: daemon.status()["buffer"]["dead_letters"] == 0, 10, "no dead letters")


def test_systemd_notify_ready_status_and_watchdog(mosquitto, sink, make_daemon, tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    daemon = make_daemon(mosquitto, sink)
    daemon.env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000")
    daemon.start()
    received = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (any("READY=1" in m for m in received)
                                               and any(m == "WATCHDOG=1" for m in received)):
        received.append(listener.recv(4096).decode())
    listener.close()
    ready = next(m for m in received if "READY=1" in m)
    assert "STATUS=HEALTHY: all workers running; nothing waiting; in 0.0/s" in ready
    assert "WATCHDOG=1" in received


def test_secrets_appear_nowhere(mosquitto, sink, make_daemon, publisher, tmp_path):
    # The test broker allows anonymous clients and so takes any credentials: what matters here
    # is that the daemon holds a password and never shows it.
    daemon = make_daemon(mosquitto, sink, api={"key": "api-key-5566"},
                         mqtt={"username": "daemon", "password": "mqtt-pass-7788"},
                         logging={"level": "debug", "stats_interval": 0.5})
    daemon.start()
    daemon.config_path.chmod(0o644)
    publisher.publish(5)
    accepted = publisher.accepted()
    assert_all_arrived(sink, accepted)
    assert sink.requests[0][3]["apikey"] == "api-key-5566"
    outputs = [daemon.log(), daemon.ctl("status")[1], daemon.ctl("status", "--json")[1],
               subprocess.run([sys.executable, "-m", "mqttbuffer", "--config", str(daemon.config_path), "--check"],
                              capture_output=True, text=True).stdout]
    for pid in [daemon.process.pid] + [daemon.worker_pid(n) for n in WORKERS]:
        outputs.append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))
    for text in outputs:
        assert "api-key-5566" not in text and "mqtt-pass-7788" not in text
    assert "readable by other users" in daemon.log()
