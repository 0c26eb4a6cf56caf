"""A forwarder that keeps dying on the same messages, large messages, an API that trickles its
answer, and a drop counter under pressure: delivery goes on, resends stay bounded, counts are true."""

import http.server
import json
import os
import signal
import threading
import time

import pytest

from mqttbuffer.store import Store
from tests.conftest import assert_all_arrived, wait_until

pytestmark = pytest.mark.integration


def publish_large(publisher, count, size):
    """``count`` messages {"n": i, "pad": size bytes}; the same bookkeeping as Publisher.publish."""
    for _ in range(count):
        n = publisher.first + len(publisher.infos)
        payload = json.dumps({"n": n, "pad": "x" * size})
        publisher.infos.append(publisher.client.publish(publisher.topic, payload, qos=1))
    return publisher


def test_messages_the_forwarder_dies_on_are_quarantined_and_the_rest_flows(mosquitto, sink, make_daemon, publisher):
    sink.mode = "hang"  # every request hangs: the forwarder is killed mid-request, as by its memory limit
    daemon = make_daemon(mosquitto, sink, api={"timeout": 5}).start()
    accepted = publisher.publish(20).accepted()
    kills = []
    while "moved to dead letters: crashed" not in daemon.log():
        wait_until(lambda: len(sink.requests) > len(kills) or "crashed" in daemon.log(), 30, "a request")
        if "crashed" in daemon.log():
            break
        pid = wait_until(lambda: daemon.worker_pid("forwarder"), 10, "a forwarder")
        os.kill(pid, signal.SIGKILL)
        kills.append(len(sink.requests[-1][2]))
        assert len(kills) < 12, kills
    sizes = [len(r[2]) for r in sink.requests]
    print(f"batch sizes of the killed requests: {sizes}")
    assert sizes[:5] == [20, 10, 5, 2, 1] and len(set(map(tuple, ([m["id"] for m in r[2]] for r in sink.requests)))) \
        == len(sizes) - 1  # no batch went out twice in the same shape, except the last single message
    sink.mode = "answer"
    crashed = accepted - {0}
    assert_all_arrived(sink, crashed, timeout=30)
    dead = daemon.store().dead_letters()
    assert [d["reason"] for d in dead] == ["crashed"] and json.loads(dead[0]["payload"])["n"] == 0
    assert daemon.status()["counters"]["crashed"] == 1


def test_large_messages_go_in_batches_bounded_by_bytes(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker={"max_failures": 100, "timeout": 1}).start()
    accepted = publish_large(publisher, 60, 200_000).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] == 60, 30, "60 large messages stored")
    sink.status = 200
    duplicates = assert_all_arrived(sink, accepted, timeout=60)
    sizes = [len(json.dumps(body)) for _, status, body, _ in sink.requests]
    print(f"largest body {max(sizes)} bytes in {len(sizes)} requests")
    assert max(sizes) <= 1024 * 1024 + 4096
    assert duplicates == 0


class TricklingAPI:
    """Answers 200 with its headers at once and then the body a byte every 0.3 s, for the first
    ``trickle`` requests; then answers at once. Records what it got."""

    def __init__(self, trickle):
        self.trickle = trickle
        self.requests = []
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with api.lock:
                    slow = len(api.requests) < api.trickle
                    api.requests.append((time.monotonic(), slow, body))
                reply = b'{"ok":true}' + b" " * 40
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                for i in range(len(reply)):
                    try:
                        self.wfile.write(reply[i:i + 1] if slow else reply[i:])
                        self.wfile.flush()
                    except OSError:
                        return
                    if not slow:
                        return
                    time.sleep(0.3)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def numbers(self, slow=None):
        with self.lock:
            return [m["payload"]["n"] for _, s, body, in self.requests if slow is None or s == slow for m in body]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_api_that_trickles_its_answer_is_abandoned_at_the_deadline(mosquitto, make_daemon, publisher):
    api = TricklingAPI(trickle=3)
    try:
        daemon = make_daemon(mosquitto, api, api={"timeout": 1.5},
                             circuit_breaker={"max_failures": 100, "timeout": 1}).start()
        accepted = publisher.publish(50).accepted()
        wait_until(lambda: accepted <= set(api.numbers(slow=False)), 60, "every message answered at once")
        gaps = [b[0] - a[0] for a, b in zip(api.requests[:3], api.requests[1:4], strict=True)]
        resent = len(api.numbers()) - len(set(api.numbers()))
        print(f"gaps between requests {[round(g, 1) for g in gaps]} s, {resent} resent")
        assert all(1.5 <= g < 1.5 + 8 for g in gaps)  # the deadline, then the backoff
        assert resent <= len(api.numbers(slow=True))  # one resend per abandoned request
        assert "no complete answer within 1.5s" in daemon.log()
    finally:
        api.close()


def test_dropped_counts_only_messages_lost_undelivered(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, buffer={"max_bytes": 2 * 1024 * 1024, "batch_size": 20}).start()
    sink.plan.extend([(503, {})] * 3)
    accepted = publish_large(publisher, 400, 50_000).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] == 400, 60, "400 stored")
    store = daemon.store()  # the store itself: the pending gauge may lag by a second
    wait_until(lambda: store.totals()[0] == 0, 60, "the store to empty")
    store.close()
    delivered = {m["payload"]["n"] for m in sink.delivered()}
    lost = len(accepted - delivered)
    dropped = daemon.status()["counters"]["dropped"]
    print(f"dropped counter {dropped}, really lost {lost}")
    assert dropped == lost


def test_a_clock_a_year_ahead_at_start_expires_nothing(mosquitto, sink, make_daemon):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, buffer={"cleanup_interval": 0.1, "message_retention_days": 7},
                         circuit_breaker={"max_failures": 1, "timeout": 600})
    path = daemon.config["buffer"]["persist_file"]
    os.makedirs(os.path.dirname(path))
    store = Store.open(path)
    a_year_ago = time.time() - 365 * 86400  # the same as a clock a year ahead of the stamps
    store.insert([(f"old{n}", "test/old", b"1", 1, 0, a_year_ago) for n in range(2000)])
    store.close()
    daemon.start()
    deadline = time.monotonic() + 3  # some 30 cleanup intervals
    while time.monotonic() < deadline:
        status = daemon.status()
        assert status["counters"]["expired"] == 0 and status["buffer"]["dead_letters"] == 0
    assert daemon.store().totals()[0] == 2000
