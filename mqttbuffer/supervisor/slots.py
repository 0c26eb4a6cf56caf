"""One slot per worker: its current process, its state, and the restart policy.

States and transitions (each logged as one line, e.g.
``persister (pid 812): RUNNING -> BACKOFF, killed by SIGKILL, restart in 2s``):
  STARTING  forked; becomes RUNNING once alive for RUNNING_AFTER seconds
  RUNNING   alive
  BACKOFF   died (or was restarted for cause); starts again at ``restart_at``
  STOPPING  sent SIGTERM; SIGKILL at ``kill_at``; then EXITED, or restarted if asked to
  EXITED    stopped for good (daemon shutdown)
Restarts follow supervisord's ``startsecs``: a worker that ran STARTSECS or longer before dying
started fine and is restarted at once; only deaths sooner than that are failed starts, restarted
after 1 s, doubling up to 60 s while they go on. Waiting after a healthy run costs data: mosquitto
queues 1,000 messages for a killed ingestor and then drops, which at 1,000 msg/s is one second
(bench: 3 ingestor kills 4 s apart lost 1,195-1,244 of 15,000 when the 2nd and 3rd restarts waited
1 s and 2 s). A worker is never abandoned: ingestion must come back by itself.
"""

import enum
import gc
import logging
import os
import signal
import time

import psutil

from mqttbuffer.delays import scaled

log = logging.getLogger("mqttbuffer.supervisor")

RUNNING_AFTER, STARTSECS = scaled(1.0, 3.0)
FIRST_DELAY, MAX_DELAY = scaled(1.0, 60.0)
RESTART_GRACE = 5.0
STARTUP_GRACE = 15.0


