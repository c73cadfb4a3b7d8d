"""The API's circuit breaker on a FakeClock: open after failures, one probe, close on an answer."""

from __future__ import annotations

import asyncio

import pytest

from apixo_batch.apixo.breaker import Breaker
from apixo_batch.clock import FakeClock
from apixo_batch.errors import TransportError
from apixo_batch.retry import Patience

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime


async def test_calls_go_until_the_threshold_then_wait_for_a_probe() -> None:
    """Five calls with no answer open it (told once); then calls wait, one probes after the
    backoff, its answer closes it (told once) and every waiting call goes on."""
    clock = FakeClock()
    news: list[tuple[bool, float]] = []
    breaker = Breaker(
        clock, threshold=5, base=1.0, cap=8.0, on_change=lambda o, s: news.append((o, s))
    )
    for _ in range(5):
        assert await breaker.admit() is False
        breaker.no_answer()
    assert breaker.open and [o for o, _ in news] == [True]
    waiting = [asyncio.ensure_future(breaker.admit()) for _ in range(3)]
    await clock.advance(0.5)
    assert not any(w.done() for w in waiting)
    await clock.advance(0.6)  # the first backoff (1 s) is over: one of them probes
    probes = [w for w in waiting if w.done()]
    assert len(probes) == 1 and probes[0].result() is True
    breaker.no_answer(probe=True)  # the probe failed: the next one after 2 s
    await clock.advance(1.5)
    assert sum(w.done() for w in waiting) == 1
    await clock.advance(0.6)
    second = [w for w in waiting if w.done() and w is not probes[0]]
    assert len(second) == 1 and second[0].result() is True
    breaker.answered(probe=True)
    await clock.advance(0.0)
    assert all(w.done() for w in waiting) and not breaker.open
    assert [o for o, _ in news] == [True, False]
    assert news[1][1] == pytest.approx(3.2)  # since the last answer, before the failures


async def test_an_answer_resets_the_count() -> None:
    """Failures must come in a row: an answer in between (any answer) resets the count."""
    breaker = Breaker(FakeClock(), threshold=3)
    for _ in range(2):
        breaker.no_answer()
    breaker.answered()
    for _ in range(2):
        breaker.no_answer()
    assert not breaker.open


async def test_a_waiting_call_gives_up_past_the_patience() -> None:
    """No answer for longer than the patience: a waiting call raises (nothing sent), at
    the patience, not at the next probe."""
    clock = FakeClock()
    breaker = Breaker(clock, threshold=1, base=100.0, cap=100.0, patience=Patience(30.0))
    breaker.no_answer()
    waiting = asyncio.ensure_future(breaker.admit())
    await clock.advance(29.0)
    assert not waiting.done()
    await clock.advance(2.0)
    with pytest.raises(TransportError) as info:
        await waiting
    assert info.value.sent is False
