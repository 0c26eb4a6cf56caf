"""``make bench``: mqttbuffer's speed, footprint and loss against baselines measured in the same run.

Scenarios (each run ``--runs`` times; the table shows median and min-max):
  burst      50,000 QoS 1 messages as fast as the broker takes them -> durable msg/s end to end
  intake     baseline: the same burst into a paho QoS 1 subscriber that only acks
  naive      baseline: paho on_message -> one urllib3 POST per message (fewer messages: it is slow)
  intake-cpu baseline: CPU of a paho MQTT 5 subscriber that only acks, under the steady load
  idle-tree  baseline: PSS of an interpreter with mqttbuffer's imports and 3 forked children that
             only sleep (the supervisor + 3 workers shape before any work)
  steady     1,000 msg/s for 30 s: CPU % of one core and PSS for the whole tree, bytes written
             per message, publish -> API latency p50/p99 (flush_interval 0.1)
  backlog    200,000 buffered while the API answers 503; restart -> ready time and PSS against an
             empty store; then the API recovers -> drain msg/s
  kill       mosquitto with its default max_queued_messages (1000), 1,000 msg/s, SIGKILL of the
             ingestor -> messages lost
"""

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import paho.mqtt
import psutil
import urllib3
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (  # noqa: E402
    Broker,
    ack_only_subscriber,
    cpu_seconds,
    idle_tree_pss,
    join,
    msgs_per_second,
    new_client,
    pss_bytes,
    publish,
    wait_for,
    write_bytes,
)
from results import replace_section  # noqa: E402
from sink import FastSink  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUFFER = {}  # buffer.* settings from --set, for every daemon the scenarios start


class Daemon:
    def __init__(self, workdir, broker, sink, **buffer):
        self.dir = tempfile.mkdtemp(dir=workdir)
        self.config = os.path.join(self.dir, "config.yaml")
        cfg = {"mqtt": {"broker": f"tcp://127.0.0.1:{broker.port}", "client_id": f"bench-{os.path.basename(self.dir)}",
                        "reconnect_interval": 0.1, "max_reconnect_interval": 1},
               "api": {"url": sink.url, "timeout": 10},
               "buffer": {"persist_file": os.path.join(self.dir, "buffer.db"), "flush_interval": 0.1, **buffer},
               "circuit_breaker": {"max_failures": 1000, "timeout": 1},
               "topics": ["bench/#"], "logging": {"level": "warning", "stats_interval": 0}}
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)
        self.process = None

    def start(self):
        self.log = open(os.path.join(self.dir, "daemon.log"), "ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "mqttbuffer", "--config", self.config],
                                        stdout=self.log, stderr=self.log, start_new_session=True)
        wait_for(self._all_alive, 30, interval=0.05)
        return time.monotonic() - self.started

    def _all_alive(self):
        """Ready: the control socket answers (healthy or degraded) and all three workers are alive."""
        result = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--config", self.config,
                                 "status", "--json"], capture_output=True, text=True)
        return result.returncode in (0, 1) and result.stdout.count('"alive": true') == 3

    def worker(self, name):
        for child in psutil.Process(self.process.pid).children():
            if child.name().startswith(f"mqttbuffer-{name[:4]}"):
                return child.pid
        return None

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        self.log.close()


def burst(workdir, sink, count):
    broker = Broker(workdir)
    daemon = Daemon(workdir, broker, sink, **BUFFER)
    daemon.start()
    sink.reset()
    rate = msgs_per_second(broker.port, count, sink.distinct)
    daemon.stop()
    broker.stop()
    return {"burst msg/s": rate}


def _subscriber_throughput(workdir, client_id, handle, count, processes):
    """msg/s of a plain paho QoS 1 subscriber whose on_message calls handle(message)."""
    broker = Broker(workdir)
    done = [0]

    def on_message(*args):
        handle(args[-1])
        done[0] += 1

    client = new_client(client_id)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("bench/#", qos=1)
    client.loop_start()
    wait_for(lambda: client.is_connected(), 10)
    time.sleep(0.5)  # let the SUBACK arrive before publishing
    rate = msgs_per_second(broker.port, count, lambda: done[0], processes=processes)
    client.loop_stop()
    broker.stop()
    return rate


