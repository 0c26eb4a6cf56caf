"""The message vocabulary of store.py: one size in bytes, the same in Python (the persister's
bounds) and in SQL (the totals); messages read back with their fields named."""

import time

import pytest

from mqttbuffer.store import ROW_OVERHEAD, Message, Store, StoredMessage, message_size


@pytest.mark.parametrize("topic, payload", [("tele/plug1/SENSOR", b'{"Power": 12}'), ("tele/é/ü", "ß€".encode()),
                                            ("t", b"")], ids=["ascii", "non-ascii", "empty"])
def test_message_size_counts_bytes_as_the_store_does(tmp_path, topic, payload):
    assert message_size(topic, payload) == len(payload) + len(topic.encode("utf-8")) + ROW_OVERHEAD
    store = Store.open(str(tmp_path / "buffer.db"))
    try:
        store.insert([("id0", topic, payload, 1, 0, time.time())])
        assert store.totals() == (1, message_size(topic, payload))
    finally:
        store.close()


def test_the_oldest_messages_come_back_as_stored_messages(tmp_path):
    store = Store.open(str(tmp_path / "buffer.db"))
    try:
        sent = Message("id0", "tele/plug", b'{"n": 1}', 1, 0, 1.7e9)
        store.insert([sent])
        (row,) = store.oldest(10)
        assert isinstance(row, StoredMessage) and row.seq >= 1 and row.attempts == 0
        assert row.message == tuple(sent) and (row.id, row.topic) == ("id0", "tele/plug")
    finally:
        store.close()
