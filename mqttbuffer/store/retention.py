"""When retention may expire messages, given that the wall clock can be wrong.

A Pi has no RTC: at boot its clock can be a year ahead (or behind) until NTP syncs, and a
retention pass in that moment would expire the whole backlog. So, as pure policy on injected
clocks:

- no pass in the first ``GRACE`` seconds after start (or the retention period, if shorter);
- a pass expires without limit only when the clock is plausible: it has moved with the
  monotonic clock since start (no jump of more than ``JUMP_TOLERANCE``) and the oldest message
  was received during this run, so its age was measured by a clock we watched;
- otherwise a pass expires at most ``SHARE`` of the waiting messages (at least one), so a wrong
  clock costs a tenth of the backlog per ``cleanup_interval`` into dead letters, where they can be
  replayed, instead of all of it.
"""

import math

GRACE = 300.0
JUMP_TOLERANCE = 60.0
SHARE = 0.1


class RetentionGuard:
    def __init__(self, retention_seconds, started_mono, started_wall):
        self.grace = min(GRACE, retention_seconds)
        self.started_mono, self.started_wall = started_mono, started_wall

    def clock_jumped(self, now_mono, now_wall):
        return abs((now_wall - self.started_wall) - (now_mono - self.started_mono)) > JUMP_TOLERANCE

    def plan(self, now_mono, now_wall, oldest_received_at, waiting):
        """(may run now, most messages to expire: None for no limit)."""
        if now_mono - self.started_mono < self.grace:
            return False, None
        if not self.clock_jumped(now_mono, now_wall) and oldest_received_at is not None \
                and oldest_received_at >= self.started_wall:
            return True, None
        return True, max(1, math.ceil(waiting * SHARE))
