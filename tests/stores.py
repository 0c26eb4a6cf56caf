"""Stores in the states tests need: written by schema version 1 (upgrades), damaged as a failing
SD card leaves them (salvage)."""

import os
import random
import sqlite3
import time

# Schema version 1 as an early release wrote it: totals triggers that counted payload bytes only.
PREVIOUS_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,
    payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), count INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO totals VALUES (1, 0, 0);
CREATE TRIGGER totals_insert AFTER INSERT ON messages BEGIN
    UPDATE totals SET count = count + 1, bytes = bytes + length(NEW.payload) WHERE one = 1;
END;
CREATE TRIGGER totals_delete AFTER DELETE ON messages BEGIN
    UPDATE totals SET count = count - 1, bytes = bytes - length(OLD.payload) WHERE one = 1;
END;
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, received_at REAL NOT NULL,
    attempts INTEGER NOT NULL, reason TEXT NOT NULL, status INTEGER, excerpt TEXT, dead_at REAL NOT NULL);
PRAGMA user_version = 1;
"""


def previous_store(path, messages=3):
    """Write a schema version 1 store at ``path`` holding ``messages`` waiting messages {"n": i}."""
    db = sqlite3.connect(path)
    db.executescript(PREVIOUS_SCHEMA)
    db.executemany("INSERT INTO messages (id, topic, payload, qos, retain, received_at) VALUES (?, ?, ?, 1, 0, ?)",
                   [(f"old{n}", "tele/é", b'{"n": %d}' % n, time.time()) for n in range(messages)])
    db.commit()
    db.close()


def damage(path, size=16 * 1024, rng_state=5):
    """Garbage over ``size`` bytes in the middle of the file, as a failing SD card leaves it."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(random.Random(rng_state).randbytes(size))


def damage_table(path, table):
    """Garbage over the root page of ``table`` (for totals, its only page), where Store.open reads."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(random.Random(7).randbytes(page_size))
