"""Counters, gauges and heartbeats shared by all processes through one block of shared memory.

The block is created by the supervisor before it forks, so every worker writes into the same
memory with no lock, no pipe and no system call: each field has exactly one writing process, and
the supervisor only reads (for status, the stats log line, and hang detection). The values live
as long as the supervisor, so counters survive worker restarts.
"""

import multiprocessing
import time

from mqttbuffer.delivery.policy import ApiState, Circuit

COUNTERS = (
    "received",            # ingestor: messages taken from the broker
    "persisted",           # persister: messages committed to the store (new ids)
    "delivered",           # forwarder: messages the API answered 2xx for
    "rejected",            # forwarder: messages the API refused (4xx), now dead letters
    "retries_exhausted",   # forwarder: messages past max_retries, now dead letters
    "expired",             # persister: messages past message_retention_days, now dead letters
    "dropped",             # persister: messages removed undelivered by overflow: drop_oldest
    "crashed",             # forwarder: messages it died handling again and again, now dead letters
    "requests",            # forwarder: HTTP requests made
    "requests_failed",     # forwarder: requests that did not end in a 2xx
    "requests_2xx",        # forwarder: requests by the class of their answer...
    "requests_3xx",
    "requests_4xx",
    "requests_5xx",
    "requests_error",      # ...or with no answer (connection error, timeout)
)
GAUGES = (
    "pending",             # messages waiting in the store
    "pending_bytes",       # their payload bytes
    "oldest_received_at",  # wall-clock time of the oldest waiting message (0: none)
    "dead_letters",        # rows in the dead-letter table
    "circuit_state",       # index into CIRCUIT_STATES
    "next_attempt_at",     # wall-clock time of the forwarder's next request (0: none planned)
    "blocked",             # persister: 1 while it stops acking (overflow: block, full disk)
    "broker_connected",    # ingestor: 1 while connected to the broker, else 0
    "broker_since",        # ingestor: wall-clock time broker_connected last changed (0: never)
    "broker_protocol",     # ingestor: MQTT protocol in use: 5 or 4 (3.1.1); 0 before the first CONNACK
    "broker_session_present",  # ingestor: the last CONNACK's session-present flag
    "broker_subscribed",   # ingestor: 1 once the broker granted every topic on this connection, else 0
    "sessions_lost",       # ingestor: reconnects that found no session although we had one
    "api_state",           # forwarder: index into API_STATES
    "api_since",           # forwarder: wall-clock time api_state last changed (0: never)
    "api_status",          # forwarder: HTTP status of the last refused/failed answer (0: none)
    "last_commit_at",      # persister: wall-clock time of its last successful commit (0: none)
    # forwarder, kept across its restarts: the batch it is handling (count 0: none), so that its
    # successor knows it died on it, and the persister never drops a row that is being sent;
    # handling_last_seq is infinite while it reads a batch whose rows are not known yet
    "handling_first_seq", "handling_last_seq", "handling_count", "handling_bytes",
    "handling_deaths",     # forwarder: deaths in a row while handling a batch of one message
    "store_read_failed",   # forwarder: 1 + the store_generation it found damaged (0: none); the persister salvages
    "store_generation",    # persister: odd while it salvages a damaged store (others close it), even after
    "store_closed_generation",  # forwarder: the store_generation for which it closed the store
)
# Short texts (the last error in words), each with one writing process, read by the supervisor.
TEXTS = (
    "broker_error",        # ingestor: why the last connection attempt failed ("" when connected)
    "api_error",           # forwarder: why the API refuses or cannot be reached ("" when ok)
    "persister_problem",   # persister: why it is not committing (full disk, store error; "" when ok)
    "store_notice",        # persister: what happened to the store (salvaged, lost messages; "" when nothing)
    "forwarder_crash",     # forwarder: first line of the exception it is dying of ("" otherwise)
)
TEXT_BYTES = 240
API_STATES = tuple(ApiState)
CIRCUIT_STATES = tuple(Circuit)
WORKER_NAMES = ("persister", "ingestor", "forwarder")  # the one list of workers, in start order
HEARTBEATS = tuple(f"heartbeat_{name}" for name in WORKER_NAMES)
LAST_BEATS = tuple(f"last_beat_{name}" for name in WORKER_NAMES)
FIELDS = COUNTERS + GAUGES + HEARTBEATS + LAST_BEATS
_INDEX = {name: i for i, name in enumerate(FIELDS)}


class SharedStats:
    """Named float fields in shared memory; create before fork."""

    def __init__(self):
        ctx = multiprocessing.get_context("fork")
        self._values = ctx.RawArray("d", len(FIELDS))
        self._texts = {name: ctx.RawArray("c", TEXT_BYTES) for name in TEXTS}

    def add(self, name, amount=1):
        self._values[_INDEX[name]] += amount

    def set(self, name, value):
        self._values[_INDEX[name]] = value

    def get(self, name):
        return self._values[_INDEX[name]]

    def beat(self, worker, until):
        """Say the worker will beat again by monotonic time ``until`` (and that it beat now)."""
        self._values[_INDEX[f"heartbeat_{worker}"]] = until
        self._values[_INDEX[f"last_beat_{worker}"]] = time.monotonic()

    def last_beat(self, worker):
        """The monotonic time of the worker's last beat (or of its start)."""
        return self._values[_INDEX[f"last_beat_{worker}"]]

    def heartbeat(self, worker):
        return self._values[_INDEX[f"heartbeat_{worker}"]]

    def set_text(self, name, text):
        """Store a short text (cut to TEXT_BYTES); a reader may see it torn mid-write, which
        costs a garbled word in a status line, never a wrong number."""
        data = text.encode("utf-8", "replace")[:TEXT_BYTES - 1]
        self._texts[name].value = data

    def text(self, name):
        return self._texts[name].value.decode("utf-8", "replace")

    def snapshot(self, names):
        return {name: self._values[_INDEX[name]] for name in names}
