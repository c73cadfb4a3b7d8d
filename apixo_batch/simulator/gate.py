"""What stands in front of every API route: the key, the rate limit, the faults.

Order, as a real gateway would do it: authenticate (a 401 does not count
against the limit), count the request in its route's window (429 when full),
then maybe inject a fault. Faults are drawn from their own seeded generator,
so turning one knob does not change the draws of another.

The window plays the limiters gateways use (``SimConfig``): sliding (any
``rpm_window_s`` seconds) or fixed (windows aligned on multiples of
``rpm_window_s`` that reset at once); refused requests counted against the
window or not; a Retry-After that tells the truth, is absent, or is too short.
APIXO's defaults: sliding, refused requests not counted, truthful.
"""

from __future__ import annotations

import hmac
import math
import random
from collections import deque
from typing import Literal

from .config import SimConfig

__all__ = [
    "Fault",
    "FaultPlan",
    "RollingWindow",
    "key_matches",
    "rate_limit_headers",
    "retry_after_header",
]

Fault = Literal["reset", "500", "502", "503", "504"]


def key_matches(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries exactly ``Bearer <key>``."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), key.encode())


class RollingWindow:
    """At most ``limit`` counted requests per ``window`` seconds, sliding or fixed.

    The limit and the kind are passed on every call, so a test may change them
    on a running simulator's config.
    """

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._fixed_start = -math.inf
        self._fixed_count = 0

    def admit(
        self,
        now: float,
        limit: int,
        window: float,
        *,
        fixed: bool = False,
        count_refused: bool = False,
    ) -> float | None:
        """Count a request at ``now``; or, when full, return seconds until the window has
        room again (if nothing else arrives meanwhile)."""
        if fixed:
            start = math.floor(now / window) * window
            if start != self._fixed_start:
                self._fixed_start, self._fixed_count = start, 0
            full = self._fixed_count >= limit
            if not full or count_refused:
                self._fixed_count += 1
            return start + window - now if full else None
        times = self._times
        horizon = now - window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= limit:
            # Room comes back when all but limit - 1 of those counted have left the window.
            wait = times[len(times) - limit] - horizon
            if count_refused:
                times.append(now)
            return wait
        times.append(now)
        return None

    def __len__(self) -> int:
        return len(self._times) if self._fixed_start == -math.inf else self._fixed_count


def retry_after_header(wait: float) -> str:
    """Whole seconds, at least 1, never early."""
    return str(max(1, math.ceil(wait)))


def rate_limit_headers(wait: float, retry_after: str) -> dict[str, str]:
    """The headers of a rate 429 as the configured gateway sends them: a truthful
    Retry-After, none, or one too short (1 s, whatever the wait)."""
    if retry_after == "absent":
        return {}
    if retry_after == "short":
        return {"Retry-After": "1"}
    return {"Retry-After": retry_after_header(wait)}


class FaultPlan:
    """Seeded draws of the configured API and file faults."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._api = random.Random(f"{config.seed}:api-faults")
        self._slow = random.Random(f"{config.seed}:slow")
        self._lost = random.Random(f"{config.seed}:lost")
        self._files = random.Random(f"{config.seed}:file-faults")

    def api_fault(self) -> Fault | None:
        """reset, 500, 502, 503, 504, or None for a normal answer."""
        cfg = self._config
        rates = (cfg.reset_rate, cfg.error_rate_500, cfg.error_rate_502, cfg.error_rate_503)
        if not (any(rates) or cfg.error_rate_504):
            return None
        draw = self._api.random()
        table: tuple[tuple[Fault, float], ...] = (
            ("reset", cfg.reset_rate),
            ("500", cfg.error_rate_500),
            ("502", cfg.error_rate_502),
            ("504", cfg.error_rate_504),
            # Drawn last: a config without 503s draws every other fault as it always has.
            ("503", cfg.error_rate_503),
        )
        for fault, rate in table:
            if draw < rate:
                return fault
            draw -= rate
        return None

    def slow(self) -> bool:
        rate = self._config.slow_rate
        return bool(rate) and self._slow.random() < rate

    def lose_submit_answer(self) -> bool:
        rate = self._config.submit_lost_rate
        return bool(rate) and self._lost.random() < rate

    def file_error(self) -> int | None:
        rate = self._config.file_error_rate
        if rate and self._files.random() < rate:
            return self._files.choice((500, 502, 503))
        return None

    def truncate_at(self, length: int) -> int | None:
        """Where to cut a body of ``length`` bytes, or None to send it whole."""
        rate = self._config.truncate_rate
        if length < 2 or not rate or self._files.random() >= rate:
            return None
        return max(1, min(length - 1, int(length * self._files.uniform(0.1, 0.9))))
