"""Simulated tasks: how long each one takes, how it ends, what status answers say.

A task's state is a function of the time: pending until ``started_at``,
processing until ``ends_at``, then its outcome. Nothing ticks per task while
it runs; :class:`TaskBook` finishes tasks from a heap of end times, both on a
timer (so callbacks leave on time) and before every request (so the
concurrency count and the answers are exact to the millisecond).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..catalog.failcodes import codes_of, fail_message
from ..catalog.models import get_model
from .config import SimConfig

__all__ = ["SimTask", "TaskBook", "loop_time"]

Outcome = Literal["success", "failed"]


#: how early a timer may fire and still finish its task (seconds)
TIMER_SLACK_S = 0.005


def loop_time() -> float:
    """The running loop's clock (time.monotonic outside a loop: the same clock)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass(slots=True, eq=False)
class SimTask:
    """One task: what was asked, when it runs, how it ends. Times are loop seconds."""

    task_id: str
    model: str
    input: dict[str, Any]
    request_type: str
    callback_url: str | None
    provider: str
    origin: str  # scheme://host:port the submit came in on; result URLs point there
    cost: float
    created_at: float
    started_at: float
    ends_at: float
    outcome: Outcome
    fail_code: str | None
    create_ms: int
    results: int
    finished: bool = False
    complete_ms: int | None = None
    expires_at: float = math.inf
    #: when the client first learned the end: a status answer that showed it, or the
    #: callback's delivery (benchmarks measure detection delay and slots busy from it)
    seen_at: float | None = None
    #: the key that created it: only that key reads it (another answers "not found")
    owner: str = field(default="", repr=False)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def state_at(self, now: float) -> str:
        """pending, processing, success or failed at loop time ``now``."""
        if self.finished or now >= self.ends_at:
            return self.outcome
        return "processing" if now >= self.started_at else "pending"

    @property
    def state(self) -> str:
        """The state now."""
        return self.state_at(loop_time())

    @property
    def result_urls(self) -> list[str]:
        if self.outcome != "success":
            return []
        return [f"{self.origin}/files/{self.task_id}/{n}.mp4" for n in range(self.results)]

    def status_data(self, now: float, wall_ms: Callable[[float], int]) -> dict[str, Any]:
        """The ``data`` object of a status answer (or callback) at loop time ``now``."""
        state = self.state_at(now)
        data: dict[str, Any] = {"taskId": self.task_id, "state": state}
        if state == "success":
            result = {"resultUrls": self.result_urls}
            data["resultJson"] = json.dumps(result, separators=(",", ":"))
        elif state == "failed":
            data["failCode"] = self.fail_code
            data["failMsg"] = fail_message(self.fail_code or "")
        data["createTime"] = self.create_ms
        if state in ("success", "failed"):
            complete = self.complete_ms if self.complete_ms is not None else wall_ms(self.ends_at)
            data["completeTime"] = complete
            if state == "success":
                data["costTime"] = complete - self.create_ms
        return data


