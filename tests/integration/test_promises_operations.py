"""README promises about running and operating the daemon, one test each, named after it: bounds
in bytes under overflow: block, journald, mqttbufferctl's exit codes, $STATE_DIRECTORY, upgrades,
the same id on a retried request, restart-worker, install-pikvm and SIGHUP."""

import os
import pathlib
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.conftest import WORKERS, assert_all_arrived, wait_until
from tests.stores import previous_store

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def ctl(*args, env=None):
    result = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", *args], capture_output=True, text=True,
                            timeout=20, env=env)
    return result.returncode, result.stdout, result.stderr


def test_max_bytes_under_overflow_block_stops_acking_and_drops_nothing(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    max_bytes = 40_000  # about 140 of the publisher's messages
    daemon = make_daemon(mosquitto, sink, buffer={"max_bytes": max_bytes, "overflow": "block"},
                         circuit_breaker={"max_failures": 5, "timeout": 1}).start()
    store, sizes = daemon.store(), []
    accepted = publisher.publish(1000, during=lambda n: n % 20 or sizes.append(store.totals()[1])).accepted()
    wait_until(lambda: daemon.status()["buffer"]["blocked"], 20, "the persister to block")
    sizes.append(store.totals()[1])
    first = next(size for size in sizes if size)
    print(f"store sizes seen under block: first commit {first}, largest {max(sizes)} bytes")
    # The bound holds, except that the first batch goes into an empty store whatever its size;
    # then nothing more is committed.
    assert max(sizes) <= max_bytes or {size for size in sizes if size} == {first}
    assert daemon.status()["counters"]["persisted"] < 1000
    sink.status = 200
    assert_all_arrived(sink, accepted, timeout=60)
    assert daemon.status()["counters"]["dropped"] == 0


def test_journald_gets_log_lines_without_timestamps(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink)
    daemon.env["JOURNAL_STREAM"] = "8:123456"
    daemon.start()
    assert_all_arrived(sink, publisher.publish(10).accepted())
    lines = daemon.log().splitlines()
    assert any("[ingestor]" in line for line in lines)
    assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \[", line) for line in lines), lines


@pytest.fixture
def fake_daemon_socket(tmp_path):
    """A control socket that answers every request with the bytes the test sets in ``answer``."""
    path = str(tmp_path / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    state = {"path": path, "answer": b""}

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(state["answer"])

    threading.Thread(target=serve, daemon=True).start()
    yield state
    server.close()


@pytest.mark.parametrize("answer, words", [
    (b'{"id": 1, "status": "error", "error": "no worker named \'forwarder\'"}\n', "no worker named 'forwarder'"),
    (b"this is not JSON\n", "no usable reply"),
], ids=["error-reply", "unusable-reply"])
def test_mqttbufferctl_exits_1_on_an_error(fake_daemon_socket, answer, words):
    fake_daemon_socket["answer"] = answer
    code, _, err = ctl("--socket", fake_daemon_socket["path"], "restart-worker", "forwarder")
    assert code == 1
    assert words in err


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["restart-worker", "nobody"],
    ["--config", "/nonexistent/mqttbuffer/config.yaml", "status"],
], ids=["unknown-command", "unknown-worker", "unreadable-config"])
def test_mqttbufferctl_exits_2_on_usage_and_config_errors(args):
    code, out, err = ctl(*args)
    assert code == 2
    assert err and not out


def test_state_directory_holds_the_store_and_client_id(mosquitto, sink, make_daemon, publisher, tmp_path):
    state = tmp_path / "state"
    daemon = make_daemon(mosquitto, sink)
    del daemon.config["buffer"]["persist_file"]
    del daemon.config["mqtt"]["client_id"]
    daemon.env["STATE_DIRECTORY"] = str(state)
    daemon.env.pop("RUNTIME_DIRECTORY", None)
    daemon.env.pop("KVMD_PST_DATA", None)
    daemon.start()
    assert daemon.status()["store"] == str(state / "buffer.db")
    assert_all_arrived(sink, publisher.publish(10).accepted())
    assert (state / "buffer.db").exists() and (state / "client_id").read_text().startswith("mqttbuffer-")


def test_upgrade_keeps_the_waiting_messages(mosquitto, sink, make_daemon, tmp_path):
    store_path = tmp_path / "old" / "buffer.db"
    store_path.parent.mkdir()
    previous_store(str(store_path), messages=3)
    daemon = make_daemon(mosquitto, sink, buffer={"persist_file": str(store_path)}).start()
    assert_all_arrived(sink, {0, 1, 2})
    assert [m["id"] for m in sink.delivered()] == ["old0", "old1", "old2"]
    assert "Upgraded the store" in daemon.log()


def test_upgrade_a_store_from_a_newer_mqttbuffer_is_refused_with_exit_78(tmp_path):
    store_path = tmp_path / "buffer.db"
    previous_store(str(store_path), messages=1)
    db = sqlite3.connect(store_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {{url: 'http://127.0.0.1:9/x'}}\nbuffer: {{persist_file: '{store_path}'}}\n")
    result = subprocess.run([sys.executable, "-m", "mqttbuffer", "--config", str(config)], capture_output=True,
                            text=True, timeout=20, cwd=ROOT)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "buffer.persist_file" in lines[0] and "newer mqttbuffer (store schema 99" in lines[0]


def test_the_same_id_on_a_retried_request(mosquitto, sink, make_daemon, publisher):
    sink.plan.append((503, {}))
    make_daemon(mosquitto, sink).start()
    accepted = publisher.publish(20).accepted()
    assert_all_arrived(sink, accepted)
    refused = [m["id"] for m in sink.requests[0][2]]
    assert sink.requests[0][1] == 503 and refused
    assert refused == [m["id"] for m in sink.delivered()][:len(refused)]


@pytest.mark.parametrize("worker", [pytest.param("ingestor", marks=pytest.mark.paho), "persister"])
def test_restart_worker_ingestor_and_persister_lose_nothing(worker, mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    before = {name: daemon.worker_pid(name) for name in WORKERS}
    results = {}

    def restart_midway(n):
        if n == 1000:
            results["ctl"] = daemon.ctl("restart-worker", worker)

    accepted = publisher.publish(3000, rate=1000, during=restart_midway).accepted()
    code, out, _ = results["ctl"]
    assert code == 0 and out.strip() == f"restarting {worker} (pid {before[worker]})"
    assert_all_arrived(sink, accepted)
    new = wait_until(lambda: daemon.worker_pid(worker) not in (None, before[worker]), 10, f"a new {worker}")
    assert new
    assert {n: daemon.worker_pid(n) for n in WORKERS if n != worker} == {n: p for n, p in before.items()
                                                                           if n != worker}
    assert daemon.status()["workers"][worker]["restarts"] == 1


@pytest.fixture
def pikvm_stubs(tmp_path):
    """rw, ro, pacman, systemctl, kvmd-pstrun and mqttbuffer as stubs that log their arguments;
    ``fail`` names a command line (e.g. "pacman -U") that should fail."""
    bin_dir = tmp_path / "stubs"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("rw", "ro", "pacman", "systemctl", "kvmd-pstrun", "mqttbuffer"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n'
                        f'case "{name} $*" in "$STUB_FAIL"*) [ -n "$STUB_FAIL" ] && exit 1;; esac\nexit 0\n')
        stub.chmod(0o755)
    package = tmp_path / "mqttbuffer-1.0-1-any.pkg.tar.zst"
    package.write_bytes(b"")

    def run(*args, fail=""):
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_FAIL=fail)
        result = subprocess.run([str(ROOT / "bin" / "install-pikvm"), *args], capture_output=True, text=True,
                                timeout=20, env=env)
        done = [line.strip() for line in calls.read_text().splitlines()] if calls.exists() else []
        calls.unlink(missing_ok=True)
        return result, done

    run.package = str(package)
    return run


def test_install_pikvm_dry_run_prints_every_step_and_changes_nothing(pikvm_stubs):
    result, calls = pikvm_stubs("--dry-run", pikvm_stubs.package)
    assert result.returncode == 0, result.stderr
    steps = [line[2:].split()[0:2] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert steps == [["rw"], ["pacman", "-S"], ["pacman", "-U"], ["systemctl", "daemon-reload"],
                     ["systemctl", "enable"], ["systemctl", "restart"], ["ro"]]
    assert "dry run: nothing was changed" in result.stdout
    assert calls == []
    result, calls = pikvm_stubs("--dry-run", "--uninstall", "--purge")
    assert result.returncode == 0 and calls == []
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("+ ")] == \
        ["rw", "systemctl", "pacman", "kvmd-pstrun", "ro"]


def test_install_pikvm_installs_and_uninstalls_and_is_read_only_again_even_when_a_step_fails(pikvm_stubs):
    result, calls = pikvm_stubs(pikvm_stubs.package)
    assert result.returncode == 0, result.stderr
    assert calls[0] == "rw" and calls[-1] == "ro"
    assert f"pacman -U --needed --noconfirm {pikvm_stubs.package}" in calls
    assert "systemctl restart mqttbuffer-pikvm.service" in calls
    result, calls = pikvm_stubs(pikvm_stubs.package, fail="pacman -U")
    assert result.returncode != 0
    assert calls[-1] == "ro" and "systemctl restart mqttbuffer-pikvm.service" not in calls
    result, calls = pikvm_stubs("--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert calls[0] == "rw" and calls[-1] == "ro"
    assert "systemctl disable --now mqttbuffer-pikvm.service" in calls and "pacman -R --noconfirm mqttbuffer" in calls
    assert any(c.startswith("kvmd-pstrun -- sh -c") for c in calls)


def test_sighup_is_ignored_with_a_line(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink).start()
    before = {name: daemon.worker_pid(name) for name in WORKERS}
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP ignored" in daemon.log(), 10, "the SIGHUP line")
    assert_all_arrived(sink, publisher.publish(20).accepted())
    assert daemon.process.poll() is None
    assert {name: daemon.worker_pid(name) for name in WORKERS} == before
    assert all(w["restarts"] == 0 for w in daemon.status()["workers"].values())
