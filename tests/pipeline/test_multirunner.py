"""A run among several runners (pipeline/multirunner.py), two runners' ledgers on a real
PostgreSQL (tests/pg.py): a callback of the other runner's task passed on and settled
by its owner as its own; one's own followed task settled here; a local folder refused
once another host runs the campaign; the relay's JSON of a callback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import pg_job

from apixo_batch.apixo.client import TaskStatus
from apixo_batch.apixo.receiver import HandlerResult
from apixo_batch.clock import SystemClock
from apixo_batch.errors import PathError, StorageError
from apixo_batch.journal import Ledger, RunnerSpec, open_ledger
from apixo_batch.outputs.output import LocalOutput
from apixo_batch.pipeline.multirunner import (
    CallbackRelay,
    body_of,
    listen_for_relayed,
    refuse_second_host,
    runner_id,
    status_of,
)

GUARD_S = 30.0  # a guard against a hang: every wait ends on an event


class _Handler:
    """A follower's on_callback: what it was handed, and a barrier per call."""

    def __init__(self, answer: HandlerResult) -> None:
        self.answer: HandlerResult = answer
        self.got: list[TaskStatus] = []
        self.called = asyncio.Event()

    async def __call__(self, status: TaskStatus) -> HandlerResult:
        self.got.append(status)
        self.called.set()
        return self.answer


@pytest.fixture
async def two(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[str, Ledger, Ledger]]:
    """Two runners' ledgers of one campaign, on hosts alpha and beta; job-00's task t-a
    is alpha's, job-01's t-b beta's."""
    clock = SystemClock()
    ledgers = []
    for host in ("alpha", "beta"):
        spec = RunnerSpec(lease_s=30.0, grace_s=30.0, host=host, pid=1, version="t")
        ledger = await open_ledger(
            pg_url, "camp", clock, anchor=tmp_path / f"{host}.pg", runner=spec
        )
        ledgers.append(ledger)
    a, b = ledgers
    await a.reconcile([pg_job(n, "a heron") for n in range(3)], retry_failed=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for job, task, led in (("job-00", "t-a", a), ("job-01", "t-b", b)):
            conn.execute(
                "UPDATE jobs SET state = 'submitted', task_id = %s, owner = %s WHERE id = %s",
                (task, runner_id(led)(), job),
            )
    yield pg_url, a, b
    for ledger in ledgers:
        await ledger.close()


def test_a_callback_crosses_the_relay_whole() -> None:
    """body_of then status_of gives the same callback; a body of unknown fields or state
    is none."""
    status = TaskStatus("t-1", "success", ("https://r/1.mp4",), None, None, 1, 2, 3, "kling-2-6")
    assert status_of(json.loads(json.dumps(body_of(status)))) == status
    assert status_of({**body_of(status), "extra": 1}) is None
    assert status_of({**body_of(status), "state": "exploded"}) is None
    assert status_of({"state": "success"}) is None


async def test_another_runners_callback_is_settled_by_its_owner(two: Any) -> None:
    """Runner beta receives the callback of alpha's task: it answers accepted without
    handling it, and alpha's handler settles it as its own callback."""
    url, a, b = two
    mine, theirs = _Handler("accepted"), _Handler("unknown")
    alpha = CallbackRelay(a, mine, follows=lambda t: t == "t-a")
    beta = CallbackRelay(b, theirs, follows=lambda t: t == "t-b")
    async with contextlib.AsyncExitStack() as stack:
        me = runner_id(a)()
        assert me is not None
        await listen_for_relayed(url, me, alpha, SystemClock(), stack)
        status = TaskStatus("t-a", "success", ("https://r/a.mp4",))
        assert await beta.handle(status) == "accepted"
        await asyncio.wait_for(mine.called.wait(), GUARD_S)
        assert mine.got == [status] and theirs.got == []
        assert (beta.passed_on, alpha.taken) == (1, 1)


async def test_ones_own_task_and_an_unowned_one_are_handled_here(two: Any) -> None:
    """A callback of a task this runner follows, or of a task no other runner owns, is
    the follower's, answered as it says; nothing is passed on."""
    _url, a, _b = two
    handler = _Handler("unknown")
    alpha = CallbackRelay(a, handler, follows=lambda t: t == "t-a")
    assert await alpha.handle(TaskStatus("t-a", "success")) == "unknown"
    assert await alpha.handle(TaskStatus("t-nobody", "success")) == "unknown"
    assert [s.task_id for s in handler.got] == ["t-a", "t-nobody"]
    assert alpha.passed_on == 0


async def test_a_bodiless_relay_is_left_to_the_polls(two: Any) -> None:
    """A relayed callback without its body (too large to notify) is not handled: the
    owner's polls settle the task."""
    _url, a, _b = two
    handler = _Handler("accepted")
    alpha = CallbackRelay(a, handler, follows=lambda t: False)
    await alpha.relayed("t-a", None)
    await alpha.relayed("t-a", {"task_id": "t-other", "state": "success"})
    assert handler.got == [] and alpha.bodiless == 2


async def test_a_local_folder_is_refused_once_another_host_runs_the_campaign(
    two: Any, tmp_path: Path
) -> None:
    """A runner on alpha with a local output, beta live on the same campaign: one line
    naming beta (exit 2); declared a shared mount, it goes on."""
    _url, a, _b = two
    out = LocalOutput(tmp_path / "out")
    with pytest.raises(PathError) as refused:
        await refuse_second_host(a, out, "alpha", shared=False)
    line = str(refused.value)
    assert "\n" not in line and "beta" in line and "--shared-out" in line
    await refuse_second_host(a, out, "alpha", shared=True)


async def test_a_database_that_fails_leaves_the_callback_to_the_follower(
    two: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner cannot be looked up (the database failing): the callback is the
    follower's, answered as it says (the owner's polls settle its task)."""
    _url, _a, b = two
    handler = _Handler("duplicate")
    beta = CallbackRelay(b, handler, follows=lambda t: False)

    def failing(op: Any) -> Any:
        raise StorageError("the journal postgresql://… cannot be reached")

    monkeypatch.setattr(b.executor, "read", failing)
    assert await beta.handle(TaskStatus("t-a", "success")) == "duplicate"
    assert [s.task_id for s in handler.got] == ["t-a"] and beta.passed_on == 0
