"""One message size, in bytes, the same in Python (the persister's bounds) and in SQL (the totals)."""

import time

import pytest

from mqttbuffer.store import ROW_OVERHEAD, Store, message_size


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
