"""Rescue a damaged store: copy what can be read into a fresh file, keep the damaged one beside it.

The persister calls ``salvage`` once no other process has the store open (the forwarder closes
its connection first: SQLite deletes ``STORE-wal`` by name when the last connection to a file
closes, and that name would by then belong to the new store). The fresh store is built as
``STORE.salvage`` and renamed over ``STORE`` only when complete; the damaged file and its WAL are
kept as ``STORE.corrupt-YYYYmmddTHHMMSS`` for a post-mortem.
"""

import contextlib
import os
import time

from mqttbuffer.store import Store


def salvage(store, path, beat=lambda: None):
    """Copy the readable rows of ``store`` (open on ``path``, damaged) into a fresh store at path.

    Closes ``store``; returns (messages saved, messages the damaged file said it held or None,
    dead letters saved, where the damaged file now is)."""
    claimed = None
    with contextlib.suppress(Exception):
        claimed = store.totals()[0]
    fresh_path = path + ".salvage"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh_path + suffix)
    fresh = Store.open(fresh_path)
    try:
        # Chunk by chunk as they are read: a store of large messages never sits in memory whole.
        saved, saved_dead = fresh.restore(store.readable("messages", beat), store.readable("dead_letters", beat))
    finally:
        fresh.close()
    with contextlib.suppress(Exception):
        store.close()
    kept = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    os.rename(path, kept)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, kept + suffix)
    try:
        os.rename(fresh_path, path)
    except OSError:
        os.rename(kept, path)  # never leave the store's name empty: a new empty store would open there
        raise
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return saved, claimed, saved_dead, kept
