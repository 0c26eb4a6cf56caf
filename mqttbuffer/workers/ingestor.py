"""The ingestor: the only process that talks MQTT.

paho's network thread hands each message to ``_on_message``, which gives it a stable unique id
and queues it. The main thread sends queued messages to the persister in numbered batches and,
when the persister confirms a batch is committed, PUBACKs its messages in receive order.
A resent copy whose id waits for proof (see below) is queued undecided; it and everything queued
after it wait until its id is set, so PUBACKs keep the receive order (MQTT 4.6). While anything
waits in the queue the main thread polls it every ``SEND_INTERVAL``, so a decision needs no wake.

Sends are coalesced: the first message after a quiet spell wakes the main thread and goes out at
once; while messages keep coming, the main thread sends what has queued every ``SEND_INTERVAL``,
or as soon as ``SEND_ROWS`` wait, instead of being woken per message: the persister commits only
every ``buffer.commit_interval`` anyway, and at 1,000 msg/s the main thread's share of a core went
from about 4 % to under 2 % (bench/RESULTS.md, profile). Every
message stays in ``batches`` until confirmed: if the persister dies, all of them are sent again
to its successor (the store ignores ids it already holds).

Acks belong to a connection: each message records the connection generation it arrived on, and
a confirmation for an older generation sends no PUBACK (the broker redelivers those messages with
dup=1 on the new connection). ``_lock`` makes "check the generation, queue the PUBACK" atomic
with respect to paho starting a new connection.

Redeliveries keep their id when they provably are the same message (``mqtt.redelivery``): the
store or the API then drops the copy. When the copies waiting for proof and the messages queued
behind them fill the broker's window, the oldest copy stops waiting (the proof comes later).

Nothing-more-coming: the persister commits at once when told the broker's window is full, and
otherwise every ``buffer.commit_interval``. A full window is a ceiling: as many messages are
unacked as ever were on this connection, a count reached before and never passed, so the broker
sends nothing more until it gets PUBACKs. A publisher that is merely slow or unsteady pauses at
any count, so its messages still share commits (bench: flushing on every pause of 4 ms at 1,000
msg/s wrote 1,270 instead of 810 bytes per message). Half of a known window (MQTT 5
``receive_maximum``) waiting unconfirmed also flushes. A broker with a window of 10 (RabbitMQ's
prefetch) is then not held to 10 / commit_interval.

Bytes in flight are bounded: while the messages held unconfirmed carry more than
``mqtt.max_inflight_bytes``, or as many QoS 1 messages as the window we asked for (MQTT 5
``receive_maximum``) are unacked, paho stops reading the socket and the broker keeps the rest.
"""

import collections
import os
import threading
import time

from mqttbuffer import ipc
from mqttbuffer.mqtt.broker import BrokerClient
from mqttbuffer.mqtt.redelivery import Copy, Redeliveries
from mqttbuffer.store import message_bytes
from mqttbuffer.workers.base import Worker

MAX_BATCH_ROWS = 1000
MAX_BATCHES_IN_FLIGHT = 8
SEND_INTERVAL = 0.02
SEND_ROWS = 100
STOP_CONFIRM_TIMEOUT = 4.0


class Batch:
    __slots__ = ("number", "acks", "rows", "sent", "size")

    def __init__(self, number):
        self.number = number
        self.acks = []  # (generation, mid) of QoS 1 messages, in receive order
        self.rows = []  # store.Message fields, as plain tuples
        self.sent = False
        self.size = 0  # bytes of topics and payloads


