"""The ingestor and the persister driven in-process: ``step(now)`` on both, linked by a real socket
in a temporary directory, the broker replaced by a fake that records PUBACKs. What the broker gets
acked is what the store holds, in receive order, and only after the commit."""

import os
import time
import types

import pytest
import yaml

from mqttbuffer.config.loader import load_config
from mqttbuffer.stats import SharedStats
from mqttbuffer.store import Store
from mqttbuffer.workers.ingestor import Ingestor
from mqttbuffer.workers.persister import Persister


class FakeBroker:
    """Stands in for BrokerClient: the test calls the ingestor's callbacks as paho's thread would."""

    keeps_packet_ids = True

    def __init__(self, mqtt_cfg, client_id, topics, stats, on_message, on_connected, on_disconnected):
        self.on_message, self.on_connected = on_message, on_connected
        self.acked = []
        self.paused = False

    def start(self):
        pass

    def check(self, now):
        pass

    def window(self):
        return 1000

    def pause_reading(self, pause):
        self.paused = pause

    def ack_all(self, mids):
        self.acked.extend(mids)

    def stop(self):
        pass


def message(mid, qos=1):
    return types.SimpleNamespace(topic="tele/plug", payload=b'{"n": %d}' % mid, qos=qos, mid=mid, retain=0,
                                 dup=False)


def start(worker):
    worker.wake_r, worker.wake_w = os.pipe()
    os.set_blocking(worker.wake_r, False)
    os.set_blocking(worker.wake_w, False)
    worker.setup()
    return worker


@pytest.fixture
def pipeline(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/ingest"},
                                      "buffer": {"persist_file": str(tmp_path / "buffer.db")}}))
    cfg, stats = load_config(str(config), environ={}), SharedStats()
    persister = start(Persister(cfg, str(tmp_path), stats))
    ingestor = start(Ingestor(cfg, str(tmp_path), stats, "test-client", broker_client=FakeBroker))
    store = Store.open(cfg.buffer.persist_file)
    yield ingestor, persister, store
    store.close()
    for worker in (ingestor, persister):
        worker.shutdown()
        os.close(worker.wake_r)
        os.close(worker.wake_w)


def run_until(condition, *workers, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for worker in workers:
            worker.step(time.monotonic())


def test_acks_follow_the_commit_in_receive_order(pipeline):
    ingestor, persister, store = pipeline
    broker = ingestor.broker
    broker.on_connected(False)
    for mid in (5, 3, 9, 4):
        broker.on_message(message(mid))
    broker.on_message(message(0, qos=0))
    # The ingestor hands the batch over; nothing is acked before the persister has committed it.
    run_until(lambda: ingestor.batches and ingestor.batches[0].sent, ingestor)
    assert broker.acked == [] and store.totals()[0] == 0
    run_until(lambda: broker.acked, persister, ingestor)
    assert broker.acked == [5, 3, 9, 4]
    assert [row[3] for row in store.oldest(10)] == [b'{"n": 5}', b'{"n": 3}', b'{"n": 9}', b'{"n": 4}', b'{"n": 0}']


def test_acks_of_an_older_connection_are_dropped(pipeline):
    ingestor, persister, store = pipeline
    broker = ingestor.broker
    broker.on_connected(False)
    broker.on_message(message(1))
    run_until(lambda: ingestor.batches and ingestor.batches[0].sent, ingestor)
    ingestor._on_disconnected("connection lost")
    broker.on_connected(True)
    run_until(lambda: not ingestor.batches, persister, ingestor)
    assert store.totals()[0] == 1
    assert broker.acked == []  # the broker redelivers it on the new connection


def test_held_bytes_count_a_non_ascii_topic_in_bytes(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/ingest"},
                                      "mqtt": {"max_inflight_bytes": 65536},
                                      "buffer": {"persist_file": str(tmp_path / "buffer.db")}}))
    ingestor = start(Ingestor(load_config(str(config), environ={}), str(tmp_path), SharedStats(), "test-client",
                              broker_client=FakeBroker))
    try:
        ingestor.broker.on_connected(False)
        big = types.SimpleNamespace(topic="é" * 30000, payload=b"x" * 10000, qos=1, mid=1, retain=0, dup=False)
        ingestor.broker.on_message(big)  # 40,000 characters, 70,000 bytes
        assert ingestor.broker.paused
    finally:  # no shutdown: it would wait for a persister to confirm the message
        os.close(ingestor.wake_r)
        os.close(ingestor.wake_w)
