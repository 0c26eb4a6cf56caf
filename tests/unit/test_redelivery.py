"""Ids of redelivered QoS 1 messages: a copy keeps its first id only when it provably is the same
message (a broker may give an acked packet id to another message)."""

import itertools

import pytest

from mqttbuffer.mqtt.redelivery import PROOF_WAIT, Redeliveries


class Session:
    """Drives Redeliveries as the ingestor does; messages are (name, packet id, content[, topic])."""

    def __init__(self, remembered=1000, ordered=True):
        counter = itertools.count(1)
        self.decided = {}  # name -> id, or the Copy that waits for one
        self.redeliveries = Redeliveries(lambda: f"id{next(counter)}", remembered, ordered)
        self.now = 0.0
        self.connect(False)

    def connect(self, session_present=True, keeps_packet_ids=True):
        self.redeliveries.connected(session_present, keeps_packet_ids)

    def receive(self, name, packet_id, content, dup=False, topic="t/a"):
        self.now += 0.001
        self.decided[name] = self.redeliveries.received(packet_id, topic, hash((topic, content)), dup, name,
                                                        self.now)

    def id(self, name):
        """The id of ``name``, or None while it waits for proof."""
        decided = self.decided[name]
        return decided if isinstance(decided, str) else decided.id

    def ack(self, *packet_ids):
        for packet_id in packet_ids:
            self.redeliveries.acked(packet_id)

    def wait(self, seconds):
        self.now += seconds
        self.redeliveries.expire(self.now)


def assert_new_id(session, copy, *earlier):
    """``copy`` is decided, on an id none of ``earlier`` has."""
    assert session.id(copy) is not None, f"{copy} still waits"
    assert session.id(copy) not in {session.id(name) for name in earlier}


def first_connection(session, acked):
    """Messages a..e with packet ids 1..5 on the first connection; ``acked`` of them PUBACKed."""
    for packet_id, name in enumerate("abcde", 1):
        session.receive(name, packet_id, name)
    session.ack(*range(1, acked + 1))


def test_acked_copies_resent_before_a_never_acked_one_keep_their_ids():
    # mosquitto on SIGTERM: it stopped reading, so our PUBACKs of 1-3 went unread; 4 and 5 were
    # never acked. It resends all five in the order it first sent them.
    session = Session()
    first_connection(session, acked=3)
    session.connect()
    for packet_id, name in enumerate("abc", 1):
        session.receive(name + "'", packet_id, name, dup=True)
    assert session.id("a'") is None  # waits for proof: packet id 1 was free to reuse once acked
    session.receive("d'", 4, "d", dup=True)
    session.receive("e'", 5, "e", dup=True)
    assert [session.id(n + "'") for n in "abcde"] == [session.id(n) for n in "abcde"]


def test_acks_on_the_new_connection_do_not_push_out_what_its_copies_are_matched_with():
    session = Session(remembered=2)
    first_connection(session, acked=3)  # remembers the PUBACKs of b and c
    session.connect()
    session.receive("a'", 1, "a", dup=True)  # forgotten: a new id, committed, acked
    session.ack(1)
    for packet_id, name in [(2, "b'"), (3, "c'"), (4, "d'")]:
        session.receive(name, packet_id, name[0], dup=True)
    assert [session.id(n + "'") for n in "bcd"] == [session.id(n) for n in "bcd"]


def test_a_packet_id_used_again_on_the_new_connection_ends_its_old_record():
    # After its restart mosquitto marks even first sends DUP. 1 came back with other content, was
    # acked here and given to y, which looks like a: y is new, sent after e's copy was due.
    session = Session()
    first_connection(session, acked=1)
    session.connect()
    session.receive("o", 1, "other", dup=True)
    session.ack(1)
    session.receive("y", 1, "a", dup=True)
    for packet_id, name in enumerate("bcde", 2):
        session.receive(name + "'", packet_id, name, dup=True)
    assert_new_id(session, "y", "a")


def test_released_copies_get_new_ids_oldest_first_and_the_rest_keep_waiting():
    # The ingestor releases the oldest copy when the broker's window is full behind it.
    session = Session()
    first_connection(session, acked=4)
    session.connect()
    for packet_id, name in enumerate("abcd", 1):
        session.receive(name + "'", packet_id, name, dup=True)
    session.redeliveries.release_oldest()
    session.redeliveries.release_oldest()
    assert_new_id(session, "a'", "a")
    assert_new_id(session, "b'", "b")
    assert session.id("c'") is None
    session.receive("e'", 5, "e", dup=True)
    assert [session.id(n + "'") for n in "cde"] == [session.id(n) for n in "cde"]


def test_an_anchor_proves_copies_of_its_own_topic_only():
    # MQTT keeps the resend order per topic: e's copy on t/e says nothing about when a' was sent.
    session = Session()
    session.receive("a", 1, "a")
    session.receive("e", 2, "e", topic="t/e")
    session.ack(1)
    session.connect()
    session.receive("a'", 1, "a", dup=True)
    session.receive("e'", 2, "e", dup=True, topic="t/e")
    assert session.id("e'") == session.id("e") and session.id("a'") is None
    session.wait(PROOF_WAIT * 1.1)
    assert_new_id(session, "a'", "a")


