"""The supervisor: forks the workers, restarts any that die, and stops them in pipeline order.

It never holds an MQTT or SQLite connection. Signal handlers only queue the signal; one loop
waits on the signal wakeup pipe and the workers' sentinels and does everything else.

Worker states (one slot per worker):
  STARTING  forked, not yet seen running for a moment
  RUNNING   alive
  BACKOFF   died; restarts at ``restart_at``
  STOPPING  asked to stop (SIGTERM), SIGKILL at the deadline
  EXITED    stopped as asked
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time

from mqttbuffer.clientid import load_or_create_client_id
from mqttbuffer.workers.forwarder import Forwarder
from mqttbuffer.workers.ingestor import Ingestor
from mqttbuffer.workers.persister import Persister

log = logging.getLogger("mqttbuffer.supervisor")

# Python 3.14 defaults to forkserver; the workers rely on inheriting the parsed config by fork.
FORK = multiprocessing.get_context("fork")

RESTART_DELAY = 1.0
RUNNING_AFTER = 1.0
# Stop budget (systemd and the issue allow 10 s): the ingestor first, so it can ack what the
# persister commits; then the persister; the forwarder may be mid-request and is killed at the end.
INGESTOR_STOP_GRACE = 6.0
PERSISTER_STOP_GRACE = 2.0
TOTAL_STOP_GRACE = 9.0


def describe_exit(exitcode):
    """How a worker ended, in words: 'exited with 1', 'killed by SIGKILL (out of memory?)'."""
    if exitcode is None:
        return "still running"
    if exitcode >= 0:
        return f"exited with {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = " (out of memory?)" if name == "SIGKILL" else ""
    return f"killed by {name}{hint}"


class Slot:
    """One worker and the process currently running it."""

    def __init__(self, worker):
        self.worker = worker
        self.name = worker.name
        self.process = None
        self.state = "EXITED"
        self.started_at = 0.0
        self.restart_at = 0.0
        self.restarts = 0
        self.last_exit = None

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def transition(self, state, reason=""):
        extra = f", {reason}" if reason else ""
        log.info("%s (pid %s): %s -> %s%s", self.name, self.pid, self.state, state, extra)
        self.state = state


class Supervisor:
    def __init__(self, cfg):
        self.cfg = cfg
        self.signals = []
        self.slots = []
        self.links_dir = None

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def run(self):
        """Run until SIGTERM or SIGINT; return the exit code."""
        multiprocessing.current_process().name = "supervisor"
        client_id = self.cfg.mqtt.client_id or load_or_create_client_id(
            os.path.join(os.path.dirname(self.cfg.buffer.persist_file), "client_id")
        )
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self.links_dir = tempfile.mkdtemp(prefix="mqttbuffer.", dir=runtime)
        self.slots = [
            Slot(Persister(self.cfg, self.links_dir)),
            Slot(Ingestor(self.cfg, self.links_dir, client_id)),
            Slot(Forwarder(self.cfg, self.links_dir)),
        ]
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info("mqttbuffer starting: broker %s, API %s, store %s, client id %s",
                 self.cfg.mqtt.broker, self.cfg.api.url, self.cfg.buffer.persist_file, client_id)
        try:
            for slot in self.slots:
                self._start(slot)
            while not self._stop_requested():
                self._loop_once(wake_r)
            self._stop_all()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            shutil.rmtree(self.links_dir, ignore_errors=True)
        log.info("mqttbuffer stopped")
        return 0

    def _stop_requested(self):
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("SIGHUP ignored: restart the service to apply a changed config")
                continue
            log.info("Received %s, stopping", signal.Signals(signum).name)
            return True
        return False

    def _start(self, slot):
        slot.process = FORK.Process(target=slot.worker.run, name=slot.name, daemon=False)
        slot.process.start()
        slot.started_at = time.monotonic()
        slot.transition("STARTING")

    def _loop_once(self, wake_r):
        now = time.monotonic()
        timeouts = [1.0]
        for slot in self.slots:
            if slot.state == "BACKOFF":
                timeouts.append(slot.restart_at - now)
            elif slot.state == "STARTING":
                timeouts.append(slot.started_at + RUNNING_AFTER - now)
        sentinels = [s.process.sentinel for s in self.slots if s.state in ("STARTING", "RUNNING")]
        multiprocessing.connection.wait([wake_r, *sentinels], max(0.0, min(timeouts)))
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        now = time.monotonic()
        for slot in self.slots:
            self._check(slot, now)

    def _check(self, slot, now):
        if slot.state in ("STARTING", "RUNNING") and not slot.process.is_alive():
            slot.process.join()
            slot.last_exit = describe_exit(slot.process.exitcode)
            slot.restart_at = now + RESTART_DELAY
            slot.transition("BACKOFF", f"{slot.last_exit}, restart in {RESTART_DELAY:g}s")
            slot.process.close()
            slot.process = None
        elif slot.state == "STARTING" and now - slot.started_at >= RUNNING_AFTER:
            slot.transition("RUNNING")
        elif slot.state == "BACKOFF" and now >= slot.restart_at:
            slot.restarts += 1
            self._start(slot)

    def _stop_all(self):
        start = time.monotonic()
        by_name = {slot.name: slot for slot in self.slots}
        self._terminate(by_name["ingestor"])
        self._terminate(by_name["forwarder"])
        self._wait(by_name["ingestor"], start + INGESTOR_STOP_GRACE)
        self._terminate(by_name["persister"])
        self._wait(by_name["persister"], time.monotonic() + PERSISTER_STOP_GRACE)
        self._wait(by_name["forwarder"], start + TOTAL_STOP_GRACE)

    def _terminate(self, slot):
        if slot.process is None:
            slot.state = "EXITED"
            return
        slot.transition("STOPPING")
        try:
            os.kill(slot.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _wait(self, slot, deadline):
        if slot.process is None:
            return
        slot.process.join(max(0.0, deadline - time.monotonic()))
        if slot.process.exitcode is None:
            log.warning("%s (pid %s) did not stop in time; killing it", slot.name, slot.pid)
            slot.process.kill()
            slot.process.join()
        slot.last_exit = describe_exit(slot.process.exitcode)
        slot.transition("EXITED", slot.last_exit)
