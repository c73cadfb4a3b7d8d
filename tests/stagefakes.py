"""Fakes for driving one stage of the pipeline on a FakeClock (arq's burst mode, trio's clock).

* :class:`FakeApi`: the client's three calls, through a real RequestBucket on the fake
  clock; tasks end after a set time; faults are queued per call.
* :func:`memory_ledger`: a real :class:`Ledger` over an in-memory SQLite journal whose
  operations run inline (no thread: every answer is there at a known turn).
* :func:`drive`: runs a coroutine to its end on the loop's virtual time (looptime: it
  jumps whenever every task waits), so a test "waits" minutes in milliseconds and then
  asserts on counters.
* :func:`submitted_row`, :func:`succeeded_row`: a job journaled as the submitter, or
  the follower, leaves it (for the stages downstream).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from apixo_batch.apixo.client import Grant, TaskStatus
from apixo_batch.apixo.limits import Priority, RequestBucket
from apixo_batch.clock import FakeClock
from apixo_batch.events import Emitter, Event
from apixo_batch.journal import (
    InlineJournal,
    JobRow,
    JobState,
    Journal,
    Ledger,
    NewJob,
    SqliteLedger,
)

T = TypeVar("T")

INPUT = {"mode": "text-to-video", "prompt": "a fox", "duration": 5, "sound": False}


@dataclass
class FakeTask:
    task_id: str
    model: str
    input: dict[str, Any]
    ends_at: float
    fail: bool = False


@dataclass
class FakeApi:
    """Stands in for ApixoClient: ``submit``, ``status``, ``balance`` and its ``bucket``."""

    clock: FakeClock
    rpm: int = 9_000
    #: seconds (fake clock) from submit to the task's end
    duration: float = 30.0
    balance_usd: float = 1_000.0
    #: exceptions to raise, in order, instead of answering (per call kind)
    submit_faults: list[BaseException] = field(default_factory=list)
    status_faults: list[BaseException] = field(default_factory=list)
    #: seconds (fake clock) a submit's answer takes to come back
    submit_latency: float = 0.0
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    submits: int = 0
    polls: int = 0
    sent: list[str] = field(default_factory=list)  # job prompts whose submit left
    bucket: RequestBucket = field(init=False)
    _ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.bucket = RequestBucket(self.rpm, self.clock)

    async def submit(
        self,
        model: str,
        inp: dict[str, Any],
        *,
        request_type: str = "async",
        callback_url: str | None = None,
        provider: str = "auto",
        grant: Grant | None = None,
    ) -> str:
        if grant is None:
            await self.grant(Priority.SUBMIT)
        self.submits += 1
        self.sent.append(str(inp.get("prompt")))
        if self.submit_latency:
            await self.clock.sleep(self.submit_latency)
        if self.submit_faults:
            raise self.submit_faults.pop(0)
        task_id = f"task-{next(iter(self._ids))}"
        self.tasks[task_id] = FakeTask(
            task_id, model, dict(inp), self.clock.monotonic() + self.duration,
            fail="forbidden" in str(inp.get("prompt")),
        )  # fmt: skip
        return task_id

    async def grant(self, priority: int) -> Grant:
        return Grant(probe=False, ticket=await self.bucket.acquire(priority))

    def unused(self, grant: Grant) -> None:
        pass

    async def status(self, model: str, task_id: str) -> TaskStatus:
        await self.bucket.acquire(Priority.STATUS)
        self.polls += 1
        if self.status_faults:
            raise self.status_faults.pop(0)
        return self.answer(task_id)

    def answer(self, task_id: str) -> TaskStatus:
        """What a status call (or a callback) would say about ``task_id`` now."""
        task = self.tasks[task_id]
        if self.clock.monotonic() < task.ends_at:
            return TaskStatus(task_id=task_id, state="processing")
        if task.fail:
            return TaskStatus(task_id, "failed", fail_code="NSFW", fail_msg="rejected")
        return TaskStatus(
            task_id,
            "success",
            result_urls=(f"http://127.0.0.1:9/files/{task_id}/0.mp4",),
            cost_time_ms=int(self.duration * 1000),
        )

    async def balance(self) -> float:
        await self.bucket.acquire(Priority.CONTROL)
        return self.balance_usd


def new_job(i: int, *, cost: float | None = 0.3, prompt: str | None = None) -> NewJob:
    inp = {**INPUT, "prompt": prompt or f"scene {i}"}
    return NewJob(
        id=f"job-{i}",
        idx=i,
        model="kling-2-6",
        provider="auto",
        input_json=json.dumps(inp, sort_keys=True),
        input_hash=f"hash-{i}-{inp['prompt']}",
        filename=f"job-{i}.mp4",
        cost_usd=cost,
    )


async def memory_ledger(clock: FakeClock, jobs: Iterable[NewJob] = ()) -> Ledger:
    """A Ledger over an in-memory journal holding ``jobs`` (queued)."""
    journal = Journal(":memory:", lock=False)
    journal.sync(jobs, clock.wall())
    return SqliteLedger(InlineJournal(journal), clock)


def job_row(n: int, state: JobState = JobState.QUEUED, **changes: Any) -> JobRow:
    """Job ``n`` as a journal row in ``state``, built by hand (no journal): a task id once
    paid, a result URL once succeeded; ``changes`` set any other field."""
    paid = state is not JobState.QUEUED
    made = JobRow(
        id=f"job-{n}",
        idx=n,
        model="veo3-fast",
        provider="google",
        input_json='{"prompt": "a cat"}',
        input_hash="h",
        filename=f"job-{n}.mp4",
        cost_usd=0.5,
        in_file=True,
        state=state,
        task_id=f"task-{n}" if paid else None,
        request_type=None,
        attempts=1 if paid else 0,
        possibly_duplicated=False,
        changed_input_hash=None,
        submitted_at=None,
        completed_at=None,
        result_urls=("https://r/1.mp4",) if state is JobState.SUCCEEDED else (),
        expires_at=None,
        files=(),
        bytes=None,
        sha256=(),
        fail_code=None,
        fail_msg=None,
        cost_time_ms=None,
        arrived_via=None,
    )
    return replace(made, **changes) if changes else made


def row(ledger: Ledger, job_id: str) -> JobRow:
    """The job's row as the journal has it now (the inline journal answers at once)."""
    found = ledger_journal(ledger).get(job_id)
    assert found is not None
    return found


