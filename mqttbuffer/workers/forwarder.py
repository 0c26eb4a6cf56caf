"""The forwarder: posts the oldest waiting messages to the API and acts on the answer.

A batch goes out when it holds ``buffer.batch_size`` messages or when its oldest message has
waited ``buffer.flush_interval`` seconds. Every request has a timeout (``api.timeout``). What an
answer means and what comes next (backoff, circuit breaker, splitting a batch to isolate a
message the API refuses, dead letters) is decided by ``delivery.DeliveryPolicy``; this module
only does the I/O, and ``answers.ApiReport`` tells the operator (log lines, shared stats).
"""

import contextlib
import logging
import random
import sqlite3
import time

import urllib3

from mqttbuffer import ipc
from mqttbuffer.delivery import policy as d
from mqttbuffer.delivery.answers import ApiReport, network_cause
from mqttbuffer.delivery.apiheaders import request_headers, skipping_duplicates
from mqttbuffer.delivery.crashguard import CrashGuard
from mqttbuffer.delivery.deadline import DeadlineExceeded, request_deadline
from mqttbuffer.delivery.wire import BodyShape
from mqttbuffer.stats import CIRCUIT_STATES
from mqttbuffer.store import Store, StoreDamaged, is_corruption
from mqttbuffer.workers.base import STEP_BUDGET, Worker

MAX_POLL_INTERVAL = 0.25
GAUGE_INTERVAL = 1.0
EXCERPT_BYTES = 500
BREAKER_LOG = {"open": "Circuit breaker opened", "half-open": "Circuit breaker half-open",
               "closed": "Circuit breaker closed"}


class Answer:
    """What came back for one request: a status (None: no answer), Retry-After, an excerpt."""

    __slots__ = ("status", "retry_after", "excerpt", "problem", "location")

    def __init__(self, status, retry_after=None, excerpt="", problem="", location=None):
        self.status, self.retry_after, self.excerpt, self.problem = status, retry_after, excerpt, problem
        self.location = location


