"""Connection failures in words, and the ingestor's ids for redelivered messages (fake broker)."""

import errno
import os
import socket
import ssl
import time
import types

import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttbuffer.config.loader import Config, load_config
from mqttbuffer.mqtt import redelivery
from mqttbuffer.mqtt.broker import BrokerClient, ClosedBeforeConnack, NoConnack, Target, describe_failure, refusal
from mqttbuffer.mqtt.redelivery import Copy
from mqttbuffer.stats import SharedStats
from mqttbuffer.workers import ingestor as ingestor_module

TARGET = Target("broker.example", 8883, True, "/etc/mqttbuffer/ca.pem", "5")


def cert_error(code, message):
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize("error, expected", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
     "TCP: connection to broker.example:8883 refused (nothing listens there?)"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
     "DNS: cannot resolve broker.example: Name or service not known"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "TCP: broker.example:8883 unreachable: No route to host"),
    (cert_error(20, "unable to get local issuer certificate"),
     "TLS: certificate verify failed for broker.example: unable to get local issuer certificate"
     " (CA: /etc/mqttbuffer/ca.pem)"),
    (cert_error(62, "Hostname mismatch, certificate is not valid for 'broker.example'."),
     "TLS: the broker's certificate is not valid for the name broker.example (CA: /etc/mqttbuffer/ca.pem)"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "(is this a TLS port?)"),
    (NoConnack(10.0), "no answer from broker.example:8883 within 10s of connecting (MQTT 5;"),
    (ClosedBeforeConnack(), "broker.example:8883 closed the connection without answering the MQTT 5 CONNECT"),
    (refusal(4), "refused the MQTT 5 connection: bad user name or password (check mqtt.username"),
    (refusal(types.SimpleNamespace(value=0x87)), "not authorized"),
    (refusal(1), "unsupported protocol version"),
    (refusal(0x84), "unsupported protocol version"),
])
def test_describe_failure(error, expected):
    assert expected in describe_failure(error, TARGET)


def test_accepted_connack_is_no_refusal():
    assert refusal(0) is None
    assert refusal(types.SimpleNamespace(value=0)) is None


class FakeBroker:
    keeps_packet_ids = True

    def __init__(self, *args):
        self.acked = []
        self.paused = False

    def start(self):
        pass

    def pause_reading(self, pause):
        self.paused = pause

    def ack_all(self, mids):
        self.acked.extend(mids)

    def window(self):
        return None

    def check(self, now):
        pass

    def stop(self):
        pass


def message(mid, payload=b"{}", dup=False, topic="t/a"):
    return types.SimpleNamespace(topic=topic, payload=payload, qos=1, retain=False, mid=mid, dup=dup)


@pytest.fixture
def ingestor(tmp_path, monkeypatch):
    monkeypatch.setattr(ingestor_module, "BrokerClient", FakeBroker)
    cfg = Config(mqtt=types.SimpleNamespace(max_inflight_bytes=1000, receive_maximum=1000), topics=["#"])
    worker = ingestor_module.Ingestor(cfg, str(tmp_path), SharedStats(), "client")
    worker.wake_r, worker.wake_w = os.pipe()
    os.set_blocking(worker.wake_r, False)
    os.set_blocking(worker.wake_w, False)
    worker.setup()
    worker._on_connected(False)
    return worker


def ids(worker):
    """The ids of the queued messages; None for a resent copy that waits for proof."""
    return [row.id if isinstance(row, Copy) else row[0] for _, _, _, row, _ in worker._incoming]


def acked_batch(ingestor):
    """PUBACK what the ingestor holds, as if the persister had confirmed it; return its ids."""
    ingestor._take_incoming()
    batch = ingestor.batches.pop()
    ingestor._ack([batch])
    return [row[0] for row in batch.rows]


def test_a_redelivery_of_a_message_never_acked_keeps_its_id(ingestor):
    ingestor._on_message(message(5, b"a"))
    ingestor._on_message(message(6, b"b"))
    ingestor._on_connected(True)  # reconnect, session kept: 5 and 6 come again with dup=1
    ingestor._on_message(message(5, b"a", dup=True))
    ingestor._on_message(message(6, b"b", dup=True))
    first_a, first_b, again_a, again_b = ids(ingestor)
    assert (again_a, again_b) == (first_a, first_b)


@pytest.mark.parametrize("change", ["payload", "topic", "not dup", "session lost", "acked"])
def test_anything_not_provably_the_same_message_gets_a_new_id(ingestor, change):
    ingestor._on_message(message(5, b"a"))
    first = ids(ingestor)
    if change == "acked":
        acked_batch(ingestor)
        assert ingestor.broker.acked == [5]
    ingestor._on_connected(change != "session lost")
    again = message(5, b"a", dup=change != "not dup")
    if change == "payload":
        again.payload = b"b"
    if change == "topic":
        again.topic = "t/b"
    ingestor._on_message(again)
    if change == "acked":
        assert ids(ingestor) == [None]  # it may be 5 again: waits for proof
        ingestor._on_message(message(7, b"c"))  # a first copy: the resends are over, no proof came
        again_id, _ = ids(ingestor)
        assert again_id is not None and again_id not in first
    else:
        first, second = ids(ingestor)
        assert first != second