def intake_ceiling(workdir, count):
    return {"intake ceiling msg/s": _subscriber_throughput(workdir, "intake-baseline", lambda m: None, count, 2)}


def naive(workdir, sink, count):
    http = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(10))

    def post(message):
        http.request("POST", sink.url, body=b"[" + message.payload + b"]", headers={"Content-Type": "application/json"})

    return {"naive forwarder msg/s": _subscriber_throughput(workdir, "naive-baseline", post, count, 1)}


def intake_cpu(workdir, rate, seconds):
    """Baseline: CPU of a paho subscriber that only acks, under the steady load."""
    broker = Broker(workdir)
    subscriber = ack_only_subscriber(broker.port, rate * seconds)
    cpu0, t0 = cpu_seconds(subscriber.pid), time.monotonic()
    join(publish(broker.port, rate * seconds, rate=rate, processes=1))
    cpu1, t1 = cpu_seconds(subscriber.pid), time.monotonic()
    subscriber.join(30)
    broker.stop()
    return {"steady CPU % of an ack-only subscriber": 100 * (cpu1 - cpu0) / (t1 - t0)}


def steady(workdir, sink, rate, seconds):
    broker = Broker(workdir)
    daemon = Daemon(workdir, broker, sink, **BUFFER)
    daemon.start()
    sink.reset()
    time.sleep(1)
    pid = daemon.process.pid
    cpu0, io0, t0 = cpu_seconds(pid), write_bytes(pid), time.monotonic()
    procs = publish(broker.port, rate * seconds, rate=rate, processes=1)
    pss = []
    while any(p.is_alive() for p in procs):
        pss.append(pss_bytes(pid))
        time.sleep(1)
    wait_for(lambda: sink.distinct() >= rate * seconds, 60)
    cpu1, io1, t1 = cpu_seconds(pid), write_bytes(pid), time.monotonic()
    daemon.stop()
    broker.stop()
    lat = sorted(sink.latencies)
    return {"steady CPU % of a core": 100 * (cpu1 - cpu0) / (t1 - t0),
            "steady PSS MiB": statistics.median(pss) / 1048576,
            "steady bytes written/msg": (io1 - io0) / (rate * seconds),
            "steady p50 latency ms": 1000 * lat[len(lat) // 2],
            "steady p99 latency ms": 1000 * lat[int(len(lat) * 0.99)]}


def backlog(workdir, sink, count):
    broker = Broker(workdir)
    daemon = Daemon(workdir, broker, sink, **BUFFER)
    daemon.start()
    time.sleep(1)
    empty_pss = pss_bytes(daemon.process.pid)
    sink.status = 503
    procs = publish(broker.port, count, processes=2)
    join(procs)
    store_cmd = [sys.executable, "-m", "mqttbuffer.control.ctl", "--config", daemon.config, "status", "--json"]
    wait_for(lambda: f'"persisted": {count}' in subprocess.run(store_cmd, capture_output=True, text=True).stdout, 120,
             interval=0.5)
    daemon.stop()
    ready = daemon.start()
    time.sleep(1)
    full_pss = pss_bytes(daemon.process.pid)
    sink.reset()
    sink.status = 200
    start = time.monotonic()
    ok = wait_for(lambda: sink.distinct() >= count, 300)
    elapsed = time.monotonic() - start
    daemon.stop()
    broker.stop()
    return {"backlog ready s": ready, "backlog PSS vs empty %": 100 * (full_pss / empty_pss - 1),
            "backlog drain msg/s": count / elapsed if ok else 0.0}


def kill_under_defaults(workdir, sink, rate=1000, seconds=10):
    broker = Broker(workdir, queue_limit=None)  # mosquitto's defaults
    daemon = Daemon(workdir, broker, sink, **BUFFER)
    daemon.start()
    sink.reset()
    procs = publish(broker.port, rate * seconds, rate=rate, processes=1)
    time.sleep(seconds / 2)
    os.kill(daemon.worker("ingestor"), signal.SIGKILL)
    join(procs)
    wait_for(lambda: sink.distinct() >= rate * seconds, 60)
    lost = rate * seconds - sink.distinct()
    daemon.stop()
    broker.stop()
    return {"lost on ingestor kill": float(lost)}


TARGETS = {
    "burst msg/s": (">=", 10000), "steady CPU % of a core": ("<=", 10), "steady PSS MiB": ("<=", 40),
    "steady bytes written/msg": ("<=", 1000), "steady p99 latency ms": ("<=", 250), "backlog ready s": ("<=", 2),
    "backlog PSS vs empty %": ("<=", 10), "backlog drain msg/s": (">=", 20000), "lost on ingestor kill": ("<=", 0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50000)
    parser.add_argument("--naive", type=int, default=5000)
    parser.add_argument("--steady-seconds", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=200000)
    parser.add_argument("--only", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="buffer settings for the daemon, e.g. commit_interval=0.1 (YAML values)")
    args = parser.parse_args()
    for setting in args.set:
        key, _, value = setting.partition("=")
        BUFFER[key] = yaml.safe_load(value)
    sink = FastSink()
    results = {}
    scenarios = {
        "burst": lambda w: burst(w, sink, args.burst),
        "intake": lambda w: intake_ceiling(w, args.burst),
        "naive": lambda w: naive(w, sink, args.naive),
        "steady": lambda w: steady(w, sink, 1000, args.steady_seconds),
        "intake-cpu": lambda w: intake_cpu(w, 1000, args.steady_seconds),
        "idle-tree": lambda w: {"PSS MiB of 4 idle forked interpreters": idle_tree_pss() / 1048576},
        "backlog": lambda w: backlog(w, sink, args.backlog),
        "kill": lambda w: kill_under_defaults(w, sink),
    }
    with tempfile.TemporaryDirectory(prefix="mqttbuffer-bench.") as workdir:
        for run in range(args.runs):
            for name, scenario in scenarios.items():
                if args.only and name not in args.only:
                    continue
                sink.status = 200
                print(f"run {run + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
                for key, value in scenario(workdir).items():
                    results.setdefault(key, []).append(value)
    report(results, args)


def report(results, args):
    med = {k: statistics.median(v) for k, v in results.items()}
    lines = [f"# Benchmark results ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python"
             f" {platform.python_version()}, paho-mqtt {paho.mqtt.__version__}, "
             + subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0],
             f"Runs per scenario: {args.runs}; burst {args.burst}, naive {args.naive}, steady 1000 msg/s for"
             f" {args.steady_seconds} s, backlog {args.backlog}."
             + (f" Buffer settings: {', '.join(args.set)}." if args.set else ""), "",
             "| measure | median | min-max | target | met |", "|---|---|---|---|---|"]
    for key, values in results.items():
        target = TARGETS.get(key)
        met = ""
        if target:
            op, goal = target
            ok = med[key] >= goal if op == ">=" else med[key] <= goal
            met = "yes" if ok else f"no ({med[key] / goal:.2f} x target)" if goal else "no"
        lines.append(f"| {key} | {med[key]:.1f} | {min(values):.1f}-{max(values):.1f} |"
                     f" {f'{target[0]} {target[1]}' if target else ''} | {met} |")
    ratios = (
        ("burst / intake ceiling", "burst msg/s", "intake ceiling msg/s", ".2f", ">= 0.45"),
        ("steady CPU / ack-only subscriber", "steady CPU % of a core", "steady CPU % of an ack-only subscriber",
         ".1f", ""),
        ("steady PSS / idle forked interpreters", "steady PSS MiB", "PSS MiB of 4 idle forked interpreters",
         ".2f", ""),
        ("burst / naive forwarder", "burst msg/s", "naive forwarder msg/s", ".1f", ">= 4"),
    )
    for label, numerator, denominator, fmt, target in ratios:
        if numerator in med and denominator in med:
            lines.append(f"| {label} | {med[numerator] / med[denominator]:{fmt}} | | {target} | |")
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(os.path.join(HERE, "RESULTS.md"), "# Benchmark results", text)


if __name__ == "__main__":
    main()
