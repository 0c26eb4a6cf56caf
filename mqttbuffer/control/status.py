"""What the daemon reports about itself: the status document, the stats line, rates.

Built by the supervisor from its worker slots and the shared stats; read by ``mqttbufferctl
status``, the periodic ``Buffer stats`` log line, and systemd's STATUS=.
"""

import collections
import time

from mqttbuffer.stats import API_STATES, CIRCUIT_STATES, COUNTERS

RATE_WINDOW = 10.0


class Rates:
    """In and out rates (messages/s) over the last ``RATE_WINDOW`` seconds."""

    def __init__(self):
        self.samples = collections.deque()

    def sample(self, now, received, delivered):
        self.samples.append((now, received, delivered))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    def current(self):
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, r0, d0), (t1, r1, d1) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return (r1 - r0) / span, (d1 - d0) / span


def buffer_and_circuit(stats, wall_now):
    oldest = stats.get("oldest_received_at")
    next_at = stats.get("next_attempt_at")
    state = CIRCUIT_STATES[int(stats.get("circuit_state"))]
    return (
        {
            "pending": int(stats.get("pending")),
            "bytes": int(stats.get("pending_bytes")),
            "oldest_age": round(max(0.0, wall_now - oldest), 3) if oldest else None,
            "dead_letters": int(stats.get("dead_letters")),
            "blocked": bool(stats.get("blocked")),
        },
        {"state": state, "next_attempt_in": round(max(0.0, next_at - wall_now), 3) if next_at else None},
    )


def connections(stats):
    """The broker, API and persister facts as the workers last wrote them (0 / "": not yet known)."""
    since = {name: stats.get(name) or None for name in ("broker_since", "api_since", "last_commit_at")}
    return {
        "broker": {
            "connected": bool(stats.get("broker_connected")),
            "subscribed": bool(stats.get("broker_subscribed")),
            "since": since["broker_since"],
            "protocol": {5: "5", 4: "3.1.1"}.get(int(stats.get("broker_protocol"))),
            "session_present": bool(stats.get("broker_session_present")),
            "sessions_lost": int(stats.get("sessions_lost")),
            "error": stats.text("broker_error"),
        },
        "api": {
            "state": API_STATES[int(stats.get("api_state"))],
            "since": since["api_since"],
            "status": int(stats.get("api_status")) or None,
            "error": stats.text("api_error"),
        },
        "persister": {
            "blocked": bool(stats.get("blocked")),
            "last_commit_at": since["last_commit_at"],
            "problem": stats.text("persister_problem"),
            "store_notice": stats.text("store_notice"),
        },
    }


def counters(stats):
    return {name: int(value) for name, value in stats.snapshot(COUNTERS).items()}


def stats_line(stats, rates):
    """The Go predecessor's periodic line: pending, oldest age, dead letters, circuit, in/out rates."""
    buffer, circuit = buffer_and_circuit(stats, time.time())
    rate_in, rate_out = rates.current()
    oldest = f"{buffer['oldest_age']:.1f}s" if buffer["oldest_age"] is not None else "-"
    return (f"Buffer stats: pending={buffer['pending']} oldest={oldest} dead_letters={buffer['dead_letters']}"
            f" circuit={circuit['state']} in={rate_in:.1f}/s out={rate_out:.1f}/s")


def format_summary(data):
    """A readable multi-line summary of a status document, for ``mqttbufferctl status``."""
    lines = [data["health"]["summary"], "",
             f"mqttbuffer {data['version']} (pid {data['pid']}), up {_duration(data['uptime'])}",
             f"  store:   {data['store']}", "", "workers:"]
    for name, w in data["workers"].items():
        rss = f"{w['rss_bytes'] / 1048576:.1f} MiB" if w["rss_bytes"] else "-"
        uptime = _duration(w["uptime"]) if w["uptime"] is not None else "-"
        last = f", last exit: {w['last_exit']}" if w["last_exit"] else ""
        lines.append(f"  {name:<10} {w['state']:<9} pid {w['pid'] or '-':<7} up {uptime:<8} rss {rss:<10}"
                     f" restarts {w['restarts']}{last}")
    b, c, r = data["buffer"], data["circuit"], data["rates"]
    oldest = _duration(b["oldest_age"]) if b["oldest_age"] is not None else "-"
    lines += ["", f"buffer:    {b['pending']} pending ({b['bytes']} bytes), oldest {oldest},"
              f" {b['dead_letters']} dead letters" + (", BLOCKED (not acking)" if b["blocked"] else "")]
    next_in = f", next attempt in {c['next_attempt_in']:.1f}s" if c["next_attempt_in"] else ""
    lines.append(f"circuit:   {c['state']}{next_in}")
    broker, api = data["broker"], data["api"]
    if broker["connected"]:
        protocol = f" (MQTT {broker['protocol']})" if broker["protocol"] else ""
        lines.append(f"broker:    connected{protocol}")
    else:
        lines.append("broker:    not connected" + (f": {broker['error']}" if broker["error"] else ""))
    status = f" ({api['status']})" if api["status"] else ""
    lines.append(f"api:       {api['state']}{status}" + (f": {api['error']}" if api["error"] else ""))
    lines.append(f"rates:     in {r['in']:.1f}/s, out {r['out']:.1f}/s")
    lines.append("counters:  " + ", ".join(f"{k} {v}" for k, v in data["counters"].items()))
    return "\n".join(lines)


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
