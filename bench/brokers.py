"""Broker scenarios for bench/RESULTS.md ("## Broker scenarios"): loss, re-sent ids and intake.

  kills      mosquitto with its defaults (1,000 queued messages), 1,000 msg/s for 15 s, the ingestor
             SIGKILLed 3 times 4 s apart -> messages lost
  restart    20,000 messages queued at a persistent mosquitto for the daemon's session; mosquitto
             restarted cleanly while they drain -> messages that reached the API a second time
             with a new id (the API cannot drop those)
  rabbitmq   a private RabbitMQ node (MQTT 3.1.1, prefetch 10): msg/s taken in by the daemon
             against a plain paho QoS 1 subscriber on the same node (same publishers)
  diagnose   with default settings, a port that accepts TCP and never answers, a TLS broker
             whose CA is not trusted, MQTT 5 forced on amqtt (3.1.1 only) -> seconds until the
             WARNING naming the cause, and until ``mqttbufferctl status`` exits non-zero

Usage: .venv/bin/python bench/brokers.py [--only kills restart rabbitmq] [--runs N] [--restart-runs N]
(restart swings most from run to run: ``--restart-runs`` gives it more runs than the others)
"""

import argparse
import collections
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import yaml  # noqa: E402
from load import Broker, join, msgs_per_second, new_client, publish, wait_for  # noqa: E402
from results import replace_section  # noqa: E402
from run import Daemon  # noqa: E402
from sink import FastSink  # noqa: E402

from tests.brokers import RABBITMQ_SERVER, Amqtt, PersistentMosquitto, RabbitMQ, SilentPort, TlsMosquitto  # noqa: E402


class IdSink(FastSink):
    """FastSink that also keeps, per message number, the ids it arrived with."""

    def reset(self):
        super().reset()
        with self.lock:
            self.ids_by_n = collections.defaultdict(set)

    def _record(self, body):
        super()._record(body)
        with self.lock:
            for m in json.loads(body):
                payload = m.get("payload")
                if isinstance(payload, dict) and "n" in payload:
                    self.ids_by_n[payload["n"]].add(m["id"])

    def resent_with_new_id(self):
        with self.lock:
            return sum(len(ids) - 1 for ids in self.ids_by_n.values())

    def numbers(self):
        with self.lock:
            return len(self.ids_by_n)


def connected(daemon):
    result = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--config", daemon.config,
                             "status", "--json"], capture_output=True, text=True)
    return result.returncode in (0, 1) and json.loads(result.stdout or "{}").get("broker", {}).get("connected")


def kills(workdir, sink, rate=1000, seconds=15):
    broker = Broker(workdir, queue_limit=None)  # mosquitto's defaults
    daemon = Daemon(workdir, broker, sink)
    daemon.start()
    sink.reset()
    procs = publish(broker.port, rate * seconds, rate=rate, processes=1)
    time.sleep(3)
    for _ in range(3):
        os.kill(daemon.worker("ingestor"), signal.SIGKILL)
        time.sleep(4)
    join(procs)
    wait_for(lambda: sink.numbers() >= rate * seconds, 60)
    lost = rate * seconds - sink.numbers()
    daemon.stop()
    broker.stop()
    return {"lost of 15,000 with 3 ingestor kills 4 s apart": float(lost)}


