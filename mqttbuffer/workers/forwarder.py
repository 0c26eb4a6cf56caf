"""The forwarder: posts the oldest waiting messages to the API and deletes them on a 2xx.

A batch goes out when it holds ``buffer.batch_size`` messages or when its oldest message has
waited ``buffer.flush_interval`` seconds. Every request has a timeout (``api.timeout``); a failed
one leaves the messages in the store and is retried after a growing delay.
"""

import time

import urllib3

from mqttbuffer import __version__, ipc
from mqttbuffer.store import Store
from mqttbuffer.wire import encode_body
from mqttbuffer.workers.base import STEP_BUDGET, Worker

MAX_POLL_INTERVAL = 0.25
GAUGE_INTERVAL = 1.0
FIRST_RETRY_DELAY, MAX_RETRY_DELAY = 2.0, 32.0


def request_headers(api_key):
    headers = {"Content-Type": "application/json", "User-Agent": f"mqttbuffer/{__version__}"}
    if api_key:
        # Supabase wants the key both as a bearer token and as "apikey".
        headers["Authorization"] = f"Bearer {api_key}"
        headers["apikey"] = api_key
    return headers


class Forwarder(Worker):
    name = "forwarder"

    def setup(self):
        self.store = Store.open(self.cfg.buffer.persist_file)
        self.http = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False,
            timeout=urllib3.Timeout(connect=min(10.0, self.cfg.api.timeout), read=self.cfg.api.timeout),
        )
        self.headers = request_headers(self.cfg.api.key)
        self.poll_interval = min(MAX_POLL_INTERVAL, self.cfg.buffer.flush_interval / 4)
        self.oldest_seq = None
        self.oldest_since = 0.0
        self.next_attempt = 0.0
        self.retry_delay = FIRST_RETRY_DELAY
        self.gauges_at = 0.0

    def step(self, now):
        if now >= self.gauges_at:
            self._update_gauges()
            self.gauges_at = now + GAUGE_INTERVAL
        if now < self.next_attempt:
            self._idle(min(self.poll_interval, self.next_attempt - now))
            return
        rows = self.store.oldest(self.cfg.buffer.batch_size)
        if not rows:
            self.oldest_seq = None
            self._idle(self.poll_interval)
            return
        if rows[0][0] != self.oldest_seq:
            self.oldest_seq, self.oldest_since = rows[0][0], now
        waited = max(now - self.oldest_since, time.time() - rows[0][6])
        if len(rows) < self.cfg.buffer.batch_size and waited < self.cfg.buffer.flush_interval:
            self._idle(min(self.poll_interval, self.cfg.buffer.flush_interval - waited))
            return
        self._deliver(rows, now)

    def _update_gauges(self):
        count, size = self.store.totals()
        self.stats.set("pending", count)
        self.stats.set("pending_bytes", size)
        self.stats.set("oldest_received_at", self.store.oldest_received_at() or 0.0)

    def _idle(self, seconds):
        ipc.wait([self.wake_r], seconds)
        self.drain_wakeups()

    def _deliver(self, rows, now):
        body = encode_body([row[1:7] for row in rows])
        self.stats.beat(self.name, now + self.cfg.api.timeout + STEP_BUDGET)
        self.stats.add("requests")
        try:
            response = self.http.request("POST", self.cfg.api.url, body=body, headers=self.headers)
            status, problem = response.status, f"HTTP {response.status}"
        except urllib3.exceptions.HTTPError as exc:
            status, problem = None, f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            self.store.delete([row[0] for row in rows])
            self.stats.add("delivered", len(rows))
            self._update_gauges()
            self.log.info("Successfully sent %d messages", len(rows))
            self.retry_delay = FIRST_RETRY_DELAY
            return
        self.stats.add("requests_failed")
        self.log.warning("Sending %d messages failed (%s); retrying in %gs", len(rows), problem, self.retry_delay)
        self.next_attempt = now + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, MAX_RETRY_DELAY)

    def shutdown(self):
        self.http.clear()
        self.store.close()