def ledger_journal(ledger: Ledger) -> Journal:
    return ledger._j.sync  # the tests' window into the in-memory store


def queued_rows(ledger: Ledger) -> list[JobRow]:
    return ledger_journal(ledger).in_states([JobState.QUEUED])


async def submitted_row(
    ledger: Ledger, job_id: str, task_id: str, *, request_type: str = "async"
) -> JobRow:
    """Journal ``job_id`` as the submitter does (``submitting``, then its task id)."""
    await ledger.mark_submitting(job_id, 1)
    await ledger.record_task_id(job_id, task_id, request_type, False)
    return row(ledger, job_id)


async def succeeded_row(
    ledger: Ledger, clock: FakeClock, job_id: str, urls: Iterable[str]
) -> JobRow:
    """Journal ``job_id`` as the follower leaves a success: ``succeeded`` with ``urls``."""
    await submitted_row(ledger, job_id, f"task-of-{job_id}")
    now = clock.wall()
    await ledger.record_success(
        job_id,
        result_urls=tuple(urls),
        completed_at=now,
        expires_at=now + 86_400.0,
        cost_time_ms=None,
        via="poll",
        clock_key="kling-2-6:5:",
        seconds=30.0,
    )
    return row(ledger, job_id)


class Recorder:
    """An event sink that keeps every event; ``kinds()`` and ``of(kind)`` read it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def emitter(self, clock: FakeClock) -> Emitter:
        return Emitter(self, clock)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


async def drive(clock: FakeClock, main: Coroutine[Any, Any, T], limit: float = 86_400.0) -> T:
    """Run ``main`` to its end; the loop's time jumps to the next deadline whenever all
    wait. Fails if it has not ended ``limit`` seconds (of the clock) later: a stage that
    waits on something that will never come gets there at once."""
    task = asyncio.ensure_future(main)
    started = clock.monotonic()
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError(f"stuck: the stage had not ended {clock.monotonic() - started:g} s on")
    return task.result()