def test_an_acked_message_resent_before_a_never_acked_one_keeps_its_id_and_acks_keep_their_order(ingestor):
    # mosquitto stopping: it did not read our PUBACK of 5, and 6 was not acked yet.
    ingestor._on_message(message(5, b"a"))
    first_a = acked_batch(ingestor)
    ingestor._on_message(message(6, b"b"))
    first_b = ids(ingestor)
    ingestor._on_disconnected("broker stopped")
    acked_batch(ingestor)  # 6 confirmed after the disconnect: no PUBACK
    ingestor._on_connected(True)
    ingestor.broker.acked.clear()
    ingestor._on_message(message(5, b"a", dup=True))
    ingestor._on_message(message(7, b"new", dup=True))  # after its restart mosquitto marks even new ones
    assert ingestor._take_incoming() == 0  # 7 waits behind 5's copy
    ingestor._on_message(message(6, b"b", dup=True))
    ingestor._take_incoming()
    again_a, new, again_b = [row[0] for row in ingestor.batches[-1].rows]
    assert [again_a, again_b] == first_a + first_b and new not in first_a + first_b
    ingestor._ack([ingestor.batches[-1]])
    assert ingestor.broker.acked == [5, 7, 6]  # receive order


def test_copies_waiting_behind_a_full_window_stop_waiting_oldest_first(ingestor):
    ingestor.broker.window = lambda: 3
    ingestor._on_connected(False)
    for mid in (1, 2, 3):
        ingestor._on_message(message(mid, b"%d" % mid))
    first = acked_batch(ingestor)[-3:]
    ingestor._on_message(message(4, b"4"))
    ingestor._on_disconnected("broker stopped")
    ingestor._take_incoming()
    ingestor._on_connected(True)
    for mid in (1, 2, 3):
        ingestor._on_message(message(mid, b"%d" % mid, dup=True))
    # The window (3) is full of copies held for proof: the broker would send 4's copy never.
    released = ids(ingestor)[0]
    assert released is not None and released not in first and ids(ingestor)[1:] == [None, None]
    ingestor._on_message(message(4, b"4", dup=True))
    assert ids(ingestor)[1:3] == first[1:]


@pytest.mark.parametrize("end", ["time", "disconnect", "shutdown"])
def test_a_copy_that_waits_in_vain_is_queued_with_a_new_id(ingestor, monkeypatch, end):
    ingestor._on_message(message(5, b"a"))
    first = acked_batch(ingestor)
    ingestor._on_connected(True)
    ingestor._on_message(message(5, b"a", dup=True))
    assert ids(ingestor) == [None]
    if end == "time":
        monkeypatch.setattr(redelivery, "PROOF_WAIT", 0.0)
        ingestor.step(time.monotonic())
    elif end == "disconnect":
        ingestor._on_disconnected("connection lost")
        ingestor._take_incoming()
    else:
        monkeypatch.setattr(ingestor_module, "STOP_CONFIRM_TIMEOUT", 0.0)
        ingestor.shutdown()
    again = ingestor.batches[-1].rows[-1][0]
    assert again is not None and again not in first


@pytest.mark.parametrize("protocol, connack, promise", [
    ("5", {}, True),
    ("5", {"MaximumQoS": 1}, False),  # RabbitMQ's MQTT 5: it gives resent messages new packet ids
    ("3.1.1", {}, False),
])
def test_only_an_mqtt5_broker_with_qos2_promises_to_keep_packet_ids(tmp_path, protocol, connack, promise):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"protocol": protocol}, "api": {"url": "http://127.0.0.1:9/ingest"},
                                      "buffer": {"persist_file": str(tmp_path / "buffer.db")}}))
    cfg = load_config(str(config), environ={})
    told = []
    client = BrokerClient(cfg.mqtt, "client", cfg.topics, SharedStats(), None, told.append, None)
    properties = Properties(PacketTypes.CONNACK) if protocol == "5" else None
    for name, value in connack.items():
        setattr(properties, name, value)
    paho_client = types.SimpleNamespace(subscribe=lambda *args: None)
    for flags in ({"session present": 1}, types.SimpleNamespace(session_present=True)):  # paho 1.6.1, 2.x
        client._handle_connect(paho_client, None, flags, 0, properties)
        assert told[-1] is True and client.keeps_packet_ids is promise


@pytest.mark.parametrize("then", ["acked", "reconnected"])
def test_reading_pauses_while_the_window_is_full(ingestor, then):
    ingestor.broker.window = lambda: 2
    ingestor._on_connected(False)
    ingestor._on_message(message(1))
    assert not ingestor.broker.paused
    ingestor._on_message(message(2))
    assert ingestor.broker.paused
    if then == "acked":
        acked_batch(ingestor)
        assert ingestor.broker.acked == [1, 2]
    else:  # confirmed while disconnected: no PUBACK, the broker resends both
        ingestor._on_disconnected("connection lost")
        acked_batch(ingestor)
        ingestor._on_connected(True)
    assert not ingestor.broker.paused


def test_reading_pauses_beyond_max_inflight_bytes_and_resumes_on_confirmation(ingestor):
    ingestor._on_message(message(1, b"x" * 600))
    assert not ingestor.broker.paused
    ingestor._on_message(message(2, b"x" * 600))
    assert ingestor.broker.paused
    ingestor._take_incoming()
    ingestor._ack(list(ingestor.batches))
    assert not ingestor.broker.paused and ingestor.broker.acked == [1, 2]
