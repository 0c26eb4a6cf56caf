"""The supervisor: forks the workers, restarts any that die, serves the control socket.

It never holds an MQTT or SQLite connection. Signal handlers only queue the signal; one loop
waits on the signal wakeup pipe, the workers' sentinels and the control socket, and does
everything else. Worker life cycle and its one-line log per transition live in ``slots``.
"""

# The ingestor (connecting to the broker) and the forwarder (on its first request) both encode a
# host name with the idna codec, which imports encodings.idna, stringprep and unicodedata: about
# 1 MiB private to each when it happens after fork, shared when it happens here.
import encodings.idna  # noqa: F401
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time

from mqttbuffer import __version__
from mqttbuffer.config.validators import redact_url
from mqttbuffer.control.server import ControlError, ControlServer, SocketInUse
from mqttbuffer.control.status import Rates, buffer_and_circuit, connections, counters, stats_line
from mqttbuffer.control.verdict import Facts, Worker, assess
from mqttbuffer.exitcodes import EX_CONFIG, EX_TEMPFAIL
from mqttbuffer.mqtt.clientid import load_or_create_client_id
from mqttbuffer.stats import GAUGES, TEXTS, SharedStats
from mqttbuffer.supervisor.health import HealthChecks
from mqttbuffer.supervisor.metrics import MetricsServer
from mqttbuffer.supervisor.metrics import render as render_metrics
from mqttbuffer.supervisor.slots import Slot, State
from mqttbuffer.supervisor.systemd import Notifier
from mqttbuffer.workers.forwarder import Forwarder
from mqttbuffer.workers.ingestor import Ingestor
from mqttbuffer.workers.persister import Persister

log = logging.getLogger("mqttbuffer.supervisor")

# Stop budget (the README promises an exit within 10 s): the ingestor first, so it can ack what the
# persister commits; then the persister; the forwarder may be mid-request and is killed at the end.
INGESTOR_STOP_GRACE = 6.0
PERSISTER_STOP_GRACE = 2.0
TOTAL_STOP_GRACE = 9.0
STATUS_NOTIFY_INTERVAL = 5.0
HEALTH_INTERVAL = 1.0


