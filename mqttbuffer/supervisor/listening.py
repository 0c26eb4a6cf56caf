"""A listening socket served from the supervisor's one loop, non-blocking: the control socket and
the metrics endpoint are both one.

Hostile or broken clients cannot wedge the loop: at most ``max_clients`` connections are kept (a
new one pushes out the oldest), a client is dropped at its deadline, and when accept fails for
want of file descriptors (EMFILE, ENFILE) the oldest half of the clients is dropped, or accepting
pauses for ``ACCEPT_PAUSE`` seconds if there are none: the listening socket stays readable until
then, and polling it again at once would spin the loop.
"""

import errno

ACCEPT_PAUSE = 1.0


class Client:
    def __init__(self, sock, now, timeout):
        self.sock = sock
        self.buffer = b""
        self.reply = b""
        self.deadline = now + timeout

    def fileno(self):
        return self.sock.fileno()


class Listening:
    """Accepts clients on ``sock`` (listening, non-blocking) and hands them to ``serve_client``."""

    def __init__(self, sock, what, log, max_clients, client_timeout):
        self.sock, self.what, self.log = sock, what, log
        self.max_clients, self.client_timeout = max_clients, client_timeout
        self.clients = []
        self.accept_paused_until = 0.0
        self.emfile_logged = False

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
            self.serve_client(client, client in ready)
            if client in self.clients and now >= client.deadline:
                self._drop(client)

    def serve_client(self, client, readable):
        raise NotImplementedError

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
            self.clients.append(Client(conn, now, self.client_timeout))
            if len(self.clients) > self.max_clients:
                self._drop(self.clients[0])

    def _out_of_descriptors(self, now):
        if not self.emfile_logged:
            self.log.warning("%s: out of file descriptors with %d clients connected;"
                             " dropping the oldest", self.what, len(self.clients))
            self.emfile_logged = True
        if self.clients:
            for client in self.clients[:max(1, len(self.clients) // 2)]:
                self._drop(client)
        else:
            self.accept_paused_until = now + ACCEPT_PAUSE

    def _receive(self, client, limit):
        """Add what the client sent to its buffer and return it (b"" once it closed); None when
        nothing came or the client is gone (dropped)."""
        try:
            chunk = client.sock.recv(limit)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._drop(client)
            return None
        client.buffer += chunk
        return chunk

    def _drop(self, client):
        self.clients.remove(client)
        client.sock.close()

    def close_in_child(self):
        """In a forked worker: close the inherited sockets (the supervisor keeps serving)."""
        for sock in (self.sock, *(c.sock for c in self.clients)):
            sock.close()

    def close(self):
        for client in list(self.clients):
            self._drop(client)
        self.sock.close()
