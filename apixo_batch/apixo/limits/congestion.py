"""Congestion control for the request rate: what a 429 teaches, and how to probe back.

APIXO says its limits "can vary by account, API key, and route": ``--rpm`` is
an upper bound, not the account's real rate. So the rate is steered the way
TCP steers a window, with one twist from CUBIC:

* **one multiplicative decrease per congestion episode.** The 429s answered to
  requests granted before the decrease are echoes of the same overshoot, not
  new signals: a grant ticket tells them apart.
* **additive increase**, every second (network time: the account's windows are
  real time, whatever ``--time-scale`` says): fast (2 % of ``--rpm``) while
  well below the last rate that overshot, slow (0.3 % of it) near or above it
  for half a minute, then 2 % of it a second: the limit may have moved.

When the answers tell what the account's limiter is (:mod:`.estimate`), the
episode does not just cut: the rate *settles* just under what the account was
seen to accept (``SETTLE`` of it), which becomes the ceiling, and probes above
it slowly. A later run starts just under the ceiling too. Time is the
caller's (the bucket's injected clock).
"""

from __future__ import annotations

import math

__all__ = ["RateControl"]

#: the multiplicative decrease of one episode
BETA = 0.8
#: seconds between two additive steps
PROBE_S = 1.0
#: step far from the ceiling, as a share of the top rate
FAST = 0.02
#: step near the ceiling (within NEAR of it, or above), as a share of the ceiling
SLOW = 0.003
NEAR = 0.9
#: seconds a ceiling keeps the probe slow
MEMORY_S = 30.0
#: the rate never drops below this share of the top rate
FLOOR = 0.05
#: after an episode whose limiter is known, and at the start of a run that learned it:
#: this share of the account's rate
SETTLE = 0.95


class RateControl:
    """The allowed rate (per second), between ``FLOOR`` x ``top`` and ``top``."""

    def __init__(self, top: float, now: float, *, ceiling: float | None = None) -> None:
        self.top = top
        #: the rate of the last overshoot, learned in this run or given by an earlier one
        self.ceiling = ceiling if ceiling is not None and ceiling < top else None
        self.rate = top if self.ceiling is None else max(top * FLOOR, SETTLE * self.ceiling)
        self._ceiling_at = now if self.ceiling is not None else -math.inf
        self._next_probe = now + PROBE_S
        self._episode_end = -1  # grant tickets up to this one belong to the last episode
        self.episodes = 0

    def congested(self, ticket: int | None, granted: int, now: float) -> bool:
        """A 429 to the request granted as ``ticket`` (``granted`` so far): True if it
        opened a new episode (and the rate went down)."""
        if ticket is not None and ticket <= self._episode_end:
            return False
        self.ceiling = self.rate
        self._ceiling_at = now
        self.rate = max(self.rate * BETA, self.top * FLOOR)
        self._episode_end = granted
        self._next_probe = now + PROBE_S
        self.episodes += 1
        return True

    def settle(self, account_rate: float, now: float) -> None:
        """The account was seen to accept ``account_rate`` (per second) over its window:
        run just under it, and probe above it slowly (it is the ceiling now)."""
        self.ceiling = min(self.top, account_rate)
        self._ceiling_at = now
        self.rate = max(self.top * FLOOR, min(self.top, SETTLE * account_rate))
        self._next_probe = now + PROBE_S

    def current(self, now: float, *, bound: bool = True) -> float:
        """The rate allowed now, after the probing steps due by ``now``.

        ``bound``: callers are waiting for the rate (it binds). While it does not (fewer
        requests than allowed), it does not climb: a rate never used teaches nothing, and
        a burst of demand later would overshoot from there (RFC 7661's reasoning)."""
        if not bound:
            self._next_probe = max(self._next_probe, now + PROBE_S)
            return self.rate
        while self.rate < self.top and now >= self._next_probe:
            self.rate = min(self.top, self.rate + self._step(self._next_probe))
            self._next_probe += PROBE_S
        if self.rate >= self.top:
            self._next_probe = max(self._next_probe, now)
        return self.rate

    def _step(self, at: float) -> float:
        c = self.ceiling
        if c is not None and self.rate >= NEAR * c:
            # Near the ceiling: slowly while it is fresh, then a little faster (the limit
            # may have moved), in steps of the ceiling, never of the top rate: above an
            # account far under --rpm, a step of the top would overshoot at once.
            return SLOW * c if at - self._ceiling_at < MEMORY_S else FAST * c
        return FAST * self.top
