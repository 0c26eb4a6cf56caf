"""Framed links between workers over AF_UNIX sockets.

multiprocessing.Queue is not crash-safe (a producer killed mid-write can leave its lock held or
half an item in the pipe), so each consumer listens on its own socket and each producer connects
to it. Frames are multiprocessing.connection framing: a peer that dies mid-frame is an EOFError or
ConnectionError on the survivor, never a hang or a corrupted stream. Either side may vanish at any
time; producers reconnect with ``Reconnector`` and re-send what was not confirmed.
"""

import os
import socket
from multiprocessing.connection import Connection, wait

LINK_ERRORS = (EOFError, OSError)
# The sockets in the supervisor's links directory, named after the worker that listens on each.
PERSISTER_LINK = "persister.sock"  # the ingestor sends batches, the persister confirms them

__all__ = ["LINK_ERRORS", "PERSISTER_LINK", "Listener", "Reconnector", "connect", "wait"]


class Listener:
    """The consumer's end: a listening socket whose accept() never blocks."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._sock.setblocking(False)

    def fileno(self):
        return self._sock.fileno()

    def accept(self):
        """Return a Connection for a waiting producer, or None."""
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(True)
        return Connection(conn.detach())

    def close(self):
        self._sock.close()


def connect(path):
    """The producer's end: a Connection to the listener at path (raises OSError if none)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return Connection(sock.detach())


class Reconnector:
    """Connect to a listener that may not be there yet, backing off from 0.05 s to 1 s."""

    FIRST_DELAY, MAX_DELAY = 0.05, 1.0

    def __init__(self, path):
        self.path = path
        self._delay = self.FIRST_DELAY
        self._next_try = 0.0

    def try_connect(self, now):
        """A new Connection, or None if it is not time yet or the listener is not there."""
        if now < self._next_try:
            return None
        try:
            conn = connect(self.path)
        except OSError:
            self._next_try = now + self._delay
            self._delay = min(self._delay * 2, self.MAX_DELAY)
            return None
        self._delay = self.FIRST_DELAY
        return conn

    def seconds_to_next_try(self, now):
        return max(0.0, self._next_try - now)
