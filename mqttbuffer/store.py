"""The SQLite spool: the only module that writes SQL.

One file in WAL mode with synchronous=FULL, so a committed transaction survives a power cut.
The persister inserts, the forwarder reads and deletes; both open their own connection after fork
and take the write lock with BEGIN IMMEDIATE, waiting up to ``BUSY_TIMEOUT_MS`` for the other.

A message row is (id, topic, payload, qos, retain, received_at): ``id`` is the stable unique id
the ingestor gave it, so a batch re-sent after a persister crash is inserted only once.
"""

import contextlib
import os
import sqlite3

BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals SELECT 1, count(*), coalesce(sum(length(payload)), 0) FROM messages;
CREATE TRIGGER IF NOT EXISTS totals_insert AFTER INSERT ON messages BEGIN
    UPDATE totals SET count = count + 1, bytes = bytes + length(NEW.payload) WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_delete AFTER DELETE ON messages BEGIN
    UPDATE totals SET count = count - 1, bytes = bytes - length(OLD.payload) WHERE one = 1;
END;
"""


class StoreError(Exception):
    """The store file cannot be used (not a database, unwritable directory, ...)."""


class Store:
    """A connection to the spool; create with ``Store.open(path)`` in the process that uses it."""

    def __init__(self, db):
        self._db = db

    @classmethod
    def open(cls, path):
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            with _transaction(db):
                for statement in _statements(_SCHEMA):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise StoreError(f"{path} is not an SQLite database; move it away or choose another file") from None
            raise StoreError(f"{path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror or exc}") from None
        return cls(db)

    def close(self):
        self._db.close()

    def insert(self, rows):
        """Commit rows of (id, topic, payload, qos, retain, received_at); return how many were new."""
        with _transaction(self._db):
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO messages (id, topic, payload, qos, retain, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def totals(self):
        """(messages waiting, their payload bytes), kept up to date by triggers."""
        return self._db.execute("SELECT count, bytes FROM totals").fetchone()

    def oldest_received_at(self):
        row = self._db.execute("SELECT received_at FROM messages ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def oldest(self, limit):
        """The oldest waiting messages as (seq, id, topic, payload, qos, retain, received_at, attempts)."""
        return self._db.execute(
            "SELECT seq, id, topic, payload, qos, retain, received_at, attempts"
            " FROM messages ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()

    def delete(self, seqs):
        """Remove delivered messages by seq; return how many were still there."""
        with _transaction(self._db):
            before = self._db.total_changes
            self._db.executemany("DELETE FROM messages WHERE seq = ?", ((s,) for s in seqs))
            return self._db.total_changes - before


def _statements(script):
    """Split a schema script into statements (sqlite3.execute takes one; executescript commits)."""
    statements, current = [], ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


@contextlib.contextmanager
def _transaction(db):
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
