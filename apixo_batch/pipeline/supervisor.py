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
import os
import socket
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import aiohttp

from ..apixo.client import ApixoClient
from ..apixo.limits import ConcurrencyLimit, RequestBucket
from ..apixo.receiver import CallbackHandler, callback_url_with_token
from ..apixo.secret import ApiKey, KeySpec
from ..clock import Clock, SystemClock, human_duration
from ..defaults import state_path
from ..errors import ApiError, ApixoError, Forbidden
from ..events import Emitter, EventSink, Warned
from ..jobs import Campaign
from ..journal import JobRow, Ledger, RunnerSpec, journal_exists, open_ledger, this_node
from ..journal.pg import needs_driver, shown
from ..journal.unrecorded import SideFile
from ..outputs.output import LocalOutput, open_output
from ..outputs.owner import FolderLock
from ..outputs.paths import check_file, check_folder, storage_failure
from ..planning.completion import CompletionModel
from .books import MANIFEST, bind_output, same_output, write_manifest_from
from .callbacks import callback_token, listen
from .keypool import KeyAccount, KeyPool
from .learned import account_of, start_rate
from .options import RunOptions, RunResult, RunStatistics
from .owner import own_output
from .preflight import preflight, preflight_pool
from .result import finish
from .runners import Runner
from .startup import StartUp, start_up
from .stop import Level, Stop, StopKind, Stops, refusal_step, storage_stop
from .turnaround import Turnaround
from .wiring import RunParts, Stages

__all__ = ["Supervisor"]


def _specs(api_key: ApiKey | str | Sequence[KeySpec] | None) -> list[KeySpec]:
    """The run's keys, whatever form they were given in (one key, or a pool's)."""
    if api_key is None:
        return []
    if isinstance(api_key, str):
        return [KeySpec(ApiKey(api_key))]
    if isinstance(api_key, ApiKey):
        return [KeySpec(api_key)]
    return list(api_key)


#: real seconds of drip a rate-bound request waits for, so requests leave in groups: far
#: fewer loop wake-ups per request, for at most this much more wait of one already queued
REQUEST_TICK_S = 0.1
#: real seconds the journal thread lets writes whose loss costs nothing (``succeeded``,
#: ``done``) gather before it commits them together; durable ones never wait
COMMIT_DELAY_S = 0.02


def _version() -> str:
    """This apixo-batch's version, as the runners table shows it."""
    try:
        return metadata.version("apixo-batch")
    except metadata.PackageNotFoundError:
        return "unknown"


