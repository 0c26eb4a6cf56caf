"""The client's end of the control socket: one request, one reply."""

import json
import socket


class NotRunning(Exception):
    """Nothing listens on the control socket."""


def request(path, command, timeout=5.0, **args):
    """Send one command to the daemon's socket at path and return the decoded reply."""
    payload = json.dumps({"id": 1, "command": command, **args}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"{path}: {exc.strerror}") from None
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NotRunning(f"{path}: the daemon closed the connection without a reply")
    return json.loads(data)
