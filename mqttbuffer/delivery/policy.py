"""The forwarder's delivery policy, as pure code: what an API answer means and what happens next.

Nothing here sleeps, reads a clock or does I/O: every decision takes ``now`` (monotonic seconds)
and randomness comes from an injected ``random.Random``, so the policy is tested with a fake clock.

| answer                                      | kind        | what happens                                 |
|---------------------------------------------|-------------|----------------------------------------------|
| 2xx                                         | delivered   | delete; breaker success; batch grows back    |
| 401 403 404 405 407 410 411 414 415 426 431 | refused     | the endpoint refuses: hold the whole queue   |
| and any 3xx                                 |             | (no dead letter), breaker failure, back off  |
|                                             |             | 2, 4, 8 ... s up to ``max_refused_backoff``  |
| 409                                         | duplicate   | one message: delivered (the API holds its    |
|                                             |             | id); several: resent once asking to skip     |
|                                             |             | held rows (Prefer: resolution=ignore-        |
|                                             |             | duplicates); refused or ignored: never asked |
|                                             |             | again, split (as rejected)                   |
| 413                                         | too large   | split; one message: dead letter too_large    |
| other 4xx (400, 422, ...)                   | rejected    | split; one message: dead letter rejected     |
| 408, 429, 502, 503, 504, no answer          | unavailable | back off 2, 4, 8, 16, 32 s (jittered), at    |
|                                             |             | least Retry-After (capped); breaker failure  |
| 500 and other 5xx                           | failed      | split; one message: attempt + 1, breaker     |
|                                             |             | failure, back off; past max_retries a dead   |
|                                             |             | letter retries_exhausted                     |

The rule over all of them: **a message becomes a dead letter only while the API is demonstrably
accepting others**, that is after a 2xx for other messages during the same bisection. A message
refused alone before that is a *suspect*: it stays in the queue, the forwarder skips it and sends
the next ones; their 2xx turns the suspects into dead letters, while ``MAX_SUSPECTS`` refused in
a row mean the API refuses everything (a wrong key, a schema change answering 400 to all): the
policy then *holds*, drops the suspicions and backs off as for an endpoint-level refusal. An
endpoint-level status (401, 404...) holds at once, unless the API accepted the request just
before or a bisection is under way: then a row the API refuses alone (a row-level security
policy answering 403) is isolated like a rejected one.

Why failures split instead of counting an attempt on each message: a payload the API chokes on
would otherwise push every good message in its batch to max_retries with it. Splitting finds it
in log2(batch_size) quick requests. After a success the batch size doubles back towards
``batch_size``, so order is kept: the oldest messages go first and a failed batch is retried
before anything newer (suspects excepted).

Circuit breaker: closed -> open after ``max_failures`` consecutive failures (holds, unavailable
answers, failed single messages); open sends nothing for ``timeout`` seconds; then half-open sends
one small probe batch; success closes, failure re-opens.
"""

import email.utils
import enum

from mqttbuffer.delays import scaled


class Kind(enum.StrEnum):
    """What an answer means (``classify``)."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


class Action(enum.StrEnum):
    """What the forwarder does with the batch it sent (``Decision.action``)."""

    DELETE = "delete"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    COUNT_ATTEMPT = "count_attempt"
    SUSPECT = "suspect"
    HOLD = "hold"


class ApiState(enum.StrEnum):
    """The API as the operator sees it; the shared stats keep the index (stats.API_STATES)."""

    OK = "ok"
    REFUSING = "refusing"
    UNREACHABLE = "unreachable"
    FAILING = "failing"


class Circuit(enum.StrEnum):
    """The circuit breaker's state; the shared stats keep the index (stats.CIRCUIT_STATES)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


# The members under short names, as the forwarder and the tests use them (d.DELETE, d.OPEN).
DELIVERED, DUPLICATE, REFUSED, TOO_LARGE, REJECTED, UNAVAILABLE, FAILED = Kind
DELETE, DEAD_LETTER, RETRY, COUNT_ATTEMPT, SUSPECT, HOLD = Action
OK, REFUSING, UNREACHABLE, FAILING = ApiState
CLOSED, OPEN, HALF_OPEN = Circuit
ENDPOINT_STATUSES = frozenset({401, 403, 404, 405, 407, 410, 411, 414, 415, 426, 431})
UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})

# Dead-letter reasons for a refused or failed message.
REASONS = {REJECTED: "rejected", REFUSED: "rejected", DUPLICATE: "rejected", TOO_LARGE: "too_large",
           FAILED: "retries_exhausted"}

BACKOFF_STEPS = scaled(2.0, 4.0, 8.0, 16.0, 32.0)
HOLD_FIRST_WAIT = scaled(2.0)
JITTER = 0.2
PROBE_SIZE = 10
MAX_SUSPECTS = 3


def classify(status):
    """The kind of an answer: a status code, or None for no answer (connection error, timeout)."""
    if status is None or status in UNAVAILABLE_STATUSES:
        return UNAVAILABLE
    if 200 <= status < 300:
        return DELIVERED
    if 300 <= status < 400 or status in ENDPOINT_STATUSES:
        return REFUSED
    if status == 409:
        return DUPLICATE
    if status == 413:
        return TOO_LARGE
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
    """What the forwarder does with the batch it just sent.

    ``released``: suspects that became dead letters with this decision, as (seq, reason, note)."""

    __slots__ = ("action", "reason", "wait", "released")

    def __init__(self, action, reason=None, wait=0.0, released=()):
        self.action = action
        self.reason = reason
        self.wait = wait
        self.released = released


