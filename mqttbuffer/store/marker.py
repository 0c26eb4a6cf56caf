"""What the last run left in the store, kept in a small file beside it (``STORE.state``).

SQLite cannot tell that its file was truncated, replaced, or lost its ``-wal`` (with the WAL go
the newest commits): the store just opens with fewer messages. So the persister writes, every
few seconds and at once when the queue empties, how many messages wait and the highest seq, and
compares a store it opens with what the file says. Nothing here is needed for correctness; it
only makes a silent loss loud.
"""

import json
import os


def marker_path(store_path):
    return store_path + ".state"


def read_marker(store_path):
    """{"pending": N, "max_seq": S, "at": wall time} or None."""
    try:
        with open(marker_path(store_path), encoding="utf-8") as f:
            data = json.load(f)
        return {"pending": int(data["pending"]), "max_seq": int(data["max_seq"]), "at": float(data["at"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(store_path, pending, max_seq, at):
    path = marker_path(store_path)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"pending": pending, "max_seq": max_seq, "at": at}, f)
    os.replace(path + ".tmp", path)


def loss(marker, pending, max_seq):
    """Words for a store that lost what the marker says it held, or None."""
    if not marker or not marker["pending"]:
        return None
    if pending == 0:
        return f"holds no messages, but {marker['pending']} were waiting when it was last seen"
    if max_seq < marker["max_seq"]:
        return (f"lost its newest messages: it ends at seq {max_seq}, but seq {marker['max_seq']} was"
                f" committed when it was last seen ({marker['pending']} waiting)")
    return None