class Forwarder(Worker):
    name = "forwarder"

    def __init__(self, cfg, links_dir, stats, http=None):
        """``http``: what sends the requests (urllib3's interface); by default a pool made in setup()."""
        super().__init__(cfg, links_dir, stats)
        self.http = http

    def setup(self):
        self.generation = self._wait_for_store()
        self.store = self._open_store()
        api = self.cfg.api
        if self.http is None:
            self.http = urllib3.PoolManager(
                num_pools=1, maxsize=1, retries=False,
                timeout=urllib3.Timeout(connect=min(10.0, api.timeout), read=api.timeout),
            )
        self.headers = request_headers(api.key, api.headers)
        self.skipping_headers = skipping_duplicates(self.headers)
        self.shape = BodyShape(api.fields, api.constants)
        buffer, breaker = self.cfg.buffer, self.cfg.circuit_breaker
        self.policy = d.DeliveryPolicy(buffer.batch_size, buffer.max_retries, breaker.max_failures,
                                       breaker.timeout, api.max_retry_after, random.Random(),
                                       api.max_refused_backoff, api.duplicate_is_delivered)
        self.report = ApiReport(self.stats, self.log, api.url)
        # A batch leaves at its oldest message's deadline (received_at + flush_interval), which the
        # poll computes; polling only has to notice the first message of an empty queue in time.
        self.poll_interval = min(MAX_POLL_INTERVAL, buffer.flush_interval / 2)
        self.oldest_seq = None
        self.oldest_since = 0.0
        self.gauges_at = 0.0
        self.duplicates = (0, None)  # (messages answered 409 in a row and counted delivered, the first's id)
        self.guard = CrashGuard(self.stats)
        self._after_a_death()

    def _after_a_death(self):
        if self.guard.death:
            first, count, size, why = self.guard.death
            self.log.warning("The previous forwarder died handling %d messages (%d bytes, from seq %d): %s;"
                             " at most %d messages, %d bytes per request for now",
                             count, size, first, why, *self.guard.limits(count, size))
        if self.guard.quarantine:
            seq, why = self.guard.quarantine
            moved = self.store.dead_letter([seq], "crashed", time.time(), None, why)
            self.stats.add("crashed", moved)
            self.log.warning("Message at seq %d moved to dead letters: crashed, the forwarder died on it"
                             " %d times: %s", seq, self.guard.quarantine_after, why)
            self.guard.quarantined()

    def step(self, now):
        if not self._follow_store():
            return
        try:
            self._step(now)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            # The persister salvages the store; crashing here would only restart into the same error.
            if self.stats.get("store_read_failed") != self.generation + 1:
                self.log.warning("Cannot read the store %s: %s; waiting for the persister to salvage it",
                                 self.cfg.buffer.persist_file, exc)
            self.stats.set("store_read_failed", self.generation + 1)
            self._idle(1.0)

    def _wait_for_store(self):
        """While the persister salvages the store (odd generation), stay away from the file."""
        while int(generation := self.stats.get("store_generation")) % 2 and not self.stopping:
            self.stats.set("store_closed_generation", generation)
            self.stats.beat(self.name, time.monotonic() + STEP_BUDGET)
            ipc.wait([self.wake_r], 0.2)
            self.drain_wakeups()
        return generation

    def _open_store(self):
        """Open the store; a damaged one is reported to the persister, which salvages it."""
        try:
            return Store.open(self.cfg.buffer.persist_file)
        except StoreDamaged as exc:
            self.log.warning("Cannot open the store: %s; waiting for the persister to salvage it", exc)
            self.stats.set("store_read_failed", self.generation + 1)
            return Store.damaged(self.cfg.buffer.persist_file)

    def _follow_store(self):
        """Close the store when the persister asks, reopen it when the salvaged copy is in place."""
        if self.stats.get("store_generation") == self.generation:
            return True
        with contextlib.suppress(sqlite3.Error):
            self.store.close()
        self.generation = self._wait_for_store()
        if self.stopping:
            return False
        self.store = self._open_store()
        self.oldest_seq = None
        # Salvage keeps every seq; should one name another message now, a 2xx must not dead-letter
        # it as a suspect, nor a later death quarantine it.
        self.policy.suspects.clear()
        self.guard.clear()
        self.log.info("Reopened the store %s", self.cfg.buffer.persist_file)
        return True

    def _step(self, now):
        if now >= self.gauges_at:
            self._update_gauges()
            self.gauges_at = now + GAUGE_INTERVAL
        if not self.policy.may_send(now):
            self._log_breaker()
            self._idle(min(self.poll_interval * 4, max(0.0, self.policy.next_attempt_at() - now)))
            return
        self._log_breaker()
        # Poll the cheap head of the queue; read the messages only when a batch is due.
        oldest_seq, received_at = self.store.head()
        if oldest_seq is None:
            self.oldest_seq = None
            self._log_duplicates()
            self._idle(self.poll_interval)
            return
        if oldest_seq != self.oldest_seq:
            self.oldest_seq, self.oldest_since = oldest_seq, now
        waited = max(now - self.oldest_since, time.time() - received_at)
        if waited < self.cfg.buffer.flush_interval and self.store.totals()[0] < self.policy.batch_limit():
            self._idle(min(self.poll_interval, self.cfg.buffer.flush_interval - waited))
            return
        self.guard.reading()
        limit, max_bytes = self.guard.limits(self.policy.batch_limit(), self.cfg.buffer.batch_bytes)
        suspects = self.policy.suspects
        # Suspects wait aside (skipped); their bytes do not count against the batch's.
        rows = self.store.oldest(limit, max_bytes, skip=suspects)
        if not rows:  # only suspects wait (they need others to compare with), or the persister just dropped them
            self.guard.clear()
            self._idle(self.poll_interval)
            return
        self.guard.begin(rows)
        try:
            self._deliver(rows, now)
        except sqlite3.Error:
            self.guard.clear()  # the store's fault, not the messages'
            raise
        except Exception as exc:
            self.guard.dying(exc)
            raise
        self.guard.done()

    def _deliver(self, rows, now):
        answer = self._post(rows, now)
        now = time.monotonic()
        kind = d.classify(answer.status)
        answer_class = (answer.status or 0) // 100
        self.stats.add(f"requests_{answer_class}xx" if 2 <= answer_class <= 5 else "requests_error")
        seqs = [row.seq for row in rows]
        attempts_after = rows[0].attempts + 1 if kind == d.FAILED and len(rows) == 1 else 0
        decision = self.policy.decide(kind, seqs, now, answer.retry_after, attempts_after,
                                      note=(rows[0].id, rows[0].topic, answer))
        if kind != d.DELIVERED:
            self.stats.add("requests_failed")
        action = decision.action
        if action != d.DELETE:
            self._log_duplicates()
        if action == d.DELETE:
            self.store.delete(seqs)
            self.stats.add("delivered", len(rows))
            if kind == d.DUPLICATE:
                # A resend after a crash meets a run of them, one message per request: one line for the run.
                self.duplicates = (self.duplicates[0] + 1, self.duplicates[1] or rows[0].id)
            else:
                self._log_duplicates()
                self.log.info("Successfully sent %d messages", len(rows))
        elif action == d.DEAD_LETTER:
            if decision.reason == "retries_exhausted":
                self.store.add_attempt(seqs[0])
            self._dead_letter([seqs[0]], decision.reason, (rows[0].id, rows[0].topic, answer))
        elif action == d.COUNT_ATTEMPT:
            attempts = self.store.add_attempt(seqs[0])
            self.log.warning("Message %s (topic %s) failed with %s (attempt %d of %s); retrying in %.1fs",
                             rows[0].id, rows[0].topic, answer.problem, attempts,
                             self.cfg.buffer.max_retries or "unlimited", decision.wait)
        elif action == d.SUSPECT:
            self.log.info("Message %s (topic %s) refused alone (%s); trying the next ones to tell whether"
                          " the API refuses only this one", rows[0].id, rows[0].topic, answer.problem)
        elif action == d.RETRY and kind != d.UNAVAILABLE:
            self.log.debug("API answered %s for %d messages; splitting the batch", answer.problem, len(rows))
        for reason, group in _by_reason(decision.released):
            self._dead_letter([seq for seq, _, _ in group], reason, group[0][2])
        self.report.update(self.policy.api_state, answer, decision.wait, self.store.totals()[0], now)
        self._log_breaker()

    def _log_duplicates(self):
        count, first = self.duplicates
        if count:
            self.log.info("%d messages the API already held (409, first %s), counted as delivered", count, first)
            self.duplicates = (0, None)

    def _dead_letter(self, seqs, reason, note):
        msg_id, topic, answer = note
        moved = self.store.dead_letter(seqs, reason, time.time(), answer.status, answer.excerpt)
        self.stats.add("retries_exhausted" if reason == "retries_exhausted" else "rejected", moved)
        if len(seqs) == 1:
            self.log.warning("Message %s (topic %s) moved to dead letters: %s, %s: %s", msg_id, topic,
                             reason, answer.problem, answer.excerpt[:200])
        else:
            self.log.warning("%d messages moved to dead letters: %s, %s (first %s, topic %s): %s", moved,
                             reason, answer.problem, msg_id, topic, answer.excerpt[:200])

    def _post(self, rows, now):
        body = self.shape.encode([row.message for row in rows])
        self.stats.beat(self.name, now + self.cfg.api.timeout + STEP_BUDGET)
        self.stats.add("requests")
        headers = self.skipping_headers if self.policy.skip_duplicates else self.headers
        try:
            with request_deadline(self.cfg.api.timeout):
                response = self.http.request("POST", self.cfg.api.url, body=body, headers=headers,
                                             preload_content=False, redirect=False)
                try:
                    excerpt = response.read(EXCERPT_BYTES).decode("utf-8", "replace")
                    response.drain_conn()
                finally:
                    response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            if isinstance(exc, DeadlineExceeded):
                self.http.clear()  # the connection is mid-answer: never reuse it
                return Answer(None, problem=str(exc))
            return Answer(None, problem=network_cause(exc))
        retry_after = d.parse_retry_after(response.headers.get("Retry-After"), time.time())
        return Answer(response.status, retry_after, excerpt, f"HTTP {response.status}",
                      response.headers.get("Location"))

    def _log_breaker(self):
        while self.policy.state_changes:
            state = self.policy.state_changes.pop(0)
            self.stats.set("circuit_state", CIRCUIT_STATES.index(state))
            self.log.log(logging.WARNING if state == "open" else logging.INFO, "%s", BREAKER_LOG[state])

    def _update_gauges(self):
        count, size = self.store.totals()
        self.stats.set("pending", count)
        self.stats.set("pending_bytes", size)
        self.stats.set("oldest_received_at", self.store.head()[1] or 0.0)
        self.stats.set("dead_letters", self.store.dead_letter_count())
        next_at = self.policy.next_attempt_at()
        now = time.monotonic()
        self.stats.set("next_attempt_at", time.time() + next_at - now if next_at > now else 0.0)

    def _idle(self, seconds):
        ipc.wait([self.wake_r], seconds)
        self.drain_wakeups()

    def shutdown(self):
        self._log_duplicates()
        self.http.clear()
        self.store.close()


def _by_reason(released):
    """Released suspects grouped by dead-letter reason, as (reason, [(seq, reason, note)...])."""
    groups = {}
    for item in released:
        groups.setdefault(item[1], []).append(item)
    return groups.items()
