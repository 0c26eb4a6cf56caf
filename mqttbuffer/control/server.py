"""The supervisor's end of the control socket.

An AF_UNIX stream socket, mode 0660. A client sends one JSON line such as
``{"id": 1, "command": "status"}`` and gets one JSON line back:
``{"id": 1, "status": "ok", "data": {...}}`` or ``{"id": 1, "status": "error", "error": "..."}``.
Everything is non-blocking and served from the supervisor's loop: a client that sends more than
``MAX_REQUEST`` bytes, or nothing complete within ``CLIENT_TIMEOUT`` seconds, is dropped.
Handlers are plain functions ``handler(request) -> data`` that raise ControlError to refuse.

Hostile clients cannot wedge it (``listening``): at most ``MAX_CLIENTS`` connections are kept,
and running out of file descriptors drops the oldest or pauses accepting. The socket file is
removed only by the server that bound it, and a socket some live daemon still listens on is
never replaced.
"""

import json
import logging
import os
import socket

from mqttbuffer.supervisor.listening import Listening

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 64

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


class ControlServer(Listening):
    def __init__(self, path, handlers):
        self.path = path
        self.handlers = handlers
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            if _someone_listens(path):
                raise SocketInUse(f"another process listens on the control socket {path}")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        self.identity = _identity(path)
        sock.listen(16)
        sock.setblocking(False)
        super().__init__(sock, "Control socket", log, MAX_CLIENTS, CLIENT_TIMEOUT)

    def serve_client(self, client, readable):
        if readable:
            self._read(client)

    def _read(self, client):
        chunk = self._receive(client, MAX_REQUEST)
        if chunk is None:
            return
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

    def close(self):
        super().close()
        # Only the file this server bound: another daemon may have replaced it since.
        try:
            if _identity(self.path) == self.identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