class DeliveryPolicy:
    """Backoff, breaker, batch size and suspects for one forwarder; ``rng`` gives the jitter."""

    def __init__(self, batch_size, max_retries, max_failures, breaker_timeout, retry_after_cap, rng,
                 max_refused_backoff=300.0, duplicate_is_delivered=True):
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.retry_after_cap = retry_after_cap
        self.max_refused_backoff = max_refused_backoff
        self.duplicate_is_delivered = duplicate_is_delivered
        self.rng = rng
        self.breaker = CircuitBreaker(max_failures, breaker_timeout)
        self.limit = batch_size
        self.backoff_step = 0
        self.hold_step = 0
        self.not_before = 0.0
        self.state_changes = []
        self.api_state = OK
        self.suspects = {}  # seq -> (reason, note): refused alone, skipped until the API accepts others
        self.bisecting = False
        self.evidence = False  # a 2xx during the current bisection
        self.accepting = False  # the last answer was a 2xx
        self.skip_duplicates = False  # the next request asks the API to skip rows it holds
        self.skip_refused = False  # the API answered such a request with a refusal or a 409

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

    def _jittered(self, seconds):
        return seconds * self.rng.uniform(1 - JITTER, 1 + JITTER)

    def _back_off(self, now, retry_after=None):
        wait = self._jittered(BACKOFF_STEPS[min(self.backoff_step, len(BACKOFF_STEPS) - 1)])
        self.backoff_step += 1
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        self.not_before = now + wait
        self._note(self.breaker.failure(now))
        return max(wait, self.next_attempt_at() - now)

    def _hold(self, now, state):
        """Nothing in the queue can go until someone fixes the API or the config: wait, keep all."""
        self.api_state = state
        self.suspects.clear()
        self.bisecting = self.evidence = False
        self.limit = self.batch_size
        step = HOLD_FIRST_WAIT * 2 ** min(self.hold_step, 30)
        self.hold_step += 1
        wait = min(self._jittered(step), self.max_refused_backoff)
        self.not_before = max(self.not_before, now + wait)
        self._note(self.breaker.failure(now))
        return Decision(HOLD, wait=max(wait, self.next_attempt_at() - now))

    def _delivered(self, grow=True):
        self.backoff_step = self.hold_step = 0
        self.not_before = 0.0
        self.accepting = True
        self.api_state = OK
        self._note(self.breaker.success())
        released = ()
        if self.bisecting:
            self.evidence = True
            released = tuple((seq, reason, note) for seq, (reason, note) in self.suspects.items())
            self.suspects.clear()
        if grow:
            self.limit = min(self.limit * 2, self.batch_size)
        if self.limit == self.batch_size:
            self.bisecting = self.evidence = False
        return Decision(DELETE, released=released)

    def decide(self, kind, seqs, now, retry_after=None, attempts_after=0, note=None):
        """The decision for an answer of ``kind`` to the batch of messages ``seqs``.

        ``attempts_after``: the single message's attempt count including this one (FAILED only);
        ``note``: kept with a suspect and handed back when it becomes a dead letter."""
        skipping, self.skip_duplicates = self.skip_duplicates, False
        if skipping and kind in (REFUSED, REJECTED, TOO_LARGE, DUPLICATE):
            # The API will not skip held rows (PostgREST under a row-level security policy without
            # SELECT answers 401/403; others may ignore the preference): never ask again.
            self.skip_refused = True
            kind = DUPLICATE
        if kind == DUPLICATE and len(seqs) == 1 and self.duplicate_is_delivered:
            # A lost answer leaves a run of duplicates at the head: stay at one message per request
            # through it rather than doubling into another 409 each time.
            return self._delivered(grow=False)
        if kind == DUPLICATE and self.duplicate_is_delivered and not (skipping or self.skip_refused):
            # A resend after a lost answer: ask once for the rows the API holds to be skipped
            # (PostgREST's Prefer: resolution=ignore-duplicates) instead of bisecting the batch.
            self.skip_duplicates = True
            return Decision(RETRY)
        if kind == DUPLICATE:
            kind = REJECTED
        if kind == DELIVERED:
            return self._delivered()
        accepting, self.accepting = self.accepting, False
        if kind == UNAVAILABLE:
            self.api_state = UNREACHABLE
            return Decision(RETRY, wait=self._back_off(now, retry_after))
        if kind == REFUSED and not (accepting or self.bisecting):
            return self._hold(now, REFUSING)
        if len(seqs) > 1:
            self.bisecting = True
            self.limit = max(1, len(seqs) // 2)
            return Decision(RETRY)
        reason = REASONS[kind]
        if kind == FAILED:
            self.api_state = FAILING
            wait = self._back_off(now)
            if not self.max_retries or attempts_after < self.max_retries:
                return Decision(COUNT_ATTEMPT, wait=wait)
        if self.evidence:
            if kind != FAILED:
                self._note(self.breaker.success())
            return Decision(DEAD_LETTER, reason)
        if len(self.suspects) < MAX_SUSPECTS:
            self.suspects[seqs[0]] = (reason, note)
            self.bisecting = True
            return Decision(SUSPECT, reason)
        return self._hold(now, FAILING if kind == FAILED else REFUSING)