class Supervisor:
    """Runs one campaign to the end (or to a stop), resumable from its journal."""

    def __init__(
        self,
        campaign: Campaign,
        api_key: ApiKey | str | Sequence[KeySpec] | None,
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
        self._specs = _specs(api_key)
        self._key = self._specs[0].key if self._specs else None
        self._account = None if self._key is None else account_of(self._key, options.base_url)
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
        accounts = [self._key_account(spec) for spec in self._specs]
        self.pool = KeyPool(accounts) if accounts else None
        if accounts:
            self.bucket, self.slots = accounts[0].bucket, accounts[0].slots
        else:
            self.bucket = self._bucket(options.rpm)
            self.slots = ConcurrencyLimit(options.max_concurrent)
        self._parts = RunParts(
            options=options,
            clock=self.clock,
            stops=self.stops,
            emit=self._emit,
            slots=self.slots,
            completions=CompletionModel(),
            turnaround=Turnaround(),
            pool=self.pool,
        )
        self._start: StartUp | None = None
        self._stages: Stages | None = None
        self._interrupt = asyncio.Event()
        # A lost lease (several runners) ends the run as an interrupt does: the submits on
        # the wire answered and journaled, the rest cancelled.
        self.stops.on(Level.ALL, self._interrupt.set)
        #: this run as one of the runners of a PostgreSQL campaign (None: the only run)
        self._runner: Runner | None = None
        self._folder: FolderLock | None = None
        #: the balance read before anything was created (a first run), or why it could not
        #: be: the pre-flight's, never asked twice
        self._balance: float | ApixoError | None = None

    def _bucket(self, rpm: int) -> RequestBucket:
        o = self.options
        return RequestBucket(rpm, self.clock, tick=REQUEST_TICK_S, time_scale=o.time_scale)

    def _key_account(self, spec: KeySpec) -> KeyAccount:
        """One key's account: its own bucket and slots, at its own limits or the options'."""
        o = self.options
        return KeyAccount(
            spec,
            bucket=self._bucket(spec.rpm or o.rpm),
            slots=ConcurrencyLimit(spec.max_concurrent or o.max_concurrent),
            account=account_of(spec.key, o.base_url),
        )

    @property
    def pooled(self) -> bool:
        return self.pool is not None and self.pool.pooled

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
        o = self.options
        spec = None
        if self.database is not None:
            spec = RunnerSpec(
                lease_s=o.lease_s,
                grace_s=o.grace_s,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=_version(),
                node=this_node(),
                selection=o.selection,
                accounts=self._key_accounts(),
            )
        ledger = await open_ledger(
            self.database or self.state_path,
            self.campaign.name,
            self.clock,
            anchor=self.state_path,
            commit_delay=COMMIT_DELAY_S,
            runner=spec,
        )
        heartbeat: asyncio.Future[None] | None = None
        if ledger.runner is not None:
            self._runner = Runner(
                ledger.runner,
                clock=self.clock,
                stops=self.stops,
                emit=self._emit,
                leave_early=o.leave_early,
            )
            heartbeat = asyncio.ensure_future(self._runner.heartbeat())
        try:
            try:
                if spec is not None:
                    from .multirunner import refuse_second_host

                    # Before anything is sent: a local folder is one host's.
                    await refuse_second_host(ledger, self.output, spec.host, o.shared_out)
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
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            if self._runner is not None:
                await self._runner.leave()
            try:
                await ledger.close()
            except Exception as exc:
                if storage_failure(exc) is None:
                    raise
            unrecorded = SideFile(self.state_path)
            if unrecorded.empty():  # reserved at start-up, and no id needed keeping
                with contextlib.suppress(OSError):
                    unrecorded.remove()

    async def _relayed(
        self, ledger: Ledger, stages: Stages, network: contextlib.AsyncExitStack
    ) -> CallbackHandler:
        """The receiver's handler: with several runners, callbacks of other runners'
        tasks are passed on to them, and theirs for this one's tasks taken in."""
        if self.database is None or ledger.runner is None:
            return stages.on_callback
        from .multirunner import CallbackRelay, listen_for_relayed, runner_id

        me = runner_id(ledger)()
        if me is None:
            return stages.on_callback
        follower = stages.follower

        def follows(task_id: str) -> bool:
            return follower is not None and follower.scheduler.get(task_id) is not None

        relay = CallbackRelay(ledger, stages.on_callback, follows)
        await listen_for_relayed(self.database, me, relay, self.clock, network)
        return relay.handle

    async def _refused_before_anything(self, started: float) -> RunResult | None:
        """A first run whose key (or balance) APIXO refuses: nothing created (no output
        folder, journal, manifest or review page for a campaign that never started), the
        stop told, exit 3.

        The balance is the read the pre-flight makes anyway, made before the journal is;
        read, it is kept for the pre-flight. Any other trouble is the pre-flight's."""
        o, key = self.options, self._key
        if key is None or o.mode != "run" or self.campaign.from_journal:
            return None
        if self.pooled:
            return None  # one key refused retires that key: the pool's pre-flight reads all
        if not self.campaign.job_count:
            return None
        if self.database is None:
            if self.state_path.exists():
                return None
        elif await journal_exists(self.database):
            # A database with a campaign in it, read without writing: not a first run.
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
        if self.pool is not None and self.pool.pooled:
            return self._pool_statistics(spent_before)
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

    def _pool_statistics(self, spent_before: float) -> RunStatistics:
        """The pool's figures summed over its keys, and each key's own."""
        assert self.pool is not None
        keys = tuple(a.statistics() for a in self.pool.accounts)
        stages = self._stages
        submitter = stages.submitter if stages else None
        learned = [k.learned_rpm for k in keys if k.learned_rpm is not None]
        return RunStatistics(
            requests=sum(k.requests for k in keys),
            requests_last_minute=sum(k.requests_last_minute for k in keys),
            rpm_limit=sum(k.rpm_limit for k in keys),
            rate_limited=sum(k.rate_limited for k in keys),
            effective_rpm=sum(a.bucket.statistics().effective_rpm for a in self.pool.accounts),
            learned_rpm=sum(learned) if learned else None,
            in_flight=sum(k.in_flight for k in keys),
            max_concurrent=sum(k.max_concurrent for k in keys),
            slot_window=sum(k.slot_window for k in keys),
            peak_in_flight=sum(a.slots.statistics().peak for a in self.pool.accounts),
            downloading=stages.downloading if stages else 0,
            spent_usd=spent_before + (submitter.spent_usd if submitter else 0.0),
            budget_usd=self.options.budget,
            stop_reason=self.stops.reason,
            polls=dict(stages.follower.polls) if stages and stages.follower else {},
            keys=keys,
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
        if self.pool is not None:
            for other in self.pool.accounts[1:]:
                await start_rate(ledger, other.bucket, other.account)
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
            if self.pool is not None:
                self.pool.main.client = client
                for other in self.pool.accounts[1:]:
                    other.client = ApixoClient(
                        other.spec.key,
                        o.base_url,
                        session=self._session,
                        connections=min(256, other.slots.limit + 8),
                        bucket=other.bucket,
                        patience=o.patience,
                        on_outage=self._outage_news,
                    )
                    network.push_async_callback(other.client.close)
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
            runner=self._runner,
            ours=self._ours,
        )
        if self.database is not None:
            from .multirunner import share_outputs

            share_outputs(ledger, stages.lander, self.output)
        stages.adopt(self._ours(start.in_flight))
        if token is not None:
            # After the stages exist: a callback for an adopted task finds it followed.
            await listen(o, token, await self._relayed(ledger, stages, network), network)
        if start.submit and self.pooled:
            assert self.pool is not None
            stop = await preflight_pool(
                self.pool,
                self._emit,
                cost=start.queued_cost,
                unknown=start.unknown_price_jobs,
                queued=start.queued,
                budget_left=None if o.budget is None else o.budget - start.spent_before,
                allow_partial=o.allow_partial,
            )
            if stop is not None:
                self.stops.request(stop)
                return
        elif start.submit:
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
        if self.database is not None and self.pool is not None and start.needs_api:
            # The account's limits are the database's: this runner uses its share.
            from .shared import share_limits

            shared = await share_limits(self.database, ledger, self.pool, self.clock, rpm=o.rpm)
            network.push_async_callback(shared.close)
        await stages.run(submit=start.submit, interrupt=self._interrupt)

    def _key_accounts(self) -> dict[str | None, str]:
        """Each key's account by the fingerprint its tasks are journaled under (None:
        a run of one key journals none)."""
        if self.pool is None:
            return {}
        keys: dict[str | None, str] = {None: self.pool.main.account}
        keys.update((a.fingerprint, a.account) for a in self.pool.accounts)
        return keys

    def _ours(self, in_flight: list[JobRow]) -> list[JobRow]:
        """The tasks of earlier runs this run can follow: those of its keys. Another key's
        tasks stay in flight in the journal (never submitted again: they are paid), told
        in one line per key."""
        if self.pool is None:
            return in_flight
        ours: list[JobRow] = []
        foreign: dict[str, int] = {}
        for row in in_flight:
            if row.key_fp is None or row.key_fp in self.pool.by_fingerprint:
                ours.append(row)
            else:
                foreign[row.key_fp] = foreign.get(row.key_fp, 0) + 1
        for fp, count in foreign.items():
            self._emit(
                Warned(
                    key=fp,
                    message=f"{count} task(s) in flight belong to key {fp}, which this run "
                    "was not given: they stay in flight in the journal and are never "
                    "submitted again; a run given that key follows them",
                )
            )
        return ours

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
