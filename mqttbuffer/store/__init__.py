"""The SQLite spool: the only module that writes SQL.

One file in WAL mode with synchronous=FULL, so a committed transaction survives a power cut.
The persister inserts (and enforces bounds and retention), the forwarder reads, deletes and
moves refused messages to dead letters; each opens its own connection after fork and takes the
write lock with BEGIN IMMEDIATE, waiting up to ``BUSY_TIMEOUT_MS`` for the other.

A message is a ``Message`` (``StoredMessage`` once it waits in the store): ``id`` is the stable
unique id the ingestor gave it, so a batch re-sent after a persister crash is inserted only once. Triggers
keep the number of waiting messages and their size in ``totals``, so bounds cost no scan. A
message's size is its payload and topic bytes plus ``ROW_OVERHEAD``, about what it takes on disk.
"""

import contextlib
import logging
import os
import sqlite3
import urllib.parse
from typing import NamedTuple

log = logging.getLogger("mqttbuffer.store")

BUSY_TIMEOUT_MS = 10_000
# Every commit rewrites whole pages (the table's last leaf, the id index, the totals row, the
# freelist): with 1 KiB pages instead of SQLite's 4 KiB, bytes written per message at 1,000 msg/s
# went from ~1,070 to ~820 (bench/RESULTS.md), burst and drain speed unchanged.
PAGE_SIZE = 1024
# Per connection; SQLite's default is 2 MiB. A large backlog would fill it in both workers.
CACHE_KIB = 1024
# The store's schema version, kept in SQLite's user_version; see _UPGRADES.
SCHEMA_VERSION = 2
ROW_OVERHEAD = 100
EXCERPT_CHARS = 500

# A message's bytes and its size as the triggers count them; message_bytes() and message_size()
# are the same in Python.
_BYTES = "(length(%(row)s.payload) + length(CAST(%(row)s.topic AS BLOB)))"
_SIZE = f"({_BYTES} + {ROW_OVERHEAD})"


def message_bytes(topic, payload):
    """A message's payload and UTF-8 topic bytes: what ``buffer.batch_bytes`` and
    ``mqtt.max_inflight_bytes`` count."""
    return len(payload) + len(topic.encode())


def message_size(topic, payload):
    """The bytes a message counts against ``buffer.max_bytes``: its bytes and ROW_OVERHEAD."""
    return message_bytes(topic, payload) + ROW_OVERHEAD

_COLUMNS = "id, topic, payload, qos, retain, received_at, attempts"

_COUNT_TOTALS = f"""
INSERT INTO totals SELECT 1, count(*), coalesce(sum({_SIZE % {"row": "messages"}}), 0) FROM messages
"""

_SCHEMA = f"""
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
CREATE TRIGGER IF NOT EXISTS totals_insert AFTER INSERT ON messages BEGIN
    UPDATE totals SET count = count + 1, bytes = bytes + {_SIZE % {"row": "NEW"}} WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_delete AFTER DELETE ON messages BEGIN
    UPDATE totals SET count = count - 1, bytes = bytes - {_SIZE % {"row": "OLD"}} WHERE one = 1;
END;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    excerpt TEXT,
    dead_at REAL NOT NULL
);
"""


# Statements that bring a store of version N (the key) to N + 1, run in the transaction that opens
# it, before _SCHEMA creates whatever is missing. 1 -> 2: a version 1 store may carry totals
# triggers that counted payload bytes only (from before a size included the topic and
# ROW_OVERHEAD), which CREATE TRIGGER IF NOT EXISTS would keep: they are recreated and the totals
# recounted.
_UPGRADES = {
    1: ("DROP TRIGGER IF EXISTS totals_insert", "DROP TRIGGER IF EXISTS totals_delete", "DELETE FROM totals"),
}
# SQLite's result codes for a damaged file: SQLITE_CORRUPT and SQLITE_NOTADB.
CORRUPTION_CODES = (11, 26)
_DL_COLUMNS = f"{_COLUMNS}, reason, status, excerpt, dead_at"
# Looking up every seq between the lowest and highest found costs ~10 us each: 10 s at most.
SALVAGE_LOOKUP_SPAN = 1_000_000
# What salvage holds in memory at once, far below a worker's memory limit whatever the messages' size.
SALVAGE_CHUNK = 1_000
SALVAGE_CHUNK_BYTES = 4 * 2**20


class Message(NamedTuple):
    """A message as the ingestor takes it from the broker and the persister commits it."""

    id: str             # stable and unique, sent with every attempt so the API can drop duplicates
    topic: str
    payload: bytes
    qos: int
    retain: int         # 0 or 1
    received_at: float  # wall-clock seconds


