"""The control socket and the metrics endpoint under abuse: clients capped, EMFILE survived
(without spinning the supervisor's loop), a live socket never taken."""

import errno
import socket

import pytest

from mqttbuffer.control.server import ControlServer, SocketInUse
from mqttbuffer.supervisor.metrics import MetricsServer
from tests.conftest import free_port


class OutOfDescriptors:
    """The listening socket as accept() sees it when the process has no descriptor left."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def accept(self):
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self):
        self.sock.close()


@pytest.fixture(params=["control", "metrics"])
def server(request, tmp_path):
    if request.param == "control":
        s = ControlServer(str(tmp_path / "control.sock"), {"status": lambda request: {"ok": True}})
    else:
        s = MetricsServer(f"127.0.0.1:{free_port()}", lambda: "")
    yield s
    s.close()


def connect(server, count):
    clients = []
    for _ in range(count):
        if isinstance(server, ControlServer):
            c = socket.socket(socket.AF_UNIX)
            c.connect(server.path)
        else:
            c = socket.create_connection(server.address)
        clients.append(c)
        server.serve([server.sock], 0.0)
    return clients


def test_idle_clients_are_capped_the_oldest_dropped_first(server):
    clients = connect(server, server.max_clients + 6)
    assert len(server.clients) == server.max_clients
    assert clients[0].recv(10) == b""  # the oldest was closed
    for c in clients:
        c.close()


def test_emfile_drops_the_oldest_clients_or_pauses_accepting(server, caplog):
    clients = connect(server, 8)
    server.sock = OutOfDescriptors(server.sock)
    server.serve([server.sock], 1.0)
    assert len(server.clients) == 4 and "out of file descriptors" in caplog.text
    for client in list(server.clients):
        server._drop(client)
    server.serve([server.sock], 2.0)
    assert server.sock not in server.waitables(2.5) and server.next_deadline() == pytest.approx(3.0)
    assert server.sock in server.waitables(3.1)
    for c in clients:
        c.close()


def test_a_socket_a_live_daemon_listens_on_is_not_taken(tmp_path):
    server = ControlServer(str(tmp_path / "control.sock"), {})
    with pytest.raises(SocketInUse):
        ControlServer(server.path, {})
    server.close()
    other = tmp_path / "other.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(other))
    stale.close()  # a file nobody listens on: replaced
    ControlServer(str(other), {}).close()
    assert not other.exists()


def test_only_the_server_that_bound_the_socket_removes_it(tmp_path):
    path = str(tmp_path / "control.sock")
    first = ControlServer(path, {})
    first.sock.close()  # as if its process had died
    second = ControlServer(path, {})  # replaces the stale file
    first.close()
    assert socket.socket(socket.AF_UNIX).connect_ex(path) == 0  # still second's
    second.close()