class State(enum.StrEnum):
    """A slot's state (the module docstring says what each means); a str, so status shows it as is."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"


# The transitions that can happen; any other is a bug in this module (Supervisor asserts its states
# the same way).
LEGAL = {
    State.EXITED: {State.STARTING, State.EXITED},                   # started; or stopped twice
    State.STARTING: {State.RUNNING, State.BACKOFF, State.STOPPING},  # up; died; asked to stop
    State.RUNNING: {State.BACKOFF, State.STOPPING},                  # died; asked to stop
    State.BACKOFF: {State.STARTING, State.EXITED},                   # restart due; daemon stopping
    State.STOPPING: {State.EXITED, State.BACKOFF, State.STOPPING},   # gone; died; daemon stopping
}


def describe_exit(exitcode, killed_because=None, oom_kills=None):
    """How a worker ended, in words: 'exited with 1', 'killed by SIGKILL (sent by the supervisor:
    no heartbeat for 32s)'. A SIGKILL we did not send is put down to memory only when the kernel's
    OOM killer ran meanwhile (``oom_kills``: how many times; None when the kernel cannot say)."""
    if exitcode is None:
        return "still running"
    if exitcode >= 0:
        return f"exited with {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = ""
    if name == "SIGKILL":
        if killed_because:
            hint = f" (sent by the supervisor: {killed_because})"
        elif oom_kills is None:
            hint = " (out of memory?)"
        elif oom_kills:
            hint = " (out of memory: the kernel's OOM killer ran)"
    return f"killed by {name}{hint}"


def oom_kills(vmstat="/proc/vmstat"):
    """How many processes the kernel's OOM killer has killed since boot (cgroup limits included),
    or None where the kernel does not count them (before Linux 4.13, no /proc)."""
    try:
        with open(vmstat, "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class Slot:
    def __init__(self, worker, context, stats):
        self.worker = worker
        self.stats = stats
        self.name = worker.name
        self.context = context
        self.process = None
        self.pid = None
        self.state = State.EXITED
        self.started_at = 0.0
        self.restart_at = 0.0
        self.kill_at = 0.0
        self.delay = 0.0
        self.restarts = 0
        self.hangs = 0
        self.memory_restarts = 0
        self.last_exit = None
        self.after_stop = None  # "restart" or "backoff" while STOPPING for a restart
        # Monotonic time it went down; None once it has run STARTSECS, so a crash loop stays down.
        self.down_since = None
        self.killed_because = None  # why the supervisor sent this process SIGKILL, if it did
        self.oom_kills_at_start = None

    def _transition(self, state, reason="", level=logging.INFO, quiet=False):
        if state not in LEGAL[self.state]:
            raise AssertionError(f"{self.name}: illegal transition {self.state} -> {state}")
        if not quiet:
            extra = f", {reason}" if reason else ""
            log.log(level, "%s (pid %s): %s -> %s%s", self.name, self.pid, self.state, state, extra)
        self.state = state

    def _exit_words(self, exitcode):
        start = self.oom_kills_at_start
        now = oom_kills() if start is not None else None
        return describe_exit(exitcode, self.killed_because, None if now is None else now - start)

    def sentinel(self):
        return self.process.sentinel if self.process else None

    def next_deadline(self):
        return {
            State.STARTING: self.started_at + RUNNING_AFTER,
            State.BACKOFF: self.restart_at,
            State.STOPPING: self.kill_at,
        }.get(self.state)

    def start(self, now):
        # Room for setup (opening the store can wait on its lock) before heartbeats are due.
        self.stats.beat(self.name, now + STARTUP_GRACE)
        self.process = self.context.Process(target=self.worker.run, name=self.name)
        # Objects that exist now move to a generation the collector never visits, so the child's
        # collections do not write to (and so copy) the pages it shares with the supervisor:
        # under load the tree's PSS went from 46.8 to 41.4 MiB.
        gc.collect()
        gc.freeze()
        self.killed_because = None
        self.oom_kills_at_start = oom_kills()
        self.process.start()
        self.pid = self.process.pid
        self.started_at = now
        self.down_since = now if self.down_since is None else self.down_since
        self._transition(State.STARTING)

    def check(self, now):
        """Advance the state machine; return the exit code if the worker was found dead."""
        if self.process is not None and self.state in (State.STARTING, State.RUNNING, State.STOPPING) \
                and not self.process.is_alive():
            return self._reap(now)
        if self.down_since is not None and self.state == State.RUNNING and now - self.started_at >= STARTSECS:
            self.down_since = None
        if self.state == State.STARTING and now - self.started_at >= RUNNING_AFTER:
            self._transition(State.RUNNING)
        elif self.state == State.BACKOFF and now >= self.restart_at:
            self.restarts += 1
            self.start(now)
        elif self.state == State.STOPPING and now >= self.kill_at:
            log.warning("%s (pid %s) did not stop within %gs; killing it", self.name, self.pid, RESTART_GRACE)
            self.kill(f"did not stop within {RESTART_GRACE:g}s")
            self.kill_at = now + RESTART_GRACE
        return None

    def _reap(self, now):
        self.process.join()
        code = self.process.exitcode
        self.last_exit = self._exit_words(code)
        uptime = now - self.started_at
        asked = self.state == State.STOPPING
        self.down_since = now if self.down_since is None else self.down_since
        self.process.close()
        if self.state == State.STOPPING and self.after_stop == "restart":
            self._transition(State.EXITED, f"{self.last_exit}, restarting now")
            self.process = None
            self.after_stop = None
            self.restarts += 1
            self.start(now)
            return code
        if uptime >= STARTSECS:
            self.delay = 0.0
        else:
            self.delay = FIRST_DELAY if self.delay < FIRST_DELAY else min(self.delay * 2, MAX_DELAY)
        self.restart_at = now + self.delay
        when = f"restart in {self.delay:g}s" if self.delay else "restarting at once"
        # An unasked death is news to the operator; one that keeps happening is a crash loop.
        if asked:
            level = logging.INFO
        elif self.delay > FIRST_DELAY:
            level, when = logging.ERROR, f"{when}; crash loop: it dies within {STARTSECS:g}s of each start"
        else:
            level = logging.WARNING
        self._transition(State.BACKOFF, f"{self.last_exit}, {when}", level)
        self.process = None
        self.after_stop = None
        return code

    def request_restart(self, now, reason, backoff=False):
        """Stop the worker gracefully and start it again (after the backoff delay if asked)."""
        if self.state == State.BACKOFF:
            self.restart_at = now
            return
        if self.state not in (State.STARTING, State.RUNNING):
            return
        self.after_stop = "backoff" if backoff else "restart"
        self.kill_at = now + RESTART_GRACE
        self.down_since = now if self.down_since is None else self.down_since
        self._transition(State.STOPPING, reason)
        self.send_signal(signal.SIGTERM)

    def terminate(self):
        """Begin the final stop (daemon shutdown)."""
        if self.process is None:
            self._transition(State.EXITED, quiet=True)
            return
        self.after_stop = None
        self._transition(State.STOPPING)
        self.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline):
        if self.process is None:
            return
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.exitcode is None:
            log.warning("%s (pid %s) did not stop in time; killing it", self.name, self.pid)
            self.killed_because = "did not stop in time"
            self.process.kill()
            self.process.join()
        self.last_exit = self._exit_words(self.process.exitcode)
        self._transition(State.EXITED, self.last_exit)

    def kill(self, because):
        """SIGKILL, remembered so its exit is not mistaken for the kernel's OOM killer."""
        self.killed_because = because
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum):
        try:
            os.kill(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def describe(self, now):
        rss = 0
        if self.process is not None:
            try:
                rss = psutil.Process(self.process.pid).memory_info().rss
            except psutil.Error:
                pass
        alive = self.process is not None and self.process.is_alive()
        return {
            "pid": self.process.pid if self.process else None,
            "state": self.state,
            "alive": alive,
            "uptime": round(now - self.started_at, 3) if alive else None,
            "restarts": self.restarts,
            "rss_bytes": rss,
            "last_exit": self.last_exit,
            "hangs": self.hangs,
            "memory_restarts": self.memory_restarts,
        }

    def down_for(self, now):
        return None if self.down_since is None else now - self.down_since
