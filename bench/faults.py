"""Rerun the fault rows that the daemon's own tests cannot show side by side: each scenario runs
the real command (from this checkout, or from another source tree given with --code, e.g. an
older commit unpacked with `git archive`) against a private mosquitto and HTTP sink, and prints
one line of figures.

    .venv/bin/python bench/faults.py [--code DIR] [SCENARIO ...]
"""

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
import yaml  # noqa: E402

from tests.conftest import Mosquitto, Sink, wait_until  # noqa: E402
from tests.publisher import Publisher  # noqa: E402

YEAR = 365 * 86400.0


class Run:
    """One daemon of the code under test, in its own process group, with its own broker and sink."""

    def __init__(self, code, directory, **sections):
        self.code, self.dir = code, Path(directory)
        self.broker = Mosquitto(self.dir)
        self.broker.start()
        self.sink = Sink()
        self.store = str(self.dir / "store" / "buffer.db")
        self.config = {
            "mqtt": {"broker": self.broker.url, "client_id": f"faults-{os.getpid()}", "reconnect_interval": 0.2,
                     "max_reconnect_interval": 1},
            "api": {"url": self.sink.url, "timeout": 5},
            "buffer": {"persist_file": self.store, "flush_interval": 0.2},
            "topics": ["test/#"], "logging": {"level": "info", "stats_interval": 0},
        }
        for section, values in sections.items():
            self.config.setdefault(section, {}).update(values)
        self.processes = []

    def env(self):
        env = dict(os.environ, PYTHONPATH=str(self.code))
        env.pop("NOTIFY_SOCKET", None)
        return env

    def start(self, log="daemon.log", wait=True, prefix=()):
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(self.config))
        out = open(self.dir / log, "ab")
        process = subprocess.Popen([*prefix, sys.executable, "-m", "mqttbuffer", "--config", str(path)],
                                   stdout=out, stderr=out, start_new_session=True, env=self.env(), cwd=self.dir)
        out.close()
        self.processes.append(process)
        if wait:
            wait_until(lambda: self.log(log).count("Subscribed to") >= 1 or process.poll() is not None, 30,
                       "the daemon to subscribe")
        return process

    def log(self, name="daemon.log"):
        path = self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def workers(self, process):
        try:
            return [c for c in psutil.Process(process.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def close(self):
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
        self.sink.close()
        self.broker.stop()


def numbers(sink):
    return [m["payload"]["n"] for m in sink.delivered() if isinstance(m["payload"], dict) and "n" in m["payload"]]


def prefill(path, count, stamp, payload=b'"old"'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    script = "import sys; from mqttbuffer.store import Store; Store.open(sys.argv[1]).close()"
    subprocess.run([sys.executable, "-c", script, path], check=True)
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO messages (id, topic, payload, qos, retain, received_at) VALUES (?, ?, ?, 1, 0, ?)",
                   [(f"old{n}", "test/old", payload, stamp) for n in range(count)])
    db.commit()
    db.close()


# --- scenarios (row numbers of the fault table) ---------------------------------------------------

def row3_clock_a_year_ahead(code, tmp):
    """12,000 waiting, stamped a year before the clock says now; API down; cleanup every second."""
    run = Run(code, tmp, buffer={"cleanup_interval": 1, "message_retention_days": 7},
              circuit_breaker={"max_failures": 1, "timeout": 600})
    run.sink.status = 503
    try:
        prefill(run.store, 12_000, time.time() - YEAR)
        run.start()
        time.sleep(15)
        db = sqlite3.connect(run.store)
        waiting = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return f"after 15 s: {waiting} still waiting, {dead} dead letters, {12_000 - waiting - dead} gone for good"
    finally:
        run.close()


def row2_damaged_page(code, tmp):
    """3,000 waiting, 16 KiB of garbage in the middle of the store, then 500 published."""
    from tests.unit.test_salvage import damage
    run = Run(code, tmp)
    try:
        prefill(run.store, 3000, time.time(), payload=b'"old-%s"' % (b"x" * 150))
        damage(run.store)
        run.start()
        pub = Publisher(run.broker.port)
        accepted = pub.publish(500, rate=500).accepted()
        time.sleep(20)
        pub.close()
        old = len({m["id"] for m in run.sink.delivered() if m["topic"] == "test/old"})
        new = len(accepted & set(numbers(run.sink)))
        restarts = run.log().count("forwarder (pid") // 2
        return (f"old delivered {old} of 3000, new delivered {new} of {len(accepted)} acked;"
                f" forwarder restarts ~{restarts}")
    finally:
        run.close()


def row7_supervisor_sigkill(code, tmp):
    run = Run(code, tmp)
    try:
        daemon = run.start()
        time.sleep(1.5)
        workers = run.workers(daemon)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        time.sleep(2)
        alive = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        sock = socket.socket(socket.AF_UNIX)
        listening = sock.connect_ex(str(Path(run.store).parent / "control.sock")) == 0
        sock.close()
        return (f"{len(alive)} of {len(workers)} workers alive 2 s after the supervisor's SIGKILL;"
                f" control socket still listening: {listening}")
    finally:
        for worker in workers:
            if worker.is_running():
                worker.kill()
        run.close()


def row8_second_instance(code, tmp):
    run = Run(code, tmp)
    try:
        first = run.start()
        second = run.start(log="second.log", wait=False)
        try:
            code2 = second.wait(8)
        except subprocess.TimeoutExpired:
            code2 = "still running after 8 s"
        sock = socket.socket(socket.AF_UNIX)
        path = str(Path(run.store).parent / "control.sock")
        ok = sock.connect_ex(path) == 0
        if ok:
            sock.sendall(b'{"id":1,"command":"status"}\n')
            pid = json.loads(sock.makefile().readline())["data"]["pid"]
        sock.close()
        owner = "first" if ok and pid == first.pid else ("second" if ok else "nobody")
        line = run.log("second.log").strip().splitlines()[-1:]
        return f"second instance: exit {code2}; control socket answered by: {owner}; its last line: {line}"
    finally:
        run.close()


def row9_control_flood(code, tmp):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    run = Run(code, tmp)
    clients = []
    try:
        daemon = run.start(prefix=("prlimit", "--nofile=1024"))
        time.sleep(1.5)
        path = str(Path(run.store).parent / "control.sock")
        deadline = time.monotonic() + 20
        while len(clients) < 1025 and time.monotonic() < deadline:
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            if c.connect_ex(path) in (0, 115):
                clients.append(c)
            else:
                c.close()
                time.sleep(0.001)
        forwarder = next(w for w in run.workers(daemon) if w.name().startswith("mqttbuffer-forw"))
        forwarder.kill()
        back = False
        for _ in range(100):
            time.sleep(0.1)
            if any(w.name().startswith("mqttbuffer-forw") and w.pid != forwarder.pid for w in run.workers(daemon)):
                back = True
                break
        return f"{len(clients)} idle clients connected; killed forwarder restarted within 10 s: {back}"
    finally:
        for c in clients:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        run.close()


def row14_truncated(code, tmp):
    run = Run(code, tmp, circuit_breaker={"max_failures": 1, "timeout": 600})
    run.sink.status = 503
    try:
        daemon = run.start()
        pub = Publisher(run.broker.port)
        pub.publish(200).accepted()
        pub.close()
        time.sleep(2)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        os.truncate(run.store, 0)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(run.store + suffix):
                os.unlink(run.store + suffix)
        run.start(log="again.log")
        time.sleep(2)
        said = [line for line in run.log("again.log").splitlines() if "ERROR" in line or "WARNING" in line]
        return f"200 waiting, store truncated to 0 bytes and -wal removed; lines at restart: {said or 'none'}"
    finally:
        run.close()


def row16_dropped(code, tmp):
    run = Run(code, tmp, buffer={"max_bytes": 4 * 1024 * 1024})
    try:
        run.start()
        pub = Publisher(run.broker.port)
        for _ in range(600):
            n = len(pub.infos)
            pub.infos.append(pub.client.publish(pub.topic, json.dumps({"n": n, "pad": "x" * 100_000}), qos=1))
        accepted = pub.accepted(60)
        pub.close()
        time.sleep(10)
        delivered = set(numbers(run.sink))
        lost = len(accepted - delivered)
        status = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--config",
                                 str(run.dir / "config.yaml"), "status", "--json"],
                                capture_output=True, text=True, env=run.env(), cwd=run.dir)
        dropped = json.loads(status.stdout)["counters"]["dropped"]
        return f"600 x 100 KB into a 4 MiB store: the dropped counter says {dropped}, really lost {lost}"
    finally:
        run.close()