@pytest.mark.parametrize("promise", ["none now", "none before"])
def test_without_the_promise_to_keep_packet_ids_no_copy_keeps_its_id(promise):
    # RabbitMQ numbers every connection's messages from 1 and resends under new packet ids. a-c
    # came as 1-3, all "ON", and a was acked and read; b, c and x (sent, lost on the way) come
    # again as 1-3. Matched by packet id, b' would look like a, c' (never acked) like b, proving
    # b', and x like c: x, a message we never had, would get c's id and the API would drop it.
    session = Session()
    if promise == "none before":
        session.connect(keeps_packet_ids=False)  # e.g. a 3.1.1 connection, then MQTT 5
    for packet_id, name in enumerate("abc", 1):
        session.receive(name, packet_id, "ON")
    session.ack(1)
    session.connect(keeps_packet_ids=promise != "none now")
    for packet_id, name in enumerate(["b'", "c'", "x"], 1):
        session.receive(name, packet_id, "ON", dup=True)
    session.wait(PROOF_WAIT * 1.1)
    assert len({session.id(name) for name in ["a", "b", "c", "b'", "c'", "x"]} - {None}) == 6


def test_a_shared_subscription_proves_no_acked_copy():
    # MQTT 5 does not order a shared subscription's messages: only never-acked copies keep ids.
    session = Session(ordered=False)
    first_connection(session, acked=3)
    session.connect()
    for packet_id, name in enumerate("abcde", 1):
        session.receive(name + "'", packet_id, name, dup=True)
    for name in "abc":
        assert_new_id(session, name + "'", name)
    assert [session.id(n + "'") for n in "de"] == [session.id(n) for n in "de"]


def test_a_message_under_a_packet_id_never_acked_shows_a_broker_that_breaks_the_promise():
    # w comes under c's packet id, which we never acked, with other content: a' waiting for proof
    # cannot trust c's copy, nor anything after it.
    session = Session()
    session.receive("a", 1, "ON")
    session.receive("c", 3, "Y")
    session.ack(1)
    session.connect()
    session.receive("a'", 1, "ON", dup=True)
    session.receive("w", 3, "W", dup=True)
    session.receive("c'", 2, "Y", dup=True)
    assert session.redeliveries.renumbered
    assert len({session.id(name) for name in ["a", "c", "a'", "w", "c'"]}) == 5
    session.ack(1, 3, 2)
    session.connect()  # the same broker: its promise is worth nothing any more
    session.receive("w'", 3, "W", dup=True)
    assert_new_id(session, "w'", "w")


@pytest.mark.parametrize("end", ["first copy", "time", "disconnect"])
def test_an_acked_copy_without_proof_gets_a_new_id(end):
    session = Session()
    first_connection(session, acked=5)
    session.connect()
    session.receive("a'", 1, "a", dup=True)
    if end == "first copy":
        session.receive("f", 6, "f")
    elif end == "time":
        session.wait(PROOF_WAIT * 0.9)
        assert session.id("a'") is None
        session.wait(PROOF_WAIT * 0.2)
    else:
        session.redeliveries.give_up()
    assert_new_id(session, "a'", "a")


def test_a_reused_packet_id_sent_after_the_proof_gets_a_new_id():
    # The broker read our PUBACK of a (packet id 1) and gave 1 to x, same topic and payload, which
    # the connection lost. It resends e (never acked), then x: x came after e, so we never had it.
    session = Session()
    first_connection(session, acked=1)
    session.connect()
    session.receive("e'", 5, "e", dup=True)
    session.receive("x", 1, "a", dup=True)
    session.wait(PROOF_WAIT * 1.1)
    assert session.id("e'") == session.id("e")
    assert_new_id(session, "x", "a")


def test_a_copy_of_a_message_received_after_the_proof_gets_a_new_id():
    # We got e (never acked) before a2 (acked); a copy with a2's packet id arriving before e's copy
    # was first sent before e, so it is not a2 but another message on the same packet id.
    session = Session()
    session.receive("e", 5, "e")
    session.receive("a2", 1, "a")
    session.ack(1)
    session.connect()
    session.receive("x", 1, "a", dup=True)
    session.receive("e'", 5, "e", dup=True)
    assert session.id("e'") == session.id("e")
    assert_new_id(session, "x", "a2")


def test_proof_comes_only_from_the_connection_just_lost():
    # d was never acked on the first connection and not resent on the second; its copy on the third
    # proves nothing about the second connection's acked messages.
    session = Session()
    first_connection(session, acked=3)
    session.connect()
    session.receive("f", 6, "f")
    session.receive("g", 7, "g")
    session.ack(6, 7)
    session.connect()
    session.receive("g'", 7, "g", dup=True)
    session.receive("d'", 4, "d", dup=True)
    session.wait(PROOF_WAIT * 1.1)
    assert session.id("d'") == session.id("d")  # never acked: the same message
    assert_new_id(session, "g'", "g")


@pytest.mark.parametrize("change", ["content", "not dup", "session lost", "forgotten"])
def test_anything_else_gets_a_new_id(change):
    session = Session(remembered=2)
    first_connection(session, acked=3)  # remembers the PUBACKs of 2 and 3 only
    session.connect(session_present=change != "session lost")
    packet_id, content = (1, "a") if change == "forgotten" else (2, "b")
    if change == "content":
        content = "other"
    session.receive("copy", packet_id, content, dup=change != "not dup")
    session.receive("d'", 4, "d", dup=True)
    session.wait(PROOF_WAIT * 1.1)
    assert_new_id(session, "copy", "a", "b")
