"""The supervisor: one run of a campaign, from the journal's reconciliation to the manifest.

It opens the resources (journal, API client with its request bucket, download
session, callback receiver), reconciles the journal with the job file, reads
the balance before the first submit, then runs the stages in one task group::

    Admission ──▶ Submitter ──▶ Follower ──▶ Lander
                                    ▲           ▲
                     callbacks ─────┘   feeder ─┘ (results of earlier runs)

Each stage ends when its input has closed and its work is done, closing its output
as it returns. Why a run stops early is one list of :class:`~.stop.Stop` values,
from which the exit code follows. An interrupt stops admission, gives the submits
on the wire ``stop_grace_s``, then cancels the rest; the manifest is written either
way (docs/contributing.md draws all of it).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..apixo.client import ApixoClient, TaskStatus
from ..apixo.limits import ConcurrencyLimit, RequestBucket
from ..apixo.receiver import HandlerResult, callback_url_with_token
from ..apixo.secret import ApiKey
from ..clock import Clock, SystemClock
from ..defaults import DOWNLOAD_BACKOFF, SUBMIT_BACKOFF, state_path
from ..errors import ApixoError
from ..events import Emitter, EventSink
from ..jobs import Campaign
from ..journal import AsyncJournal, JobRow, JobState, Journal, Ledger, SyncResult, jobs_of
from ..outputs.output import open_output
from ..outputs.paths import check_file, check_folder, storage_failure
from ..planning.completion import CompletionModel
from ..planning.forecast import forecast_run
from ..reports.manifest import human_duration
from .admission import Admission, Admitted, BudgetMeter, SlotMeter, in_start_order
from .books import (
    MANIFEST,
    bind_output,
    close_books,
    review_page,
    same_output,
    write_manifest_from,
)
from .callbacks import callback_token, listen
from .follower import Follower
from .lander import Fetch, Lander
from .learned import account_of, remember_rate, start_informed
from .options import RunOptions, RunResult, RunStatistics, summary_dict
from .preflight import preflight
from .stop import Stop, StopKind, Stops
from .submitter import Submitted, Submitter
from .turnaround import Turnaround

__all__ = ["Supervisor"]

S = JobState
#: real seconds of drip a rate-bound request waits for, so requests leave in groups: far
#: fewer loop wake-ups per request, for at most this much more wait of one already queued
REQUEST_TICK_S = 0.1
#: real seconds the journal thread lets writes whose loss costs nothing (``succeeded``,
#: ``done``) gather before it commits them together; durable ones never wait
COMMIT_DELAY_S = 0.02


class Supervisor:
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
        self._emit = Emitter(on_event, self.clock)
        self._key = api_key
        self._account = None if api_key is None else account_of(api_key, options.base_url)
        self._session = session
        self.output_dir = campaign.output_dir
        self.state_path = options.state_path or state_path(
            self.output_dir, campaign.path, campaign.name
        )
        # Before anything is created: a path that cannot exist is one line, not a traceback.
        self.output = open_output(self.output_dir, self.state_path)
        check_folder(self.output.local_dir, "output folder")
        check_file(self.state_path, "journal")
        self.stops = Stops()
        self.bucket = RequestBucket(
            options.rpm, self.clock, tick=REQUEST_TICK_S, time_scale=options.time_scale
        )
        self.slots = ConcurrencyLimit(options.max_concurrent)
        self.completions = CompletionModel()
        self.turnaround = Turnaround()
        #: the queued jobs' predicted wall time (this run's clock), once known
        self.planned_wall_s: float | None = None
        self._submitter: Submitter | None = None
        self._follower: Follower | None = None
        self._lander: Lander | None = None
        self._fetches: MemoryObjectReceiveStream[Fetch] | None = None
        self._spent_before = 0.0
        self._interrupt = asyncio.Event()

    # -- public -------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop as an interrupt does: no new submits, answers on the wire journaled, exit 130."""
        self.stops.request(Stop(StopKind.INTERRUPTED, "interrupted"))
        self._interrupt.set()

    async def run(self) -> RunResult:
        """Run to the end; returns the result (the manifest is written either way)."""
        started = self.clock.monotonic()
        journal = AsyncJournal(Journal(self.state_path), commit_delay=COMMIT_DELAY_S)
        ledger = Ledger(journal, self.clock)
        try:
            try:
                synced: SyncResult | None = await self._run(ledger)
            except Exception as exc:
                why = storage_failure(exc)
                if why is None:
                    raise
                # Our disk failed (the journal's, or the results'): one stop that says
                # where and why, and the run ends as cleanly as the disk allows.
                self._storage_stop(why)
                synced = None
            except asyncio.CancelledError:
                # Cancelled from outside (a stream_campaign loop left with `break` while its
                # loop closes, an embedder's cancel): what an interrupt leaves, the
                # manifest included, then the cancel goes on.
                self.stops.request(Stop(StopKind.INTERRUPTED, "cancelled"))
                with contextlib.suppress(Exception):
                    await write_manifest_from(ledger, self.output.local_dir / MANIFEST)
                raise
            return await self._finish(ledger, synced, started)
        finally:
            await self.output.close()
            try:
                await ledger.close()
            except Exception as exc:
                if storage_failure(exc) is None:
                    raise

    def statistics(self) -> RunStatistics:
        """A snapshot for progress displays: requests, limits, in flight, spend."""
        bucket = self.bucket.statistics()
        slots = self.slots.statistics()
        queued = self._fetches.statistics().current_buffer_used if self._fetches else 0
        busy = self._lander.busy if self._lander else 0
        submitted = self._submitter.spent_usd if self._submitter else 0.0
        return RunStatistics(
            requests=bucket.sent,
            requests_last_minute=self.bucket.last_minute(),
            rpm_limit=self.options.rpm,
            rate_limited=bucket.rate_limited,
            effective_rpm=bucket.effective_rpm,
            learned_rpm=bucket.learned_rpm,
            in_flight=slots.in_flight,
            max_concurrent=slots.limit,
            slot_window=slots.window,
            peak_in_flight=slots.peak,
            downloading=busy + queued,
            spent_usd=self._spent_before + submitted,
            budget_usd=self.options.budget,
            stop_reason=self.stops.reason,
        )

    # -- the run ------------------------------------------------------------
    async def _run(self, ledger: Ledger) -> SyncResult:
        run_mode = self.options.mode == "run"
        await same_output(ledger, self.output_dir, self.state_path)
        recovered, synced = await ledger.reconcile(
            jobs_of(self.campaign), retry_failed=self.options.retry_failed and run_mode
        )
        self._spent_before = (await ledger.totals()).spent_known_usd
        await start_informed(ledger, self.bucket, self.completions, self._account)
        in_flight = await ledger.in_flight()
        queued_cost, unknown, queued = await ledger.queued_cost()
        counts = await ledger.counts()
        if run_mode and queued:
            o = self.options
            self.planned_wall_s = forecast_run(
                await ledger.queued_runs(),
                self.completions,
                order=o.order,
                callback=o.callback_url is not None,
                slots=o.max_concurrent,
                rpm=min(float(o.rpm), self.bucket.rate_per_s * 60.0),
                time_scale=o.time_scale,
            )
        submit = run_mode and queued > 0
        needs_api = bool(in_flight) or submit
        if needs_api and self._key is None:
            # Before `started`: a run that cannot start says only why.
            raise ApixoError("APIXO_API_KEY is not set (or give --api-key-file)")
        self._emit(
            "started",
            per_model=await ledger.counts_by_model(),
            spent_usd=round(self._spent_before, 4),
            jobs=sum(counts.values()),
            queued=queued if run_mode else 0,
            in_flight=len(in_flight),
            to_download=counts.get(S.SUCCEEDED.value, 0),
            done=counts.get(S.DONE.value, 0),
            estimated_cost_usd=round(queued_cost, 4),
            unknown_price_jobs=unknown,
            planned_wall_s=self.planned_wall_s and round(self.planned_wall_s, 1),
        )
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
        if not needs_api and counts.get(S.SUCCEEDED.value, 0) == 0:
            return synced  # nothing to do: zero requests
        # Before anything is paid: an output that cannot take results is one line.
        await self.output.check()
        await bind_output(ledger, self.output_dir)
        async with contextlib.AsyncExitStack() as stack:
            client = None
            if needs_api:
                assert self._key is not None
                client = ApixoClient(
                    self._key,
                    self.options.base_url,
                    session=self._session,
                    connections=min(256, self.options.max_concurrent + 8),
                    bucket=self.bucket,
                )
                client.breaker.patience = self.options.max_wait_min * 60.0
                client.breaker.on_change = self._outage_news
                stack.push_async_callback(client.close)
            downloads = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60),
                connector=aiohttp.TCPConnector(limit=self.options.download_concurrency),
            )
            stack.push_async_callback(downloads.close)
            token = await callback_token(ledger, self.options) if needs_api else None
            self._build(ledger, client, downloads, token, in_flight)
            if token is not None:
                # After the stages exist: a callback for an adopted task finds it followed.
                await listen(self.options, token, self._on_callback, stack)
            if submit:
                assert client is not None
                stop = await preflight(
                    client,
                    self._emit,
                    cost=queued_cost,
                    unknown=unknown,
                    queued=queued,
                    budget_left=None
                    if self.options.budget is None
                    else self.options.budget - self._spent_before,
                    allow_partial=self.options.allow_partial,
                )
                if stop is not None:
                    self.stops.request(stop)
                    return synced
            await self._pipeline(ledger, submit=submit)
        return synced

    def _build(
        self,
        ledger: Ledger,
        client: ApixoClient | None,
        downloads: aiohttp.ClientSession,
        token: str | None,
        in_flight: list[JobRow],
    ) -> None:
        o = self.options
        callback_url = None
        if token is not None and o.callback_url:
            callback_url = callback_url_with_token(o.callback_url, token)
        if client is not None:
            self._submitter = Submitter(
                client,
                ledger,
                backoff=SUBMIT_BACKOFF.scaled(o.time_scale),
                callback_url=callback_url,
                patience_s=o.max_wait_min * 60.0,
                turnaround=self.turnaround,
                clock=self.clock,
                stops=self.stops,
                emit=self._emit,
            )
            submitter = self._submitter
            self._follower = Follower(
                client,
                ledger,
                slots=self.slots,
                completions=self.completions,
                time_scale=o.time_scale,
                max_wait_min=o.max_wait_min,
                submits_under_way=lambda: submitter.under_way,
                turnaround=self.turnaround,
                clock=self.clock,
                stops=self.stops,
                emit=self._emit,
            )
            self._follower.adopt(in_flight)
        self._lander = Lander(
            ledger,
            downloads,
            output=self.output,
            clock=self.clock,
            emit=self._emit,
            backoff=DOWNLOAD_BACKOFF.scaled(o.time_scale),
            workers=o.download_concurrency,
            patience_s=o.max_wait_min * 60.0,
            stops=self.stops,
        )

    async def _pipeline(self, ledger: Ledger, *, submit: bool) -> None:
        """The stages, until the last one returns or an interrupt has had its grace."""
        work = asyncio.ensure_future(self._stages(ledger, submit=submit))
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({work, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and self._submitter is not None:
                # Interrupted: submits on the wire get the grace to be answered and
                # journaled; the rest waits for the bucket or a backoff, or is a poll or
                # a download whose .part stays for the next run.
                await self._submitter.drain(self.options.stop_grace_s)
        finally:
            interrupted.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _stages(self, ledger: Ledger, *, submit: bool) -> None:
        """One task group; each stage closes its output stream as it returns."""
        lander = self._lander
        assert lander is not None
        admitted_tx, admitted_rx = anyio.create_memory_object_stream[Admitted](0)
        # Bounded by the slots already: a submit never waits on the follower.
        submitted_tx, submitted_rx = anyio.create_memory_object_stream[Submitted](
            self.options.max_concurrent
        )
        fetch_tx, fetch_rx = anyio.create_memory_object_stream[Fetch](
            max(500, self.options.max_concurrent)
        )
        self._fetches = fetch_rx
        feeder_tx = fetch_tx.clone()
        async with asyncio.TaskGroup() as tg:
            if self._follower is not None:
                tg.create_task(self._follower.run(submitted_rx, fetch_tx))
            else:
                submitted_rx.close()
                fetch_tx.close()
            if submit and self._submitter is not None:
                admission = Admission(
                    in_start_order(ledger, self.options.order, self.completions),
                    meters=[BudgetMeter(self.options.budget, self._spent_before, self._emit)],
                    slots=SlotMeter(self.slots),
                    stops=self.stops,
                    emit=self._emit,
                )
                tg.create_task(admission.run(admitted_tx))
                tg.create_task(self._submitter.run(admitted_rx, submitted_tx))
            else:
                admitted_tx.close()
                admitted_rx.close()
                submitted_tx.close()
            tg.create_task(lander.feed(feeder_tx))
            tg.create_task(lander.run(fetch_rx))

    def _outage_news(self, opened: bool, silent_s: float) -> None:
        """The API stopped, or resumed, answering: said once each, in plain words."""
        if opened:
            message = (
                "API unreachable: no answer to the last calls; retrying with backoff "
                f"for up to --max-wait ({self.options.max_wait_min:g} min), nothing lost"
            )
        else:
            message = f"API answering again after {human_duration(silent_s)} without an answer"
        self._emit("warning", message=message)

    async def _on_callback(self, status: TaskStatus) -> HandlerResult:
        # The receiver starts before the stages are built: deliveries go to the follower.
        if self._follower is None:
            return "unknown"
        return await self._follower.on_callback(status)

    def _storage_stop(self, why: str) -> None:
        reason = f"{why}; nothing paid is forgotten: the same command resumes once it is fixed"
        if self.stops.request(Stop(StopKind.STORAGE, reason)):
            self._emit("stopped", reason=reason)

    async def _finish(self, ledger: Ledger, synced: SyncResult | None, started: float) -> RunResult:
        try:
            await remember_rate(ledger, self.bucket, self._account)
        except Exception as exc:
            why = storage_failure(exc)
            if why is None:
                raise
            self._storage_stop(why)
        books = await close_books(ledger, self.output, self._storage_stop)
        counts, totals, manifest = books.counts, books.totals, books.manifest
        bucket = self.bucket.statistics()
        stages = [s for s in (self._submitter, self._follower, self._lander) if s is not None]
        result = RunResult(
            exit_code=self.stops.exit_code(counts.get("done", 0) == sum(counts.values())),
            counts=counts,
            submitted=self._submitter.submitted if self._submitter else 0,
            possibly_duplicated=totals.possibly_duplicated if totals else 0,
            requests=bucket.sent,
            rate_limited=bucket.rate_limited,
            learned_rpm=bucket.learned_rpm,
            learned_slots=self.slots.cap if self.slots.statistics().shrinks else None,
            slot_turnaround=self.turnaround.statistics(),
            planned_wall_s=self.planned_wall_s,
            retries=sum(s.retries for s in stages),
            wall_s=self.clock.monotonic() - started,
            spent_usd=totals.spent_known_usd if totals else 0.0,
            unknown_price_jobs=totals.spent_unknown_jobs if totals else 0,
            fatal=self.stops.fatal,
            stop_reason=self.stops.reason,
            interrupted=self.stops.interrupted,
            input_changed=list(synced.changed_after_submit or []) if synced else [],
            arrived=books.arrived,
            fail_codes=books.fail_codes,
            per_model=books.per_model,
            never_submitted=books.never_submitted,
            manifest=books.manifest_at if manifest else None,
            output_dir=self.output_dir,
        )
        if self.options.review and books.manifest is not None:
            result.review = await review_page(
                ledger, self.campaign, self.output, summary_dict(result), self._emit
            )
        result.store_requests = self.output.requests()
        self._emit("summary", **summary_dict(result))
        return result
