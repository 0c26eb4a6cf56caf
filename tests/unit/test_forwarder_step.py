"""The forwarder driven in-process: ``step(now)`` on a temporary store, with shared stats and a
fake HTTP client in place of urllib3's pool (the way huey drives ``worker.loop(now)``)."""

import json
import logging
import os
import time

import pytest
import yaml

from mqttbuffer.config.loader import load_config
from mqttbuffer.stats import API_STATES, SharedStats
from mqttbuffer.store import Store
from mqttbuffer.workers.forwarder import Forwarder


class FakeResponse:
    def __init__(self, status, headers, body):
        self.status, self.headers, self._body = status, headers, body

    def read(self, amount):
        return self._body[:amount]

    def drain_conn(self):
        pass

    def release_conn(self):
        pass


class FakeHTTP:
    """Answers each request with the next (status, headers, body) it was given; records the bodies."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.bodies = []

    def request(self, method, url, body, headers, preload_content, redirect):
        assert method == "POST" and url == "http://127.0.0.1:9/ingest"
        self.bodies.append(json.loads(body))
        return FakeResponse(*self.answers.pop(0))

    def clear(self):
        pass


@pytest.fixture
def forwarder(tmp_path):
    made = []

    def make(http):
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/ingest"},
                                          "buffer": {"persist_file": str(tmp_path / "buffer.db")}}))
        worker = Forwarder(load_config(str(config), environ={}), str(tmp_path), SharedStats(), http=http)
        worker.wake_r, worker.wake_w = os.pipe()
        os.set_blocking(worker.wake_r, False)
        worker.setup()
        store = Store.open(worker.cfg.buffer.persist_file)
        # Received a minute ago: the batch is due at once.
        store.insert([(f"id{n}", "tele/plug", b'{"n": %d}' % n, 1, 0, time.time() - 60) for n in range(3)])
        made.append((worker, store))
        return worker, store

    yield make
    for worker, store in made:
        worker.shutdown()
        store.close()
        os.close(worker.wake_r)
        os.close(worker.wake_w)


def test_a_2xx_deletes_the_batch_and_counts_it_delivered(forwarder):
    http = FakeHTTP((201, {}, b""))
    worker, store = forwarder(http)
    worker.step(time.monotonic())
    assert [m["id"] for m in http.bodies[0]] == ["id0", "id1", "id2"]
    assert http.bodies[0][0]["payload"] == {"n": 0}
    assert store.totals()[0] == 0
    assert worker.stats.get("delivered") == 3


def test_a_401_holds_the_whole_queue_and_dead_letters_nothing(forwarder):
    http = FakeHTTP((401, {}, b'{"message": "Invalid API key"}'))
    worker, store = forwarder(http)
    worker.step(time.monotonic())
    assert len(http.bodies) == 1
    assert store.totals()[0] == 3 and store.dead_letter_count() == 0
    assert API_STATES[int(worker.stats.get("api_state"))] == "refusing"
    assert worker.stats.get("api_status") == 401


def test_a_503_waits_for_retry_after_before_the_next_request(forwarder):
    http = FakeHTTP((503, {"Retry-After": "30"}, b""), (200, {}, b""))
    worker, store = forwarder(http)
    now = time.monotonic()
    worker.step(now)
    assert store.totals()[0] == 3 and len(http.bodies) == 1
    assert not worker.policy.may_send(now + 29)
    worker.step(now + 31)
    assert len(http.bodies) == 2 and store.totals()[0] == 0


def test_a_salvaged_store_leaves_no_suspect_nor_crash_guard_behind(forwarder):
    http = FakeHTTP((201, {}, b""))
    worker, store = forwarder(http)
    worker.policy.suspects[1] = ("rejected", None)
    worker.stats.set("handling_count", 1)
    worker.stats.set("handling_last_seq", 1)
    worker.stats.set("store_generation", worker.generation + 2)  # the persister salvaged the store
    worker.step(time.monotonic())
    assert [m["id"] for m in http.bodies[0]] == ["id0", "id1", "id2"]
    assert store.dead_letter_count() == 0 and worker.stats.get("handling_count") == 0


def test_gauges_are_read_once_per_interval_not_once_per_batch(forwarder):
    http = FakeHTTP(*[(201, {}, b"")] * 3)
    worker, store = forwarder(http)
    worker.policy.limit = 1  # one message, then two: two batches
    counted = []
    count = store.dead_letter_count
    worker.store.dead_letter_count = lambda: counted.append(1) or count()
    now = time.monotonic()
    for step in range(3):
        worker.step(now + step * 0.1)
    assert len(http.bodies) == 2 and store.totals()[0] == 0
    assert len(counted) <= 1  # a count(*) over the dead letters per GAUGE_INTERVAL, not per batch
    worker.step(now + 1.5)
    assert worker.stats.get("pending") == 0


def test_a_run_of_409s_is_one_log_line_with_the_count_and_the_first_id(forwarder, caplog):
    http = FakeHTTP(*[(409, {}, b"duplicate key")] * 10)
    worker, store = forwarder(http)
    now = time.monotonic()
    with caplog.at_level(logging.INFO, logger="mqttbuffer.forwarder"):
        for step in range(10):
            if not store.totals()[0]:
                break
            worker.step(now + step * 10)
        worker.step(now + 100)  # the queue is empty: the run is over
    assert store.totals()[0] == 0 and worker.stats.get("delivered") == 3
    lines = [r.getMessage() for r in caplog.records if "409" in r.getMessage()]
    assert lines == ["3 messages the API already held (409, first id0), counted as delivered"]
