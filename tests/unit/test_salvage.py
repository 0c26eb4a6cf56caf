"""A store with a damaged page: what can be read is copied into a fresh store, the rest reported;
a store that lost what the last run left is noticed."""

import os
import sqlite3
import time

import pytest

from mqttbuffer.marker import loss, read_marker, write_marker
from mqttbuffer.salvage import salvage
from mqttbuffer.store import Store, is_corruption
from tests.stores import damage


def fill(path, count=3000):
    store = Store.open(path)
    stamp = time.time()
    store.insert([(f"id{n}", "t/a", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 150), 1, 0, stamp) for n in range(count)])
    store.dead_letter([1, 2], "rejected", stamp, 400, "no")
    store.close()  # checkpoints: everything is in the main file


def test_a_damaged_page_is_salvaged_row_by_row(tmp_path):
    path = str(tmp_path / "buffer.db")
    fill(path)
    damage(path)
    store = Store.open(path)
    with pytest.raises(sqlite3.DatabaseError) as info:
        store.oldest(3000)
    assert is_corruption(info.value)
    saved, claimed, dead, kept = salvage(store, path)
    print(f"salvaged {saved} of {claimed} messages, {dead} dead letters")
    assert claimed == 2998 and 2500 < saved < 2998 and dead == 2
    assert os.path.exists(kept) and kept.startswith(path + ".corrupt-")
    fresh = Store.open(path)
    rows = fresh.oldest(5000)
    assert len(rows) == saved == fresh.totals()[0]
    numbers = [int(r[1][2:]) for r in rows]
    assert numbers == sorted(numbers)  # order kept
    assert {d["id"] for d in fresh.dead_letters()} == {"id0", "id1"}
    fresh.insert([("new", "t/a", b"1", 1, 0, time.time())])
    assert fresh.totals()[0] == saved + 1
    fresh.close()


@pytest.mark.parametrize("pending, max_seq, lost", [
    (0, 0, "holds no messages"),
    (40, 900, "lost its newest messages"),
    (10, 1000, None),
    (5, 1500, None),
])
def test_a_store_that_lost_what_the_last_run_left_is_reported(tmp_path, pending, max_seq, lost):
    path = str(tmp_path / "buffer.db")
    write_marker(path, 50, 1000, time.time())
    words = loss(read_marker(path), pending, max_seq)
    assert (words is None) if lost is None else (lost in words)


def test_an_empty_last_run_reports_nothing(tmp_path):
    path = str(tmp_path / "buffer.db")
    assert read_marker(path) is None and loss(None, 0, 0) is None
    write_marker(path, 0, 0, time.time())
    assert loss(read_marker(path), 0, 0) is None
