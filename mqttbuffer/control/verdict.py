"""The daemon's health verdict: healthy or degraded, with the reasons in words.

Computed in one place, from the facts the workers share (``stats``) and what the supervisor
knows of its slots, by ``assess(facts, now)``: pure, ``now`` is the wall clock, so unit tests
drive it with a fake one. ``mqttbufferctl status`` exits by it, ``status --json`` carries it,
and systemd's STATUS= and the ``health`` metric show it.

A fact still at its zero default means "not yet known", never "broken": a worker that has not
written it yet (or an older worker) must not make a healthy daemon look degraded. Short outages
are healthy for ``GRACE`` seconds (a broker restart, one failed request); a refusing API
(wrong key, URL or policy) is degraded at once, since waiting never fixes it.
"""

import time
from typing import NamedTuple

from mqttbuffer.delays import scaled
from mqttbuffer.stats import API_STATES, CIRCUIT_STATES

GRACE = scaled(15.0)    # broker disconnected, API failing, persister blocked: still healthy
WORKER_GRACE = scaled(10.0)  # a worker down, starting or crash-looping for this long is degraded
OLDEST_BOUND = 900.0    # the oldest waiting message older than this is degraded
FULL_FRACTION = 0.9     # the buffer this full (of buffer.max_size or max_bytes) is degraded
DISK_FULL_BYTES = 1 << 20  # free space below this on the store's disk counts as full


class Worker(NamedTuple):
    state: str
    down_for: float | None  # seconds since it went down, until it has run a few seconds (else None)
    last_exit: str | None


class Facts(NamedTuple):
    gauges: dict            # SharedStats values by name (counters and gauges)
    texts: dict             # broker_error, api_error, persister_problem
    workers: dict           # name -> Worker
    started_at: float       # wall-clock time the daemon started
    max_size: int           # buffer.max_size
    max_bytes: int          # buffer.max_bytes
    store_free: int | None  # free bytes on the store's file system (None: unknown)


class Health(NamedTuple):
    verdict: str            # "healthy" or "degraded"
    reasons: list
    backlog: str            # "3,214 waiting, oldest 7m" or "nothing waiting"

    @property
    def healthy(self):
        return self.verdict == "healthy"

    def line(self):
        """One line, verdict first: ``DEGRADED: API refusing (401) since 10:22: ...; 3,214 waiting, oldest 7m``."""
        return "; ".join([f"{self.verdict.upper()}: " + "; ".join(self.reasons or ["all workers running"]),
                          self.backlog])

    def to_dict(self):
        return {"verdict": self.verdict, "reasons": list(self.reasons), "summary": self.line()}


def assess(facts, now):
    """The verdict for ``facts`` at wall-clock time ``now``."""
    reasons = [*_workers(facts), *_broker(facts, now), *_api(facts, now), *_persister(facts, now),
               *_backlog_bounds(facts, now)]
    return Health("degraded" if reasons else "healthy", reasons, backlog(facts.gauges, now))


def backlog(gauges, now):
    pending = int(gauges.get("pending", 0))
    if not pending:
        return "nothing waiting"
    oldest = gauges.get("oldest_received_at", 0)
    age = f", oldest {duration(now - oldest)}" if oldest else ""
    return f"{pending:,} waiting{age}"


def _workers(facts):
    for name, w in facts.workers.items():
        if w.down_for is not None and w.down_for >= WORKER_GRACE:
            last = f", last exit: {w.last_exit}" if w.last_exit else ""
            yield f"{name} down or restarting for {duration(w.down_for)} ({w.state}{last})"


def _down_since(since, known, facts):
    """When an outage began: its own timestamp, else the daemon's start if the outage is known."""
    if since:
        return since
    return facts.started_at if known else None


def _broker(facts, now):
    g, error = facts.gauges, facts.texts.get("broker_error", "")
    if g.get("broker_connected"):
        return
    since = _down_since(g.get("broker_since", 0), bool(error), facts)
    if since is None or now - since < GRACE:
        return
    yield f"broker unreachable since {clock(since, now)}" + (f": {error}" if error else "")


def _api(facts, now):
    g, error = facts.gauges, facts.texts.get("api_error", "")
    state = API_STATES[int(g.get("api_state", 0))]
    status = int(g.get("api_status", 0))
    if state == "ok":
        if CIRCUIT_STATES[int(g.get("circuit_state", 0))] == "open":
            yield "circuit breaker open: requests to the API paused after repeated failures"
        return
    since = _down_since(g.get("api_since", 0), True, facts)
    if state != "refusing" and now - since < GRACE:
        return
    code = f" ({status})" if status else ""
    yield f"API {state}{code} since {clock(since, now)}" + (f": {error}" if error else "")


def _persister(facts, now):
    g, problem = facts.gauges, facts.texts.get("persister_problem", "")
    if not g.get("blocked"):
        return
    last = g.get("last_commit_at", 0)
    if last and now - last < GRACE:
        return
    if not problem and facts.store_free is not None and facts.store_free < DISK_FULL_BYTES:
        problem = f"the store's disk is full ({facts.store_free // 1024} KiB free)"
    since = f" since {clock(last, now)}" if last else ""
    yield f"persister not committing{since}: " + (problem or "not acking new messages (buffer full or store error)")


def _backlog_bounds(facts, now):
    g = facts.gauges
    oldest = g.get("oldest_received_at", 0)
    if oldest and now - oldest >= OLDEST_BOUND:
        yield f"oldest waiting message is {duration(now - oldest)} old (bound {duration(OLDEST_BOUND)})"
    fill = max(g.get("pending", 0) / facts.max_size if facts.max_size else 0,
               g.get("pending_bytes", 0) / facts.max_bytes if facts.max_bytes else 0)
    if fill >= FULL_FRACTION:
        yield f"buffer {fill:.0%} full (buffer.max_size {facts.max_size:,}, max_bytes {facts.max_bytes:,})"


def clock(wall, now):
    """A wall-clock time as the operator reads it: 10:22 today, else 2026-11-27 10:22."""
    fmt = "%H:%M" if abs(now - wall) < 20 * 3600 else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(wall))


def duration(seconds):
    """7s, 7m, 2h05m, 3d04h: short, for a status line."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
