"""The supervisor's end of the control socket.

An AF_UNIX stream socket, mode 0660. A client sends one JSON line such as
``{"id": 1, "command": "status"}`` and gets one JSON line back:
``{"id": 1, "status": "ok", "data": {...}}`` or ``{"id": 1, "status": "error", "error": "..."}``.
Everything is non-blocking and served from the supervisor's loop: a client that sends more than
``MAX_REQUEST`` bytes, or nothing complete within ``CLIENT_TIMEOUT`` seconds, is dropped.
Handlers are plain functions ``handler(request) -> data`` that raise ControlError to refuse.
"""

import json
import logging
import os
import socket

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0

log = logging.getLogger("mqttbuffer.control")


class ControlError(Exception):
    """A request that cannot be served; its text goes back to the client."""


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
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def waitables(self):
        return [self.sock, *self.clients]

    def next_deadline(self):
        return min((c.deadline for c in self.clients), default=None)

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
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self.clients.append(_Client(conn, now))

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

    def close(self):
        for client in list(self.clients):
            self._drop(client)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

