"""One daemon per store: an exclusive lock on a file beside it, taken before anything else.

``flock`` on ``STORE.lock``, which holds the pid of the daemon that has it. The lock belongs to
the open file, which the workers inherit, so the store stays locked until the last process of a
daemon is gone: a new daemon started while an old one's workers are still dying waits a few
seconds for them, then gives up with the pid it found.
"""

import fcntl
import os
import time

WAIT_FOR_LOCK = 3.0


class StoreLocked(Exception):
    """Another daemon holds the store; the text names it and its pid."""


def lock_store(store_path, wait=WAIT_FOR_LOCK):
    """Take the store's lock for this process and its children; return the open lock file."""
    path = store_path + ".lock"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise StoreLocked(f"another mqttbuffer (pid {holder}) is running on {store_path}"
                                  f" (it holds {path})") from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
