"""README promises about the broker side, each tested end to end: broker restarts, the generated
client id, QoS 0, TLS and WebSockets, broker credentials."""

import os
import ssl
import subprocess

import pytest

from tests.conftest import Mosquitto, assert_all_arrived, free_port, wait_until
from tests.publisher import Publisher
from tests.tls import make_ca, make_server_cert
from tests.wsbridge import WebSocketBridge

pytestmark = [pytest.mark.integration, pytest.mark.paho]


@pytest.fixture
def own_broker(tmp_path):
    """Start a mosquitto with extra config lines of the test's choosing; stopped at the end."""
    brokers = []

    def start(extra_config=""):
        directory = tmp_path / f"broker{len(brokers)}"
        directory.mkdir()
        # As root, mosquitto drops to its own user unless told not to, and could then not read
        # the files in the test's 0700 directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        broker = Mosquitto(directory, extra_config=user + extra_config)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def test_broker_restart_loses_nothing(persistent_mosquitto, sink, make_daemon):
    broker = persistent_mosquitto
    daemon = make_daemon(broker, sink).start()
    before = Publisher(broker.port)
    try:
        # Unpaced: the broker takes them faster than the daemon commits, so some still wait in
        # the daemon's session at the broker when it restarts.
        accepted = before.publish(5000).accepted()
    finally:
        before.close()
    print(f"{daemon.status()['counters']['received']} of 5000 taken from the broker when it restarts")
    daemon.mark_connection()
    broker.restart()
    wait_until(daemon.resubscribed, 30, "the daemon to reconnect")
    after = Publisher(broker.port, first=5000)
    try:
        accepted |= after.publish(500).accepted()
    finally:
        after.close()
    assert len(accepted) == 5500
    assert_all_arrived(sink, accepted)
    assert daemon.process.poll() is None


def test_generated_client_id_is_kept_across_restarts(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink)
    del daemon.config["mqtt"]["client_id"]
    daemon.start()
    client_id_file = os.path.join(os.path.dirname(daemon.config["buffer"]["persist_file"]), "client_id")
    client_id = open(client_id_file).read().strip()
    assert client_id.startswith("mqttbuffer-")
    code, _ = daemon.terminate()
    assert code == 0
    # Published while the daemon is down: the broker keeps them only for a session it knows again.
    accepted = publisher.publish(200).accepted()
    daemon.start()
    assert open(client_id_file).read().strip() == client_id
    assert daemon.log().count(f"client id {client_id}") == 2
    assert_all_arrived(sink, accepted)


@pytest.mark.parametrize("publish_qos, subscribe_qos", [(0, 1), (1, 0)], ids=["qos0-publish", "qos0-subscription"])
def test_qos0_messages_are_stored_and_forwarded(publish_qos, subscribe_qos, mosquitto, sink, make_daemon, publisher):
    make_daemon(mosquitto, sink, mqtt={"qos": subscribe_qos}).start()
    accepted = publisher.publish(200, qos=publish_qos).accepted()
    assert_all_arrived(sink, accepted)
    assert {m["qos"] for m in sink.delivered()} == {0}


@pytest.mark.parametrize("scheme", ["mqtts", "ws", "wss"])
def test_tls_and_websockets_end_to_end(scheme, tmp_path, own_broker, sink, make_daemon):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_server_cert(tmp_path, "ca")
    tls_port = None
    extra = ""
    if scheme == "mqtts":
        tls_port = free_port()
        extra = f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    broker = own_broker(extra)
    bridge = None
    if scheme == "mqtts":
        port = tls_port
    else:
        context = None
        if scheme == "wss":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        bridge = WebSocketBridge(broker.port, context)
        port = bridge.port
    try:
        daemon = make_daemon(broker, sink, mqtt={"broker": f"{scheme}://127.0.0.1:{port}",
                                                 "tls": {"ca_file": str(ca)}}).start()
        publisher = Publisher(broker.port)
        accepted = publisher.publish(300).accepted()
        assert_all_arrived(sink, accepted)
        publisher.close()
        assert f"{scheme}://127.0.0.1:{port}" in daemon.log()
    finally:
        if bridge:
            bridge.close()


def test_broker_credentials(tmp_path, own_broker, sink, make_daemon):
    passwords = tmp_path / "mosquitto.passwd"
    passwords.touch()
    for user, password in (("daemon", "daemon-pass-31"), ("publisher", "publisher-pass-32")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
    broker = own_broker(f"allow_anonymous false\npassword_file {passwords}\n")
    secret = tmp_path / "mqtt-password"
    secret.write_text("daemon-pass-31\n")
    daemon = make_daemon(broker, sink, mqtt={"username": "daemon", "password_file": str(secret)}).start()
    publisher = Publisher(broker.port, username="publisher", password="publisher-pass-32")
    accepted = publisher.publish(200).accepted()
    publisher.close()
    assert len(accepted) == 200
    assert_all_arrived(sink, accepted)
    assert "daemon-pass-31" not in daemon.log()
