"""The worker slot's restart policy, with a fake process and a fake clock."""

import itertools
import signal

from mqttbuffer.slots import Slot, describe_exit
from mqttbuffer.stats import SharedStats

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


def test_restart_delays_quick_then_doubling_then_reset_after_a_healthy_run():
    slot = Slot(FakeWorker(), FakeContext, SharedStats())
    now = 0.0
    slot.start(now)
    delays = []
    for _ in range(9):
        now += 2.0
        slot.check(now)
        delays.append(die(slot, now))
        now = slot.restart_at
        slot.check(now)
        assert slot.state == "STARTING"
    assert delays == [0.1, 1, 2, 4, 8, 16, 32, 60, 60]
    assert slot.restarts == 9
    now += 61.0
    slot.check(now)
    assert slot.state == "RUNNING"
    assert die(slot, now) == 0.1, "a death after 60 s up starts the sequence again"


def test_describe_exit():
    assert describe_exit(0) == "exited with 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