class Supervisor:
    def __init__(self, cfg):
        self.cfg = cfg
        self.signals = []
        self.slots = {}
        self.exit_code = 0
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.last_health = None
        self.next_health = 0.0
        self.rates = Rates()
        self.next_stats_log = None
        self.failing = {}  # loop part -> the exception type last logged for it

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def run(self):
        """Run until SIGTERM or SIGINT, or until a worker exits with a config error (78); return the
        exit code. Returns at once (75 or 78) when the control socket cannot be created."""
        try:
            self.control = ControlServer(self.cfg.control.socket, {
                "status": self.handle_status,
                "restart-worker": self.handle_restart_worker,
            })
        except SocketInUse as exc:
            log.error("%s; is another mqttbuffer running with control.socket %s?", exc, self.cfg.control.socket)
            return EX_TEMPFAIL
        except OSError as exc:
            log.error("%s: control.socket: cannot create %s: %s", self.cfg.source, self.cfg.control.socket,
                      exc.strerror or exc)
            return EX_CONFIG
        self.metrics = self._start_metrics()
        client_id = self.cfg.mqtt.client_id or load_or_create_client_id(
            os.path.join(os.path.dirname(self.cfg.buffer.persist_file), "client_id")
        )
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        links_dir = tempfile.mkdtemp(prefix="mqttbuffer.", dir=runtime)
        self.stats = SharedStats()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        workers = (
            Persister(self.cfg, links_dir, self.stats),
            Ingestor(self.cfg, links_dir, self.stats, client_id),
            Forwarder(self.cfg, links_dir, self.stats),
        )
        for worker in workers:
            worker.supervisor_pid = os.getpid()
            worker.inherited = (self.control, wake_r, wake_w) + ((self.metrics,) if self.metrics else ())
        self.slots = {w.name: Slot(w, FORK, self.stats) for w in workers}
        self.health = HealthChecks(self.cfg.limits, self.stats)
        self.notifier = Notifier()
        self.ready_sent = False
        self.next_watchdog = self.next_status_notify = 0.0
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        log.info("mqttbuffer %s starting: broker %s, API %s, store %s, client id %s, control %s",
                 __version__, redact_url(self.cfg.mqtt.broker), redact_url(self.cfg.api.url),
                 self.cfg.buffer.persist_file, client_id, self.cfg.control.socket)
        try:
            for slot in self.slots.values():
                slot.start(time.monotonic())
            while not self._stop_requested():
                try:
                    self._loop_once(wake_r)
                except Exception:
                    # A supervisor bug must not orphan the workers or stop ingestion.
                    log.exception("Supervisor loop failed; continuing")
                    time.sleep(0.5)
            self.notifier.notify("STOPPING=1")
            self._stop_all()
        finally:
            self.notifier.close()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.control.close()
            if self.metrics:
                self.metrics.close()
            shutil.rmtree(links_dir, ignore_errors=True)
        log.info("mqttbuffer stopped")
        return self.exit_code

    def _stop_requested(self):
        if self.exit_code:
            return True
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("SIGHUP ignored: restart the service to apply a changed config")
                continue
            if signum == signal.SIGUSR1:
                log.info("SIGUSR1: %s", stats_line(self.stats, self.rates))
                continue
            if signum == signal.SIGUSR2:
                log.info("SIGUSR2: workers %s", ", ".join(
                    f"{slot.name} {slot.state} pid {slot.pid}" for slot in self.slots.values()))
                continue
            log.info("Received %s, stopping", signal.Signals(signum).name)
            return True
        return False

    def _loop_once(self, wake_r):
        now = time.monotonic()
        deadlines = [now + 1.0, self.control.next_deadline()] + [s.next_deadline() for s in self.slots.values()]
        waitables = [wake_r, *self.control.waitables(now), *(s.sentinel() for s in self.slots.values() if s.sentinel())]
        if self.metrics:
            deadlines.append(self.metrics.next_deadline())
            waitables += self.metrics.waitables(now)
        timeout = max(0.0, min(d for d in deadlines if d is not None) - now)
        ready = multiprocessing.connection.wait(waitables, timeout)
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        now = time.monotonic()
        # Each part on its own: a failure in one (the control socket out of descriptors, a
        # psutil error) must not skip the others, supervision above all.
        self._guarded("control socket", self.control.serve, ready, now)
        if self.metrics:
            self._guarded("metrics", self.metrics.serve, ready, now)
        for slot in self.slots.values():
            self._guarded(f"{slot.name} slot", self._check_slot, slot, now)
        self._guarded("health checks", self.health.check, self.slots.values(), now)
        self._guarded("stats", self._report, now)

    def _start_metrics(self):
        """The metrics endpoint, or None when off or its address cannot be had (logged: the
        buffer matters more than its metrics)."""
        if not self.cfg.metrics.listen:
            return None
        try:
            server = MetricsServer(self.cfg.metrics.listen, lambda: render_metrics(self.handle_status({})))
        except OSError as exc:
            log.error("%s: metrics.listen: cannot listen on %s: %s; running without metrics",
                      self.cfg.source, self.cfg.metrics.listen, exc.strerror or exc)
            return None
        log.info("Metrics at http://%s/metrics", self.cfg.metrics.listen)
        return server

    def _check_slot(self, slot, now):
        if slot.check(now) == EX_CONFIG:
            log.error("%s found a configuration problem (exit 78); stopping", slot.name)
            self.exit_code = EX_CONFIG

    def _report(self, now):
        self.rates.sample(now, self.stats.get("received"), self.stats.get("delivered"))
        self._log_stats(now)
        self._watch_health(now)
        self._notify_systemd(now)

    def _guarded(self, part, function, *args):
        try:
            function(*args)
        except Exception as exc:
            if self.failing.get(part) is not type(exc):
                log.exception("Supervisor: %s failed; the rest of the loop goes on", part)
                self.failing[part] = type(exc)
            return
        if self.failing.pop(part, None):
            log.info("Supervisor: %s works again", part)

    def _notify_systemd(self, now):
        # Sent from this loop only, so a hung loop stops the watchdog pings and systemd steps in.
        if not self.ready_sent and all(s.state == State.RUNNING for s in self.slots.values()):
            self.ready_sent = True
            self.notifier.notify("READY=1", f"STATUS={self._status_line(now)}")
            log.info("All workers running")
        if self.ready_sent and now >= self.next_status_notify:
            self.next_status_notify = now + STATUS_NOTIFY_INTERVAL
            self.notifier.notify(f"STATUS={self._status_line(now)}")
        interval = self.notifier.watchdog_interval
        if interval and now >= self.next_watchdog:
            self.next_watchdog = now + interval
            self.notifier.notify("WATCHDOG=1")

    def _status_line(self, now):
        rate_in, rate_out = self.rates.current()
        return f"{self.verdict(now).line()}; in {rate_in:.1f}/s, out {rate_out:.1f}/s"

    def verdict(self, now):
        """The health verdict now (``now`` monotonic; the facts' times are wall-clock)."""
        try:
            free = shutil.disk_usage(os.path.dirname(self.cfg.buffer.persist_file)).free
        except OSError:
            free = None
        facts = Facts(
            gauges=self.stats.snapshot(GAUGES),
            texts={name: self.stats.text(name) for name in TEXTS},
            workers={name: Worker(s.state, s.down_for(now), s.last_exit) for name, s in self.slots.items()},
            started_at=self.started_wall,
            max_size=self.cfg.buffer.max_size,
            max_bytes=self.cfg.buffer.max_bytes,
            store_free=free,
        )
        return assess(facts, time.time())

    def _watch_health(self, now):
        """One log line each time the verdict changes."""
        if now < self.next_health:
            return
        self.next_health = now + HEALTH_INTERVAL
        health = self.verdict(now)
        if health.verdict != self.last_health:
            if not health.healthy:
                log.warning("%s", health.line())
            elif self.last_health:
                log.info("%s", health.line())
            self.last_health = health.verdict

    def _log_stats(self, now):
        interval = self.cfg.logging.stats_interval
        if not interval:
            return
        if self.next_stats_log is None:
            self.next_stats_log = now + interval
        elif now >= self.next_stats_log:
            self.next_stats_log = now + interval
            log.info("%s", stats_line(self.stats, self.rates))

    def _stop_all(self):
        start = time.monotonic()
        ingestor, persister, forwarder = (self.slots[n] for n in ("ingestor", "persister", "forwarder"))
        ingestor.terminate()
        forwarder.terminate()
        ingestor.wait_stopped(start + INGESTOR_STOP_GRACE)
        persister.terminate()
        persister.wait_stopped(time.monotonic() + PERSISTER_STOP_GRACE)
        forwarder.wait_stopped(start + TOTAL_STOP_GRACE)

    # --- control commands --------------------------------------------------------------------

    def handle_status(self, request):
        """status -> health verdict, workers, buffer, circuit, broker, API, persister, counters, rates."""
        now, wall = time.monotonic(), time.time()
        buffer, circuit = buffer_and_circuit(self.stats, wall)
        rate_in, rate_out = self.rates.current()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started, 3),
            "config": self.cfg.source,
            "store": self.cfg.buffer.persist_file,
            "workers": {name: slot.describe(now) for name, slot in self.slots.items()},
            "buffer": buffer,
            "circuit": circuit,
            "counters": counters(self.stats),
            "rates": {"in": round(rate_in, 2), "out": round(rate_out, 2)},
            "health": self.verdict(now).to_dict(),
            **connections(self.stats),
        }

    def handle_restart_worker(self, request):
        """restart-worker {"name": NAME} -> SIGTERM now, SIGKILL after a grace period, restart."""
        slot = self.slots.get(request.get("name"))
        if slot is None:
            raise ControlError(f"no worker named {request.get('name')!r} (workers: {', '.join(self.slots)})")
        slot.request_restart(time.monotonic(), "restart requested")
        return {"name": slot.name, "pid": slot.pid, "state": slot.state}


# Python 3.14 defaults to forkserver; workers rely on inheriting the parsed config and the shared
# stats memory by fork.
FORK = multiprocessing.get_context("fork")