class SlowAPI:
    """Records every body on arrival (a real API commits it then), answers 200 after ``delay``
    seconds, or with ``trickle`` sends the headers at once and the body a byte every 3 s."""

    def __init__(self, delay=0.0, trickle=False):
        import http.server
        import threading
        self.arrivals = []  # (monotonic time, message numbers)
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                api.arrivals.append((time.monotonic(), [m["payload"]["n"] for m in body]))
                reply = b'{"ok":true}' + b" " * 20
                if not trickle:
                    time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                try:
                    for i in range(len(reply)) if trickle else [None]:
                        self.wfile.write(reply if i is None else reply[i:i + 1])
                        self.wfile.flush()
                        if trickle:
                            time.sleep(3)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def copies(self):
        received = [n for _, batch in self.arrivals for n in batch]
        return len(received), len(set(received))


def row4_large_backlog_slow_api(code, tmp):
    """200 x 200 KB waiting, the API answers after 10 s, forwarder memory limit 40 MiB; 60 s."""
    api = SlowAPI(delay=10)
    run = Run(code, tmp, api={"url": api.url, "timeout": 30},
              limits={"forwarder_memory_mb": 40, "memory_check_interval": 1})
    run.sink.status = 503
    try:
        daemon = run.start()
        os.kill(next(w.pid for w in run.workers(daemon) if w.name().startswith("mqttbuffer-forw")), signal.SIGSTOP)
        pub = Publisher(run.broker.port)
        for _ in range(200):
            n = len(pub.infos)
            pub.infos.append(pub.client.publish(pub.topic, json.dumps({"n": n, "pad": "x" * 200_000}), qos=1))
        pub.accepted(60)
        pub.close()
        time.sleep(3)
        for w in run.workers(daemon):
            w.send_signal(signal.SIGCONT)
        time.sleep(60)
        total, unique = api.copies()
        restarts = run.log().count("memory ") + run.log().count("killed by")
        largest = max((len(batch) for _, batch in api.arrivals), default=0)
        return (f"in 60 s: {unique} of 200 received, {total - unique} duplicates, largest request {largest}"
                f" messages, forwarder memory restarts/kills ~{restarts}")
    finally:
        run.close()
        api.server.shutdown()


