"""What a run leaves the next of the account's rate: the shared one and each route's own."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from apixo_batch.apixo.limits import RequestBucket
from apixo_batch.clock import FakeClock
from apixo_batch.journal import Ledger
from apixo_batch.pipeline.learned import remember_rate, start_informed
from apixo_batch.planning.completion import CompletionModel

pytestmark = pytest.mark.looptime


class _Meta:
    """The two learned-rate calls of a ledger, over a dict."""

    def __init__(self) -> None:
        self.rpm: dict[str, float] = {}

    async def learned_rpm(self, account: str) -> float | None:
        return self.rpm.get(account)

    def remember_rpm(self, account: str, rpm: float | None) -> asyncio.Future[None]:
        if rpm is None:
            self.rpm.pop(account, None)
        else:
            self.rpm[account] = rpm
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def learned_completions(self) -> dict[str, list[float]]:
        return {}


def _ledger(meta: _Meta) -> Ledger:
    return cast(Ledger, cast(Any, meta))


async def test_each_routes_rate_is_kept_and_paces_its_route_from_the_next_start() -> None:
    """A run that paced status polls by a gate of their own keeps that route's rate under
    its own key; the next run starts with that gate, just under it, and the other routes
    at the shared rate (nothing learned for them here)."""
    clock = FakeClock()
    meta = _Meta()
    bucket = RequestBucket(9_000, clock)
    bucket.start_routes({"status": 1_350.0})
    bucket.sent()
    await remember_rate(_ledger(meta), bucket, "acct")
    assert meta.rpm == {"acct/status": pytest.approx(1_350.0)}
    following = RequestBucket(9_000, clock)
    await start_informed(_ledger(meta), following, CompletionModel(), "acct")
    assert set(following.routes) == {"status"}
    assert following.routes["status"].control.rate * 60 == pytest.approx(0.95 * 1_350, rel=0.02)
    assert following.rate_per_s * 60 > 8_000  # submits: the shared bucket's whole rate


async def test_a_route_no_longer_limited_on_its_own_is_forgotten() -> None:
    """The route's key is dropped once a run ends without a gate for it (its window was a
    shared one after all, or never met): a next run does not pace it on its own."""
    clock = FakeClock()
    meta = _Meta()
    meta.rpm["acct/submit"] = 1_350.0
    bucket = RequestBucket(9_000, clock)
    bucket.sent()
    await remember_rate(_ledger(meta), bucket, "acct")
    assert meta.rpm == {}
