"""The SQLite store: ids, bounds, dead letters, retention, replay."""

import time

import pytest

from mqttbuffer.store import ROW_OVERHEAD, Store, StoreError


def rows(start, count, payload=b"x" * 10, received_at=None):
    stamp = received_at or time.time()
    return [(f"id{n}", "t/a", payload, 1, 0, stamp) for n in range(start, start + count)]


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "sub" / "buffer.db"))
    yield s
    s.close()


def test_a_resent_batch_is_stored_once(store):
    assert store.insert(rows(0, 10)) == (10, 0)
    assert store.insert(rows(5, 10)) == (5, 0)
    assert store.totals() == (15, 15 * (10 + 3 + ROW_OVERHEAD))
    assert [r[1] for r in store.oldest(3)] == ["id0", "id1", "id2"]


def test_drop_oldest_by_count_and_by_bytes(store):
    assert store.insert(rows(0, 10), max_count=4) == (10, 6)
    assert [r[1] for r in store.oldest(10)] == ["id6", "id7", "id8", "id9"]
    size = 10 + 3 + ROW_OVERHEAD
    assert store.insert(rows(10, 2), max_bytes=3 * size) == (2, 3)
    assert [r[1] for r in store.oldest(10)] == ["id9", "id10", "id11"]


def test_dead_letters_replay_and_purge(store):
    store.insert(rows(0, 3))
    first = store.oldest(1)[0][0]
    assert store.dead_letter([first], "rejected", time.time(), 400, "bad value " * 100) == 1
    assert store.totals()[0] == 2 and store.dead_letter_count() == 1
    letter = store.dead_letters()[0]
    assert (letter["id"], letter["reason"], letter["status"]) == ("id0", "rejected", 400)
    assert len(letter["excerpt"]) == 500
    assert store.replay_dead_letters(["id0"]) == 1
    assert store.dead_letter_count() == 0
    assert [r[1] for r in store.oldest(3)] == ["id1", "id2", "id0"], "replayed at the end"
    store.dead_letter([r[0] for r in store.oldest(3)], "retries_exhausted", time.time())
    assert store.purge_dead_letters(["id1"]) == 1 and store.purge_dead_letters() == 2


def test_expire_and_trim(store):
    now = time.time()
    store.insert(rows(0, 2, received_at=now - 100))
    store.insert(rows(2, 2, received_at=now))
    store.insert(rows(4, 1, received_at=1000.0))  # stamped before the clock was set
    assert store.expire(1_700_000_000.0, now - 50, now) == 2
    assert store.totals()[0] == 3
    assert {d["reason"] for d in store.dead_letters()} == {"expired"}
    assert store.trim_dead_letters(now - 10, max_rows=1) == 1
    assert store.dead_letter_count() == 1


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "mqtt-buffer.json"
    path.write_text('{"messages": []}\n' * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(str(path))
