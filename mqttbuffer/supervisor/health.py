"""Health checks the supervisor runs on its workers: heartbeats and memory limits.

A worker promises, through the shared stats, the monotonic time by which it will beat again;
one that is later than that by ``limits.heartbeat_timeout`` (stuck in a request beyond its
timeout, deadlocked, SIGSTOPped) is killed with SIGKILL, and the slot restarts it as for any
death. A worker whose RSS is above ``limits.<name>_memory_mb`` for ``OVER_LIMIT_SAMPLES``
consecutive samples (every ``limits.memory_check_interval`` seconds) is restarted gracefully,
through the crash-loop backoff, so a leak cannot take the device down and cannot spin either.
"""

import logging

import psutil

from mqttbuffer.supervisor.slots import State

log = logging.getLogger("mqttbuffer.supervisor")

OVER_LIMIT_SAMPLES = 3


class HealthChecks:
    def __init__(self, limits, stats):
        self.limits = limits
        self.stats = stats
        self.next_memory_check = 0.0
        self.over = {}

    def check(self, slots, now):
        for slot in slots:
            if slot.state in (State.RUNNING, State.STARTING):
                self._check_heartbeat(slot, now)
        if now >= self.next_memory_check:
            self.next_memory_check = now + self.limits.memory_check_interval
            for slot in slots:
                self._check_memory(slot, now)

    def _check_heartbeat(self, slot, now):
        late = now - self.stats.heartbeat(slot.name)
        if late > self.limits.heartbeat_timeout:
            silent = now - self.stats.last_beat(slot.name)
            log.error("%s (pid %s) sent no heartbeat for %.1fs (%.1fs past the one it promised); killing it",
                      slot.name, slot.pid, silent, late)
            slot.hangs += 1
            self.stats.beat(slot.name, now + self.limits.heartbeat_timeout)
            slot.kill(f"no heartbeat for {silent:.0f}s")

    def _check_memory(self, slot, now):
        limit_mb = getattr(self.limits, f"{slot.name}_memory_mb")
        if not limit_mb or slot.state != State.RUNNING:
            self.over[slot.name] = 0
            return
        try:
            rss = psutil.Process(slot.pid).memory_info().rss
        except psutil.Error:
            return
        if rss <= limit_mb * 1048576:
            self.over[slot.name] = 0
            return
        self.over[slot.name] = self.over.get(slot.name, 0) + 1
        if self.over[slot.name] >= OVER_LIMIT_SAMPLES:
            self.over[slot.name] = 0
            slot.memory_restarts += 1
            slot.request_restart(now, f"memory {rss / 1048576:.1f} MiB over the {limit_mb:g} MiB limit"
                                      f" for {OVER_LIMIT_SAMPLES} samples", backoff=True)
