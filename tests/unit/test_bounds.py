"""Bytes bounded per batch, rows in flight never counted as dropped, the forwarder's memory of a
batch it died on, and a deadline for a whole request (an API that trickles its answer)."""

import http.server
import threading
import time

import pytest
import urllib3

from mqttbuffer.delivery.crashguard import CrashGuard
from mqttbuffer.delivery.deadline import DeadlineExceeded, request_deadline
from mqttbuffer.stats import SharedStats
from mqttbuffer.store import Store, StoredMessage


def rows(start, count, payload=b"x" * 10):
    return [(f"id{n}", "t/a", payload, 1, 0, time.time()) for n in range(start, start + count)]


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "buffer.db"))
    yield s
    s.close()


def test_batches_are_bounded_by_bytes_and_a_larger_message_goes_alone(store):
    store.insert(rows(0, 10, b"x" * 197))  # 200 bytes with the topic
    assert len(store.oldest(500, max_bytes=1000)) == 5
    assert len(store.oldest(3, max_bytes=1000)) == 3
    store.insert([("big", "t/a", b"y" * 5000, 1, 0, time.time())])
    store.delete([r[0] for r in store.oldest(10)])
    assert [r[1] for r in store.oldest(500, max_bytes=1000)] == ["big"]


def test_messages_set_aside_count_neither_against_the_limit_nor_the_bytes(store):
    store.insert(rows(0, 10, b"x" * 197))
    first = [r[0] for r in store.oldest(2)]
    assert [r[1] for r in store.oldest(3, max_bytes=600, skip=set(first))] == ["id2", "id3", "id4"]
    assert [r[1] for r in store.oldest(3, max_bytes=450, skip={first[1]})] == ["id0", "id2"]


def test_rows_being_sent_are_not_dropped_nor_counted(store):
    store.insert(rows(0, 10))
    in_flight = store.oldest(4)
    inserted, dropped = store.insert(rows(10, 4), max_count=10, keep_upto=in_flight[-1][0])
    assert (inserted, dropped) == (4, 4)
    left = [r[1] for r in store.oldest(100)]
    assert left[:4] == ["id0", "id1", "id2", "id3"] and "id4" not in left and len(left) == 10
    # While the forwarder reads a batch whose rows are not known yet, the oldest batch_size go last.
    assert store.insert(rows(20, 3), max_count=10, keep_upto=float("inf"), keep_count=5) == (3, 3)
    left = [r[1] for r in store.oldest(100)]
    assert left[:5] == ["id0", "id1", "id2", "id3", "id8"] and "id9" not in left and len(left) == 10
    # The bound holds even when only rows in flight are left to drop.
    assert store.insert(rows(30, 2), max_count=2, keep_upto=10**9) == (2, 10)


def test_a_death_mid_batch_halves_the_next_batches_and_a_message_that_kills_twice_is_quarantined():
    stats = SharedStats()
    guard = CrashGuard(stats)
    assert guard.limits(500, 1 << 20) == (500, 1 << 20) and guard.death is None
    batch = [StoredMessage(7 + n, f"id{n}", "t/a", b"p" * 97, 1, 0, 1.7e9, 0) for n in range(8)]
    guard.begin(batch)
    guard.dying(RecursionError("maximum recursion depth exceeded\nmore"))
    # The successor:
    guard = CrashGuard(stats)
    assert guard.death == (7, 8, 800, "RecursionError: maximum recursion depth exceeded")
    assert guard.limits(500, 1 << 20) == (4, 400) and guard.quarantine is None
    for size in (4, 2, 1):
        guard.begin(batch[:size])  # killed (SIGKILL: no exception text) each time
        guard = CrashGuard(stats)
    assert guard.limits(500, 1 << 20)[0] == 1 and guard.quarantine is None
    guard.begin(batch[:1])
    guard.dying(RecursionError("again"))
    guard = CrashGuard(stats)
    assert guard.quarantine == (7, "RecursionError: again")
    guard.quarantined()
    guard.begin(batch[1:2])
    guard.done()
    assert guard.limits(500, 1 << 20)[0] == 2  # grows back, doubling
    assert CrashGuard(stats).death is None


@pytest.fixture
def trickling_api():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_trickling_answer_is_abandoned_at_the_deadline(trickling_api):
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=1))
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="within 1.5s"):
        with request_deadline(1.5):
            response = http.request("POST", trickling_api, body=b"[]", preload_content=False)
            response.read()
    assert 1.4 < time.monotonic() - start < 3
    # Disarmed after the block: nothing fires later.
    with request_deadline(5):
        pass
    time.sleep(0.1)
