"""The engine: wires journal, limits, client, poll scheduler and downloader for one run.

It owns every task it starts (one task group); shutdown flows from
:meth:`Engine.request_stop` or from the work running out. Its invariants:

1. a task id is committed to the journal before anything else happens with it;
2. a job with a task id is never submitted again (unless ``retry_failed``);
3. every API request passes the one :class:`~apixo_batch.limits.RequestBucket`;
4. fatal answers stop submits, never the polls and downloads of paid work;
5. files land whole (see :mod:`apixo_batch.download`);
6. time comes from the injected clock only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiohttp

from .catalog import RESULT_TTL_S, get_model
from .client import ApixoClient, TaskStatus
from .clock import Clock, SystemClock, sleep_or_wake
from .download import download_file
from .errors import (
    ApiError,
    ApixoError,
    DownloadError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ResultExpired,
    ServerError,
    TransportError,
)
from .events import Event, EventKind, EventSink
from .jobs import Campaign
from .journal import (
    AsyncJournal,
    JobRow,
    JobState,
    Journal,
    NewJob,
    SyncResult,
    hold_name,
    result_filename,
)
from .limits import MAX_CONCURRENT_CAP, RPM_CAP, ConcurrencyLimit, Priority, RequestBucket
from .receiver import CallbackReceiver, HandlerResult, callback_url_with_token, new_token
from .retry import Backoff
from .scheduler import CompletionModel, PollScheduler, Tracked
from .secret import ApiKey

__all__ = ["Engine", "RunOptions", "RunResult"]

S = JobState
Mode = Literal["run", "download"]


@dataclass(frozen=True)
class RunOptions:
    """Everything a run can be told (the CLI maps its flags onto this).

    Values the CLI would refuse are refused here too (ValueError naming the
    field), so an embedder cannot run above the API's limits by accident.
    """

    base_url: str = "https://api.apixo.ai/api/v1"
    state_path: Path | None = None
    max_concurrent: int = 900
    rpm: int = 9_000
    time_scale: float = 1.0
    callback_url: str | None = None
    #: (host, port) of the built-in callback receiver; required with callback_url
    listen: tuple[str, int] | None = None
    budget: float | None = None
    allow_partial: bool = False
    max_wait_min: float = 30.0
    retry_failed: bool = False
    download_concurrency: int = 16
    #: seconds an interrupted run waits for submit answers already on the wire
    stop_grace_s: float = 3.0
    mode: Mode = "run"

    def __post_init__(self) -> None:
        def whole(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"RunOptions.{name}: a whole number is needed, not {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"from {low} to {high:,}" if high is not None else f"at least {low}"
                raise ValueError(f"RunOptions.{name}: {value:,} is out of range ({bound})")

        def positive(name: str, *, zero: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or value != value or value < 0 or (value == 0 and not zero):
                need = "zero or more" if zero else "more than zero"
                raise ValueError(f"RunOptions.{name}: {value!r} is not a number {need}")

        whole("max_concurrent", 1, MAX_CONCURRENT_CAP)
        whole("rpm", 1, RPM_CAP)
        whole("download_concurrency", 1)
        positive("time_scale")
        positive("max_wait_min")
        positive("stop_grace_s", zero=True)
        if self.budget is not None:
            positive("budget")
        if self.mode not in ("run", "download"):
            raise ValueError(f"RunOptions.mode: {self.mode!r} is neither 'run' nor 'download'")


@dataclass
class RunResult:
    """What a run did and how it ended."""

    exit_code: int
    counts: dict[str, int]
    submitted: int = 0
    possibly_duplicated: int = 0
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    wall_s: float = 0.0
    spent_usd: float = 0.0
    unknown_price_jobs: int = 0
    fatal: str | None = None
    stop_reason: str | None = None
    interrupted: bool = False
    input_changed: list[str] = field(default_factory=list)
    arrived: dict[str, int] = field(default_factory=dict)
    fail_codes: dict[str, list[str]] = field(default_factory=dict)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    manifest: Path | None = None
    output_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class _Fetch:
    """A result to bring to disk."""

    id: str
    model: str
    filename: str
    result_urls: tuple[str, ...]
    #: succeeded in this run: no .part of an earlier run can be waiting for it
    fresh: bool = False


#: consecutive 404s to a status call before a task counts as gone
NOT_FOUND_GIVE_UP = 5
#: real seconds of drip a rate-bound request waits for, so requests leave in groups: far
#: fewer loop wake-ups per request, for at most this much more wait of one already queued
REQUEST_TICK_S = 0.1
#: unscaled seconds between two rounds of polls: the scheduler wakes at most once per
#: round and sends every poll due by then, plus those due within half a round (so a
#: task polled in one round is in the next one too, whatever its answer took). With
#: the budget loose a task is polled every 3 s (every model's documented interval is
#: 5 s), so rounds of this length see a completion about as soon as polls spread
#: evenly would. Requests sent together cost less CPU per request than the same
#: requests one wake-up each (README, Performance).
POLL_GAP_S = 3.0
#: real seconds the journal thread lets writes gather before it commits them together
#: (AsyncJournal). With 999 tasks in flight (bench overhead): 678 journal passes of
#: 11.8 writes on average instead of 2,146 of 3.7, so far fewer commits and wake-ups
#: of both threads, for at most 20 ms more per write (a task awaits about three)
COMMIT_DELAY_S = 0.02
#: unscaled seconds between two looks for the end of the run while many tasks are still
#: followed: the end is signalled (_maybe_idle) by what brings it, so this is only a
#: safety net, and every look is a wake-up of the loop (CPU)
IDLE_CHECK_BUSY_S = 5.0
#: how many tasks followed or downloading count as "many": below it the run may end
#: any moment, and it is looked for every 50 ms
_BUSY = 10


def clock_key(model: str, inp: dict[str, Any]) -> str:
    """Completion times are learned per model and what drives its clock."""
    return f"{model}:{inp.get('duration', '')}:{inp.get('resolution', '')}"


class Engine:
    """Runs one campaign to the end (or to a stop), resumable from its journal."""

    def __init__(
        self,
        campaign: Campaign,
        api_key: ApiKey | None,
        options: RunOptions,
        *,
        clock: Clock | None = None,
        on_event: EventSink | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.campaign = campaign
        self.options = options
        self.clock = clock or SystemClock()
        self._emit_to = on_event
        self._key = api_key
        self._session = session
        self.output_dir = campaign.output_dir
        self.state_path = options.state_path or self.output_dir / ".apixo-batch.sqlite"
        self.bucket = RequestBucket(options.rpm, self.clock, tick=REQUEST_TICK_S)
        self.concurrency = ConcurrencyLimit(options.max_concurrent)
        self.completions = CompletionModel()
        self.scheduler = PollScheduler(
            clock=self.clock,
            poll=self._poll,
            completions=self.completions,
            time_scale=options.time_scale,
            is_tight=self._budget_is_tight,
            poll_rate=self._poll_rate,
            min_gap=max(0.01, POLL_GAP_S * options.time_scale),
            early=POLL_GAP_S * options.time_scale / 2,
        )
        self.backoff = Backoff(base=1.0, cap=60.0, max_attempts=8, time_scale=options.time_scale)
        self._download_backoff = Backoff(
            base=0.5, cap=30.0, max_attempts=6, time_scale=options.time_scale
        )
        self._journal: AsyncJournal | None = None
        self._client: ApixoClient | None = None
        self._downloads: asyncio.Queue[_Fetch] = asyncio.Queue()
        self._downloading = 0
        self._stop = asyncio.Event()
        # Set when the run may have just become idle (a task or download ended near the
        # end, the key died): wakes _watch_idle, which otherwise looks only now and then.
        self._maybe_idle = asyncio.Event()
        self._stopping = False
        self._stop_submits: str | None = None  # submitting must stop (fatal, refusal)
        self._budget_reached: str | None = None  # admission stopped at --budget
        self._fatal: ApiError | None = None
        self._interrupted = False
        self._submitter_done = False
        self._submitter_blocked = False
        self._sending: set[asyncio.Task[None]] = set()  # submits whose request is out
        self._submit_tasks: set[asyncio.Task[None]] = set()
        self._journaling: set[asyncio.Future[None]] = set()  # task ids being committed
        self._submits_in_progress = 0
        self._submitted = 0
        self._retries = 0
        self._requests = 0
        self._spent = 0.0  # estimated USD of every task submitted, this run and before
        self._committed = 0.0  # _spent plus submits under way: what --budget checks
        self._unknown_price = 0
        self._seen_running: set[str] = set()
        self._started_mono = 0.0
        self._fatal_stops_all = False
        self._preflight_refused = False
        self._callback_url: str | None = None  # the public URL with the token: never printed
        self._receiver: CallbackReceiver | None = None
        self._early: dict[str, TaskStatus] = {}
        self._settling = 0  # results being recorded: the run is not idle meanwhile
        self._enqueued: set[str] = set()  # jobs handed to the downloader in this run
        self._early_seen: dict[str, asyncio.Event] = {}
        #: who holds each file name (Journal.file_owners): read once, at the first download,
        #: through one shared journal read, then kept up to date with what lands
        self._owners: dict[str, tuple[str, ...]] | None = None
        self._owners_read: asyncio.Future[dict[str, tuple[str, ...]]] | None = None

    # -- public -------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop as an interrupt does: no new submits, answers on the wire journaled, exit 130."""
        self._interrupted = True
        self._stop.set()

    async def run(self) -> RunResult:
        """Run to the end; returns the result (the manifest is written either way)."""
        self._started_mono = self.clock.monotonic()
        journal = Journal(self.state_path)
        self._journal = AsyncJournal(journal, commit_delay=COMMIT_DELAY_S)
        try:
            return await self._run()
        finally:
            await self._journal.close()

    def statistics(self) -> dict[str, Any]:
        """A snapshot for progress displays: requests, limits, in flight, spend."""
        bucket = self.bucket.statistics()
        conc = self.concurrency.statistics()
        return {
            "requests": self._requests,
            "rpm_limit": self.options.rpm,
            "rate_limited": bucket.rate_limited,
            "in_flight": conc.in_flight,
            "max_concurrent": conc.limit,
            "peak_in_flight": conc.peak,
            "downloading": self._downloading + self._downloads.qsize(),
            "spent_usd": self._spent,
            "budget_usd": self.options.budget,
            "stop_reason": self._stop_submits or self._budget_reached,
        }

    # -- helpers ------------------------------------------------------------
    def _emit(self, kind: EventKind, job_id: str | None = None, **data: Any) -> None:
        if self._emit_to is not None:
            self._emit_to(Event(kind, self.clock.wall(), job_id, data))

    @property
    def journal(self) -> AsyncJournal:
        assert self._journal is not None
        return self._journal

    @property
    def client(self) -> ApixoClient:
        assert self._client is not None
        return self._client

    def _poll_rate(self) -> float:
        # Polls may use what submits leave: most of the bucket while submits run.
        share = 0.6 if not self._submitter_done else 0.9
        return self.bucket.rate_per_s * share

    def _budget_is_tight(self) -> bool:
        # Requests are the bottleneck: every early poll now costs a submit later.
        return self.bucket.is_tight()

    async def _request(self, priority: int, call: Callable[[], Awaitable[Any]]) -> Any:
        await self.bucket.acquire(priority)
        self._requests += 1
        return await call()

    def _new_jobs(self) -> Any:
        for job in self.campaign.iter_jobs():
            spec = get_model(job.model)
            cost = spec.cost(job.input, self.campaign.prices) if spec else None
            yield NewJob(
                id=job.id,
                idx=job.index,
                model=job.model,
                provider=job.provider,
                input_json=json.dumps(dict(job.input), sort_keys=True, ensure_ascii=False),
                input_hash=job.input_hash,
                filename=job.filename,
                cost_usd=cost,
            )

    # -- the run ------------------------------------------------------------
    async def _run(self) -> RunResult:
        now = self.clock.wall()
        # Recover and requeue before syncing, so an input edited meanwhile is the one sent.
        recovered = await self.journal.read(lambda j: j.recover_interrupted_submits(now))
        if self.options.retry_failed and self.options.mode == "run":
            await self.journal.read(lambda j: j.requeue_failed(now))
        synced: SyncResult = await self.journal.read(lambda j: j.sync(self._new_jobs(), now))
        for job_id in synced.changed_after_submit or []:
            self._emit(
                "warning",
                job_id,
                message=(
                    f"job {job_id}: its input changed after it was submitted; the paid task "
                    "follows the submitted input. Give the job a new id to generate the new one."
                ),
            )
        if recovered:
            self._emit(
                "warning",
                message=f"{recovered} submit(s) were cut off by a crash and will be sent again "
                "(counted as possibly duplicated)",
            )
        totals = await self.journal.read(lambda j: j.totals())
        self._spent = self._committed = totals["spent_known_usd"]
        # Yesterday's completion times: today's first polls start informed.
        for key, samples in (await self.journal.read(lambda j: j.learned_completions())).items():
            for seconds in samples:
                self.completions.add(key, seconds)

        in_flight = await self.journal.read(lambda j: j.in_states([S.SUBMITTED]))
        queued_cost, unknown, queued = await self.journal.read(lambda j: j.queued_cost())
        counts = await self.journal.read(lambda j: j.counts())
        per_model = await self.journal.read(lambda j: j.counts_by_model())
        self._emit(
            "started",
            per_model=per_model,
            spent_usd=round(self._spent, 4),
            jobs=sum(counts.values()),
            queued=queued if self.options.mode == "run" else 0,
            in_flight=len(in_flight),
            to_download=counts.get(S.SUCCEEDED.value, 0),
            done=counts.get(S.DONE.value, 0),
            estimated_cost_usd=round(queued_cost, 4),
            unknown_price_jobs=unknown,
        )
        needs_api = bool(in_flight) or (self.options.mode == "run" and queued > 0)
        if needs_api and self._key is None:
            raise ApixoError("APIXO_API_KEY is not set (or give --api-key-file)")

        if not needs_api and counts.get(S.SUCCEEDED.value, 0) == 0:
            return await self._finish_run(synced)  # nothing to do: zero requests

        async with contextlib.AsyncExitStack() as stack:
            if needs_api:
                assert self._key is not None
                self._client = ApixoClient(
                    self._key,
                    self.options.base_url,
                    session=self._session,
                    connections=min(256, self.options.max_concurrent + 8),
                )
                stack.push_async_callback(self._client.close)
            dl_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60),
                connector=aiohttp.TCPConnector(limit=self.options.download_concurrency),
            )
            stack.push_async_callback(dl_session.close)

            if self.options.callback_url and self.options.listen and needs_api:
                await self._start_receiver(stack)
            if self.options.mode == "run" and queued > 0:
                proceed = await self._preflight(queued_cost, unknown, queued)
                if not proceed:
                    return await self._finish_run(synced)
            await self._work(in_flight, dl_session, submit=self.options.mode == "run")
        return await self._finish_run(synced)

    async def _start_receiver(self, stack: contextlib.AsyncExitStack) -> None:
        """Listen for callbacks; the token is made once per campaign and kept in the journal."""
        assert self.options.callback_url and self.options.listen
        token = await self.journal.read(lambda j: j.get_meta("callback_token"))
        if token is None:
            token = new_token()
            await self.journal.write(lambda j: j.set_meta_in_tx("callback_token", token))
        host, port = self.options.listen
        try:
            self._callback_url = callback_url_with_token(self.options.callback_url, token)
            self._receiver = CallbackReceiver(host, port, token, self._on_callback)
            await self._receiver.start()
        except (OSError, ValueError) as exc:
            raise ApixoError(f"callback mode: {exc}") from None
        stack.push_async_callback(self._receiver.stop)

    async def _on_callback(self, status: TaskStatus) -> HandlerResult:
        """A callback passed the token check: settle its task, or wait briefly for it."""
        t = self.scheduler.get(status.task_id)
        if t is None:
            row = await self.journal.read(lambda j: j.by_task(status.task_id))
            if row is not None:
                return "duplicate"  # already settled (or adopted later): nothing to do
            if self._submits_in_progress == 0:
                return "unknown"
            if not status.finished:
                return "accepted"  # nothing to settle; the final callback or a poll will come
            # The submit answer may still be on its way to the journal: hold the
            # callback for it rather than lose it (the submit path picks it up).
            seen = self._early_seen.setdefault(status.task_id, asyncio.Event())
            self._early[status.task_id] = status
            try:
                await asyncio.wait_for(seen.wait(), timeout=5.0)
            except TimeoutError:
                self._early.pop(status.task_id, None)
                return "unknown"
            finally:
                self._early_seen.pop(status.task_id, None)
            return "accepted"
        if not status.finished:
            return "accepted"
        if t.settled:
            return "duplicate"
        await self._finished(t, status, via="callback")
        self.scheduler.forget(t.task_id)
        return "accepted"

    async def _preflight(self, cost: float, unknown: int, queued: int) -> bool:
        """Read the balance before the first submit; refuse when it cannot cover the rest."""
        try:
            balance: float = await self._request(Priority.CONTROL, self.client.balance)
        except ApiError as exc:
            if exc.fatal:
                self._fatal = exc
                self._stop_submits = f"the API refused: {exc}"
                self._emit("stopped", reason=self._stop_submits)
                return False
            self._emit("warning", message=f"could not read the balance ({exc}); going on")
            return True
        except (TransportError, ApixoError) as exc:
            self._emit("warning", message=f"could not read the balance ({exc}); going on")
            return True
        note = f" (+{unknown} job(s) of unknown price)" if unknown else ""
        if self.options.budget is not None:
            # This run may spend no more than what the budget has left.
            cost = min(cost, max(0.0, self.options.budget - self._spent))
        if cost > balance + 1e-9 and not self.options.allow_partial:
            self._stop_submits = (
                f"balance ${balance:.2f} cannot cover the estimated ${cost:.2f}{note} of the "
                f"{queued} job(s) left; nothing submitted (use --allow-partial to submit anyway)"
            )
            self._emit("stopped", reason=self._stop_submits, balance_usd=balance)
            self._preflight_refused = True
            return False
        self._emit(
            "preflight",
            message=f"balance ${balance:.2f}, estimated ${cost:.2f}{note} for {queued} job(s)",
            balance_usd=balance,
            estimated_usd=round(cost, 4),
            unknown_price_jobs=unknown,
        )
        return True

    async def _work(
        self, in_flight: list[JobRow], dl_session: aiohttp.ClientSession, *, submit: bool
    ) -> None:
        now_wall, now_mono = self.clock.wall(), self.clock.monotonic()
        for row in in_flight:
            self.concurrency.adopt()
            self._track(row, now_wall, now_mono, adopted=True)
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._download_worker(dl_session))
                for _ in range(self.options.download_concurrency)
            ]
            feeder = tg.create_task(self._feed_downloads())
            sched = tg.create_task(self.scheduler.run())
            submitter = tg.create_task(self._submitter(tg)) if submit else None
            if submitter is None:
                self._submitter_done = True
            watcher = tg.create_task(self._watch_idle(feeder))
            stop_wait = tg.create_task(self._stop.wait())
            try:
                await asyncio.wait({watcher, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await self._wind_down(
                    [*workers, feeder, sched, watcher, stop_wait],
                    submitter,
                )

    async def _wind_down(
        self, tasks: list[asyncio.Task[Any]], submitter: asyncio.Task[None] | None
    ) -> None:
        """Stop in order: no new submits, answers on the wire journaled, the rest cancelled."""
        self._stopping = True
        if submitter is not None:
            submitter.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.stop_grace_s
        # Submits sent before the stop get until the deadline to be answered and journaled
        # (a loop, not one snapshot: a send may have started as the stop came).
        while self._sending and loop.time() < deadline:
            await asyncio.wait(set(self._sending), timeout=deadline - loop.time())
        # The rest wait for the bucket or a backoff: nothing of theirs is on the wire.
        for task in (*tasks, *self._submit_tasks):
            task.cancel()
        self.scheduler.close()
        while self._journaling:
            await asyncio.wait(set(self._journaling))

    def _in_hand(self) -> int:
        """Tasks followed plus downloads under way: the run cannot end while any are."""
        return self.scheduler.tracked + self._downloading

    def _note_progress(self) -> None:
        """A task, a submit or a download ended: if the run may be ending, wake _watch_idle."""
        # At most the threshold, not under it: a task being settled or left pending is
        # still followed at this moment. Once the key is refused, the run ends with
        # tasks still followed, as soon as its submits and downloads are done.
        if self._fatal_stops_all or self._in_hand() <= _BUSY:
            self._maybe_idle.set()

    async def _watch_idle(self, feeder: asyncio.Task[None]) -> None:
        busy_every = max(0.05, IDLE_CHECK_BUSY_S * self.options.time_scale)
        while True:
            # With many tasks still followed the run cannot be about to end: wait to be
            # told (_note_progress), with a long timeout as a safety net; near the end,
            # look every 50 ms.
            if self._in_hand() >= _BUSY:
                await sleep_or_wake(self.clock, self._maybe_idle, busy_every)
            else:
                await self.clock.sleep(0.05)
            self._maybe_idle.clear()
            downloads_idle = feeder.done() and self._downloads.empty() and self._downloading == 0
            nothing_tracked = (
                self.scheduler.tracked == 0
                and self._submits_in_progress == 0
                and self._settling == 0
            )
            if nothing_tracked and downloads_idle:
                if self._submitter_done:
                    return
                if self._submitter_blocked:
                    # Every permit is held by a task we stopped following (max-wait):
                    # nothing can free one in this run.
                    self._stop_submits = self._stop_submits or (
                        "tasks past --max-wait hold every concurrency slot"
                    )
                    return
            if self._fatal_stops_all and downloads_idle and self._submits_in_progress == 0:
                # The key no longer works: polls are pointless, but the files of what
                # already succeeded need no key and were allowed to land first.
                return

    # -- submitting ---------------------------------------------------------
    async def _submitter(self, tg: asyncio.TaskGroup) -> None:
        """Admit queued jobs in file order, one concurrency permit each, until told to stop."""
        try:
            rows = self._rows_in(S.QUEUED, limit=500, file_only=True)
            async with contextlib.aclosing(rows):
                async for row in rows:
                    if not await self._admit(row, tg):
                        break
        finally:
            self._submitter_blocked = False
            self._submitter_done = True

    async def _admit(self, row: JobRow, tg: asyncio.TaskGroup) -> bool:
        """Start ``row``'s submit if budget and limits allow; False means stop admitting."""
        if self._stop_submits is not None or self._stopping:
            return False
        if self.options.budget is not None:
            if row.cost_usd is None:
                self._unknown_price += 1
                if self._unknown_price == 1:
                    self._emit(
                        "warning",
                        message="jobs of unknown price are not submitted under "
                        "--budget (add their price to the job file's prices:)",
                    )
                return True
            if self._committed + row.cost_usd > self.options.budget + 1e-9:
                # Only admission stops: submits already admitted fit the budget.
                self._budget_reached = (
                    f"--budget ${self.options.budget:.2f} reached (estimated spend "
                    f"${self._committed:.2f}); the remaining jobs stay pending"
                )
                self._emit("stopped", reason=self._budget_reached)
                return False
            self._committed += row.cost_usd
        self._submitter_blocked = True
        await self.concurrency.acquire()
        self._submitter_blocked = False
        if self._stop_submits is not None or self._stopping:
            self.concurrency.release()
            return False
        self._submits_in_progress += 1
        task = tg.create_task(self._submit_one(row))
        self._submit_tasks.add(task)
        task.add_done_callback(self._submit_tasks.discard)
        return True

    async def _submit_one(self, row: JobRow) -> None:
        attempt = 0
        ambiguous = False
        request_type: Literal["async", "callback"] = "callback" if self._callback_url else "async"
        marked = False
        try:
            while True:
                await self.bucket.acquire(Priority.SUBMIT)
                if self._stopping or self._stop_submits is not None:
                    await self._hand_back(row, marked=marked, ambiguous=ambiguous)
                    return
                if not marked:
                    await self.journal.transition(
                        row.id, S.SUBMITTING, self.clock.wall(), attempts=row.attempts + 1
                    )
                    marked = True
                    if self._stopping or self._stop_submits is not None:
                        # Stopped while the mark was being written: nothing was sent yet.
                        await self._hand_back(row, marked=True, ambiguous=ambiguous)
                        return
                self._requests += 1
                send = asyncio.ensure_future(
                    self.client.submit(
                        row.model,
                        row.input,
                        request_type=request_type,
                        callback_url=self._callback_url,
                        provider=row.provider,
                    )
                )
                try:
                    task_id = await self._on_the_wire(send)
                except asyncio.CancelledError:
                    if send.done() and not send.cancelled() and send.exception() is None:
                        # The answer came in the same turn as the cancel: keep the paid id.
                        await asyncio.shield(
                            self._record_task_id(row, send.result(), request_type, ambiguous)
                        )
                    raise
                except RateLimited as exc:
                    self.bucket.rate_limited(exc.retry_after, self.options.time_scale)
                    attempt += 1
                    self._retries += 1
                    self._emit("rate-limited", row.id, retry_after=exc.retry_after)
                    await self.clock.sleep(self.backoff.delay(min(attempt, 6), exc.retry_after))
                    continue
                except (ServerError, TransportError) as exc:
                    # A reset or gateway timeout may hide a created task: flag it.
                    if isinstance(exc, TransportError) or (
                        isinstance(exc, ServerError) and exc.status in (502, 504)
                    ):
                        ambiguous = True
                    attempt += 1
                    self._retries += 1
                    if self.backoff.gives_up(attempt):
                        await self._fail_submit(row, "SUBMIT_ERROR", str(exc), ambiguous)
                        return
                    self._emit("retried", row.id, call="submit", attempt=attempt, error=str(exc))
                    await self.clock.sleep(self.backoff.delay(attempt))
                    continue
                except ApiError as exc:
                    if exc.fatal:
                        self._fatal = self._fatal or exc
                        if self._stop_submits is None:
                            self._stop_submits = f"the API refused a submit: {exc}"
                            self._emit("stopped", reason=self._stop_submits)
                        await self._hand_back(row, marked=True, ambiguous=ambiguous)
                        return
                    code = (
                        "INPUT_REJECTED"
                        if isinstance(exc, InvalidRequest)
                        else (
                            "MODEL_NOT_FOUND" if isinstance(exc, NotFound) else f"HTTP_{exc.status}"
                        )
                    )
                    await self._fail_submit(row, code, exc.api_message, ambiguous)
                    return
                now = self.clock.wall()
                await asyncio.shield(self._record_task_id(row, task_id, request_type, ambiguous))
                self._submitted += 1
                self._spent += row.cost_usd or 0.0
                self._emit("submitted", row.id, task_id=task_id, model=row.model)
                fresh = replace(row, task_id=task_id, submitted_at=now, request_type=request_type)
                tracked = self._track(fresh, now, self.clock.monotonic(), adopted=False)
                early = self._early.pop(task_id, None)
                if early is not None:
                    await self._finished(tracked, early, via="callback")
                    self.scheduler.forget(task_id)
                    seen = self._early_seen.get(task_id)
                    if seen is not None:  # the callback may have stopped waiting already
                        seen.set()
                return
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._sending.discard(current)
            self._submits_in_progress -= 1
            self._note_progress()

    async def _hand_back(self, row: JobRow, *, marked: bool, ambiguous: bool) -> None:
        """An admitted job goes back to the queue unsent (or sent without a task id)."""
        if marked:
            await self.journal.transition(
                row.id,
                S.QUEUED,
                self.clock.wall(),
                possibly_duplicated=int(row.possibly_duplicated or ambiguous),
            )
        self.concurrency.release()

    def _record_task_id(
        self, row: JobRow, task_id: str, request_type: str, ambiguous: bool
    ) -> asyncio.Future[None]:
        """Commit a task id (invariant 1). The write is its own task, tracked and awaited
        at shutdown, so that no interrupt can stop a paid id from reaching the journal."""
        now = self.clock.wall()
        write = asyncio.ensure_future(
            self.journal.transition(
                row.id,
                S.SUBMITTED,
                now,
                task_id=task_id,
                submitted_at=now,
                request_type=request_type,
                possibly_duplicated=int(row.possibly_duplicated or ambiguous),
                fail_code=None,
                fail_msg=None,
            )
        )
        self._journaling.add(write)
        write.add_done_callback(self._journaling.discard)
        return write

    async def _on_the_wire(self, send: asyncio.Future[str]) -> str:
        """Await a sent submit; an interrupt waits briefly for its answer rather than drop it."""
        task = asyncio.current_task()
        assert task is not None
        self._sending.add(task)
        try:
            return await send
        except BaseException:
            self._sending.discard(task)
            raise
        # On success the task stays in _sending until _submit_one has journaled the id
        # and emitted "submitted": an interrupt waits for that too (see _submit_one).

    async def _fail_submit(self, row: JobRow, code: str, message: str, ambiguous: bool) -> None:
        await self.journal.transition(
            row.id,
            S.FAILED,
            self.clock.wall(),
            fail_code=code,
            fail_msg=message[:500],
            possibly_duplicated=int(row.possibly_duplicated or ambiguous),
        )
        self.concurrency.release()
        self._emit("failed", row.id, model=row.model, fail_code=code, fail_msg=message[:500])

    # -- following tasks ----------------------------------------------------
    def _track(self, row: JobRow, now_wall: float, now_mono: float, *, adopted: bool) -> Tracked:
        spec = get_model(row.model)
        inp = row.input
        if spec is None or row.task_id is None:
            raise ApixoError(f"job {row.id}: model {row.model!r} is not in the catalog")
        mc = spec.clock(inp)
        age = max(0.0, now_wall - (row.submitted_at or now_wall))
        tracked = Tracked(
            job_id=row.id,
            filename=row.filename,
            task_id=row.task_id,
            model=row.model,
            clock_key=clock_key(row.model, inp),
            model_clock=mc,
            submitted_at=now_mono - age,
            followed_since=now_mono,
            callback_mode=row.request_type == "callback" and not adopted,
        )
        due = None
        if adopted:
            # Resuming: the first poll comes as soon as the task could plausibly be done.
            first = (
                tracked.submitted_at + self.scheduler.first_delay(tracked) * self.options.time_scale
            )
            due = max(now_mono, first)
        self.scheduler.add(tracked, due=due)
        return tracked

    async def _poll(self, t: Tracked) -> bool:
        if self._stopping or self._fatal_stops_all:
            return False  # no request: the run is ending
        if self.clock.monotonic() - t.followed_since > self.options.max_wait_min * 60.0:
            self._emit(
                "pending",
                t.job_id,
                task_id=t.task_id,
                model=t.model,
                message=f"still running after --max-wait {self.options.max_wait_min:g} min; "
                "left pending for the next run or `download`",
            )
            self._note_progress()
            return True  # stop following in this run; its permit stays taken
        try:
            status: TaskStatus = await self._request(
                Priority.STATUS, lambda: self.client.status(t.model, t.task_id)
            )
        except RateLimited as exc:
            self.bucket.rate_limited(exc.retry_after, self.options.time_scale)
            self._emit("rate-limited", t.job_id, retry_after=exc.retry_after)
            return False
        except (ServerError, TransportError) as exc:
            self._retries += 1
            self._emit("retried", t.job_id, call="status", error=str(exc))
            return False
        except ApiError as exc:
            if exc.fatal:
                # Without a working key nothing more can be learned in this run.
                self._fatal = self._fatal or exc
                self._fatal_stops_all = True
                self._note_progress()
                self._stop_submits = self._stop_submits or f"the API refused a poll: {exc}"
                return False
            if isinstance(exc, NotFound):
                t.not_found += 1
                if t.not_found >= NOT_FOUND_GIVE_UP:
                    # Asked again and again, APIXO says the task does not exist: provably gone.
                    gone = TaskStatus(
                        task_id=t.task_id,
                        state="failed",
                        fail_code="TASK_NOT_FOUND",
                        fail_msg=f"APIXO answered 404 for this task {t.not_found} times",
                    )
                    await self._finished(t, gone, via="poll")
                    return True
            self._retries += 1
            self._emit("retried", t.job_id, call="status", error=str(exc))
            return False
        t.not_found = 0
        if not status.finished:
            if t.job_id not in self._seen_running and status.state == "processing":
                self._seen_running.add(t.job_id)
                self._emit("running", t.job_id, task_id=t.task_id, model=t.model)
            return False
        await self._finished(t, status, via="poll")
        return True

    async def _finished(self, t: Tracked, status: TaskStatus, *, via: str) -> None:
        if t.settled:
            return  # a callback and a poll raced: the first one settles it
        t.settled = True
        self._settling += 1
        try:
            await self._settle(t, status, via)
        finally:
            self._settling -= 1
            self._note_progress()

    async def _settle(self, t: Tracked, status: TaskStatus, via: str) -> None:
        now = self.clock.wall()
        self._seen_running.discard(t.job_id)
        cost_ms = status.cost_time_ms
        if status.state == "success":
            completed = (status.complete_time_ms / 1000.0) if status.complete_time_ms else now
            seconds = (
                cost_ms / 1000.0 if cost_ms else self.clock.monotonic() - t.submitted_at
            ) / self.options.time_scale
            key = t.clock_key

            def succeed(j: Journal) -> None:
                j.transition(
                    t.job_id,
                    S.SUCCEEDED,
                    now,
                    result_urls=list(status.result_urls),
                    completed_at=completed,
                    expires_at=completed + RESULT_TTL_S * self.options.time_scale,
                    cost_time_ms=cost_ms,
                    arrived_via=via,
                )
                j.record_completion(key, seconds, now)

            # Not durable: after a power loss the task is simply polled again.
            await self.journal.write(succeed, durable=False)
            self._emit(
                "succeeded",
                t.job_id,
                task_id=t.task_id,
                model=t.model,
                via=via,
                urls=len(status.result_urls),
            )
            self.completions.add(key, seconds)
            self._enqueue(_Fetch(t.job_id, t.model, t.filename, status.result_urls, fresh=True))
        else:
            await self.journal.transition(
                t.job_id,
                S.FAILED,
                now,
                fail_code=status.fail_code or "UNKNOWN",
                fail_msg=status.fail_msg or "",
                completed_at=(status.complete_time_ms or 0) / 1000.0 or now,
                arrived_via=via,
            )
            self._emit(
                "failed",
                t.job_id,
                task_id=t.task_id,
                model=t.model,
                fail_code=status.fail_code,
                fail_msg=status.fail_msg,
            )
        self.concurrency.release()

    # -- downloading --------------------------------------------------------
    async def _rows_in(
        self, state: JobState, *, limit: int, file_only: bool
    ) -> AsyncGenerator[JobRow, None]:
        """Jobs in ``state``, in file order, read from the journal a page at a time."""
        after_idx, after_id = -1, None
        while True:
            page = await self.journal.read(
                partial(
                    Journal.page,
                    states=[state],
                    after_idx=after_idx,
                    after_id=after_id,
                    limit=limit,
                    file_only=file_only,
                )
            )
            if not page:
                return
            for row in page:
                after_idx, after_id = row.idx, row.id
                yield row

    async def _feed_downloads(self) -> None:
        async for row in self._rows_in(S.SUCCEEDED, limit=200, file_only=False):
            while self._downloads.qsize() > 500:
                await self.clock.sleep(0.05)
            self._enqueue(_Fetch(row.id, row.model, row.filename, row.result_urls))

    def _enqueue(self, fetch: _Fetch) -> None:
        # The feeder pages through `succeeded` rows while fresh successes arrive: once each.
        if fetch.id not in self._enqueued:
            self._enqueued.add(fetch.id)
            self._downloads.put_nowait(fetch)

    async def _download_worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            row = await self._downloads.get()
            self._downloading += 1
            try:
                await self._download(row, session)
            except Exception as exc:
                # One result's trouble must not tear the run down: it stays `succeeded`
                # for `download` or the next run.
                self._emit("warning", row.id, message=f"download of {row.id} failed: {exc}")
            finally:
                self._downloading -= 1
                self._note_progress()

    def _dest(self, filename: str, n: int) -> Path:
        return self.output_dir / result_filename(filename, n)

    async def _clashes(self, row: _Fetch) -> list[tuple[str, str]]:
        """(file, its holder) for each file of ``row`` that another job holds.

        Both ways: ``row``'s extra results (``<name>-2.mp4``) against other jobs' names,
        and ``row``'s own name against what other jobs landed (a job ``a-2`` added after
        job ``a`` landed ``a-2.mp4`` as its second result), in this run or an earlier one.
        """
        if self._owners is None:
            if self._owners_read is None:
                self._owners_read = self.journal.read(lambda j: j.file_owners())
            read = self._owners_read
            try:
                # Shielded: a worker cancelled while waiting must not cancel the others' read.
                self._owners = await asyncio.shield(read)
            except Exception:
                if read.done() and self._owners_read is read:
                    self._owners_read = None  # a failed read is tried again, not kept
                raise
        clashes: list[tuple[str, str]] = []
        for n in range(len(row.result_urls)):
            name = result_filename(row.filename, n)
            others = [o for o in self._owners.get(name.casefold(), ()) if o != row.id]
            if others:
                clashes.append((name, others[0]))
        return clashes

    @staticmethod
    def _landed(files: list[str], hashes: list[str], total: int) -> dict[str, Any]:
        # Results that landed before a later one failed or expired stay journaled as the
        # job's files: they are paid for, and no other job may write over them.
        return {"files": files, "bytes": total, "sha256": hashes} if files else {}

    async def _download(self, row: _Fetch, session: aiohttp.ClientSession) -> None:
        files: list[str] = []
        hashes: list[str] = []
        total = 0
        clashes = await self._clashes(row)
        if clashes:
            # Overwriting would lose a paid result: this one waits, with its URLs journaled,
            # until the user renames one of the two.
            named = ", ".join(f"{name} (job {owner}'s file)" for name, owner in clashes)
            self._emit(
                "warning",
                row.id,
                message=(
                    f"job {row.id}: its results would be written over {named}; nothing "
                    "was downloaded. Change output.filename so the names differ (e.g. "
                    "'{id}_.mp4'; a job gone from the job file keeps its names until it "
                    "is back in it), then run `apixo-batch download`: the result stays "
                    "downloadable until its URLs expire"
                ),
            )
            return
        try:
            for n, url in enumerate(row.result_urls):
                dest = self._dest(row.filename, n)
                got = await download_file(
                    session,
                    url,
                    dest,
                    clock=self.clock,
                    backoff=self._download_backoff,
                    fresh=row.fresh,
                )
                files.append(str(dest.relative_to(self.output_dir)))
                if self._owners is not None:
                    hold_name(self._owners, dest.name, row.id)
                hashes.append(got.sha256)
                total += got.bytes
        except ResultExpired as exc:
            await self.journal.transition(
                row.id,
                S.EXPIRED,
                self.clock.wall(),
                fail_code="RESULT_EXPIRED",
                fail_msg=str(exc),
                **self._landed(files, hashes, total),
            )
            self._emit("expired", row.id, model=row.model, message=str(exc))
            return
        except DownloadError as exc:
            if files:
                await self.journal.transition(
                    row.id,
                    S.SUCCEEDED,
                    self.clock.wall(),
                    durable=False,
                    **self._landed(files, hashes, total),
                )
            self._retries += 1
            self._emit(
                "retried",
                row.id,
                call="download",
                error=f"{exc}; left for `apixo-batch download`",
            )
            return
        # Not durable: after a power loss the file is verified or fetched again.
        await self.journal.transition(
            row.id,
            S.DONE,
            self.clock.wall(),
            durable=False,
            files=files,
            bytes=total,
            sha256=hashes,
        )
        self._emit("downloaded", row.id, model=row.model, files=files, bytes=total)

    # -- the end --------------------------------------------------------------
    async def _finish_run(self, synced: SyncResult) -> RunResult:
        from .report import write_manifest

        manifest = await self.journal.read(
            lambda j: write_manifest(j, self.output_dir / "manifest.jsonl")
        )
        counts = manifest.counts
        totals = await self.journal.read(lambda j: j.totals())
        if self._interrupted:
            code = 130
        elif self._fatal is not None or self._preflight_refused:
            code = 3
        elif counts.get("done", 0) == sum(counts.values()):
            code = 0
        else:
            code = 1
        stats = self.bucket.statistics()
        result = RunResult(
            exit_code=code,
            counts=counts,
            submitted=self._submitted,
            possibly_duplicated=int(totals["possibly_duplicated"]),
            requests=self._requests,
            rate_limited=stats.rate_limited,
            retries=self._retries,
            wall_s=self.clock.monotonic() - self._started_mono,
            spent_usd=totals["spent_known_usd"],
            unknown_price_jobs=int(totals["spent_unknown_jobs"]),
            fatal=str(self._fatal) if self._fatal else None,
            stop_reason=self._stop_submits or self._budget_reached,
            interrupted=self._interrupted,
            input_changed=list(synced.changed_after_submit or []),
            arrived=manifest.arrived,
            fail_codes=manifest.fail_codes,
            per_model=manifest.per_model,
            manifest=manifest.path,
            output_dir=self.output_dir,
        )
        self._emit("summary", **summary_dict(result))
        return result


def summary_dict(r: RunResult) -> dict[str, Any]:
    """The final summary as plain JSON-able data (``--json`` and embedders)."""
    jobs = sum(r.counts.values())
    return {
        "exit_code": r.exit_code,
        "counts": r.counts,
        "jobs": jobs,
        "submitted": r.submitted,
        "possibly_duplicated": r.possibly_duplicated,
        "requests": r.requests,
        "requests_per_task": round(r.requests / r.submitted, 3) if r.submitted else None,
        "rate_limited": r.rate_limited,
        "retries": r.retries,
        "wall_s": round(r.wall_s, 3),
        "spent_usd": round(r.spent_usd, 4),
        "unknown_price_jobs": r.unknown_price_jobs,
        "fatal": r.fatal,
        "stop_reason": r.stop_reason,
        "interrupted": r.interrupted,
        "input_changed": r.input_changed,
        "arrived": r.arrived,
        "fail_codes": {k: v[:5] for k, v in r.fail_codes.items()},
        "fail_counts": {k: len(v) for k, v in r.fail_codes.items()},
        "per_model": r.per_model,
        "manifest": str(r.manifest) if r.manifest else None,
        "output_dir": str(r.output_dir) if r.output_dir else None,
    }
