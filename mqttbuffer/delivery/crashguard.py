"""The forwarder's memory of the batch it was handling, kept in shared stats across its deaths.

A forwarder that dies while handling a batch (an exception its code does not survive, a memory
limit, a hang killed by the heartbeat check) leaves the batch's first seq, count and bytes
behind. Its successor then halves both for every request it makes, so no batch is sent again
and again in the same shape: each death splits the suspect batch, down to one message. A single
message the forwarder dies on ``QUARANTINE_AFTER`` times in a row becomes a dead letter
``crashed``, with the first line of the exception, and delivery goes on with the next one.
"""

from mqttbuffer.store import message_bytes

QUARANTINE_AFTER = 2
INFINITY = float("inf")


class CrashGuard:
    quarantine_after = QUARANTINE_AFTER

    def __init__(self, stats):
        self.stats = stats
        self.max_count = self.max_bytes = None  # limits while recovering from a death, else None
        self.quarantine = None  # (seq, why): a message to move to dead letters before anything else
        self.death = None  # (first seq, count, bytes, why) of the batch the predecessor died on
        count = int(stats.get("handling_count"))
        if count:
            first, size = int(stats.get("handling_first_seq")), int(stats.get("handling_bytes"))
            why = stats.text("forwarder_crash") or "killed while handling it (no exception)"
            self.death = (first, count, size, why)
            deaths = int(stats.get("handling_deaths")) + 1 if count == 1 else 0
            stats.set("handling_deaths", deaths)
            if deaths >= QUARANTINE_AFTER:
                self.quarantine = (first, why)
            self.max_count, self.max_bytes = max(1, count // 2), max(1, size // 2)
        self.clear()

    def limits(self, count, size):
        """The batch limits to use: the configured ones, or less while recovering from a death."""
        if self.max_count is None:
            return count, size
        return min(count, self.max_count), min(size, self.max_bytes)

    def reading(self):
        """A batch is about to be read: until it is known, the persister drops nothing."""
        self.stats.set("handling_last_seq", INFINITY)

    def begin(self, rows):
        """StoredMessages are being handled now."""
        self.stats.set("handling_first_seq", rows[0].seq)
        self.stats.set("handling_last_seq", rows[-1].seq)
        self.stats.set("handling_bytes", sum(message_bytes(r.topic, r.payload) for r in rows))
        self.stats.set("handling_count", len(rows))

    def done(self):
        """The batch was handled, whatever the API said: the limits grow back, doubling."""
        self.clear()
        self.stats.set("handling_deaths", 0)
        if self.max_count is not None:
            self.max_count, self.max_bytes = self.max_count * 2, self.max_bytes * 2

    def quarantined(self):
        self.quarantine = None
        self.stats.set("handling_deaths", 0)

    def dying(self, exc):
        """The forwarder is about to die of exc: leave its first line for the successor."""
        lines = str(exc).strip().splitlines()
        self.stats.set_text("forwarder_crash", f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200])

    def clear(self):
        self.stats.set("handling_count", 0)
        self.stats.set("handling_last_seq", 0)
        self.stats.set_text("forwarder_crash", "")