class Ingestor(Worker):
    name = "ingestor"

    def __init__(self, cfg, links_dir, stats, client_id, broker_client=None):
        """``broker_client``: the class of the MQTT connection made in setup() (default BrokerClient;
        tests hand in a fake)."""
        super().__init__(cfg, links_dir, stats)
        self.client_id = client_id
        self.broker_client = broker_client

    def setup(self):
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._incoming = []  # (generation, mid, qos, row or redelivery.Copy, size) from paho's thread
        self._copies_queued = 0  # redelivery.Copy entries in _incoming
        self._redeliveries = Redeliveries(self._new_id, self.cfg.mqtt.receive_maximum,
                                          ordered=not any(t.startswith("$share/") for t in self.cfg.topics))
        self._held_bytes = 0
        self._window = None  # unacked messages the broker may send us on this connection, if known
        self._outstanding = 0  # QoS 1 messages of this connection not yet PUBACKed
        self._peak = 0  # the most that were ever outstanding on this connection
        self._peak_hits = 0  # how often _outstanding has reached _peak
        self._unflushed = False  # rows sent since the persister was last told to commit at once
        self._sent_rows = 0  # rows sent and not yet confirmed
        self._taking = True
        self._wake_on_message = True  # False while the main thread sends on its own timer
        self._send_again_at = 0.0
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = 0
        self.batches = collections.deque()
        self._batch_number = 0
        self.link = None
        self.reconnector = ipc.Reconnector(os.path.join(self.links_dir, ipc.PERSISTER_LINK))
        self.broker = (self.broker_client or BrokerClient)(
            self.cfg.mqtt, self.client_id, self.cfg.topics, self.stats,
            self._on_message, self._on_connected, self._on_disconnected,
        )
        self.broker.start()

    # --- paho's network thread -------------------------------------------------------------

    def _on_connected(self, session_present):
        with self._lock:
            self._window = self.broker.window()
            self._redeliveries.connected(session_present, self.broker.keeps_packet_ids)
            self._generation += 1
            self._connected = True
            self._outstanding = self._peak = self._peak_hits = 0
            self.broker.pause_reading(self._over_limits())

    def _on_disconnected(self, reason):
        with self._lock:
            self._redeliveries.give_up()
            was_connected = self._connected
            self._generation += 1
            self._connected = False
        if was_connected and self._taking:
            self.log.warning("Disconnected from MQTT broker: %s; reconnecting", reason)

    def _on_message(self, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        payload = bytes(msg.payload)
        size = message_bytes(topic, payload)
        self.stats.add("received")
        with self._lock:
            if not self._taking:
                # Stopping: not acked, so the broker redelivers it to the next session.
                return
            before = len(self._incoming)
            # A store.Message's fields but the id, as a plain tuple: making and pickling a
            # NamedTuple for every message measured 2.8 µs more each (0.28 % of a core at 1,000 msg/s).
            fields = (topic, payload, msg.qos, int(msg.retain), time.time())
            if msg.qos:
                message_id = self._redeliveries.received(msg.mid, topic, hash((topic, payload)), msg.dup, fields,
                                                         time.monotonic())
            else:
                message_id = self._new_id()
            if isinstance(message_id, str):
                self._incoming.append((self._generation, msg.mid, msg.qos, (message_id, *fields), size))
            else:
                self._incoming.append((self._generation, msg.mid, msg.qos, message_id, size))
                self._copies_queued += 1
            if (self._copies_queued and self._window is not None and len(self._incoming) >= self._window
                    and self._redeliveries.waiting()):
                self._redeliveries.release_oldest()  # the window is full behind it
            if msg.qos:
                self._outstanding += 1
                if self._outstanding > self._peak:
                    self._peak, self._peak_hits = self._outstanding, 1
                elif self._outstanding == self._peak:
                    self._peak_hits += 1
            self._held_bytes += size
            if self._over_limits():
                self.broker.pause_reading(True)
            queued = len(self._incoming)
            # At the ceiling nothing more comes until we ack: send and commit now.
            wake = (before < SEND_ROWS <= queued or (before == 0 < queued and self._wake_on_message)
                    or self._maybe_stalled())
        if wake:
            self.wake()

    def _over_limits(self):
        """Holding more than ``mqtt.max_inflight_bytes``, or as many unacked messages as the
        window we asked for (mosquitto 2.0 sends beyond it); call with ``_lock`` held."""
        return (self._held_bytes > self.cfg.mqtt.max_inflight_bytes
                or (self._window is not None and self._outstanding >= self._window))

    def _new_id(self):
        self._id_counter += 1
        return f"{self._id_prefix}-{self._id_counter:x}"

    # --- main thread -----------------------------------------------------------------------

    def step(self, now):
        if self.link is None:
            self.link = self.reconnector.try_connect(now)
            if self.link is not None:
                for batch in self.batches:
                    batch.sent = False
        waiting = [self.wake_r] + ([self.link] if self.link else [])
        timeout = 0.5 if self.link else min(0.5, self.reconnector.seconds_to_next_try(now) + 0.001)
        if not self._wake_on_message:
            timeout = min(timeout, max(0.0, self._send_again_at - now))
        for source in ipc.wait(waiting, timeout):
            if source is self.link:
                self._receive_confirmations()
            else:
                self.drain_wakeups()
        now = time.monotonic()
        self.broker.check(now)
        if self._redeliveries.waiting():
            with self._lock:
                self._redeliveries.expire(now)
        stalled = self._maybe_stalled()
        if (self._wake_on_message or now >= self._send_again_at or len(self._incoming) >= SEND_ROWS
                or (stalled and self._incoming)):
            taken = self._take_incoming()
            self._send()
            with self._lock:
                # After a send keep polling on the timer; once a poll finds nothing, go quiet and
                # let the next message wake us (no message can slip between: same lock).
                self._wake_on_message = not taken and not self._incoming
            self._send_again_at = now + SEND_INTERVAL
        if self._unflushed and self.link is not None and (stalled or self._half_window()):
            self._flush()

    def _maybe_stalled(self):
        """The broker is likely waiting for PUBACKs: as many are unacked as ever were on this
        connection, a count reached before and never passed."""
        return self._outstanding and self._outstanding >= self._peak and self._peak_hits >= 2

    def _half_window(self):
        window = self.broker.window()
        return window is not None and self._sent_rows * 2 >= window

    def _flush(self):
        """Tell the persister to commit what it has now: nothing more is coming soon."""
        try:
            self.link.send((None, [], True))
        except ipc.LINK_ERRORS:
            self._lose_link()
            return
        self._unflushed = False

    def _take_incoming(self):
        """Move queued messages into batches, up to the first copy whose id is not decided yet;
        return how many."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
            if self._copies_queued:
                incoming, self._incoming = self._decided_part(incoming)
        for generation, mid, qos, row, size in incoming:
            batch = self.batches[-1] if self.batches else None
            if batch is None or batch.sent or len(batch.rows) >= MAX_BATCH_ROWS:
                self._batch_number += 1
                batch = Batch(self._batch_number)
                self.batches.append(batch)
            batch.rows.append(row)
            batch.size += size
            if qos:
                batch.acks.append((generation, mid))
        return len(incoming)

    def _decided_part(self, incoming):
        """``incoming`` split before the first undecided copy, copies made rows; ``_lock`` held."""
        decided = []
        for generation, mid, qos, row, size in incoming:
            if type(row) is Copy:
                if row.id is None:
                    break
                self._copies_queued -= 1
                row = (row.id, *row.fields)
            decided.append((generation, mid, qos, row, size))
        return decided, incoming[len(decided):]

    def _send(self):
        if self.link is None:
            return
        in_flight = 0
        for batch in self.batches:
            if batch.sent:
                in_flight += 1
                continue
            if in_flight >= MAX_BATCHES_IN_FLIGHT:
                break
            try:
                self.link.send((batch.number, batch.rows, False))
            except ipc.LINK_ERRORS:
                self._lose_link()
                return
            batch.sent = True
            self._unflushed = True
            self._sent_rows += len(batch.rows)
            in_flight += 1

    def _receive_confirmations(self):
        try:
            while self.link.poll(0):
                confirmed = set(self.link.recv())
                done = []
                while self.batches and self.batches[0].number in confirmed:
                    done.append(self.batches.popleft())
                self._ack(done)
        except ipc.LINK_ERRORS:
            self._lose_link()

    def _ack(self, batches):
        mids = []
        with self._lock:
            for batch in batches:
                self._held_bytes -= batch.size
                self._sent_rows -= len(batch.rows)
                for generation, mid in batch.acks:
                    if generation == self._generation:
                        mids.append(mid)
                        self._redeliveries.acked(mid)
            self._outstanding -= len(mids)
            self.broker.ack_all(mids)
            if not self._over_limits():
                self.broker.pause_reading(False)

    def _lose_link(self):
        self.log.warning("Lost the link to the persister; %d unconfirmed messages will be sent again",
                         sum(len(b.rows) for b in self.batches))
        self.link.close()
        self.link = None
        self._sent_rows = 0

    def shutdown(self):
        """Stop taking messages, wait for the persister to confirm what we hold, ack, disconnect."""
        with self._lock:
            self._taking = False
            self._redeliveries.give_up()
        self._take_incoming()
        deadline = time.monotonic() + STOP_CONFIRM_TIMEOUT
        while self.batches and time.monotonic() < deadline:
            self.step(time.monotonic())
        if self.batches:
            self.log.warning("Stopping with %d messages unconfirmed; the broker will redeliver them",
                             sum(len(b.rows) for b in self.batches))
        self.broker.stop()
        if self.link is not None:
            self.link.close()
