"""Prometheus metrics: ``GET /metrics`` in the text exposition format (version 0.0.4).

Off unless ``metrics.listen`` is set. The supervisor serves it from its one loop, non-blocking, as
it serves the control socket, and renders it from the same status document as
``mqttbufferctl status --json``, so the two always agree. prometheus_client is not used: it
would be a fifth runtime dependency (and a thread or a blocking server in the supervisor) for what
is a few dozen lines of text.
"""

import logging
import socket

from mqttbuffer.stats import API_STATES, CIRCUIT_STATES
from mqttbuffer.supervisor.listening import Listening

MAX_REQUEST = 8192
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("mqttbuffer.metrics")

# status document "counters" key -> help text; each counter becomes mqttbuffer_<key>_total (one
# added to stats.COUNTERS later is exposed too, with a plain help text, until it gets one here).
COUNTER_HELP = {
    "received": "Messages taken from the broker.",
    "persisted": "Messages committed to the store.",
    "delivered": "Messages the API accepted (2xx).",
    "rejected": "Messages the API refused (4xx), moved to dead letters.",
    "retries_exhausted": "Messages past buffer.max_retries, moved to dead letters.",
    "expired": "Messages past buffer.message_retention_days, moved to dead letters.",
    "dropped": "Messages removed undelivered by overflow: drop_oldest.",
    "crashed": "Messages the forwarder died handling again and again, moved to dead letters.",
    "requests": "HTTP requests made to the API.",
    "requests_failed": "HTTP requests that did not end in a 2xx.",
}
REQUEST_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")


def render(doc):
    """The exposition text for a status document (as ``handle_status`` builds it)."""
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}")

    counters = doc["counters"]
    for key, value in counters.items():
        if key.removeprefix("requests_") not in REQUEST_CLASSES:
            metric(f"mqttbuffer_{key}_total", "counter", COUNTER_HELP.get(key, f"The {key} counter."), [({}, value)])
    metric("mqttbuffer_requests_by_class_total", "counter", "HTTP requests to the API by answer class"
           " (error: no answer).", [({"class": c}, counters.get(f"requests_{c}", 0)) for c in REQUEST_CLASSES])
    b = doc["buffer"]
    metric("mqttbuffer_pending_messages", "gauge", "Messages waiting in the store.", [({}, b["pending"])])
    metric("mqttbuffer_pending_bytes", "gauge", "Bytes of the messages waiting in the store.", [({}, b["bytes"])])
    metric("mqttbuffer_oldest_age_seconds", "gauge", "Age of the oldest waiting message (0: none).",
           [({}, b["oldest_age"] or 0)])
    metric("mqttbuffer_dead_letters", "gauge", "Messages in the dead-letter table.", [({}, b["dead_letters"])])
    metric("mqttbuffer_blocked", "gauge", "1 while the persister does not ack (full disk, overflow: block).",
           [({}, b["blocked"])])
    metric("mqttbuffer_circuit_state", "gauge", "The circuit breaker's state (1 for the current one).",
           [({"state": s}, s == doc["circuit"]["state"]) for s in CIRCUIT_STATES])
    metric("mqttbuffer_broker_connected", "gauge", "1 while connected to the MQTT broker.",
           [({}, doc["broker"]["connected"])])
    metric("mqttbuffer_api_state", "gauge", "What the API's last answers say (1 for the current state).",
           [({"state": s}, s == doc["api"]["state"]) for s in API_STATES])
    workers = doc["workers"]
    metric("mqttbuffer_worker_up", "gauge", "1 while the worker process is alive.",
           [({"worker": n}, w["alive"]) for n, w in workers.items()])
    metric("mqttbuffer_worker_restarts_total", "counter", "Restarts of each worker since the daemon started.",
           [({"worker": n}, w["restarts"]) for n, w in workers.items()])
    metric("mqttbuffer_worker_rss_bytes", "gauge", "Resident memory of each worker.",
           [({"worker": n}, w["rss_bytes"]) for n, w in workers.items()])
    metric("mqttbuffer_healthy", "gauge", "1 when the health verdict is healthy, 0 when degraded.",
           [({}, doc["health"]["verdict"] == "healthy")])
    metric("mqttbuffer_uptime_seconds", "gauge", "Seconds since the daemon started.", [({}, doc["uptime"])])
    metric("mqttbuffer_info", "gauge", "The daemon's version.", [({"version": doc["version"]}, 1)])
    return "\n".join(out) + "\n"


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def parse_listen(text):
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); raise ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9108, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"expected HOST:PORT with a host (0.0.0.0 for every address), got {text!r}")
    return host, int(port)


class MetricsServer(Listening):
    """A minimal HTTP/1.0 server for one resource, driven by the supervisor's loop."""

    def __init__(self, listen, render_text):
        host, port = parse_listen(listen)
        self.render_text = render_text
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        super().__init__(sock, "Metrics", log, MAX_CLIENTS, CLIENT_TIMEOUT)

    @property
    def address(self):
        return self.sock.getsockname()[:2]

    def serve_client(self, client, readable):
        if client.reply:
            self._send(client)
        elif readable:
            self._read(client)

    def _read(self, client):
        chunk = self._receive(client, MAX_REQUEST)
        if chunk is None:
            return
        if b"\r\n\r\n" not in client.buffer and b"\n\n" not in client.buffer:
            if not chunk or len(client.buffer) > MAX_REQUEST:
                self._drop(client)
            return
        client.reply = self._answer(client.buffer.split(b"\n", 1)[0].decode("latin-1").split())
        self._send(client)

    def _answer(self, request_line):
        method, path = (request_line + ["", ""])[:2]
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "only GET\n", "text/plain", head=False)
        if path == "/metrics":
            return _response("200 OK", self.render_text(), CONTENT_TYPE, head=method == "HEAD")
        if path == "/":
            return _response("200 OK", "mqttbuffer: metrics at /metrics\n", "text/plain", head=method == "HEAD")
        return _response("404 Not Found", "not found: try /metrics\n", "text/plain", head=method == "HEAD")

    def _send(self, client):
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self._drop(client)


def _response(status, body, content_type, head):
    data = body.encode("utf-8")
    header = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
              "Connection: close\r\n\r\n").encode("ascii")
    return header + (b"" if head else data)
