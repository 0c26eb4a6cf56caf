"""Load generators and helpers for the benchmarks: a private mosquitto, paho publishers in their
own processes (so the publisher is not the bottleneck), and process-tree measurements."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import psutil

FORK = multiprocessing.get_context("fork")
PAD = "x" * 150  # with the other fields, ~200 B of JSON per message


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def new_client(client_id="", protocol=mqtt.MQTTv311):
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    return mqtt.Client(client_id=client_id, protocol=protocol)


def _ack_only_subscriber(port, count, ready):
    """A paho MQTT 5 QoS 1 subscriber that only acks (paho's automatic PUBACK), until count arrive."""
    client = new_client("ack-only-baseline", protocol=mqtt.MQTTv5)
    done = [0]
    client.on_message = lambda *args: done.__setitem__(0, done[0] + 1)
    client.on_subscribe = lambda *args: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe("bench/#", qos=1)
    client.loop_start()
    wait_for(lambda: done[0] >= count, 300)
    client.loop_stop()


def ack_only_subscriber(port, count):
    """Start the subscriber in its own process (so its CPU can be measured); return it subscribed."""
    ready = FORK.Event()
    process = FORK.Process(target=_ack_only_subscriber, args=(port, count, ready))
    process.start()
    ready.wait(10)
    return process


class Broker:
    def __init__(self, directory, queue_limit=1_000_000):
        self.port = free_port()
        conf = os.path.join(directory, f"mosquitto-{self.port}.conf")
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if queue_limit is not None:
            lines += [f"max_queued_messages {queue_limit}"]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.process = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._listening, 10)

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)


def _publish(port, topic, count, rate, first):
    client = new_client()
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]
    client.on_publish = lambda *args: acked.__setitem__(0, acked[0] + 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    for i in range(count):
        if rate:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        # Message ids are 16 bits: keep well under 65,535 outstanding or they are reused.
        while i - acked[0] > 30000:
            time.sleep(0.001)
        client.publish(topic, json.dumps({"n": first + i, "t": time.time(), "pad": PAD}), qos=1)
    wait_for(lambda: acked[0] >= count, 120)
    client.disconnect()
    client.loop_stop()


def publish(port, count, rate=None, processes=1, topic="bench/data"):
    """Publish count QoS 1 messages from ``processes`` publisher processes; returns them started."""
    share = count // processes
    procs = [FORK.Process(target=_publish, args=(port, topic, share, rate / processes if rate else None, p * share))
             for p in range(processes)]
    for p in procs:
        p.start()
    return procs


def join(procs):
    for p in procs:
        p.join()


def msgs_per_second(port, count, arrived, processes=2, topic="bench/data", timeout=300):
    """Publish ``count`` messages and wait until ``arrived()`` reaches it: msg/s from the first
    publish, or 0.0 when it did not within ``timeout``."""
    start = time.monotonic()
    procs = publish(port, count, processes=processes, topic=topic)
    ok = wait_for(lambda: arrived() >= count, timeout)
    elapsed = time.monotonic() - start
    join(procs)
    return count / elapsed if ok else 0.0


def tree(pid):
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sum_over_tree(pid, measure):
    total = 0
    for p in tree(pid):
        try:
            total += measure(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def cpu_seconds(pid):
    return _sum_over_tree(pid, lambda p: sum(p.cpu_times()[:2]))


def pss_bytes(pid):
    return _sum_over_tree(pid, lambda p: p.memory_full_info().pss)


IDLE_TREE = """
import gc, os, time
import mqttbuffer.supervisor.main  # everything the daemon imports before it forks
gc.collect()
gc.freeze()
for _ in range(3):
    if os.fork() == 0:
        break
time.sleep(600)
"""


def idle_tree_pss():
    """PSS of the daemon's shape doing nothing: an interpreter with mqttbuffer's imports and three
    forked children that only sleep. What four processes cost before any work."""
    process = subprocess.Popen([sys.executable, "-c", IDLE_TREE], start_new_session=True)
    try:
        wait_for(lambda: len(tree(process.pid)) == 4, 20)
        time.sleep(1)
        return pss_bytes(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def write_bytes(pid):
    return _sum_over_tree(pid, lambda p: p.io_counters().write_bytes)
