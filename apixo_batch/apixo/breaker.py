"""One circuit breaker for the API: while every call fails to get an answer, calls wait.

A call that gets no answer at all (connection refused, no such host, reset, timeout)
counts as a failure; any answer, an error answer included, closes the breaker.
After ``threshold`` failures in a row it opens: calls wait, and one of them at a
time goes out as a probe, after a capped backoff (doubling from ``base`` to
``cap`` seconds, on the injected clock). The probe's answer closes the breaker
and every waiting call goes on. So an outage costs one connection attempt per
backoff step, not one per task, and its start and end are told once each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..clock import Clock, sleep_or_wake
from ..defaults import PATIENCE
from ..errors import TransportError
from ..retry import Deadline, Patience

__all__ = ["Breaker"]


class Breaker:
    """Closed (calls go) or open (calls wait; one probe at a time)."""

    def __init__(
        self,
        clock: Clock,
        *,
        threshold: int = 5,
        base: float = 1.0,
        cap: float = 60.0,
        patience: Patience = PATIENCE,
        on_change: Callable[[bool, float], None] | None = None,
    ) -> None:
        self._clock = clock
        self._threshold = threshold
        self._base = base
        self._cap = cap
        #: how long without any answer a waiting call waits before it gives up
        #: (TransportError); the outage starts at the last answer, not when the breaker opens
        self.patience = patience
        #: called with (open, seconds since the last answer) when the breaker opens or closes
        self.on_change = on_change
        self._failures = 0
        self._outage: Deadline | None = None  # while open
        self._last_answer = clock.monotonic()
        self._next_probe = 0.0
        self._delay = base
        self._probing = False
        # set (and replaced) whenever waiting calls should look again: a probe ended
        self._news = asyncio.Event()

    @property
    def open(self) -> bool:
        return self._outage is not None

    def silent_for(self) -> float:
        """Seconds since the API last answered anything."""
        return self._clock.monotonic() - self._last_answer

    async def admit(self) -> bool:
        """Wait until a call may go; True if it goes as the probe (report its outcome).

        Raises :class:`TransportError` (nothing sent) once the API has given no answer
        for as long as ``patience``."""
        while (outage := self._outage) is not None:
            if outage.expired():
                raise TransportError(
                    f"the API gave no answer for {outage.waited():.0f} s", sent=False
                )
            now = self._clock.monotonic()
            if not self._probing and now >= self._next_probe:
                self._probing = True
                return True
            wake = self._next_probe if not self._probing else now + self._cap
            # Just past the end of the patience, so that the sleep surely reaches it.
            wake = min(wake, now + outage.left() + 1e-3)
            await sleep_or_wake(self._clock, self._news, max(0.0, wake - now))
        return False

    def answered(self, probe: bool = False) -> None:
        """The API answered (whatever it said)."""
        now = self._clock.monotonic()
        silent, self._last_answer = now - self._last_answer, now
        self._failures = 0
        if probe:
            self._probing = False
        if self._outage is not None:
            self._outage = None
            self._delay = self._base
            self._tell()
            if self.on_change is not None:
                self.on_change(False, silent)

    def no_answer(self, probe: bool = False) -> None:
        """A call got no answer at all."""
        now = self._clock.monotonic()
        self._failures += 1
        if self._outage is None:
            if self._failures < self._threshold:
                return
            self._outage = self.patience.start(self._clock, since=self._last_answer)
            self._delay = self._base
            if self.on_change is not None:
                self.on_change(True, now - self._last_answer)
        else:
            self._delay = min(self._cap, self._delay * 2)
        self._next_probe = now + self._delay
        if probe:
            self._probing = False
            self._tell()

    def forget_probe(self) -> None:
        """The probe ended without an outcome (stopped, cancelled): another call may probe."""
        if self._probing:
            self._probing = False
            self._tell()

    def _tell(self) -> None:
        self._news.set()
        self._news = asyncio.Event()
