"""The persister: the only process that inserts into the store.

It listens for the ingestor, commits every batch that arrived while the previous commit ran in
one transaction (group commit: one fsync for all of them), and only then confirms those batches,
so the ingestor acks nothing that is not on disk. Commits are at least ``buffer.commit_interval``
apart: on an SD card an fsync per arriving batch would write kilobytes per message, while a few
milliseconds of waiting lets each commit carry many. The exception is when the ingestor says
nothing more is coming soon (the stream paused, or half of the broker's window waits): waiting
would only stall the broker, so the commit happens at once. It also
enforces the store's bounds (``buffer.max_size``/``max_bytes`` with ``overflow``) and, every
``cleanup_interval``, retention.

A batch it does not commit stays unconfirmed, and the ingestor keeps its messages, acks nothing
and so lets the broker hold the rest: that is what ``overflow: block`` and a full disk do. Both are
retried every ``RETRY_COMMIT_AFTER`` seconds, logged once when they start and once when they end.
"""

import enum
import os
import sqlite3
import time

from mqttbuffer import ipc
from mqttbuffer.delays import scaled
from mqttbuffer.store import Store, StoreDamaged, is_corruption, message_size
from mqttbuffer.store.care import StoreCare
from mqttbuffer.store.retention import RetentionGuard
from mqttbuffer.workers.base import Worker

RETRY_COMMIT_AFTER = scaled(1.0)
RETRY_SALVAGE_POLL = 0.2
DROP_LOG_INTERVAL = 10.0
DAY = 86400.0
# Messages stamped before this wall-clock time were received while the clock was unset (a Pi
# has no RTC until NTP syncs); their age is unknown, so retention leaves them alone.
PLAUSIBLE_EPOCH = 1_700_000_000.0


class Problem(enum.StrEnum):
    """Why the persister holds commits back (and so acks nothing)."""

    FULL = "full"    # overflow: block, and the store is at a bound
    ERROR = "error"  # the commit failed: a full disk, an I/O or store error


