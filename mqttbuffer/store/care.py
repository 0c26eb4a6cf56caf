"""The persister's care of the store file: damage found, salvaged, and silent losses made loud.

A damaged store (SQLite says "database disk image is malformed", or the forwarder reports that
it cannot read it) stops the persister from committing, so nothing more is acked into a file
nobody can read past: the broker keeps new messages. The persister then asks the forwarder to
close the store (``store_generation`` becomes odd), waits for it (or for its absence), copies
every readable row into a fresh file (``salvage``), and lets everyone reopen (even again).
What happened is logged as one ERROR line, kept in ``store_notice`` for status, and the damaged
file stays beside the store.

At every start it compares the store with the marker the last run left (``marker``): a store that
shrank to nothing or lost its newest commits is reported the same way.
"""

import sqlite3
import time

from mqttbuffer.store import Store, StoreDamaged, StoreError, is_corruption
from mqttbuffer.store.marker import loss, read_marker, write_marker
from mqttbuffer.store.salvage import salvage
from mqttbuffer.workers.base import STEP_BUDGET

MARK_EVERY = 10.0
CHECK_MARK_EVERY = 1.0
RETRY_SALVAGE_AFTER = 10.0
# A forwarder whose heartbeat is this late is not running, so it holds no connection.
FORWARDER_GONE_AFTER = 5.0


class StoreCare:
    def __init__(self, persister):
        self.p = persister
        self.path = persister.cfg.buffer.persist_file
        self.damage = None  # why the store is considered damaged, or None
        self.salvage_at = 0.0
        self.mark_check_at = 0.0
        self.marked = None  # (pending, monotonic time) last written
        generation = int(persister.stats.get("store_generation"))
        # A persister that died mid-salvage left it odd: let the forwarder back in.
        self.generation = generation + 1 if generation % 2 else generation
        persister.stats.set("store_generation", self.generation)

    # --- what the last run left ---------------------------------------------------------------

    def check_marker(self):
        try:
            pending, max_seq = self.p.store.totals()[0], self.p.store.max_seq()
        except sqlite3.Error as exc:
            if not is_corruption(exc):
                raise
            self.check(time.monotonic(), exc)
            return
        marker = read_marker(self.path)
        words = loss(marker, pending, max_seq)
        if words:
            seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker["at"]))
            notice = f"store {words} (last seen {seen}): it was truncated, replaced or lost its -wal"
            self.p.log.error("%s: %s", self.path, notice)
            self.p.stats.set_text("store_notice", notice)
        self._write_marker(pending, max_seq, time.monotonic())

    def mark(self, now, force=False):
        """Keep the marker current: every MARK_EVERY seconds, and at once when the queue empties."""
        if (now < self.mark_check_at and not force) or self.damage:
            return
        self.mark_check_at = now + CHECK_MARK_EVERY
        try:
            pending = self.p.store.totals()[0]
            last_pending, last_at = self.marked
            if force or (pending == 0) != (last_pending == 0) or now - last_at >= MARK_EVERY:
                self._write_marker(pending, self.p.store.max_seq(), now)
        except sqlite3.Error as exc:
            if not is_corruption(exc):
                raise
            self.check(now, exc)

    def _reopen_if_closed(self):
        try:
            self.p.store.totals()
        except sqlite3.ProgrammingError:  # salvage closed it before failing
            try:
                self.p.store = Store.open(self.path)
            except StoreDamaged:
                self.p.store = Store.damaged(self.path)
        except sqlite3.Error:
            pass  # still open, still damaged: the next attempt reads it again

    def _write_marker(self, pending, max_seq, now):
        try:
            write_marker(self.path, pending, max_seq, time.time())
        except OSError as exc:
            self.p.log.debug("Cannot write the store marker: %s", exc)
        self.marked = (pending, now)

    # --- damage --------------------------------------------------------------------------------

    def check(self, now, exc=None):
        """Note damage (an exception, or the forwarder's report); salvage when the time comes.

        Returns True while the store is damaged (commits must wait)."""
        if self.damage is None:
            if exc is not None:
                self._damaged(exc)
            elif self.p.stats.get("store_read_failed") == self.generation + 1:
                self._damaged("the forwarder cannot read it")
        if self.damage and now >= self.salvage_at:
            self._salvage_when_ready(now)
        return self.damage is not None

    def _damaged(self, why):
        self.damage = str(why)
        self.p.log.error("Store %s is damaged (%s): not acking until the readable messages are copied into"
                         " a fresh store", self.path, self.damage)
        self.p.problem = "damaged"
        self.p.stats.set("blocked", 1)
        self.p.stats.set_text("persister_problem", f"store unreadable: {self.path}: {self.damage}")
        self.generation += 1
        self.p.stats.set("store_generation", self.generation)

    def _salvage_when_ready(self, now):
        stats = self.p.stats
        closed = stats.get("store_closed_generation") == self.generation
        gone = stats.heartbeat("forwarder") < now - FORWARDER_GONE_AFTER
        if not (closed or gone):
            return

        def beat():
            stats.beat(self.p.name, time.monotonic() + STEP_BUDGET)

        try:
            saved, claimed, dead, kept = salvage(self.p.store, self.path, beat)
        except (sqlite3.Error, OSError, StoreError) as exc:
            self.p.log.error("Salvaging %s failed: %s; trying again in %gs", self.path, exc, RETRY_SALVAGE_AFTER)
            self.salvage_at = now + RETRY_SALVAGE_AFTER
            self._reopen_if_closed()
            return
        self.p.store = Store.open(self.path)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        of = f" of {claimed}" if claimed is not None else ""
        notice = (f"salvaged {saved}{of} messages and {dead} dead letters from a damaged store at {when}"
                  f" ({self.damage}); the damaged file is kept as {kept}")
        self.p.log.warning("%s: %s", self.path, notice)
        stats.set_text("store_notice", notice)
        self.damage = None
        self.p.problem = None
        stats.set("blocked", 0)
        stats.set_text("persister_problem", "")
        self.generation += 1
        stats.set("store_generation", self.generation)
        self._write_marker(saved, self.p.store.max_seq(), now)
        self.p.commit_at = 0.0
