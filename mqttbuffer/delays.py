"""The waits the daemon's policies are built on, shortened in one place for tests.

``MQTTBUFFER_DELAY_SCALE`` (a number in (0, 1], default 1) multiplies every delay made with
``scaled()``: the restart backoff, the delivery backoff steps, the time a worker must stay up to
count as started, the waits before a stuck commit is tried again, the graces before ``status``
calls an outage degraded. The test suite runs its
daemons at 0.1, so a test of a retry waits tenths of a second instead of the real schedule.
Timeouts an operator configures (``api.timeout``, ``circuit_breaker.timeout``, ...) are not
scaled. A daemon started with the variable set says so in its log (``warning()``).
"""

import os

VARIABLE = "MQTTBUFFER_DELAY_SCALE"


def _scale(value):
    try:
        scale = float(value)
    except ValueError:
        return None
    return scale if 0 < scale <= 1 else None


_RAW = os.environ.get(VARIABLE, "")
SCALE = (_scale(_RAW) or 1.0) if _RAW else 1.0


def scaled(*seconds):
    """The given delays times SCALE: one value for one argument, else a tuple."""
    values = tuple(s * SCALE for s in seconds)
    return values[0] if len(values) == 1 else values


def warning():
    """A line for the start-up log when the variable is set, else None."""
    if not _RAW:
        return None
    if _scale(_RAW) is None:
        return f"{VARIABLE}={_RAW!r} ignored: expected a number in (0, 1]; delays are not scaled"
    return f"{VARIABLE}={_RAW}: restart and retry delays are scaled down (a test setting)"
