"""``make profile``: where each mqttbuffer process spends its CPU under the steady load.

Runs the daemon at 1,000 msg/s (as the steady scenario of run.py), attaches py-spy to the
supervisor and each worker for the same window, and prints per process its CPU % of one core
(psutil, over the window) and the functions with the most samples: "self" counts samples whose
innermost frame is that function, "incl." samples where it is anywhere on the stack. py-spy only
samples threads that are running, so samples are proportional to CPU time; time inside SQLite,
the kernel or OpenSSL is charged to the Python line that called it. The tables are also written
to bench/RESULTS.md under "## Profile".
"""

import argparse
import collections
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import Broker, join, publish, wait_for  # noqa: E402
from results import replace_section  # noqa: E402
from run import Daemon  # noqa: E402
from sink import FastSink  # noqa: E402

PROCESSES = ("supervisor", "ingestor", "persister", "forwarder")
ENTRY_FRAMES = {"base.py:Worker.run", "threading.py:Thread.run", "main.py:Supervisor.run"}
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def short(frame):
    """'message_json (/x/mqttbuffer/delivery/wire.py:105)' -> 'wire.py:message_json'."""
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{os.path.basename(match['file'])}:{match['func']}"


def read_stacks(path):
    """py-spy raw output -> list of (frames outermost first, samples)."""
    stacks = []
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                stacks.append((below_entry([short(fr) for fr in stack.split(";")]), int(count)))
    return stacks


def summarize(stacks, top):
    total = sum(n for _, n in stacks)
    own, incl = collections.Counter(), collections.Counter()
    for frames, n in stacks:
        if frames:
            own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return total, own.most_common(top), incl.most_common(top)


def thread_seconds(pid):
    """CPU seconds (user + system) of each thread of a process, by thread id."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def below_entry(frames):
    """The frames under the worker's or thread's run(): the launch chain above is the same everywhere."""
    for n in range(len(frames) - 1, -1, -1):
        if frames[n] in ENTRY_FRAMES:
            return frames[n + 1:]
    return frames


def pids(daemon):
    found = {"supervisor": daemon.process.pid}
    for name in PROCESSES[1:]:
        found[name] = daemon.worker(name)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (slower)")
    parser.add_argument("--keep", metavar="DIR", help="copy py-spy's raw stacks into DIR")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    sink = FastSink()
    with tempfile.TemporaryDirectory(prefix="mqttbuffer-profile.") as workdir:
        broker = Broker(workdir)
        daemon = Daemon(workdir, broker, sink)
        daemon.start()
        time.sleep(1)
        procs = publish(broker.port, args.rate * args.seconds, rate=args.rate, processes=1)
        time.sleep(2)  # past connection set-up, into the steady state
        window = args.seconds - 4
        targets = pids(daemon)
        spies, threads0 = {}, {}
        for name, pid in targets.items():
            threads0[name] = thread_seconds(pid)
            out = os.path.join(workdir, f"{name}.txt")
            cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(window), "--rate", "200",
                   "--format", "raw", "--output", out, "--nonblocking"] + (["--native"] if args.native else [])
            spies[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
        t0 = time.monotonic()
        for spy, out in spies.values():
            spy.wait(window + 30)
            if args.keep and os.path.exists(out):
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(out, args.keep)
        elapsed = time.monotonic() - t0
        per_thread = {name: {tid: 100 * (t - threads0[name].get(tid, 0.0)) / elapsed
                             for tid, t in thread_seconds(pid).items()} for name, pid in targets.items()}
        cpu = {name: sum(shares.values()) for name, shares in per_thread.items()}
        join(procs)
        wait_for(lambda: sink.distinct() >= args.rate * args.seconds, 60)
        daemon.stop()
        broker.stop()
        lines = [f"## Profile ({time.strftime('%Y-%m-%d')}, `make profile`: {args.rate} msg/s, py-spy"
                 f" {window} s at 200 Hz{', native frames' if args.native else ''})", "",
                 "CPU % of one core over the window (psutil, summed over threads): "
                 + ", ".join(f"{name} {cpu[name]:.1f}" for name in targets)
                 + f"; tree {sum(cpu.values()):.1f}.", ""]
        for name, (_, out) in spies.items():
            stacks = read_stacks(out) if os.path.exists(out) else []
            total, own, incl = summarize(stacks, args.top)
            threads = ", ".join(f"{'main' if tid == targets[name] else 'thread'} {share:.1f}"
                                for tid, share in sorted(per_thread[name].items()))
            lines += [f"### {name}: {cpu[name]:.1f} % of a core ({threads}), {total} samples", "",
                      "| self | % | incl. | % |", "|---|---|---|---|"]
            for (o, on), (i, inn) in itertools.zip_longest(own, incl, fillvalue=("", 0)):
                lines.append(f"| {o} | {100 * on / max(total, 1):.0f} | {i} | {100 * inn / max(total, 1):.0f} |")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    replace_section(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "## Profile", text)


if __name__ == "__main__":
    main()
