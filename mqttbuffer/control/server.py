"""The supervisor's end of the control socket.

An AF_UNIX stream socket, mode 0660. A client sends one JSON line such as
``{"id": 1, "command": "status"}`` and gets one JSON line back:
``{"id": 1, "status": "ok", "data": {...}}`` or ``{"id": 1, "status": "error", "error": "..."}``.
Everything is non-blocking and served from the supervisor's loop: a client that sends more than
``MAX_REQUEST`` bytes, or nothing complete within ``CLIENT_TIMEOUT`` seconds, is dropped.
Handlers are plain functions ``handler(request) -> data`` that raise ControlError to refuse.

Hostile clients cannot wedge it: at most ``MAX_CLIENTS`` connections are kept (a new one pushes
out the oldest), and when accept fails for want of file descriptors (EMFILE) the oldest idle
clients are dropped, or accepting pauses for ``ACCEPT_PAUSE`` seconds if there are none.
The socket file is removed only by the server that bound it, and a socket some live daemon still
listens on is never replaced.
"""

import errno
import json
import logging
import os
import socket

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 64
ACCEPT_PAUSE = 1.0

log = logging.getLogger("mqttbuffer.control")


class ControlError(Exception):
    """A request that cannot be served; its text goes back to the client."""


class SocketInUse(Exception):
    """Another live process listens on the control socket's path."""


def _identity(path):
    # The inode number alone can be reused by a file created after ours was removed.
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns


def _someone_listens(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class _Client:
    def __init__(self, sock, now):
        self.sock = sock
        self.buffer = b""
        self.deadline = now + CLIENT_TIMEOUT

    def fileno(self):
        return self.sock.fileno()


class ControlServer:
    def __init__(self, path, handlers):
        self.path = path
        self.handlers = handlers
        self.clients = []
        self.accept_paused_until = 0.0
        self.emfile_logged = False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            if _someone_listens(path):
                raise SocketInUse(f"another process listens on the control socket {path}")
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        self.identity = _identity(path)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def waitables(self, now=None):
        paused = now is not None and now < self.accept_paused_until
        return [*([] if paused else [self.sock]), *self.clients]

    def next_deadline(self):
        deadlines = [c.deadline for c in self.clients]
        if self.accept_paused_until:
            deadlines.append(self.accept_paused_until)
        return min(deadlines, default=None)

    def serve(self, ready, now):
        """Handle whatever of ours is in ``ready``; drop clients past their deadline."""
        if self.sock in ready:
            self._accept(now)
        for client in list(self.clients):
            if client in ready:
                self._read(client)
            elif now >= client.deadline:
                self._drop(client)

    def _accept(self, now):
        if now < self.accept_paused_until:
            return
        self.accept_paused_until = 0.0
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                self._out_of_descriptors(now)
                return
            self.emfile_logged = False
            conn.setblocking(False)
            self.clients.append(_Client(conn, now))
            if len(self.clients) > MAX_CLIENTS:
                self._drop(self.clients[0])

    def _out_of_descriptors(self, now):
        if not self.emfile_logged:
            log.warning("Control socket: out of file descriptors with %d clients connected;"
                        " dropping the oldest", len(self.clients))
            self.emfile_logged = True
        if self.clients:
            for client in self.clients[:max(1, len(self.clients) // 2)]:
                self._drop(client)
        else:
            self.accept_paused_until = now + ACCEPT_PAUSE

    def _read(self, client):
        try:
            chunk = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.buffer += chunk
        if b"\n" not in client.buffer and chunk and len(client.buffer) <= MAX_REQUEST:
            return
        line = client.buffer.split(b"\n", 1)[0]
        if len(line) > MAX_REQUEST:
            reply = {"status": "error", "error": f"request longer than {MAX_REQUEST} bytes"}
        elif not line.strip():
            self._drop(client)
            return
        else:
            reply = self.dispatch(line)
        try:
            client.sock.send(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        except OSError:
            pass
        self._drop(client)

    def dispatch(self, line):
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return {"status": "error", "error": f"not a JSON object: {exc}"}
        reply = {"id": request.get("id")}
        handler = self.handlers.get(request.get("command"))
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {**reply, "status": "error", "error": f"unknown command {request.get('command')!r} (known: {known})"}
        try:
            return {**reply, "status": "ok", "data": handler(request)}
        except ControlError as exc:
            return {**reply, "status": "error", "error": str(exc)}
        except Exception as exc:  # a handler bug must not take the supervisor down
            log.exception("Control command %r failed", request.get("command"))
            return {**reply, "status": "error", "error": f"internal error: {exc}"}

    def _drop(self, client):
        self.clients.remove(client)
        client.sock.close()

    def close_in_child(self):
        """In a forked worker: close the inherited sockets without touching the socket file."""
        for sock in (self.sock, *(c.sock for c in self.clients)):
            os.close(sock.detach())

    def close(self):
        for client in list(self.clients):
            self._drop(client)
        self.sock.close()
        # Only the file this server bound: another daemon may have replaced it since.
        try:
            if _identity(self.path) == self.identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

