"""The persister: the only process that inserts into the store.

It listens for the ingestor, commits every batch that arrived while the previous commit ran in
one transaction (group commit: one fsync for all of them), and only then confirms those batches,
so the ingestor acks nothing that is not on disk. A batch it cannot commit (disk full, I/O error)
stays unconfirmed and is retried; the ingestor keeps the messages meanwhile.
"""

import os
import sqlite3

from mqttbuffer import ipc
from mqttbuffer.store import Store
from mqttbuffer.workers.base import Worker

LINK_NAME = "persister.sock"
RETRY_COMMIT_AFTER = 1.0


class Persister(Worker):
    name = "persister"

    def setup(self):
        self.store = Store.open(self.cfg.buffer.persist_file)
        self.log.info("Loaded %d messages from disk", self.store.totals()[0])
        self.listener = ipc.Listener(os.path.join(self.links_dir, LINK_NAME))
        self.links = []
        # (link, batch number, rows) received and not yet committed, in arrival order
        self.uncommitted = []
        self.retry_at = 0.0
        self.commit_failing = False

    def step(self, now):
        timeout = 0.5 if not self.uncommitted else max(0.0, self.retry_at - now)
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
        if self.uncommitted and now >= self.retry_at:
            self._commit(now)

    def _receive(self, link):
        """Take every batch waiting on link, so one commit covers all of them."""
        try:
            while link.poll(0):
                batch_no, rows = link.recv()
                self.uncommitted.append((link, batch_no, rows))
        except ipc.LINK_ERRORS:
            # The ingestor went away; it re-sends whatever we never confirmed to it.
            self._drop(link)

    def _drop(self, link):
        self.links.remove(link)
        link.close()
        self.uncommitted = [u for u in self.uncommitted if u[0] is not link]

    def _commit(self, now):
        rows = [row for _, _, batch in self.uncommitted for row in batch]
        try:
            inserted = self.store.insert(rows)
        except sqlite3.Error as exc:
            if not self.commit_failing:
                self.log.error("Cannot commit %d messages to %s: %s; retrying, nothing is acked meanwhile",
                               len(rows), self.cfg.buffer.persist_file, exc)
            self.commit_failing = True
            self.retry_at = now + RETRY_COMMIT_AFTER
            return
        self.stats.add("persisted", inserted)
        if self.commit_failing:
            self.log.info("Commits to %s work again", self.cfg.buffer.persist_file)
            self.commit_failing = False
        confirmed = {}
        for link, batch_no, _ in self.uncommitted:
            confirmed.setdefault(link, []).append(batch_no)
        self.uncommitted = []
        for link, numbers in confirmed.items():
            try:
                link.send(numbers)
            except ipc.LINK_ERRORS:
                self._drop(link)

    def shutdown(self):
        # Commit and confirm what already arrived, so the ingestor can ack it before it disconnects.
        for link in list(self.links):
            self._receive(link)
        if self.uncommitted:
            self._commit(0.0)
        for link in self.links:
            link.close()
        self.listener.close()
        self.store.close()
