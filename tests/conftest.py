"""Shared fixtures and helpers: free ports, deadlines, a private mosquitto, an HTTP sink, the real
daemon (ready when its status says every worker is alive and the broker granted its topics, with
restart and retry delays scaled down by ``MQTTBUFFER_DELAY_SCALE``), and a QoS 1 publisher.

Test modules import helpers from here (``from tests.conftest import wait_until``), never from
each other.
"""

import collections
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml

from mqttbuffer.config.loader import ConfigError, load_config
from mqttbuffer.control.client import NotRunning, request
from mqttbuffer.delays import VARIABLE as DELAY_SCALE_VARIABLE
from mqttbuffer.stats import WORKER_NAMES
from mqttbuffer.store import Store
from tests.publisher import Publisher

# Fixtures of other brokers and of a PostgREST-faithful API, for every test module.
pytest_plugins = ["tests.brokers", "tests.postgrest"]

WORKERS = WORKER_NAMES
# Restart backoff, delivery backoff and the like run at a tenth of their real length in tests.
TEST_DELAY_SCALE = "0.1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, message="condition", interval=0.05):
    """Poll predicate until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def assert_all_arrived(sink, accepted, timeout=60):
    """Wait until the sink has received every message number in ``accepted``; return the duplicates."""
    wait_until(lambda: accepted <= set(sink.delivered_numbers()), timeout,
               f"{len(accepted)} messages to arrive")
    numbers = sink.delivered_numbers()
    duplicates = len(numbers) - len(set(numbers))
    print(f"{len(accepted)} accepted by the broker, {len(set(numbers))} delivered, {duplicates} duplicates")
    return duplicates


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A mosquitto of the test's own, on a free port, that the test can stop and start again."""

    def __init__(self, directory, extra_config=""):
        self.directory = directory
        self.port = free_port()
        self.extra_config = extra_config
        self.process = None
        self.started = False

    def start(self):
        for _ in range(3):
            if self._start():
                return
            # Another test run took the port between free_port() and mosquitto's bind (make test
            # runs two at once); a broker that was running before must keep its port.
            assert not self.started and "Address already in use" in self.log(), self.log()
            self.port = free_port()
        raise AssertionError(self.log())

    def log(self):
        return (self.directory / "mosquitto.log").read_text(errors="replace")

    def _start(self):
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Messages queued for the daemon while it restarts: mosquitto's default of 1000
            # would drop some at the tests' 1,000 msg/s (the README explains the setting).
            "max_queued_messages 200000\n"
            "persistence false\n"
            f"{self.extra_config}\n"
        )
        log = open(self.directory / "mosquitto.log", "ab")
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 10, "mosquitto to listen")
        if self.process.poll() is not None:
            return False
        self.started = True
        return True

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"


def running_broker(broker_class, directory):
    """Start ``broker_class(directory)`` (the directory made first), yield it, stop it: the body
    of every broker fixture."""
    directory.mkdir(parents=True, exist_ok=True)
    broker = broker_class(directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path):
    yield from running_broker(Mosquitto, tmp_path / "broker")


class Sink:
    """An HTTP API that records every request and answers as the test tells it to.

    ``status``/``headers``: the answer to every request; ``plan``: answers (status, headers) for
    the next requests, used up first; ``mode``: "answer", "hang" (no answer until closed) or
    "reset" (drop the connection); ``reject(message)``: a status for a message it refuses.
    """

    def __init__(self):
        self.requests = []  # (monotonic time, status answered or mode, parsed body, headers)
        self.lock = threading.Lock()
        self.status = 200
        self.headers = {}
        self.plan = collections.deque()
        self.mode = "answer"
        self.reject = None
        self._closing = threading.Event()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                status, headers = sink.answer_for(body)
                with sink.lock:
                    sink.requests.append((time.monotonic(), status, body, dict(self.headers)))
                if status == "hang":
                    sink._closing.wait(120)
                    self.close_connection = True
                    return
                if status == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                reply = b'{"ok":true}' if status < 300 else b'{"error":"rejected by the test API"}'
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/ingest"
        # shutdown() waits up to one poll interval (0.5 s by default) at every test's end.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer_for(self, body):
        with self.lock:
            if self.plan:
                return self.plan.popleft()
            if self.mode != "answer":
                return self.mode, {}
            status, headers = self.status, dict(self.headers)
        if status == 200 and self.reject:
            status = next((s for s in map(self.reject, body) if s), 200)
        return status, headers

    def delivered(self):
        """Every message object received with a 2xx answer, in arrival order."""
        with self.lock:
            return [m for _, status, body, _ in self.requests if status == 200 for m in body]

    def delivered_numbers(self):
        return [m["payload"]["n"] for m in self.delivered() if isinstance(m["payload"], dict)]

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


