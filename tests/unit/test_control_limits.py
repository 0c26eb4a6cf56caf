"""The control socket under abuse: clients capped, EMFILE survived, a live socket never taken."""

import errno
import socket

import pytest

from mqttbuffer.control.server import MAX_CLIENTS, ControlServer, SocketInUse


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


@pytest.fixture
def server(tmp_path):
    s = ControlServer(str(tmp_path / "control.sock"), {"status": lambda request: {"ok": True}})
    yield s
    s.close()


def connect(server, count):
    clients = []
    for _ in range(count):
        c = socket.socket(socket.AF_UNIX)
        c.connect(server.path)
        clients.append(c)
        server.serve([server.sock], 0.0)
    return clients


def test_idle_clients_are_capped_the_oldest_dropped_first(server):
    clients = connect(server, MAX_CLIENTS + 6)
    assert len(server.clients) == MAX_CLIENTS
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


def test_a_socket_a_live_daemon_listens_on_is_not_taken(server, tmp_path):
    with pytest.raises(SocketInUse):
        ControlServer(server.path, {})
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