def row5_trickling_api(code, tmp):
    """100 waiting; the API sends 200 and its headers, then the body a byte every 3 s; 45 s."""
    api = SlowAPI(trickle=True)
    run = Run(code, tmp, api={"url": api.url, "timeout": 5}, limits={"heartbeat_timeout": 5},
              circuit_breaker={"max_failures": 100, "timeout": 1})
    try:
        run.start()
        pub = Publisher(run.broker.port)
        pub.publish(100).accepted()
        pub.close()
        time.sleep(45)
        times = [t for t, _ in api.arrivals]
        gaps = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
        kills = run.log().count("heartbeat")
        return f"in 45 s: {len(times)} requests of 100 messages, gaps {gaps} s, forwarder heartbeat kills {kills}"
    finally:
        run.close()
        api.server.shutdown()


CONFIGS = {
    "10 broker port 0": "mqtt: {broker: 'tcp://127.0.0.1:0'}\napi: {url: 'http://127.0.0.1:9/x'}\n",
    "11 api.url port 99999": "api: {url: 'http://127.0.0.1:99999/x'}\n",
    "11 api.timeout .inf": "api: {url: 'http://127.0.0.1:9/x', timeout: .inf}\n",
    "11 duplicated section": "api: {url: 'http://127.0.0.1:9/x'}\nbuffer: {max_size: 5}\nbuffer: {max_size: 7}\n",
    "11 socket path > 108 bytes": "api: {url: 'http://127.0.0.1:9/x'}\ncontrol: {socket: '/tmp/"
                                  + "x" * 120 + "/c.sock'}\n",
    "11 api.key with a newline": "api: {url: 'http://127.0.0.1:9/x', key: \"SECRETKEY\\nX: 1\"}\n",
    "12 broker user:pass@": "mqtt: {broker: 'tcp://user:SECRETPW@127.0.0.1:1883'}\n"
                            "api: {url: 'http://127.0.0.1:9/x'}\n",
    "12 https u:p@ ?token=": "api: {url: 'https://u:SECRETPW@127.0.0.1/x?token=SECRETTOKEN'}\n",
    "15 socket under a file": "api: {url: 'http://127.0.0.1:9/x'}\ncontrol: {socket: '/etc/hostname/x/c.sock'}\n",
}


def rows10_to_15_configs(code, tmp):
    lines = []
    for name, text in CONFIGS.items():
        path = Path(tmp) / "config.yaml"
        path.write_text(text + f"buffer: {{persist_file: '{tmp}/buffer.db'}}\n" if "buffer:" not in text else text)
        result = subprocess.run([sys.executable, "-m", "mqttbuffer", "--check", "--config", str(path)],
                                capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(code)),
                                cwd=tmp)
        out = result.stdout + result.stderr
        leak = "SECRET" in out
        lines.append(f"  {name}: --check exit {result.returncode}, {len(result.stderr.strip().splitlines())} stderr"
                     f" line(s), secret shown: {leak}")
    return "\n" + "\n".join(lines)


SCENARIOS = {name: f for name, f in globals().items() if name.startswith("row")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                        help="the source tree whose mqttbuffer package to run (default: this checkout)")
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args()
    for name in args.scenarios or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="faults.") as tmp:
            start = time.monotonic()
            print(f"{name}: {SCENARIOS[name](args.code, tmp)} [{time.monotonic() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
