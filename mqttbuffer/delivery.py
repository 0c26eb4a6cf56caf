"""The forwarder's delivery policy, as pure code: what an API answer means and what happens next.

Nothing here sleeps, reads a clock or does I/O: every decision takes ``now`` (monotonic seconds)
and randomness comes from an injected ``random.Random``, so the policy is tested with a fake clock.

| answer                                   | kind        | what happens                                      |
|------------------------------------------|-------------|---------------------------------------------------|
| 2xx                                      | delivered   | delete; breaker success; batch size grows back    |
| 4xx except 408, 429                      | rejected    | several messages: split the batch (at once);      |
|                                          |             | one message: dead letter with status and excerpt  |
| 408, 429, 502, 503, 504, no answer       | unavailable | back off 2, 4, 8, 16, 32 s (jittered), at least   |
|                                          |             | Retry-After (capped); breaker failure; no attempt |
| 500 and other 5xx                        | failed      | several messages: split the batch (at once);      |
|                                          |             | one message: attempt + 1, breaker failure, back   |
|                                          |             | off; max_retries attempts -> dead letter          |

Why a 5xx for several messages splits instead of counting an attempt on each: a payload the API
chokes on (a 500 for that message only) would otherwise push every good message in its batch to
max_retries with it. Splitting finds it in log2(batch_size) quick requests; a real outage ends
up sending single messages, whose attempts count and whose failures back off and open the
breaker as usual. After a success the batch size doubles back towards ``batch_size``, so order
is kept: the oldest messages always go first and a failed batch is retried before anything newer.

Circuit breaker: closed -> open after ``max_failures`` consecutive failures; open sends nothing
for ``timeout`` seconds; then half-open sends one small probe batch; success closes, failure
re-opens.
"""

import email.utils

DELIVERED, REJECTED, UNAVAILABLE, FAILED = "delivered", "rejected", "unavailable", "failed"
UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
BACKOFF_STEPS = (2.0, 4.0, 8.0, 16.0, 32.0)
JITTER = 0.2
PROBE_SIZE = 10

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


def classify(status):
    """The kind of an answer: a status code, or None for no answer (connection error, timeout)."""
    if status is None or status in UNAVAILABLE_STATUSES:
        return UNAVAILABLE
    if 200 <= status < 300:
        return DELIVERED
    if 400 <= status < 500:
        return REJECTED
    return FAILED


def parse_retry_after(value, wall_now):
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - wall_now)


class CircuitBreaker:
    def __init__(self, max_failures, timeout):
        self.max_failures = max_failures
        self.timeout = timeout
        self.state = CLOSED
        self.failures = 0
        self.open_until = 0.0

    def allows(self, now):
        """Whether a request may go now; moves open -> half-open when the timeout is over.

        Returns (allowed, new state or None)."""
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN
            return True, HALF_OPEN
        return self.state != OPEN, None

    def success(self):
        """Returns the new state if it changed."""
        self.failures = 0
        if self.state != CLOSED:
            self.state = CLOSED
            return CLOSED
        return None

    def failure(self, now):
        """Returns the new state if it changed."""
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.max_failures):
            self.state = OPEN
            self.open_until = now + self.timeout
            return OPEN
        return None


class Decision:
    """What the forwarder does with the batch it just sent."""

    __slots__ = ("action", "reason", "wait")

    def __init__(self, action, reason=None, wait=0.0):
        self.action = action  # "delete", "dead_letter", "retry", "count_attempt"
        self.reason = reason  # for dead letters: "rejected" or "retries_exhausted"
        self.wait = wait


class DeliveryPolicy:
    """Backoff, breaker and batch size for one forwarder; ``rng`` gives the jitter."""

    def __init__(self, batch_size, max_retries, max_failures, breaker_timeout, retry_after_cap, rng):
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.retry_after_cap = retry_after_cap
        self.rng = rng
        self.breaker = CircuitBreaker(max_failures, breaker_timeout)
        self.limit = batch_size
        self.backoff_step = 0
        self.not_before = 0.0
        self.state_changes = []

    def next_attempt_at(self):
        return max(self.not_before, self.breaker.open_until if self.breaker.state == OPEN else 0.0)

    def may_send(self, now):
        """Whether a request may go now (records a breaker change in ``state_changes``)."""
        if now < self.not_before:
            return False
        allowed, changed = self.breaker.allows(now)
        if changed:
            self.state_changes.append(changed)
        return allowed

    def batch_limit(self):
        return min(self.limit, PROBE_SIZE) if self.breaker.state == HALF_OPEN else self.limit

    def _note(self, changed):
        if changed:
            self.state_changes.append(changed)

    def _back_off(self, now, retry_after=None):
        step = BACKOFF_STEPS[min(self.backoff_step, len(BACKOFF_STEPS) - 1)]
        self.backoff_step += 1
        wait = step * self.rng.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        self.not_before = now + wait
        self._note(self.breaker.failure(now))
        return max(wait, self.next_attempt_at() - now)

    def decide(self, kind, batch_len, now, retry_after=None, attempts_after=0):
        """The decision for an answer of ``kind`` to a batch of ``batch_len`` messages.

        ``attempts_after`` is the single message's attempt count including this one (FAILED only).
        """
        if kind == DELIVERED:
            self.backoff_step = 0
            self.not_before = 0.0
            self.limit = min(self.limit * 2, self.batch_size)
            self._note(self.breaker.success())
            return Decision("delete")
        if kind in (REJECTED, FAILED) and batch_len > 1:
            self.limit = max(1, batch_len // 2)
            return Decision("retry")
        if kind == REJECTED:
            # The API is up and answered; this one message is what it refuses.
            self._note(self.breaker.success())
            return Decision("dead_letter", "rejected")
        if kind == FAILED:
            wait = self._back_off(now)
            if self.max_retries and attempts_after >= self.max_retries:
                return Decision("dead_letter", "retries_exhausted")
            return Decision("count_attempt", wait=wait)
        return Decision("retry", wait=self._back_off(now, retry_after))