class Daemon:
    """The real mqttbuffer command, in its own process group, logging to a file."""

    def __init__(self, directory, config):
        self.directory = directory
        self.config = config
        self.config_path = directory / "config.yaml"
        self.log_path = directory / "daemon.log"
        self.process = None
        self._socket = None
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env[DELAY_SCALE_VARIABLE] = TEST_DELAY_SCALE
        self.command = [sys.executable, "-m", "mqttbuffer"]
        self.ctl_command = [sys.executable, "-m", "mqttbuffer.control.ctl"]

    def write_config(self):
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait_ready=True):
        """Start the daemon; unless told not to, wait until it is ready (see ``ready``)."""
        self.write_config()
        self._socket = None
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.command, "--config", str(self.config_path)],
            stdout=log, stderr=log, start_new_session=True, env=self.env,
        )
        log.close()
        if wait_ready:
            wait_until(lambda: self.process.poll() is not None or self.ready(), 20, "the daemon to be ready")
            assert self.process.poll() is None, self.log()
        return self

    def ready(self):
        """Whether the status says every worker is alive and the broker granted every topic, and
        every worker already carries its process title (``worker_pid`` finds it by that: a worker
        counts as alive from its fork, a moment before it sets the title)."""
        try:
            status = self.status()
        except (NotRunning, OSError, ValueError, ConfigError):
            return False
        return (status["broker"]["subscribed"] and all(w["alive"] for w in status["workers"].values())
                and all(self.worker_pid(name) for name in status["workers"]))

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark_connection(self):
        """Remember the broker connection now, for ``resubscribed``."""
        self._broker_since = self.status()["broker"]["since"]

    def resubscribed(self):
        """Whether the daemon connected again since ``mark_connection`` and the broker granted its topics."""
        broker = self.status()["broker"]
        return broker["since"] != self._broker_since and broker["connected"] and broker["subscribed"]

    def worker_pid(self, name):
        """The pid of a running worker, or None."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                if child.name().startswith(f"mqttbuffer-{name[:4]}") and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def ctl(self, *args):
        """Run mqttbufferctl against this daemon; return (exit code, stdout, stderr)."""
        result = subprocess.run(
            [*self.ctl_command, "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=20, env=self.env,
        )
        return result.returncode, result.stdout, result.stderr

    def request(self, command, **args):
        """One request on the daemon's control socket; the decoded reply."""
        if self._socket is None:
            self._socket = load_config(str(self.config_path), environ=self.env).control.socket
        return request(self._socket, command, **args)

    def status(self):
        """The status document (what ``mqttbufferctl status --json`` prints), from the control socket."""
        reply = self.request("status")
        assert reply["status"] == "ok", reply
        return reply["data"]

    def store(self):
        """A connection of the test's own to the daemon's store."""
        return Store.open(self.config["buffer"]["persist_file"])

    def all_workers_running(self):
        return all(self.worker_pid(name) for name in WORKERS)

    def terminate(self, timeout=15):
        """SIGTERM the daemon; return its exit code and how long it took to exit."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - start

    def kill_group(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def cleanup(self):
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


@pytest.fixture
def make_daemon(tmp_path):
    """Build a daemon for a broker and a sink; ``overrides`` are merged into the config sections."""
    daemons = []

    def make(broker, sink, **overrides):
        directory = tmp_path / f"daemon{len(daemons)}"
        directory.mkdir()
        config = {
            "mqtt": {"broker": broker.url, "client_id": f"test-{directory.name}-{os.getpid()}",
                     "reconnect_interval": 0.2, "max_reconnect_interval": 1},
            "api": {"url": sink.url, "timeout": 5},
            "buffer": {"persist_file": str(tmp_path / "store" / "buffer.db"), "flush_interval": 0.2},
            "topics": ["test/#"],
            "logging": {"level": "info", "stats_interval": 0},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        daemon = Daemon(directory, config)
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.cleanup()


@pytest.fixture
def publisher(mosquitto):
    pub = Publisher(mosquitto.port)
    yield pub
    pub.close()