class TaskBook:
    """All tasks of one simulator, their timing, and the count of those still running."""

    def __init__(
        self,
        config: SimConfig,
        on_finish: Callable[[SimTask], None],
    ) -> None:
        self.config = config
        self.tasks: dict[str, SimTask] = {}
        self.running = 0
        #: tasks still running per key that created them
        self.running_by: dict[str, int] = {}
        self._on_finish = on_finish
        self._rng = random.Random(f"{config.seed}:tasks")
        self._fail_rng = random.Random(f"{config.seed}:task-fails")
        self._heap: list[tuple[float, int, SimTask]] = []
        self._seq = itertools.count()
        self._anchor: tuple[float, float] | None = None
        self.closed = False

    # --- time ----------------------------------------------------------------------------

    def wall_ms(self, at: float) -> int:
        """Unix milliseconds of loop time ``at`` (anchored once, so ms stay consistent)."""
        if self._anchor is None:
            self._anchor = (loop_time(), time.time())
        loop0, wall0 = self._anchor
        return int((wall0 + at - loop0) * 1000)

    def _duration(self, model: str, inp: Mapping[str, Any]) -> float:
        override = self.config.duration_override_s
        if override is not None:
            return self._rng.uniform(*override)
        spec = get_model(model)
        assert spec is not None  # the submit handler refused unknown models
        clock = spec.clock(inp)
        return self.config.scaled(self._rng.uniform(clock.typical_min, clock.typical_max))

    def _outcome(self, model: str, inp: Mapping[str, Any]) -> tuple[Outcome, str | None]:
        # Each model's own page names its codes (kling-2-6 has its own table).
        cfg = self.config
        codes = codes_of(model)
        pattern = cfg.bad_image_pattern
        if pattern and any(pattern in str(url) for url in inp.get("image_urls") or ()):
            return "failed", codes.image
        prompt = str(inp.get("prompt", "")).lower()
        for marker, code in cfg.fail_codes.items():
            if marker and marker.lower() in prompt:
                return "failed", code
        if any(word and word.lower() in prompt for word in cfg.fail_words):
            return "failed", codes.content
        if cfg.task_fail_rate and self._fail_rng.random() < cfg.task_fail_rate:
            return "failed", self._fail_rng.choice(codes.transient)
        return "success", None

    def _new_id(self) -> str:
        while True:
            # Random whatever the seed: task ids are unique across simulators (and
            # restarts), as the real API's are; only faults and timings are seeded.
            task_id = f"task_{secrets.token_hex(8)}"
            if task_id not in self.tasks:
                return task_id

    # --- life of a task ------------------------------------------------------------------

    def create(
        self,
        *,
        model: str,
        inp: dict[str, Any],
        request_type: str,
        callback_url: str | None,
        provider: str,
        origin: str,
        cost: float,
        owner: str = "",
    ) -> SimTask:
        """A new task, pending from now, finishing after its model's typical time."""
        now = loop_time()
        duration = self._duration(model, inp)
        outcome, fail_code = self._outcome(model, inp)
        task = SimTask(
            task_id=self._new_id(),
            model=model,
            input=inp,
            request_type=request_type,
            callback_url=callback_url,
            provider=provider,
            origin=origin,
            cost=cost,
            created_at=now,
            # Queued for the first 5-20 % of its time, like a provider queue.
            started_at=now + duration * self._rng.uniform(0.05, 0.2),
            ends_at=now + duration,
            outcome=outcome,
            fail_code=fail_code,
            create_ms=self.wall_ms(now),
            results=self.config.results_per_task,
            owner=owner,
        )
        self.tasks[task.task_id] = task
        self.running += 1
        self.running_by[owner] = self.running_by.get(owner, 0) + 1
        heapq.heappush(self._heap, (task.ends_at, next(self._seq), task))
        task.timer = asyncio.get_running_loop().call_at(task.ends_at, self.settle)
        return task

    def settle(self) -> None:
        """Finish every task whose end time has come."""
        if self.closed:
            return
        # A loop's timer may fire a little before its time (uvloop's are whole
        # milliseconds): a task due within that margin ends now, or its timer would be
        # spent with the task unfinished until some other request came.
        now = loop_time() + TIMER_SLACK_S
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, task = heapq.heappop(heap)
            self._finish(task)

    def _finish(self, task: SimTask) -> None:
        if task.finished:
            return
        task.finished = True
        task.complete_ms = self.wall_ms(task.ends_at)
        task.expires_at = task.ends_at + self.config.scaled(self.config.expiry_s)
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        self.running -= 1
        self.running_by[task.owner] -= 1
        self._on_finish(task)

    def finish_now(self, task_id: str) -> SimTask:
        """End the task at once with its planned outcome (tests)."""
        task = self.tasks[task_id]
        if not task.finished:
            now = loop_time()
            task.started_at = min(task.started_at, now)
            task.ends_at = now
            self._finish(task)
        return task

    def expire_now(self, task_id: str) -> None:
        """Make the task's result URLs answer 410 from now on."""
        task = self.finish_now(task_id)
        task.expires_at = loop_time()

    def timings(self) -> dict[str, Any]:
        """Each task's life in loop seconds since the first submit: created, ended, seen.

        Slots busy, the campaign's lower bound and the detection delay all follow from
        these (``GET /_sim/tasks``); ``ended`` is None while a task runs."""
        if not self.tasks:
            return {"now": 0.0, "tasks": []}
        t0 = min(t.created_at for t in self.tasks.values())

        def rel(at: float | None) -> float | None:
            return None if at is None else round(at - t0, 4)

        return {
            "now": rel(loop_time()),
            "tasks": [
                [rel(t.created_at), rel(t.ends_at if t.finished else None), rel(t.seen_at)]
                for t in self.tasks.values()
            ],
        }

    def close(self) -> None:
        """Stop all timers; tasks stay readable."""
        self.closed = True
        for task in self.tasks.values():
            if task.timer is not None:
                task.timer.cancel()
                task.timer = None