def restart(workdir, sink, count=20000):
    directory = pathlib.Path(tempfile.mkdtemp(dir=workdir))
    broker = PersistentMosquitto(directory)
    broker.start()
    daemon = Daemon(workdir, broker, sink)
    daemon.start()
    wait_for(lambda: connected(daemon), 30)
    time.sleep(0.5)  # the SUBACK
    daemon.stop()  # the session stays at the broker; what follows is queued for it
    join(publish(broker.port, count, processes=2))
    sink.reset()
    daemon.start()
    wait_for(lambda: sink.numbers() >= count // 4, 120)
    broker.restart()
    ok = wait_for(lambda: sink.numbers() >= count, 120)
    resent = sink.resent_with_new_id()
    daemon.stop()
    broker.stop()
    return {"re-sent with a new id after a broker restart, % of 20,000": 100.0 * resent / count if ok else 100.0,
            "received twice by a plain paho subscriber, same restart, %": _plain_restart(workdir, count)}


def _plain_restart(workdir, count):
    """Baseline: a plain paho MQTT 5 subscriber (persistent session, immediate PUBACKs) through the
    same drain and broker restart: messages it received twice."""
    broker = PersistentMosquitto(pathlib.Path(tempfile.mkdtemp(dir=workdir)))
    broker.start()
    seen = collections.Counter()
    client = new_client("plain-restart", protocol=mqtt.MQTTv5)
    client.on_message = lambda *args: seen.update([json.loads(args[-1].payload)["n"]])
    client.reconnect_delay_set(0.1, 1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval, props.ReceiveMaximum = 3600, 1000
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    client.subscribe("bench/#", qos=1)
    client.loop_start()
    wait_for(client.is_connected, 10)
    time.sleep(0.5)  # the SUBACK
    client.disconnect()
    client.loop_stop()
    join(publish(broker.port, count, processes=2))
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    client.loop_start()
    wait_for(lambda: len(seen) >= count // 4, 120)
    broker.restart()
    ok = wait_for(lambda: len(seen) >= count, 120)
    client.disconnect()
    client.loop_stop()
    broker.stop()
    return 100.0 * (sum(seen.values()) - len(seen)) / count if ok else 100.0


def _plain_subscriber_msgs(port, count):
    client = new_client("plain-baseline")
    done = [0]
    client.on_message = lambda *args: done.__setitem__(0, done[0] + 1)
    client.connect("127.0.0.1", port)
    client.subscribe("plain/#", qos=1)
    client.loop_start()
    wait_for(client.is_connected, 10)
    time.sleep(1)  # the SUBACK
    rate = msgs_per_second(port, count, lambda: done[0], topic="plain/data")
    client.disconnect()
    client.loop_stop()
    return rate


def rabbitmq(workdir, sink, count=20000):
    node = RabbitMQ(pathlib.Path(tempfile.mkdtemp(dir=workdir)))
    node.start()
    try:
        plain = _plain_subscriber_msgs(node.port, count)
        daemon = Daemon(workdir, node, sink)
        daemon.start()
        wait_for(lambda: connected(daemon), 30)
        time.sleep(0.5)  # the SUBACK
        sink.reset()
        ours = msgs_per_second(node.port, count, sink.numbers)
        daemon.stop()
    finally:
        node.stop()
    return {"RabbitMQ plain paho subscriber msg/s": plain, "RabbitMQ mqttbuffer msg/s": ours,
            "RabbitMQ mqttbuffer / plain subscriber": ours / plain if plain else 0.0}


def _until_diagnosed(workdir, sink, mqtt_cfg):
    """Seconds until the daemon logs why it cannot connect, and until status exits non-zero."""
    directory = tempfile.mkdtemp(dir=workdir)
    config = os.path.join(directory, "config.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"mqtt": {"client_id": "bench-diagnose", **mqtt_cfg}, "api": {"url": sink.url},
                        "buffer": {"persist_file": os.path.join(directory, "buffer.db")},
                        "logging": {"stats_interval": 0}}, f)
    log_path = os.path.join(directory, "daemon.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "mqttbuffer", "--config", config], stdout=log, stderr=log,
                                   start_new_session=True)
    start = time.monotonic()
    logged = status = None
    while time.monotonic() - start < 60 and (logged is None or status is None):
        if logged is None and "Cannot connect to MQTT broker" in open(log_path).read():
            logged = time.monotonic() - start
        if status is None and subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--config", config,
                                              "status"], capture_output=True).returncode not in (0, 3):
            status = time.monotonic() - start
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(20)
    line = next((x for x in open(log_path).read().splitlines() if "Cannot connect" in x), "")
    print(line, file=sys.stderr)
    return logged or 60.0, status or 60.0


