"""The supervisor: one run of a campaign, from the journal's reconciliation to the manifest.

It owns the run's lifetimes, each in its own module:

* the run's values (options, clock, stops, limits) and its journal and output, here;
* the start-up (:mod:`.startup`): reconcile, start informed, forecast, ``started``;
* the network (API client, download session, callback receiver) in one exit stack,
  and the stages joined by streams (:mod:`.wiring`), for as long as there is work;
* the end (:mod:`.result`): the books closed, the result and the ``summary``.

Why a run stops early is one list of :class:`~.stop.Stop` values, from which the exit
code follows. An interrupt stops admission, gives the submits on the wire
``stop_grace_s``, then cancels the rest; the manifest is written either way
(docs/contributing.md draws all of it).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

from ..apixo.client import ApixoClient
from ..apixo.limits import ConcurrencyLimit, RequestBucket
from ..apixo.receiver import callback_url_with_token
from ..apixo.secret import ApiKey
from ..clock import Clock, SystemClock, human_duration
from ..defaults import state_path
from ..errors import ApiError, ApixoError, Forbidden
from ..events import Emitter, EventSink, Warned
from ..jobs import Campaign
from ..journal import Ledger, open_ledger
from ..journal.pg import needs_driver, shown
from ..journal.unrecorded import SideFile
from ..outputs.output import LocalOutput, open_output
from ..outputs.owner import FolderLock
from ..outputs.paths import check_file, check_folder, storage_failure
from ..planning.completion import CompletionModel
from .books import MANIFEST, bind_output, same_output, write_manifest_from
from .callbacks import callback_token, listen
from .learned import account_of
from .options import RunOptions, RunResult, RunStatistics
from .owner import own_output
from .preflight import preflight
from .result import finish
from .startup import StartUp, start_up
from .stop import Stop, StopKind, Stops, refusal_step, storage_stop
from .turnaround import Turnaround
from .wiring import RunParts, Stages

__all__ = ["Supervisor"]

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
        #: the journal in PostgreSQL, or None: a file at ``state_path``
        self.database = options.state_url
        local = state_path(self.output_dir, campaign.path, campaign.name)
        if self.database is not None:
            needs_driver(self.database)  # one line naming the extra, before anything
            # No journal file: the side file of refused task ids (and an S3 output's
            # staging) live where the file would have been.
            self.state_path = local.with_suffix(".pg")
            self.journal: Path | str = shown(self.database)
        else:
            self.state_path = options.state_path or local
            self.journal = self.state_path
        # Before anything is created: a path that cannot exist is one line, not a traceback.
        self.output = open_output(self.output_dir, self.state_path)
        check_folder(self.output.local_dir, "output folder")
        check_file(self.state_path, "journal")
        self.stops = Stops(self._emit)
        self.bucket = RequestBucket(
            options.rpm, self.clock, tick=REQUEST_TICK_S, time_scale=options.time_scale
        )
        self.slots = ConcurrencyLimit(options.max_concurrent)
        self._parts = RunParts(
            options=options,
            clock=self.clock,
            stops=self.stops,
            emit=self._emit,
            slots=self.slots,
            completions=CompletionModel(),
            turnaround=Turnaround(),
        )
        self._start: StartUp | None = None
        self._stages: Stages | None = None
        self._interrupt = asyncio.Event()
        self._folder: FolderLock | None = None
        #: the balance read before anything was created (a first run), or why it could not
        #: be: the pre-flight's, never asked twice
        self._balance: float | ApixoError | None = None

    # -- public -------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop as an interrupt does: no new submits, answers on the wire journaled, exit 130."""
        self.stops.request(Stop(StopKind.INTERRUPTED, "interrupted"))
        self._interrupt.set()

    async def run(self) -> RunResult:
        """Run to the end; returns the result (the manifest is written either way)."""
        started = self.clock.monotonic()
        refused = await self._refused_before_anything(started)
        if refused is not None:
            await self.output.close()
            return refused
        ledger = await open_ledger(
            self.database or self.state_path,
            self.campaign.name,
            self.clock,
            anchor=self.state_path,
            commit_delay=COMMIT_DELAY_S,
        )
        try:
            try:
                await self._run(ledger)
            except Exception as exc:
                why = storage_failure(exc)
                if why is None:
                    raise
                # Our disk failed (the journal's, or the results'): one stop that says
                # where and why, and the run ends as cleanly as the disk allows.
                self._storage_stop(why)
            except asyncio.CancelledError:
                # Cancelled from outside (a stream_campaign loop left with `break` while its
                # loop closes, an embedder's cancel): what an interrupt leaves, the
                # manifest included, then the cancel goes on.
                self.stops.request(Stop(StopKind.INTERRUPTED, "cancelled"))
                with contextlib.suppress(Exception):
                    await write_manifest_from(ledger, self.output.local_dir / MANIFEST)
                raise
            return await finish(
                ledger,
                self._parts,
                campaign=self.campaign,
                output=self.output,
                bucket=self.bucket,
                account=self._account,
                start=self._start,
                stages=self._stages,
                started=started,
                storage_stop=self._storage_stop,
            )
        finally:
            if self._folder is not None:
                self._folder.release()
            await self.output.close()
            try:
                await ledger.close()
            except Exception as exc:
                if storage_failure(exc) is None:
                    raise
            unrecorded = SideFile(self.state_path)
            if unrecorded.empty():  # reserved at start-up, and no id needed keeping
                with contextlib.suppress(OSError):
                    unrecorded.remove()

    async def _refused_before_anything(self, started: float) -> RunResult | None:
        """A first run whose key (or balance) APIXO refuses: nothing created (no output
        folder, journal, manifest or review page for a campaign that never started), the
        stop told, exit 3.

        The balance is the read the pre-flight makes anyway, made before the journal is;
        read, it is kept for the pre-flight. Any other trouble is the pre-flight's."""
        o, key = self.options, self._key
        if key is None or o.mode != "run" or self.campaign.from_journal:
            return None
        if not self.campaign.job_count or self.database is not None or self.state_path.exists():
            # A journal (a database may hold one: it is not known before it is reached).
            return None
        client = ApixoClient(key, o.base_url, session=self._session, bucket=self.bucket)
        read = asyncio.ensure_future(client.balance())
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({read, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                # Interrupted while nothing exists yet: nothing to write, nothing to resume.
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, ApixoError):
                    await read
                return self._ended_before_anything(started)
            self._balance = read.result()
            return None
        except ApiError as exc:
            if not exc.fatal or isinstance(exc, Forbidden):
                # A 403 may close the balance route alone: the pre-flight warns, goes on.
                self._balance = exc
                return None
            refusal = exc
        except ApixoError as exc:
            self._balance = exc
            return None
        finally:
            interrupted.cancel()
            await client.close()
        reason = f"the API refused: {refusal}; nothing was created"
        self.stops.request(
            Stop(StopKind.FATAL, reason, fatal=str(refusal), next_step=refusal_step(refusal))
        )
        return self._ended_before_anything(started)

    def _ended_before_anything(self, started: float) -> RunResult:
        """The result of a first run that stopped before it created anything: every job
        pending and never submitted, no manifest; the summary told."""
        pending = self.campaign.job_count
        stats = self.bucket.statistics()
        result = RunResult(
            exit_code=self.stops.exit_code(all_done=False),
            counts={"done": 0, "failed": 0, "expired": 0, "pending": pending},
            requests=stats.sent,
            wall_s=self.clock.monotonic() - started,
            fatal=self.stops.fatal,
            stop_reason=self.stops.reason,
            interrupted=self.stops.interrupted,
            never_submitted=pending,
            next_step=self.stops.next_step,
        )
        self._emit(result.summary())
        return result

    def statistics(self) -> RunStatistics:
        """A snapshot for progress displays: requests, limits, in flight, spend."""
        bucket = self.bucket.statistics()
        slots = self.slots.statistics()
        stages = self._stages
        submitter = stages.submitter if stages else None
        spent_before = self._start.spent_before if self._start else 0.0
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
            downloading=stages.downloading if stages else 0,
            spent_usd=spent_before + (submitter.spent_usd if submitter else 0.0),
            budget_usd=self.options.budget,
            stop_reason=self.stops.reason,
            polls=dict(stages.follower.polls) if stages and stages.follower else {},
        )

    # -- the run ------------------------------------------------------------
    async def _run(self, ledger: Ledger) -> None:
        await same_output(ledger, self.output_dir, self.journal)
        # Before anything is sent: this journal's campaign, this journal's folder.
        self._folder = await own_output(ledger, self.campaign.name, self.output_dir, self.journal)
        self._start = start = await start_up(
            ledger,
            self.campaign,
            self.options,
            bucket=self.bucket,
            completions=self._parts.completions,
            account=self._account,
            has_key=self._key is not None,
            emit=self._emit,
            folder=self.output.folder if isinstance(self.output, LocalOutput) else None,
        )
        if start.idle:
            return  # nothing to do: zero requests
        # Before anything is paid: an output that cannot take results is one line.
        await self.output.check()
        await bind_output(ledger, self.output_dir)
        async with contextlib.AsyncExitStack() as network:
            await self._work(ledger, start, network)

    async def _work(
        self, ledger: Ledger, start: StartUp, network: contextlib.AsyncExitStack
    ) -> None:
        """The network opened on ``network`` (closed when the stages are done), the
        stages built and the receiver listening, the balance read, then the stages run."""
        o = self.options
        client = None
        if start.needs_api:
            assert self._key is not None
            client = ApixoClient(
                self._key,
                o.base_url,
                session=self._session,
                connections=min(256, o.max_concurrent + 8),
                bucket=self.bucket,
                patience=o.patience,
                on_outage=self._outage_news,
            )
            network.push_async_callback(client.close)
        downloads = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60),
            connector=aiohttp.TCPConnector(limit=o.download_concurrency),
        )
        network.push_async_callback(downloads.close)
        token = await callback_token(ledger, o) if start.needs_api else None
        callback_url = None
        if token is not None and o.callback_url:
            callback_url = callback_url_with_token(o.callback_url, token)
        self._stages = stages = Stages(
            self._parts,
            ledger,
            client=client,
            downloads=downloads,
            output=self.output,
            callback_url=callback_url,
            spent_before=start.spent_before,
        )
        stages.adopt(start.in_flight)
        if token is not None:
            # After the stages exist: a callback for an adopted task finds it followed.
            await listen(o, token, stages.on_callback, network)
        if start.submit:
            assert client is not None
            stop = await preflight(
                client,
                self._emit,
                cost=start.queued_cost,
                unknown=start.unknown_price_jobs,
                queued=start.queued,
                budget_left=None if o.budget is None else o.budget - start.spent_before,
                allow_partial=o.allow_partial,
                read=self._balance,
            )
            if stop is not None:
                self.stops.request(stop)
                return
        await stages.run(submit=start.submit, interrupt=self._interrupt)

    def _outage_news(self, opened: bool, silent_s: float) -> None:
        """The API stopped, or resumed, answering: said once each, in plain words."""
        about = "outage" if opened else "recovered"
        if opened:
            message = (
                "API unreachable: no answer to the last calls; retrying with backoff "
                f"for up to --max-wait ({self.options.max_wait_min:g} min), nothing lost"
            )
        else:
            message = f"API answering again after {human_duration(silent_s)} without an answer"
        self._emit(Warned(message=message, about=about))

    def _storage_stop(self, why: str) -> None:
        self.stops.request(storage_stop(why))
