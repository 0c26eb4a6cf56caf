"""Brokers other than the default test mosquitto: persistent, TLS with a private CA, amqtt, RabbitMQ.

Each runs as a process of the test's own, on free ports, with its files in the test's temp dir,
and is stopped by its process group. RabbitMQ is a private node (its own node name, cookie,
Mnesia, ports and plugins file); the machine's own RabbitMQ node and the shared epmd are never
touched.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import Mosquitto, free_port, port_open, running_broker, wait_until

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class PersistentMosquitto(Mosquitto):
    """mosquitto that keeps sessions on disk across its own restarts (``persistence true``)."""

    def __init__(self, directory, extra_config=""):
        store = directory / "store"
        store.mkdir(exist_ok=True)
        # Started as root, mosquitto drops to its own user unless told not to, and could then
        # not write its store in the test's private temp dir.
        super().__init__(directory, f"persistence true\npersistence_location {store}/\nuser root\n{extra_config}")

    def restart(self):
        self.stop()
        self.start()


def make_ca_and_cert(directory, name):
    """A private CA and a server certificate for ``name`` signed by it; return (ca, cert, key) paths."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    san = f"IP:{name}" if name.replace(".", "").isdigit() else f"DNS:{name}"
    ext.write_text(f"subjectAltName={san}\n")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", "/CN=mqttbuffer test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class TlsMosquitto(Mosquitto):
    """mosquitto with a plain listener (for test publishers) and a TLS one whose certificate, for
    ``name``, a private CA signed; ``url`` is the TLS listener."""

    def __init__(self, directory, name="127.0.0.1"):
        self.ca, cert, key = make_ca_and_cert(directory, name)
        self.tls_port = free_port()
        # user root: mosquitto started as root reads its certificates after becoming "mosquitto".
        super().__init__(directory, f"user root\nlistener {self.tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")

    @property
    def url(self):
        return f"ssl://127.0.0.1:{self.tls_port}"


class Amqtt:
    """amqtt's broker (MQTT 3.1.1 only), in a process of its own."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.process = None

    def start(self):
        conf = self.directory / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        log = open(self.directory / "amqtt.log", "ab")
        amqtt = os.path.join(os.path.dirname(sys.executable), "amqtt")
        self.process = subprocess.Popen([amqtt, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 20, "amqtt to listen")
        assert self.process.poll() is None, (self.directory / "amqtt.log").read_text()

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def restart(self):
        self.stop()
        self.start()

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"


class RabbitMQ:
    """A private RabbitMQ node with the MQTT plugin (3.1.1), on free ports, in a temp dir."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.node = f"mqttbuffer-test-{self.port}@localhost"
        self.process = None

    def start(self):
        d = self.directory
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
            "management.tcp.port = 0\n"
        )
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (d / "rabbitmq-env.conf").write_text("")
        log = open(d / "rabbitmq.out", "ab")
        self.process = subprocess.Popen([RABBITMQ_SERVER], stdout=log, stderr=log, env=self._env(),
                                        start_new_session=True)
        log.close()
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 90, "RabbitMQ's MQTT listener")
        assert self.process.poll() is None, (d / "rabbitmq.out").read_text()

    def _env(self):
        d = self.directory
        env = dict(os.environ)
        env.update({
            "HOME": str(d),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        })
        env.pop("NOTIFY_SOCKET", None)
        return env

    def close_connections(self):
        """Drop every client connection, as a node going down would (sessions stay)."""
        subprocess.run([RABBITMQCTL, "-n", self.node, "close_all_connections", "test"], env=self._env(),
                       check=True, capture_output=True, timeout=60)

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"


class SilentPort:
    """A port that accepts TCP connections and never says a word."""

    def __init__(self):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self):
        self.server.close()
        for conn in self.connections:
            conn.close()

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
def persistent_mosquitto(tmp_path):
    yield from running_broker(PersistentMosquitto, tmp_path / "persistent-broker")


@pytest.fixture
def tls_mosquitto(tmp_path):
    yield from running_broker(TlsMosquitto, tmp_path / "tls-broker")


@pytest.fixture
def amqtt_broker(tmp_path):
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "amqtt")):
        pytest.skip("amqtt is not installed (pip install -e '.[test]')")
    yield from running_broker(Amqtt, tmp_path / "amqtt")


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory):
    if not os.access(RABBITMQ_SERVER, os.X_OK) or not shutil.which("erl"):
        pytest.skip(f"RabbitMQ is not installed ({RABBITMQ_SERVER} missing): apt-get install rabbitmq-server")
    yield from running_broker(RabbitMQ, tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture
def silent_port():
    port = SilentPort()
    yield port
    port.close()
