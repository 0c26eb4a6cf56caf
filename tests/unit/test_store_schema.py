"""The store's schema version at open: an older store upgraded, a newer one refused; WAL and FULL."""

import sqlite3
import time

import pytest

from mqttbuffer import store as store_module
from mqttbuffer.store import ROW_OVERHEAD, SCHEMA_VERSION, Store, StoreError
from tests.stores import previous_store


def user_version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_store_written_by_the_previous_schema_is_upgraded_at_open(tmp_path):
    path = str(tmp_path / "buffer.db")
    previous_store(path)
    store = Store.open(path)
    try:
        assert [row[1] for row in store.oldest(10)] == ["old0", "old1", "old2"]
        topic_bytes = len("tele/é".encode())
        assert store.totals() == (3, 3 * (len(b'{"n": 0}') + topic_bytes + ROW_OVERHEAD))
        store.insert([("new0", "tele/é", b'{"n": 3}', 1, 0, time.time())])
        store.delete([store.oldest(1)[0][0]])
        assert store.totals() == (3, 3 * (len(b'{"n": 0}') + topic_bytes + ROW_OVERHEAD))
    finally:
        store.close()
    assert user_version(path) == SCHEMA_VERSION == 2


def test_an_upgrade_is_one_transaction(tmp_path, monkeypatch):
    path = str(tmp_path / "buffer.db")
    previous_store(path)
    monkeypatch.setitem(store_module._UPGRADES, 1,
                        ("DROP TRIGGER totals_insert", "SELECT no_such_function()"))
    with pytest.raises(StoreError):
        Store.open(path)
    assert user_version(path) == 1
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'totals_insert'").fetchone()[0] == 1
    finally:
        db.close()


def test_a_store_from_a_newer_mqttbuffer_is_refused_with_a_clear_message(tmp_path):
    path = str(tmp_path / "buffer.db")
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError) as info:
        Store.open(path)
    assert str(info.value) == (f"{path} was written by a newer mqttbuffer (store schema {SCHEMA_VERSION + 1}, this"
                               f" one knows up to {SCHEMA_VERSION}); install that version again, or move the"
                               " store away")
    assert user_version(path) == SCHEMA_VERSION + 1


def test_a_new_store_gets_the_current_schema_version(tmp_path):
    path = str(tmp_path / "buffer.db")
    Store.open(path).close()
    assert user_version(path) == SCHEMA_VERSION


def test_an_opened_store_uses_journal_mode_wal_and_synchronous_full(tmp_path):
    store = Store.open(str(tmp_path / "buffer.db"))
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()
