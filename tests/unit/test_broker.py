"""Connection failures in words, and the ingestor's ids for redelivered messages (fake broker)."""

import errno
import socket
import ssl
import types

import pytest

from mqttbuffer.config.loader import Config
from mqttbuffer.mqtt.broker import ClosedBeforeConnack, NoConnack, Target, describe_failure, refusal
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


def message(mid, payload=b"{}", dup=False, topic="t/a"):
    return types.SimpleNamespace(topic=topic, payload=payload, qos=1, retain=False, mid=mid, dup=dup)


@pytest.fixture
def ingestor(tmp_path, monkeypatch):
    monkeypatch.setattr(ingestor_module, "BrokerClient", FakeBroker)
    cfg = Config(mqtt=types.SimpleNamespace(max_inflight_bytes=1000), topics=["#"])
    worker = ingestor_module.Ingestor(cfg, str(tmp_path), SharedStats(), "client")
    worker.wake_r, worker.wake_w = __import__("os").pipe()
    worker.setup()
    worker._on_connected(False)
    return worker


def ids(worker):
    return [row[0] for _, _, _, row, _ in worker._incoming]


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
    if change == "acked":
        ingestor._take_incoming()
        ingestor._ack(list(ingestor.batches))
        assert ingestor.broker.acked == [5]
    ingestor._on_connected(change != "session lost")
    again = message(5, b"a", dup=change != "not dup")
    if change == "payload":
        again.payload = b"b"
    if change == "topic":
        again.topic = "t/b"
    ingestor._on_message(again)
    if change == "acked":
        assert len(set(ids(ingestor))) == 1
        assert ids(ingestor)[0] != ingestor.batches[0].rows[0][0]
    else:
        first, second = ids(ingestor)
        assert first != second


def test_reading_pauses_beyond_max_inflight_bytes_and_resumes_on_confirmation(ingestor):
    ingestor._on_message(message(1, b"x" * 600))
    assert not ingestor.broker.paused
    ingestor._on_message(message(2, b"x" * 600))
    assert ingestor.broker.paused
    ingestor._take_incoming()
    ingestor._ack(list(ingestor.batches))
    assert not ingestor.broker.paused and ingestor.broker.acked == [1, 2]
