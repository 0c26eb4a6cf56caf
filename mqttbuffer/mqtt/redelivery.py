"""Which id a QoS 1 message gets: a copy the broker sends again keeps the first copy's id, but only
when it is provably the same message; anything else gets a new id.

MQTT requires a broker to resend, on the next connection of the same session, every QoS 1
message it has sent and not seen PUBACKed, with its original packet id and the DUP flag. A packet
id is free for another message once its PUBACK reached the broker, so an id alone identifies a
message only while unacked:

* **Never acked.** A copy with the packet id of a message we received on an earlier connection
  and have not PUBACKed, and the same topic and payload, is that message: the broker cannot have
  reused the id.
* **Acked, PUBACK perhaps unread.** A broker that stops (mosquitto on SIGTERM stops reading, writes
  its store, then closes) never reads the PUBACKs we sent meanwhile and resends those messages
  too. Their ids were acked, so such a copy could also be another message that got the id after
  the PUBACK was read. That other message was sent after our PUBACK, and we never got it, so it
  was sent after everything we did get on that connection: TCP delivers a prefix of what the
  broker sent. A broker resends a topic's messages in the order it first sent them (MQTT 3.1.1
  and 5, section 4.6, for every Ordered Topic, the default; not for a shared subscription, where
  this proof is off). So when a never-acked message of the
  previous connection (an anchor) comes again *after* a candidate on the same topic, the
  candidate was first sent before a message we got, hence we got it too: it is the last message
  with that packet id we received there, and if topic and payload match, it keeps its id.
  Candidates wait, unacked, for such an anchor; one whose message we received after the anchor's
  cannot be that message and gets a new id.

A waiting copy ends with a new id (a duplicate the API can see, never a loss) when the broker
sends one without DUP (the resends are over), after ``PROOF_WAIT`` seconds, on a disconnect, at
shutdown, and, oldest first, when ``release_oldest`` is called because the broker's window is full
of copies held behind it (the anchors come last; mosquitto 2.0 keeps more than ReceiveMaximum in
flight, so this happens). Anchor and candidates must come from the connection just before this
one. A session the broker lost forgets everything: its packet ids prove nothing any more.

Only a broker that keeps packet ids makes any of this a proof. RabbitMQ numbers every connection's
messages from 1 and resends under new packet ids: there a copy under a packet id
we never acked may be another message with the same payload. So the caller says per connection
whether the broker promises to keep them (``connected(..., keeps_packet_ids)``): an MQTT 5 broker
with QoS 2 must, as QoS 2 cannot work without; MQTT 3.1.1 does not tell, and RabbitMQ's MQTT 5
announces Maximum QoS 1. Without that promise no copy keeps its id. A message under the packet
id of one we never acked, with other content, shows a broker that breaks the promise: from then
on no copy keeps its id (``renumbered``). Both connections, the lost one and the new, must have
the promise. The newest ``remembered`` PUBACKed messages of the previous connection are kept for
proofs.
"""

import collections
import logging
from typing import NamedTuple

log = logging.getLogger(__name__)

PROOF_WAIT = 1.0


class Record(NamedTuple):
    connection: int  # number of the connection the message arrived on
    order: int  # its place among everything this ingestor received
    id: str
    digest: int  # hash of topic and payload


class Copy:
    """A resent copy waiting for proof; ``id`` is None until decided."""

    __slots__ = ("id", "fields", "packet_id", "topic", "digest", "order", "record", "since")

    def __init__(self, fields, packet_id, topic, digest, order, record, since):
        self.id = None
        self.fields = fields
        self.packet_id, self.topic, self.digest, self.order = packet_id, topic, digest, order
        self.record, self.since = record, since


