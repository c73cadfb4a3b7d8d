"""Backoff: growing, jittered, capped delays that honour Retry-After and know when to stop."""

from __future__ import annotations

import random
from typing import Any

import pytest

from apixo_batch.retry import Backoff, Patience, parse_retry_after


def _seeded(**kwargs: Any) -> Backoff:
    return Backoff(rng=random.Random(1234), **kwargs)


def test_without_jitter_delays_double_from_base() -> None:
    """jitter=0 gives base, base*factor, base*factor**2, ..."""
    backoff = _seeded(base=0.5, factor=2.0, cap=100.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_attempt_zero_is_treated_as_the_first() -> None:
    """attempt counts from 1; 0 or below does not shrink the delay below base."""
    backoff = _seeded(base=2.0, jitter=0.0)
    assert backoff.delay(0) == backoff.delay(1) == 2.0


def test_without_jitter_delay_stops_at_cap() -> None:
    """Once base*factor**n passes cap, every delay is the cap."""
    backoff = _seeded(base=1.0, cap=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in (4, 5, 6, 50)] == [8.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize("attempt", range(1, 12))
def test_jittered_delay_stays_within_its_band(attempt: int) -> None:
    """With jitter j, a delay lies within raw*(1-j) .. raw*(1+j) of the unjittered delay."""
    backoff = _seeded(base=1.0, factor=2.0, cap=60.0, jitter=0.5)
    raw = min(60.0, 2.0 ** (attempt - 1))
    for _ in range(200):
        assert raw * 0.5 <= backoff.delay(attempt) <= raw * 1.5


def test_jitter_spreads_delays() -> None:
    """Two hundred retries of the same attempt do not all come back at the same moment."""
    backoff = _seeded(base=1.0, jitter=0.5)
    assert len({backoff.delay(3) for _ in range(200)}) > 100


def test_jittered_delay_never_exceeds_cap() -> None:
    """cap is a ceiling: no jittered delay is longer than cap (Retry-After aside)."""
    backoff = _seeded(base=1.0, cap=30.0, jitter=0.5)
    assert max(backoff.delay(20) for _ in range(200)) <= 30.0


def test_retry_after_longer_than_backoff_is_honoured() -> None:
    """The server's Retry-After wins when it asks for more than the backoff would wait."""
    backoff = _seeded(base=1.0, cap=60.0, jitter=0.5)
    assert backoff.delay(1, retry_after=20.0) >= 20.0


def test_retry_after_may_exceed_cap() -> None:
    """The cap bounds our own guesses, not the server's explicit request."""
    backoff = _seeded(base=1.0, cap=10.0, jitter=0.0)
    assert backoff.delay(1, retry_after=120.0) == 120.0


def test_short_retry_after_does_not_shorten_backoff() -> None:
    """A Retry-After shorter than the backoff delay does not make us retry sooner."""
    backoff = _seeded(base=8.0, cap=60.0, jitter=0.0)
    assert backoff.delay(2, retry_after=1.0) == 16.0


def test_time_scale_multiplies_every_delay() -> None:
    """--time-scale scales backoff and Retry-After alike."""
    backoff = _seeded(base=4.0, cap=60.0, jitter=0.0, time_scale=0.25)
    assert backoff.delay(1) == 1.0
    assert backoff.delay(2, retry_after=40.0) == 10.0


def test_time_scale_zero_turns_waiting_off() -> None:
    """time_scale=0 makes every delay zero: tests and demos never wait."""
    backoff = _seeded(base=4.0, jitter=0.5, time_scale=0.0)
    assert [backoff.delay(n, retry_after=30.0) for n in range(1, 8)] == [0.0] * 7


def test_scaled_returns_a_copy() -> None:
    """scaled() leaves the original untouched (Backoff is a frozen value)."""
    backoff = Backoff(base=2.0, jitter=0.0)
    fast = backoff.scaled(0.5)
    assert (fast.time_scale, backoff.time_scale) == (0.5, 1.0)
    assert fast.delay(1) == 1.0
    assert backoff.delay(1) == 2.0
    with pytest.raises(AttributeError):
        backoff.base = 3.0  # type: ignore[misc]


def test_gives_up_after_max_attempts() -> None:
    """gives_up(n) is False below max_attempts and True from it on."""
    backoff = Backoff(max_attempts=3)
    assert [backoff.gives_up(n) for n in range(1, 6)] == [False, False, True, True, True]


def test_defaults_are_sane() -> None:
    """The default policy retries several times and never waits more than a few minutes."""
    backoff = Backoff(rng=random.Random(0))
    assert backoff.max_attempts > 1
    assert not backoff.gives_up(1)
    assert 0 < backoff.delay(1) <= backoff.delay(100) <= backoff.cap * (1 + backoff.jitter)


NOW = 1_767_965_610.0  # Fri, 09 Jan 2026 13:33:30 GMT


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("Fri, 09 Jan 2026 13:35:00 GMT", 90.0),  # HTTP-date: 90 s after NOW
        ("Fri, 09 Jan 2026 13:35:00 -0000", 90.0),  # parses as naive: still GMT
        ("Fri, 09 Jan 2026 13:30:00 GMT", None),  # already past: the server's clock is behind
        ("Fri, 09 Jan 2026 13:33:30 GMT", None),  # now
        ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),  # capped: never a stalled run
        ("1e12", 3600.0),
        ("Friday, 09-Jan-26 13:35:00 GMT", 90.0),  # the obsolete RFC 850 form
        (None, None),
        ("", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("Fri, 32 Jan 2026 13:35:00 GMT", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    """Both forms of the header; what is neither leaves the decision to backoff."""
    assert parse_retry_after(header, now=NOW) == seconds


class _Clock:
    """Monotonic time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a deadline never sleeps")


def test_a_deadline_counts_from_its_start_and_expires_past_the_span() -> None:
    """Patience as a span: a Deadline started now (or at a given moment) tells what is
    left, and expires only once the span has passed, not at it."""
    clock = _Clock()
    patience = Patience.minutes(1.0)
    deadline = patience.start(clock)
    assert (deadline.left(), deadline.expired()) == (60.0, False)
    clock.now += 60.0
    assert (deadline.waited(), deadline.left(), deadline.expired()) == (60.0, 0.0, False)
    clock.now += 0.5
    assert (deadline.left(), deadline.expired()) == (0.0, True)
    earlier = patience.start(clock, since=clock.now - 30.0)
    assert (earlier.left(), patience.in_minutes) == (30.0, 1.0)
