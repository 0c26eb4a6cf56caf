"""A deadline for a whole HTTP request: connect, send, headers and the body, however slow.

urllib3's read timeout bounds each read, so an API that trickles its answer a byte every few
seconds keeps a request alive forever (and the heartbeat check then kills the forwarder
mid-request, which resends the batch). ``request_deadline`` arms a one-shot SIGALRM that raises
``DeadlineExceeded`` in the main thread wherever it is blocked; the forwarder is single-threaded,
so the exception lands in the request it is waiting on.
"""

import contextlib
import signal
import time

import urllib3


class DeadlineExceeded(urllib3.exceptions.TimeoutError):
    """The request did not complete within the deadline."""


@contextlib.contextmanager
def request_deadline(seconds):
    deadline = time.monotonic() + seconds
    armed = [True]

    def expire(signum, frame):
        # Only inside the block: a late signal must not hit the code after it.
        if armed[0] and time.monotonic() >= deadline - 0.01:
            raise DeadlineExceeded(f"no complete answer within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
