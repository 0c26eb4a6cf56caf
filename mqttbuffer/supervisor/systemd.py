"""sd_notify without a dependency: READY=1, STATUS=, WATCHDOG=1 to $NOTIFY_SOCKET.

Silent when NOTIFY_SOCKET is unset (not started by systemd with Type=notify).
"""

import os
import socket


class Notifier:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if watched else None
        self._sock = None

    def notify(self, *lines):
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or socket full: notifications are best effort

    def close(self):
        if self._sock is not None:
            self._sock.close()
