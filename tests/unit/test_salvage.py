"""A store with a damaged page: what can be read is copied into a fresh store, the rest reported;
a store that lost what the last run left is noticed."""

import os
import sqlite3
import time
import tracemalloc

import pytest

from mqttbuffer.config.loader import load_config
from mqttbuffer.stats import SharedStats
from mqttbuffer.store import Store, StoreDamaged, is_corruption
from mqttbuffer.store.marker import loss, read_marker, write_marker
from mqttbuffer.store.salvage import salvage
from mqttbuffer.workers.persister import Persister
from tests.stores import damage, damage_table


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
    numbers = [int(r.id[2:]) for r in rows]
    assert numbers == sorted(numbers)  # order kept
    # Seqs kept: the forwarder's suspects and the crash guard name messages by seq.
    assert all(r.seq == int(r.id[2:]) + 1 for r in rows)
    assert {d["id"] for d in fresh.dead_letters()} == {"id0", "id1"}
    fresh.insert([("new", "t/a", b"1", 1, 0, time.time())])
    assert fresh.totals()[0] == saved + 1
    fresh.close()


def test_a_store_damaged_where_opening_reads_is_salvaged_by_the_persister(tmp_path):
    path = str(tmp_path / "buffer.db")
    fill(path)
    damage_table(path, "totals")
    with pytest.raises(StoreDamaged):
        Store.open(path)
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {{url: 'http://127.0.0.1:9/ingest'}}\nbuffer: {{persist_file: '{path}'}}\n")
    persister = Persister(load_config(str(config), environ={}), str(tmp_path), SharedStats())
    persister.wake_r, persister.wake_w = os.pipe()
    try:
        persister.setup()
        assert persister.care.damage is None and persister.store.totals()[0] == 2998
        persister.shutdown()
    finally:
        os.close(persister.wake_r)
        os.close(persister.wake_w)
    fresh = Store.open(path)
    assert len(fresh.oldest(5000)) == 2998 and len(fresh.dead_letters()) == 2
    fresh.close()


def test_salvage_holds_a_chunk_of_rows_in_memory_not_the_store(tmp_path):
    path = str(tmp_path / "buffer.db")
    store = Store.open(path)
    payload = b"x" * 16384
    store.insert([(f"id{n}", "t/a", payload + b"%d" % n, 1, 0, time.time()) for n in range(2000)])  # 32 MiB
    tracemalloc.start()
    try:
        saved = salvage(store, path)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"salvaged {saved} messages of 16 KiB, peak {peak / 2**20:.1f} MiB")
    assert saved == 2000 and peak < 12 * 2**20


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
