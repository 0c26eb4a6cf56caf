"""What every worker process shares: the life cycle after fork and the stop flag.

``__init__`` runs in the supervisor before fork and only stores arguments; ``setup()`` opens
everything that owns a file descriptor; ``step(now)`` does one iteration (what unit tests call);
``stop()`` only sets a flag, so it is safe in a signal handler; ``shutdown()`` finishes cleanly.
"""

import logging
import signal
import sys
import time

import setproctitle

from mqttbuffer.logs import setup_logging

EX_SOFTWARE = 70


class Worker:
    name = "worker"

    def __init__(self, cfg, links_dir):
        self.cfg = cfg
        self.links_dir = links_dir
        self.stopping = False
        self.log = logging.getLogger(f"mqttbuffer.{self.name}")

    def stop(self, *_):
        self.stopping = True

    def run(self):
        """The child's main: called by multiprocessing right after fork."""
        # The parent's wakeup fd and handlers must not fire here: a signal to this worker would
        # otherwise wake the supervisor as if it had been signalled itself.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, self.stop)
        # Ctrl-C reaches the whole process group; the supervisor decides the order of stopping.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        setproctitle.setproctitle(f"mqttbuffer-{self.name}")
        setup_logging(self.cfg.logging.level, self.cfg.secrets())
        try:
            self.setup()
            while not self.stopping:
                self.step(time.monotonic())
            self.shutdown()
        except Exception:
            self.log.exception("%s failed", self.name)
            sys.exit(EX_SOFTWARE)

    def setup(self):
        """Open files, sockets and connections (after fork)."""

    def step(self, now):
        raise NotImplementedError

    def shutdown(self):
        """Finish in-flight work after stop() and release resources."""