def diagnose(workdir, sink):
    results = {}
    silent = SilentPort()
    cases = [("silent port", lambda: {"broker": silent.url})]
    tls = TlsMosquitto(pathlib.Path(tempfile.mkdtemp(dir=workdir)))
    tls.start()
    cases.append(("untrusted TLS", lambda: {"broker": tls.url}))
    amqtt = None
    if os.path.exists(os.path.join(os.path.dirname(sys.executable), "amqtt")):
        amqtt = Amqtt(pathlib.Path(tempfile.mkdtemp(dir=workdir)))
        amqtt.start()
        cases.append(("MQTT 5 forced on amqtt", lambda: {"broker": amqtt.url, "protocol": "5"}))
    try:
        for name, cfg in cases:
            logged, status = _until_diagnosed(workdir, sink, cfg())
            results[f"{name}: s to the WARNING with the cause"] = logged
            results[f"{name}: s to status exit non-zero"] = status
            TARGETS[f"{name}: s to the WARNING with the cause"] = ("<=", 30)
            TARGETS[f"{name}: s to status exit non-zero"] = ("<=", 30)
    finally:
        silent.close()
        tls.stop()
        if amqtt:
            amqtt.stop()
    return results


NOTES = """\
Re-sent with a new id: a message mosquitto resends after its restart keeps its first id when it
is provably the same message (mqttbuffer/mqtt/redelivery.py): never PUBACKed (same packet id,
topic and payload), or PUBACKed after mosquitto stopped reading and resent before a never-acked
message of the same connection and topic (MQTT resends a topic in the order it first sent, and
TCP delivered everything sent before that one). What is left: when mosquitto resends more such
copies than the receive window (1,000) can hold while they wait for that proof, the oldest get
new ids (mosquitto 2.0.11 keeps more than ReceiveMaximum in flight: an instrumented run saw it
send 2,592 unacked at 1,000). At bb15695: 1,305 of 20,000 (6.5 %); at c50bd60, where only
never-acked copies kept their id: 2.4-3.0 % in six runs. A plain paho subscriber acks on
receipt and receives some messages twice across the same restart (its row above). RabbitMQ
resends under new packet ids, so there no copy keeps its id (the ingestor notices and logs it).
"""


TARGETS = {"lost of 15,000 with 3 ingestor kills 4 s apart": ("<=", 0),
           "re-sent with a new id after a broker restart, % of 20,000": ("<=", 1),
           "RabbitMQ mqttbuffer / plain subscriber": (">=", 0.5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--restart-runs", type=int, help="runs of restart (default: --runs)")
    parser.add_argument("--only", nargs="*", help="scenarios to run (default: all)")
    args = parser.parse_args()
    sink = IdSink()
    sink.reset()
    scenarios = {"kills": kills, "restart": restart, "rabbitmq": rabbitmq, "diagnose": diagnose}
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        print(f"rabbitmq: skipped ({RABBITMQ_SERVER} missing)", file=sys.stderr)
        del scenarios["rabbitmq"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="mqttbuffer-bench.") as workdir:
        runs = {name: args.restart_runs if name == "restart" and args.restart_runs else args.runs
                for name in scenarios if not args.only or name in args.only}
        for run in range(max(runs.values())):
            for name, scenario in scenarios.items():
                if run >= runs.get(name, 0):
                    continue
                print(f"run {run + 1}/{runs[name]}: {name}", file=sys.stderr, flush=True)
                for key, value in scenario(workdir, sink).items():
                    results.setdefault(key, []).append(value)
    counts = ", ".join(f"{name} {count}" for name, count in runs.items())
    lines = [f"## Broker scenarios ({time.strftime('%Y-%m-%d')}, `bench/brokers.py`, runs: {counts})", "",
             subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
             + ("; RabbitMQ " + " ".join(os.listdir(os.path.join(os.path.dirname(RABBITMQ_SERVER), "..", "lib")))
                if "rabbitmq" in scenarios else ""), "",
             "| measure | median | min-max | target | met |", "|---|---|---|---|---|"]
    for key, values in results.items():
        med = statistics.median(values)
        target = TARGETS.get(key)
        met = ""
        if target:
            op, goal = target
            met = "yes" if (med >= goal if op == ">=" else med <= goal) else "no"
        lines.append(f"| {key} | {med:.2f} | {min(values):.2f}-{max(values):.2f} |"
                     f" {f'{target[0]} {target[1]}' if target else ''} | {met} |")
    text = "\n".join(lines) + "\n\n" + NOTES
    print(text)
    replace_section(os.path.join(HERE, "RESULTS.md"), "## Broker scenarios", text)


if __name__ == "__main__":
    main()