class StoredMessage(NamedTuple):
    """A message waiting in the store, as the forwarder reads it."""

    seq: int            # its place in the queue
    id: str
    topic: str
    payload: bytes
    qos: int
    retain: int
    received_at: float
    attempts: int       # failed attempts counted so far (500-type answers)

    @property
    def message(self):
        """Its fields in Message's order, as a plain tuple (a Message would cost 1 µs more per message)."""
        return self[1:7]


class StoreError(Exception):
    """The store file cannot be used (not a database, unwritable directory, ...)."""


class StoreDamaged(StoreError):
    """The store file is damaged: not the operator's to fix, the persister salvages it."""


def is_corruption(exc):
    """Whether an sqlite3 error says the file is damaged (not busy, full or unreachable)."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", None) in CORRUPTION_CODES or "malformed" in str(exc))


class Store:
    """A connection to the spool; create with ``Store.open(path)`` in the process that uses it."""

    def __init__(self, db):
        self._db = db

    @classmethod
    def open(cls, path):
        db = None
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            # Takes effect only when the file is created (an existing store keeps its page size).
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            with _transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{path} was written by a newer mqttbuffer (store schema {version}, this one"
                                     f" knows up to {SCHEMA_VERSION}); install that version again, or move the"
                                     " store away")
                for old in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
                    for statement in _UPGRADES[old]:
                        db.execute(statement)
                    log.info("Upgraded the store %s from schema %d to %d", path, old, old + 1)
                for statement in _statements(_SCHEMA):
                    db.execute(statement)
                # Only when the row is missing: counting reads every page of a large backlog.
                if db.execute("SELECT 1 FROM totals").fetchone() is None:
                    db.execute(_COUNT_TOTALS)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            _close(db)
            if "not a database" in str(exc):
                raise StoreError(f"{path} is not an SQLite database; move it away or choose another file") from None
            if is_corruption(exc):
                raise StoreDamaged(f"{path}: {exc}") from None
            raise StoreError(f"{path}: {exc}") from None
        except OSError as exc:
            _close(db)
            raise StoreError(f"{path}: {exc.strerror or exc}") from None
        return cls(db)

    @classmethod
    def damaged(cls, path):
        """A plain connection to a store ``open`` found damaged: enough for salvage to read what it can."""
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return cls(db)

    def close(self):
        self._db.close()

    @staticmethod
    def inspect(path):
        """A read-only look at an existing store, creating and changing nothing (for doctor):
        (quick_check's verdict, messages waiting, dead letters)."""
        try:
            db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                waiting = db.execute("SELECT count FROM totals").fetchone()
                dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None
        return verdict, waiting[0] if waiting else 0, dead

    # --- the queue ---------------------------------------------------------------------------

    def insert(self, rows, max_count=None, max_bytes=None, keep_upto=0, keep_count=0):
        """Commit Messages in one transaction.

        If the queue then holds more than max_count messages or max_bytes, the oldest are
        deleted in the same transaction; those with seq <= keep_upto (the batch the forwarder is
        sending: not lost, and counting them as dropped would lie) go last. keep_upto infinite
        means the forwarder is reading a batch not known yet: then the oldest keep_count rows go
        last. keep_upto may be a function, called once the write lock is held (the forwarder reads
        its batches under the same lock). Returns (new rows inserted, rows dropped)."""
        with _transaction(self._db):
            inserted = self._db.executemany(
                "INSERT OR IGNORE INTO messages (id, topic, payload, qos, retain, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            ).rowcount
            dropped = self._drop_oldest(max_count, max_bytes, keep_upto, keep_count) if inserted else 0
            return inserted, dropped

    def _drop_oldest(self, max_count, max_bytes, keep_upto, keep_count):
        count, size = self.totals()
        excess_count = count - max_count if max_count else 0
        excess_bytes = size - max_bytes if max_bytes else 0
        if excess_count <= 0 and excess_bytes <= 0:
            return 0
        if callable(keep_upto):
            keep_upto = keep_upto()
        if keep_upto == float("inf"):
            row = self._db.execute("SELECT seq FROM messages ORDER BY seq LIMIT 1 OFFSET ?",
                                   (max(0, keep_count - 1),)).fetchone()
            keep_upto = row[0] if row else 0
        victims = []
        for where in ("seq > ?", "seq <= ?"):
            for seq, row_size in self._db.execute(
                    f"SELECT seq, {_SIZE % {'row': 'messages'}} FROM messages WHERE {where} ORDER BY seq",
                    (keep_upto,)):
                if excess_count <= 0 and excess_bytes <= 0:
                    break
                victims.append((seq,))
                excess_count, excess_bytes = excess_count - 1, excess_bytes - row_size
        self._db.executemany("DELETE FROM messages WHERE seq = ?", victims)
        return len(victims)

    def totals(self):
        """(messages waiting, their size in bytes), kept up to date by triggers."""
        return self._db.execute("SELECT count, bytes FROM totals").fetchone()

    def head(self):
        """(seq, received_at) of the oldest waiting message, (None, None) when there is none.

        Cheap enough to poll often: one indexed lookup, no payload read."""
        return self._db.execute("SELECT seq, received_at FROM messages ORDER BY seq LIMIT 1").fetchone() \
            or (None, None)

    def oldest(self, limit, max_bytes=None, skip=frozenset()):
        """The oldest waiting messages, as StoredMessage.

        With max_bytes, no more than that many bytes of payload and topic, but at least one
        message: sizes are read first (SQLite knows a blob's length without reading it), so a
        backlog of large messages is never loaded whole. Messages whose seq is in ``skip`` are
        passed over (they count neither against limit nor against max_bytes)."""
        # Under the write lock, so no commit of the persister's is half seen: one that dropped rows
        # has finished, and one that has not yet begun sees what the forwarder is about to send.
        with _transaction(self._db):
            if max_bytes is None and not skip:
                return list(map(StoredMessage._make, self._db.execute(
                    f"SELECT seq, {_COLUMNS} FROM messages ORDER BY seq LIMIT ?", (limit,))))
            chosen, total = [], 0
            for seq, size in self._db.execute(
                    f"SELECT seq, {_BYTES % {'row': 'messages'}} FROM messages ORDER BY seq"):
                if seq in skip:
                    continue
                if len(chosen) >= limit or (chosen and max_bytes is not None and total + size > max_bytes):
                    break
                chosen.append(seq)
                total += size
            if not chosen:
                return []
            return [StoredMessage._make(row) for row in self._db.execute(
                f"SELECT seq, {_COLUMNS} FROM messages WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (chosen[0], chosen[-1])) if row[0] not in skip]

    def delete(self, seqs):
        """Remove delivered messages by seq; return how many were still there."""
        with _transaction(self._db):
            return self._db.executemany("DELETE FROM messages WHERE seq = ?", ((s,) for s in seqs)).rowcount

    def add_attempt(self, seq):
        """Count one more failed attempt for a message; return its attempts now."""
        with _transaction(self._db):
            self._db.execute("UPDATE messages SET attempts = attempts + 1 WHERE seq = ?", (seq,))
            row = self._db.execute("SELECT attempts FROM messages WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else 0

    # --- dead letters ------------------------------------------------------------------------

    def dead_letter(self, seqs, reason, now, status=None, excerpt=None):
        """Move messages from the queue to dead letters with a reason; return how many moved."""
        with _transaction(self._db):
            return self._move_to_dead_letters(seqs, reason, now, status, excerpt)

    def _move_to_dead_letters(self, seqs, reason, now, status=None, excerpt=None):
        excerpt = excerpt[:EXCERPT_CHARS] if excerpt else excerpt
        moved = 0
        for seq in seqs:
            cursor = self._db.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}, reason, status, excerpt, dead_at)"
                f" SELECT {_COLUMNS}, ?, ?, ?, ? FROM messages WHERE seq = ?",
                (reason, status, excerpt, now, seq),
            )
            moved += cursor.rowcount
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        return moved

    def expire(self, received_after, received_before, now, limit=None):
        """Move messages received between two wall-clock times to dead letters as 'expired'.

        Messages are appended in arrival order, so this walks the queue from the oldest and stops
        at the first one received at or after received_before, or after ``limit`` due ones: a
        backlog is not read whole (an index on received_at would cost writes for every message
        instead). Messages stamped before received_after (clock unset) are passed over and kept."""
        with _transaction(self._db):
            due = []
            for seq, received_at in self._db.execute("SELECT seq, received_at FROM messages ORDER BY seq"):
                if received_at >= received_before or (limit is not None and len(due) >= limit):
                    break
                if received_at >= received_after:
                    due.append(seq)
            return self._move_to_dead_letters(due, "expired", now)

    def trim_dead_letters(self, dead_before, max_rows):
        """Forget dead letters older than a wall-clock time and all but the newest max_rows."""
        with _transaction(self._db):
            old = self._db.execute("DELETE FROM dead_letters WHERE dead_at < ?", (dead_before,)).rowcount
            excess = self._db.execute(
                "DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM dead_letters ORDER BY seq DESC"
                " LIMIT -1 OFFSET ?)", (max_rows,)).rowcount
            return old + excess

    def dead_letter_count(self):
        return self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]

    def dead_letters(self, limit=100):
        """The newest dead letters as dicts (payload as bytes)."""
        cursor = self._db.execute(
            f"SELECT {_COLUMNS}, reason, status, excerpt, dead_at FROM dead_letters ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def replay_dead_letters(self, ids=None):
        """Put dead letters (all, or those with the given ids) back at the end of the queue."""
        where, args = _id_filter(ids)
        with _transaction(self._db):
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO messages (id, topic, payload, qos, retain, received_at)"
                f" SELECT id, topic, payload, qos, retain, received_at FROM dead_letters {where} ORDER BY seq",
                args,
            )
            self._db.execute(f"DELETE FROM dead_letters {where}", args)
            return cursor.rowcount

    def purge_dead_letters(self, ids=None):
        """Delete dead letters (all, or those with the given ids); return how many."""
        where, args = _id_filter(ids)
        with _transaction(self._db):
            return self._db.execute(f"DELETE FROM dead_letters {where}", args).rowcount


    # --- salvage ------------------------------------------------------------------------------

    def readable(self, table, beat=lambda: None):
        """Every row of ``messages`` or ``dead_letters`` that can still be read, oldest first, seq
        first, in lists of at most ``SALVAGE_CHUNK`` rows or about ``SALVAGE_CHUNK_BYTES`` (a store
        is never held whole in memory).

        A damaged page can end a scan early, with or without an error, so the seqs are gathered
        from scans in both directions and from the id index (a separate b-tree); then every seq
        between the lowest and the highest found is looked up on its own (a lookup goes straight
        down the tree and so reaches pages a scan cannot), and a row that cannot be read, or
        reads as garbage, is skipped."""
        # With its seq: the forwarder's suspects and the crash guard name messages by seq.
        columns = f"seq, {_COLUMNS if table == 'messages' else _DL_COLUMNS}"
        queries = [f"SELECT seq FROM {table} ORDER BY seq", f"SELECT seq FROM {table} ORDER BY seq DESC"]
        if table == "messages":
            queries.append("SELECT seq FROM messages INDEXED BY sqlite_autoindex_messages_1")
        low = high = None
        for seq in self._scanned(queries, beat):
            low, high = (seq, seq) if low is None else (min(low, seq), max(high, seq))
        if low is None:
            return
        seqs = range(low, high + 1) if high - low < SALVAGE_LOOKUP_SPAN else sorted(set(self._scanned(queries, beat)))
        chunk, size = [], 0
        for n, seq in enumerate(seqs):
            if n % SALVAGE_CHUNK == 0:
                beat()
            with contextlib.suppress(sqlite3.DatabaseError, UnicodeDecodeError):
                row = self._db.execute(f"SELECT {columns} FROM {table} WHERE seq = ?", (seq,)).fetchone()
                if row is not None and _plausible(row):
                    chunk.append(row)
                    size += len(row[3])
            if len(chunk) == SALVAGE_CHUNK or size >= SALVAGE_CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _scanned(self, queries, beat):
        """The seqs each query finds, up to where it fails."""
        for query in queries:
            beat()
            with contextlib.suppress(sqlite3.DatabaseError):
                for (seq,) in self._db.execute(query):
                    yield seq

    def restore(self, messages, dead_letters):
        """Fill a fresh store with the chunks of rows ``readable`` yields, seqs kept, a transaction
        per chunk; return (messages, dead letters) added."""
        added = [0, 0]
        for index, (chunks, sql) in enumerate((
                (messages, f"INSERT OR IGNORE INTO messages (seq, {_COLUMNS}) VALUES ({', '.join('?' * 8)})"),
                (dead_letters, f"INSERT INTO dead_letters (seq, {_DL_COLUMNS}) VALUES ({', '.join('?' * 12)})"))):
            for chunk in chunks:
                with _transaction(self._db):
                    added[index] += self._db.executemany(sql, chunk).rowcount
        return tuple(added)

    def max_seq(self):
        return self._db.execute("SELECT max(seq) FROM messages").fetchone()[0] or 0


def _plausible(row):
    """Whether a row read from a damaged file has the shape of a message (garbage can read as a row)."""
    seq, msg_id, topic, payload, qos, retain, received_at, attempts = row[:8]
    return (isinstance(seq, int) and isinstance(msg_id, str) and isinstance(topic, str) and isinstance(payload, bytes)
            and qos in (0, 1) and retain in (0, 1) and isinstance(attempts, int)
            and isinstance(received_at, (int, float)) and 0 <= received_at < 1e11)


def _close(db):
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()


def _id_filter(ids):
    if ids is None:
        return "", ()
    return f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)


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
