"""One daemon per store, workers that die with the supervisor, a control socket that cannot be
flooded into wedging supervision, and signals that do not kill."""

import errno
import os
import resource
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from tests.conftest import WORKERS, assert_all_arrived, wait_until

pytestmark = pytest.mark.integration


def worker_pids(daemon):
    return {name: daemon.worker_pid(name) for name in WORKERS}


def test_a_second_daemon_on_the_same_store_exits_75_naming_the_first(mosquitto, sink, make_daemon, publisher):
    first = make_daemon(mosquitto, sink).start()
    socket_path = first.status()["workers"] and first.config_path
    second = make_daemon(mosquitto, sink)
    second.config = dict(first.config)
    second.start(wait_ready=False)
    assert second.process.wait(20) == 75
    lines = second.log().strip().splitlines()
    assert len(lines) == 1 and f"pid {first.process.pid}" in lines[0], lines
    # The first one keeps its control socket and goes on delivering.
    assert socket_path and first.status()["pid"] == first.process.pid
    accepted = publisher.publish(200, rate=1000).accepted()
    assert assert_all_arrived(sink, accepted) == 0


def test_workers_die_with_a_killed_supervisor_and_a_new_daemon_takes_over(mosquitto, sink, make_daemon,
                                                                            publisher):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    pids = worker_pids(daemon)
    accepted = publisher.publish(300, rate=1000).accepted()
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(10)
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in pids.values()), 5, "the workers to die with the supervisor")
    again = make_daemon(mosquitto, sink)
    again.config = dict(daemon.config)
    again.start()
    accepted |= publisher.publish(300, rate=1000).accepted()
    duplicates = assert_all_arrived(sink, accepted)
    assert duplicates <= 300  # at most what was in flight when the supervisor died, resent once


def test_sigusr1_logs_the_stats_line_and_sigusr2_the_workers(mosquitto, sink, make_daemon):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    # No worker holds the supervisor's listening control socket.
    path = os.path.join(os.path.dirname(daemon.config["buffer"]["persist_file"]), "control.sock")
    with open("/proc/net/unix") as f:
        inode = next(line.split()[6] for line in f if line.rstrip().endswith(path))
    for name in ("ingestor", "persister", "forwarder"):
        fds = f"/proc/{daemon.worker_pid(name)}/fd"
        assert f"socket:[{inode}]" not in {os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)}, name
    daemon.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: "SIGUSR1: Buffer stats: pending=" in daemon.log(), 5, "the stats line")
    daemon.process.send_signal(signal.SIGUSR2)
    wait_until(lambda: "SIGUSR2: workers persister" in daemon.log(), 5, "the workers line")
    os.kill(daemon.worker_pid("forwarder"), signal.SIGUSR1)
    assert daemon.process.poll() is None and daemon.status()["workers"]["forwarder"]["restarts"] == 0


def test_a_control_socket_flood_under_1024_descriptors_does_not_stop_supervision(mosquitto, sink, make_daemon,
                                                                                   publisher):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2200:
        pytest.skip("the test needs more than 2,200 descriptors of its own")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    daemon = make_daemon(mosquitto, sink)
    daemon.command = ["prlimit", "--nofile=1024", *daemon.command]
    daemon.start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    clients = []
    try:
        for _ in range(1100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            # A full backlog refuses at once (EAGAIN): retry until the supervisor accepted more.
            path = daemon.config_path.parent.parent.joinpath("store", "control.sock").as_posix()
            wait_until(lambda c=client, p=path: c.connect_ex(p) in (0, errno.EISCONN), 5, "a connection",
                       interval=0.001)
        forwarder = daemon.worker_pid("forwarder")
        os.kill(forwarder, signal.SIGKILL)
        wait_until(lambda: daemon.worker_pid("forwarder") not in (None, forwarder), 10,
                   "the forwarder to be restarted during the flood")
        accepted = publisher.publish(100, rate=1000).accepted()
        assert_all_arrived(sink, accepted, timeout=30)
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert daemon.status()["workers"]["forwarder"]["alive"]


@pytest.mark.parametrize("extra", [[], ["--check"]], ids=["run", "check"])
def test_control_socket_that_cannot_be_created_exits_78_with_one_line(tmp_path, extra):
    (tmp_path / "plain-file").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {{url: 'http://127.0.0.1:9/x'}}\nbuffer: {{persist_file: '{tmp_path}/buffer.db'}}\n"
                      f"control: {{socket: '{tmp_path}/plain-file/control.sock'}}\n")
    result = subprocess.run([sys.executable, "-m", "mqttbuffer", "--config", str(config), *extra],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert len(result.stderr.strip().splitlines()) == 1 and "control.socket: cannot create" in result.stderr