class Persister(Worker):
    name = "persister"

    def setup(self):
        damage = None
        try:
            self.store = Store.open(self.cfg.buffer.persist_file)
        except StoreDamaged as exc:
            # Damaged where opening reads (the schema, the totals): salvage needs no more than a connection.
            self.store, damage = Store.damaged(self.cfg.buffer.persist_file), exc
        self.listener = ipc.Listener(os.path.join(self.links_dir, ipc.PERSISTER_LINK))
        self.links = []
        # (link, batch number, rows) received and not yet committed, in arrival order
        self.uncommitted = []
        self.flush_wanted = False  # the ingestor asked for a commit now
        self.commit_at = 0.0
        self.problem = None  # a Problem while commits are held back
        self.dropped_unlogged = 0
        self.drop_log_at = 0.0
        self.cleanup_at = time.monotonic()
        self.expired_unsure = 0  # messages expired this run while the clock could not be checked
        self.retention = RetentionGuard(self.cfg.buffer.message_retention_days * DAY, time.monotonic(), time.time())
        self.care = StoreCare(self)
        if damage is not None:
            self.care.check(time.monotonic(), damage)
        else:
            self.log.info("Loaded %d messages from disk", self.store.totals()[0])
            self.care.check_marker()

    def step(self, now):
        if not self.uncommitted:
            timeout = 0.5
        elif self._commit_due(now):
            timeout = 0.0
        else:
            timeout = self.commit_at - now
        ready = ipc.wait([self.wake_r, self.listener, *self.links], timeout)
        for source in ready:
            if source is self.wake_r:
                self.drain_wakeups()
            elif source is self.listener:
                link = self.listener.accept()
                if link is not None:
                    self.links.append(link)
            else:
                self._receive(source)
        now = time.monotonic()
        if self.care.check(now):
            self.commit_at = now + RETRY_SALVAGE_POLL
            return
        self.care.mark(now)
        if self.uncommitted and self._commit_due(now):
            self._commit(now)
        elif not self.uncommitted:
            self.flush_wanted = False
        if now >= self.cleanup_at:
            self.cleanup_at = now + self.cfg.buffer.cleanup_interval
            self._clean_up()
        if self.dropped_unlogged and now >= self.drop_log_at:
            self.log.warning("Buffer full: dropped the %d oldest messages (overflow: drop_oldest)",
                             self.dropped_unlogged)
            self.dropped_unlogged = 0
            self.drop_log_at = now + DROP_LOG_INTERVAL

    def _commit_due(self, now):
        if now >= self.commit_at:
            return True
        return not self.problem and self.flush_wanted

    def _receive(self, link):
        """Take every batch waiting on link, so one commit covers all of them."""
        try:
            while link.poll(0):
                batch_no, rows, flush = link.recv()
                if batch_no is not None:
                    self.uncommitted.append((link, batch_no, rows))
                self.flush_wanted = self.flush_wanted or flush
        except ipc.LINK_ERRORS:
            # The ingestor went away; it re-sends whatever we never confirmed to it.
            self._drop(link)

    def _drop(self, link):
        self.links.remove(link)
        link.close()
        self.uncommitted = [u for u in self.uncommitted if u[0] is not link]

    def _batches_that_fit(self):
        """Under overflow: block, the leading batches that fit in the bounds (at least one when empty)."""
        buffer = self.cfg.buffer
        if buffer.overflow != "block":
            return len(self.uncommitted)
        stored, size = self.store.totals()
        count = stored
        fitting = 0
        for _, _, rows in self.uncommitted:
            count += len(rows)
            size += sum(message_size(topic, payload) for _, topic, payload, *_ in rows)
            if (count > buffer.max_size or size > buffer.max_bytes) and (fitting or stored):
                break
            fitting += 1
        return fitting

    def _hold(self, now, problem, words, message, *args):
        if self.problem != problem:
            self.log.warning(message, *args)
        self.problem = problem
        self.stats.set("blocked", 1)
        self.stats.set_text("persister_problem", words)
        self.commit_at = now + RETRY_COMMIT_AFTER

    def _commit(self, now):
        fitting = self._batches_that_fit()
        if not fitting:
            count, size = self.store.totals()
            self._hold(now, Problem.FULL, f"buffer full (overflow: block): {count} messages, {size} bytes",
                       "Buffer full (%d messages, %d bytes): not acking until the forwarder"
                       " frees space (overflow: block)", count, size)
            return
        batches, rest = self.uncommitted[:fitting], self.uncommitted[fitting:]
        self.flush_wanted = False
        rows = [row for _, _, batch in batches for row in batch]
        bounded = self.cfg.buffer.overflow == "drop_oldest"
        try:
            inserted, dropped = self.store.insert(
                rows, self.cfg.buffer.max_size if bounded else None, self.cfg.buffer.max_bytes if bounded else None,
                keep_upto=lambda: self.stats.get("handling_last_seq"), keep_count=self.cfg.buffer.batch_size,
            )
        except sqlite3.Error as exc:
            if is_corruption(exc):
                self.care.check(now, exc)
                return
            full = "full" in str(exc)
            path = self.cfg.buffer.persist_file
            self._hold(now, Problem.ERROR, f"disk full: {path}" if full else f"cannot commit to {path}: {exc}",
                       "Cannot commit %d messages to %s: %s%s; not acking until it works again",
                       len(rows), self.cfg.buffer.persist_file, exc,
                       " (no space left on the device)" if full else "")
            return
        self.commit_at = now + self.cfg.buffer.commit_interval
        if self.problem:
            self.log.info("Committing again; the broker's held messages follow")
            self.problem = None
            self.stats.set("blocked", 0)
            self.stats.set_text("persister_problem", "")
        self.stats.set("last_commit_at", time.time())
        self.stats.add("persisted", inserted)
        if dropped:
            self.stats.add("dropped", dropped)
            self.dropped_unlogged += dropped
        self.uncommitted = rest
        if rest:
            self.commit_at = now + RETRY_COMMIT_AFTER
        confirmed = {}
        for link, batch_no, _ in batches:
            confirmed.setdefault(link, []).append(batch_no)
        for link, numbers in confirmed.items():
            try:
                link.send(numbers)
            except ipc.LINK_ERRORS:
                self._drop(link)

    def _clean_up(self):
        buffer, wall, now = self.cfg.buffer, time.time(), time.monotonic()
        try:
            waiting, oldest = self.store.totals()[0], self.store.head()[1]
            may_run, limit = self.retention.plan(now, wall, oldest, waiting)
            if not may_run:
                self.cleanup_at = self.retention.started_mono + self.retention.grace
                return
            expired = self.store.expire(PLAUSIBLE_EPOCH, wall - buffer.message_retention_days * DAY, wall, limit)
            if limit is None:
                dead_before, keep = wall - buffer.dead_letter_retention_days * DAY, buffer.dead_letter_max_size
            else:
                # Forgetting dead letters by age trusts the clock as much, and the count cap would
                # forget for good messages a wrong clock expired: what it expired this run stays.
                self.expired_unsure += expired
                dead_before, keep = 0.0, buffer.dead_letter_max_size + self.expired_unsure
            forgotten = self.store.trim_dead_letters(dead_before, keep)
        except sqlite3.Error as exc:
            if is_corruption(exc):
                self.care.check(now, exc)
                return
            self.log.error("Cleanup of %s failed: %s; trying again in %gs", buffer.persist_file, exc,
                           buffer.cleanup_interval)
            return
        if limit is not None and expired == limit:
            self.log.warning("Retention: the clock cannot be checked against the age of the oldest messages"
                             " (received before this start, or the clock jumped); expiring at most %d of %d"
                             " per pass", limit, waiting)
        if limit is not None and expired and self.expired_unsure == expired:
            self.log.warning("Retention: dead letters expired while the clock cannot be checked are kept beyond"
                             " buffer.dead_letter_max_size = %d (replay them if the clock was wrong)",
                             buffer.dead_letter_max_size)
        if expired:
            self.stats.add("expired", expired)
            self.log.warning("Moved %d messages older than %g days to dead letters (expired)",
                             expired, buffer.message_retention_days)
        if forgotten:
            self.log.warning("Forgot %d dead letters for good (older than buffer.dead_letter_retention_days"
                             " = %g or beyond buffer.dead_letter_max_size = %d)", forgotten,
                             buffer.dead_letter_retention_days, buffer.dead_letter_max_size)

    def shutdown(self):
        # Commit and confirm what already arrived, so the ingestor can ack it before it disconnects.
        for link in list(self.links):
            self._receive(link)
        if self.uncommitted:
            self._commit(time.monotonic())
        for link in self.links:
            link.close()
        self.listener.close()
        self.care.mark(time.monotonic(), force=True)
        self.store.close()
