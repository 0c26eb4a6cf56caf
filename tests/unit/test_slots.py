"""The worker slot's restart policy, with a fake process and a fake clock."""

import itertools
import logging
import signal

import pytest

from mqttbuffer.stats import SharedStats
from mqttbuffer.supervisor.slots import Slot, describe_exit, oom_kills

PIDS = itertools.count(1000)


class FakeProcess:
    def __init__(self, target, name):
        self.pid, self.exitcode, self.sentinel = next(PIDS), None, None

    def start(self):
        pass

    def is_alive(self):
        return self.exitcode is None

    def join(self, timeout=None):
        pass

    def close(self):
        pass


class FakeContext:
    Process = FakeProcess


class FakeWorker:
    name = "ingestor"

    def run(self):
        pass


def die(slot, now, code=-signal.SIGKILL):
    slot.process.exitcode = code
    assert slot.check(now) == code
    return round(slot.restart_at - now, 6)


def run_and_die(slot, now, uptime):
    """Let the worker run ``uptime`` seconds, kill it, start it again; return (delay, new now)."""
    now += uptime
    slot.check(now)
    delay = die(slot, now)
    now = slot.restart_at
    slot.check(now)
    assert slot.state == "STARTING"
    return delay, now


def test_quick_deaths_back_off_doubling_up_to_60s():
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    now = 0.0
    slot.start(now)
    delays = []
    for _ in range(8):
        delay, now = run_and_die(slot, now, 0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert slot.restarts == 8


def test_a_worker_that_ran_a_few_seconds_is_restarted_at_once_each_time():
    """3 ingestor kills 4 s apart: every restart immediate, and a crash loop after them starts at 1 s."""
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    now = 0.0
    slot.start(now)
    delays = []
    for _ in range(3):
        delay, now = run_and_die(slot, now, 4.0)
        delays.append(delay)
    assert delays == [0, 0, 0]
    crash_loop = []
    for uptime in (0.2, 0.2, 3.0):
        delay, now = run_and_die(slot, now, uptime)
        crash_loop.append(delay)
    assert crash_loop == [1, 2, 0], "a start that lasted STARTSECS ends the crash loop"


def test_down_for_spans_a_crash_loop_and_ends_after_a_steady_run():
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    slot.start(0.0)
    now = 0.0
    for _ in range(3):
        _, now = run_and_die(slot, now, 1.5)
    assert slot.down_for(now) == now, "down since its first start: it never ran STARTSECS"
    slot.check(now + 1.0)
    assert slot.state == "RUNNING" and slot.down_for(now + 1.0) is not None
    slot.check(now + 3.0)
    assert slot.down_for(now + 3.0) is None


def test_describe_exit():
    assert describe_exit(0) == "exited with 0"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"


@pytest.mark.parametrize("because, oom_kills, words", [
    ("no heartbeat for 32s", 1, "killed by SIGKILL (sent by the supervisor: no heartbeat for 32s)"),
    (None, 1, "killed by SIGKILL (out of memory: the kernel's OOM killer ran)"),
    (None, 0, "killed by SIGKILL"),
    (None, None, "killed by SIGKILL (out of memory?)"),
])
def test_a_sigkill_is_put_down_to_memory_only_when_the_kernel_says_so(because, oom_kills, words):
    assert describe_exit(-signal.SIGKILL, because, oom_kills) == words


def test_oom_kills_reads_the_kernels_counter(tmp_path):
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\noom_kill 7\nnr_zone_active_file 3\n")
    assert oom_kills(str(vmstat)) == 7
    assert oom_kills(str(tmp_path / "missing")) is None


def test_our_own_sigkill_is_named_as_ours():
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    slot.start(0.0)
    slot.check(1.0)
    slot.kill("no heartbeat for 32s")
    die(slot, 5.0)
    assert slot.last_exit == "killed by SIGKILL (sent by the supervisor: no heartbeat for 32s)"


def test_unasked_deaths_are_warnings_and_a_crash_loop_an_error(caplog):
    caplog.set_level(logging.INFO)
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    slot.start(0.0)
    now = 0.0
    for _ in range(3):
        _, now = run_and_die(slot, now, 0.5)
    deaths = [r for r in caplog.records if "-> BACKOFF" in r.getMessage()]
    assert [r.levelname for r in deaths] == ["WARNING", "ERROR", "ERROR"]
    assert "restart in 2s; crash loop: it dies within 3s of each start" in deaths[1].getMessage()
    caplog.clear()
    slot.check(now + 1.0)
    slot.request_restart(now + 4.0, "memory over the limit", backoff=True)
    slot.process.exitcode = -signal.SIGTERM
    slot.check(now + 4.5)
    assert [r.levelname for r in caplog.records if "-> BACKOFF" in r.getMessage()] == ["INFO"]
