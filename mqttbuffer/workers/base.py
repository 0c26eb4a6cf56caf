"""What every worker process shares: the life cycle after fork and the stop flag.

``__init__`` runs in the supervisor before fork and only stores arguments; ``setup()`` opens
everything that owns a file descriptor; ``step(now)`` does one iteration (unit tests drive the
workers through it, their broker and HTTP clients handed in); ``stop()`` only sets a flag, so it
is safe in a signal handler (the signal also writes to ``wake_r``, which every worker includes in
its waits, so it notices at once); ``shutdown()`` finishes cleanly.
"""

import ctypes
import logging
import os
import signal
import sys
import time

import setproctitle

from mqttbuffer.exitcodes import EX_SOFTWARE
from mqttbuffer.logs import setup_logging

PR_SET_PDEATHSIG = 1
# A step waits at most about half a second; a worker that has not begun its next step this long
# after beginning the last one is late (the supervisor adds limits.heartbeat_timeout on top).
STEP_BUDGET = 2.0


class Worker:
    name = "worker"

    def __init__(self, cfg, links_dir, stats):
        self.cfg = cfg
        self.links_dir = links_dir
        self.stats = stats
        self.stopping = False
        self.log = logging.getLogger(f"mqttbuffer.{self.name}")
        self.supervisor_pid = None
        self.inherited = ()  # the supervisor's sockets and fds, closed right after fork

    def stop(self, *_):
        self.stopping = True

    def run(self):
        """The child's main: called by multiprocessing right after fork."""
        self._leave_parent()
        # The parent's wakeup fd must not fire here: a signal to this worker would otherwise wake
        # the supervisor as if it had been signalled itself. Ours wakes the worker's own waits.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, self.stop)
        # Ctrl-C reaches the whole process group; the supervisor decides the order of stopping.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        setproctitle.setproctitle(f"mqttbuffer-{self.name}")
        setup_logging(self.cfg.logging.level, self.cfg.secrets())
        try:
            self.setup()
            while not self.stopping:
                if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
                    self.log.error("%s: the supervisor (pid %s) is gone; exiting", self.name, self.supervisor_pid)
                    os._exit(EX_SOFTWARE)
                now = time.monotonic()
                self.stats.beat(self.name, now + STEP_BUDGET)
                self.step(now)
            self.shutdown()
        except Exception:
            self.log.exception("%s failed", self.name)
            sys.exit(EX_SOFTWARE)

    def _leave_parent(self):
        """Die with the supervisor, and let go of what is the supervisor's alone.

        A worker outliving a SIGKILLed supervisor would keep the store, the MQTT session and
        the control socket from the next daemon."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the parent checks here and in the main loop still apply
        # The supervisor may have died before prctl took effect.
        if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
            os._exit(EX_SOFTWARE)
        for item in self.inherited:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close_in_child()

    def wake(self):
        """Interrupt the worker's current wait (safe from any thread)."""
        try:
            os.write(self.wake_w, b"w")
        except BlockingIOError:
            pass

    def drain_wakeups(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def setup(self):
        """Open files, sockets and connections (after fork)."""

    def step(self, now):
        raise NotImplementedError

    def shutdown(self):
        """Finish in-flight work after stop() and release resources."""
