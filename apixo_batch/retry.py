"""Backoff policy: how long to wait before trying again, and when to stop.

A value object; the caller sleeps on its own injected clock. ``time_scale``
multiplies every delay (``--time-scale``), ``jitter`` spreads retries so a
thousand tasks hit by the same 502 do not come back in the same millisecond.

:class:`Patience` is the other way to stop, in the spirit of stamina's ``timeout=``:
not a number of attempts but a span of time (``--max-wait``) that starts when an
outage (or a wait) begins. The submitter, the follower, the lander and the API's
breaker all read it through one :class:`Deadline`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from datetime import UTC
from email.utils import parsedate_to_datetime

from .clock import Clock

__all__ = ["MAX_RETRY_AFTER_S", "Backoff", "Deadline", "Patience", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter, capped, honouring Retry-After."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    max_attempts: int = 8
    jitter: float = 0.5  # fraction of the delay that is randomized
    time_scale: float = 1.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def scaled(self, time_scale: float) -> Backoff:
        return replace(self, time_scale=time_scale)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` counts from 1)."""
        raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter
        wait = raw - spread + self.rng.random() * spread * 2 if spread else raw
        wait = min(wait, self.cap)
        if retry_after is not None:
            # The server knows best: never come back before it says.
            wait = max(wait, retry_after)
        return wait * self.time_scale

    def gives_up(self, attempt: int) -> bool:
        """True when ``attempt`` failures are enough to stop trying."""
        return attempt >= self.max_attempts


@dataclass(frozen=True, slots=True)
class Patience:
    """How long to keep trying while nothing gets through: a span, started per wait."""

    seconds: float

    @classmethod
    def minutes(cls, minutes: float) -> Patience:
        return cls(minutes * 60.0)

    @property
    def in_minutes(self) -> float:
        return self.seconds / 60.0

    def start(self, clock: Clock, since: float | None = None) -> Deadline:
        """A wait that began ``since`` (monotonic seconds; now when None)."""
        return Deadline(self, clock, clock.monotonic() if since is None else since)


@dataclass(frozen=True, slots=True)
class Deadline:
    """One wait under a :class:`Patience`, from the moment it began."""

    patience: Patience
    clock: Clock = field(compare=False, repr=False)
    #: monotonic seconds when the wait began
    since: float

    def waited(self) -> float:
        return self.clock.monotonic() - self.since

    def left(self) -> float:
        """Seconds until the span has passed (0 from then on)."""
        return max(0.0, self.patience.seconds - self.waited())

    def expired(self) -> bool:
        """Waited longer than the span: a wait of exactly ``--max-wait`` is still waited."""
        return self.waited() > self.patience.seconds


#: the longest Retry-After obeyed: a bigger one (a server's clock or a typo) would stall the
#: whole run, every request waiting behind the paused bucket
MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header, in either of its forms; None when absent or odd.

    An HTTP-date counts from ``now`` (Unix seconds; the wall clock when None): the
    server names a moment of the real world, and the wait starts when its answer is
    read. A moment already past says nothing usable (the server's clock may be
    behind ours): None, like a missing header. Waits are capped at an hour.
    "inf" parses as a float; nobody sleeps on it.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        until = _seconds_until(value, now)
        return None if until is None or until <= 0 else min(until, MAX_RETRY_AFTER_S)
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def _seconds_until(http_date: str, now: float | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - (time.time() if now is None else now)