class Redeliveries:
    def __init__(self, new_id, remembered, ordered=True):
        """``new_id()``: a fresh id; ``remembered``: how many acked messages to keep for proofs
        (the MQTT 5 window: fewer copies than that can wait for proof); ``ordered``: the broker
        keeps the resend order (not for shared subscriptions, MQTT 5 section 4.6)."""
        self._new_id = new_id
        self._remembered = remembered if ordered else 0
        self._connection = 0
        self._previous = None  # the connection before this one, while proofs are possible
        self._keeps_ids = False  # this connection's broker promised to keep packet ids
        self._order = 0
        self._unacked = {}  # packet id -> Record of a QoS 1 message not PUBACKed
        self._acked = collections.OrderedDict()  # packet id -> Record, oldest PUBACK first
        # The previous connection's _acked: the acks of this one must not push out the records its
        # copies are about to be matched with.
        self._acked_before = {}
        self._waiting = collections.deque()  # Copy, as they came (decided ones are skipped)
        self._waiting_by_topic = {}  # topic -> deque of its waiting Copy, as they came
        self._waiting_count = 0
        self.renumbered = False  # a broker that promised to keep packet ids did not: no more proofs
        self._told_ids_not_kept = False

    def connected(self, session_present, keeps_packet_ids):
        """A new connection: waiting copies get new ids."""
        self.give_up()
        if not keeps_packet_ids and not self._told_ids_not_kept:
            self._told_ids_not_kept = True
            log.info("This broker does not promise to keep packet ids (MQTT 3.1.1, or MQTT 5 without QoS 2"
                     " as RabbitMQ's): a message it resends after a reconnect gets a new id, so the API may"
                     " receive it twice")
        proofs = session_present and keeps_packet_ids and self._keeps_ids and not self.renumbered
        self._keeps_ids = keeps_packet_ids
        self._previous = self._connection if proofs else None
        self._connection += 1
        self._acked_before, self._acked = (self._acked if proofs else {}), collections.OrderedDict()
        if not proofs:
            self._unacked.clear()

    def received(self, packet_id, topic, digest, dup, fields, now):
        """A QoS 1 message (``fields``: what the caller keeps with it): its id, or a Copy to hold
        until ``Copy.id`` is set."""
        self._order += 1
        order = self._order
        earlier = self._unacked.get(packet_id)
        if earlier is not None and earlier.connection != self._connection:
            if earlier.digest != digest or not dup:
                self._no_proofs()  # a packet id we never acked, on another message
            else:
                if earlier.connection == self._previous:
                    self._prove(topic, earlier)
                return self._take(packet_id, digest, order, earlier.id)
        if not dup:
            if self._acked_before or self._waiting_count:  # the resends are over
                self._acked_before = {}
                self.give_up()
            return self._take(packet_id, digest, order, self._new_id())
        acked = self._acked_before.get(packet_id)
        if acked is not None and acked.digest == digest:
            del self._acked_before[packet_id]
            copy = Copy(fields, packet_id, topic, digest, order, acked, now)
            self._waiting.append(copy)
            self._waiting_by_topic.setdefault(topic, collections.deque()).append(copy)
            self._waiting_count += 1
            return copy
        return self._take(packet_id, digest, order, self._new_id())

    def acked(self, packet_id):
        record = self._unacked.pop(packet_id, None)
        if record is not None and self._keeps_ids:
            self._acked[packet_id] = record
            if len(self._acked) > self._remembered:
                self._acked.popitem(last=False)

    def expire(self, now):
        """End every wait once the oldest got no proof within PROOF_WAIT."""
        oldest = self._oldest()
        if oldest is not None and now - oldest.since >= PROOF_WAIT:
            self.give_up()

    def release_oldest(self):
        """The oldest waiting copy gets a new id (the window is full behind it)."""
        oldest = self._oldest()
        if oldest is not None:
            self._waiting_by_topic[oldest.topic].popleft()
            self._decide(oldest, None)

    def waiting(self):
        return self._waiting_count

    def give_up(self):
        """End every wait (a disconnect, a shutdown): new ids."""
        for copy in self._waiting:
            if copy.id is None:
                self._decide(copy, None)
        self._waiting.clear()
        self._waiting_by_topic.clear()

    def _oldest(self):
        while self._waiting and self._waiting[0].id is not None:
            self._waiting.popleft()
        return self._waiting[0] if self._waiting else None

    def _no_proofs(self):
        """The broker gives packet ids anew: nothing on this connection keeps its id."""
        if not self.renumbered:
            log.warning("MQTT broker sent a message under the packet id of another one we never acked: it"
                        " does not keep packet ids, though MQTT 5 with QoS 2 requires it; from now on"
                        " messages it resends get new ids, so the API may receive them twice")
        self.renumbered = True
        self._previous = None
        self._unacked = {k: r for k, r in self._unacked.items() if r.connection == self._connection}
        self._acked_before = {}
        self.give_up()

    def _take(self, packet_id, digest, order, message_id):
        self._acked.pop(packet_id, None)
        self._acked_before.pop(packet_id, None)
        self._unacked[packet_id] = Record(self._connection, order, message_id, digest)
        return message_id

    def _decide(self, copy, message_id):
        copy.id = self._take(copy.packet_id, copy.digest, copy.order, message_id or self._new_id())
        self._waiting_count -= 1

    def _prove(self, topic, anchor):
        """``anchor``, a message of the previous connection on ``topic``, has come again: every copy
        on that topic waiting before it is the message it waits on if that came before it too."""
        for copy in self._waiting_by_topic.pop(topic, ()):
            self._decide(copy, copy.record.id if copy.record.order < anchor.order else None)
