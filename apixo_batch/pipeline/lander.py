"""The lander: results brought to disk, whole and verified, and journaled ``done``.

Its input is one stream with two senders: the follower (results that succeeded
in this run) and a feeder that pages through the journal's ``succeeded`` jobs
(results an earlier run did not bring home). The stream ends when both have
closed; the lander ends when its workers have landed what was in it.

Downloads have their own concurrency (``download_concurrency`` workers), not
API tokens: a file host is not the API. Where a file goes is the run's
:class:`~apixo_batch.outputs.output.Output`: a folder (a ``.part`` hashed,
checked, fsynced and renamed) or object storage (a streamed upload that only
completes whole). A file name another job holds is never written over (the one
:class:`FileRegistry`, read from the journal at the first download and kept up
to date here), nor a file the journal never recorded as this job's: a result
produced in this run refuses it before downloading; a result an earlier run left
(perhaps renamed into place just before a crash) replaces it by nothing, and is
kept as landed only if the file holds its very bytes.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import aiohttp
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ..clock import Clock
from ..defaults import PATIENCE
from ..errors import DownloadError, OutputTaken, ResultExpired
from ..events import Downloaded, Emitter, Expired, Retried, Warned
from ..journal import FileRegistry, JobRow, JobState, Landed, Ledger, NameBook, result_filename
from ..outputs.output import Incoming, LandedFile, LocalOutput, Output
from ..outputs.paths import storage_failure
from ..planning.selection import Selection
from ..retry import Backoff, Deadline, Patience
from .stop import Stop, StopKind, Stops, storage_stop

__all__ = ["Fetch", "Lander", "fetch_of"]

#: journal rows read per page by the feeder; the stream's bound keeps it ahead of
#: the workers by at most that much
FEED_PAGE = 200


@dataclass(frozen=True, slots=True)
class Fetch:
    """A result to bring to disk."""

    id: str
    model: str
    filename: str
    result_urls: tuple[str, ...]
    #: succeeded in this run: no .part of an earlier run can be waiting for it
    fresh: bool = False
    task_id: str | None = None
    #: the names the journal recorded as this job's files (an earlier, partial landing):
    #: only these may be written over; a file at any other name must be the same bytes
    landed: tuple[str, ...] = ()


def fetch_of(row: JobRow) -> Fetch:
    """The fetch of a ``succeeded`` row's results, as the journal holds them."""
    return Fetch(
        row.id, row.model, row.out_name, row.result_urls, task_id=row.task_id, landed=row.files
    )


class Lander:
    """Download workers over one stream of :class:`Fetch`."""

    def __init__(
        self,
        ledger: Ledger,
        session: aiohttp.ClientSession,
        *,
        output: Output,
        clock: Clock,
        emit: Emitter,
        backoff: Backoff,
        workers: int,
        patience: Patience = PATIENCE,
        stops: Stops | None = None,
        selection: Selection | None = None,
    ) -> None:
        self._ledger = ledger
        #: results of earlier runs are fetched only for the jobs it picks
        self._selection = selection or Selection()
        self._stops = stops or Stops(emit)
        self.left_for_disk = 0  # results not written because our disk refused them
        self._session = session
        self._output = output
        self._clock = clock
        self._emit = emit
        self._backoff = backoff
        self._workers = workers
        #: how long a result whose host cannot be reached is tried again in this run
        self._patience = patience
        self._taken: set[str] = set()  # jobs fetched in this run: each once
        #: the journal refused a landing: what comes next stays `succeeded` for `download`
        self._journal_refused = False
        self._registry: FileRegistry | None = None
        #: names reserved where other runners of the campaign see them (several runners)
        self.names: NameBook | None = None
        self._registry_read: asyncio.Future[dict[str, tuple[str, ...]]] | None = None
        self.busy = 0
        self.retries = 0

    async def _download(
        self, fetch: Fetch, url: str, name: str, *, fresh: bool, guard: bool
    ) -> LandedFile:
        """One file; while its host (or our object store) cannot even be reached (an
        outage), tried again in this run, every backoff cap, for as long as the run's
        patience lasts."""
        outage: Deadline | None = None
        while True:
            try:
                return await self._output.land(
                    Incoming(
                        self._session,
                        url,
                        name,
                        fetch.id,
                        fetch.task_id,
                        fresh,
                        self._clock,
                        self._backoff,
                        guard,
                    )
                )
            except DownloadError as exc:
                if not exc.unreachable:
                    raise
                if outage is None:
                    outage = self._patience.start(self._clock)
                if outage.expired():
                    raise
            fresh = False  # what arrived before the outage is resumed
            await self._clock.sleep(self._backoff.delay(self._backoff.max_attempts))

    async def feed(self, out: ObjectSendStream[Fetch]) -> None:
        """Results journaled ``succeeded`` (by this run or before), in file order."""
        async with out:
            rows = self._ledger.rows(JobState.SUCCEEDED, page=FEED_PAGE, file_only=False)
            async for row in rows:
                if self._selection.filtered and not self._selection.picks(row.id, row.model):
                    continue  # outside --only/--model: left for a later download
                await out.send(fetch_of(row))

    async def run(self, fetches: ObjectReceiveStream[Fetch]) -> None:
        async with fetches, asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker(fetches))

    async def _worker(self, fetches: ObjectReceiveStream[Fetch]) -> None:
        async for fetch in fetches:
            # The feeder pages through `succeeded` rows while fresh successes arrive.
            if fetch.id in self._taken or self._journal_refused:
                continue  # taken already; or nothing landed now could be journaled
            self._taken.add(fetch.id)
            self.busy += 1
            try:
                # One result's trouble (the host, the store, our disk: a DownloadError) is
                # handled in _land and leaves it `succeeded` for `download` or the next run.
                # The journal's disk failing is the storage stop: the result stays
                # `succeeded`, and submits on the wire still get their answers (an
                # exception here would cancel them). Anything else is a bug, which must end
                # the run once, not be told as one "download failed" per result.
                await self._land(fetch)
            except Exception as exc:
                why = storage_failure(exc)
                if why is None:
                    raise
                self._journal_refused = True
                self._stops.request(storage_stop(why))
            finally:
                self.busy -= 1

    def _disk_refused(self, why: str) -> None:
        """Our disk (or bucket) refused a result: it stays `succeeded` (its URLs journaled)
        for `download`, and no new work is submitted whose results would need it."""
        self.left_for_disk += 1
        if self.left_for_disk == 1:
            reason = (
                f"{why}: results stay journaled for `apixo-batch download` once the "
                "storage takes them again; no new submits, tasks already paid are still followed"
            )
            self._stops.request(Stop(StopKind.STORAGE, reason))

    async def _files(self) -> FileRegistry:
        """The registry, read once through one shared journal read."""
        if self._registry is None:
            if self._registry_read is None:
                self._registry_read = asyncio.ensure_future(self._read_registry())
            read = self._registry_read
            try:
                # Shielded: a worker cancelled while waiting must not cancel the others' read.
                owners = await asyncio.shield(read)
            except Exception:
                if read.done() and self._registry_read is read:
                    self._registry_read = None  # a failed read is tried again, not kept
                raise
            if self._registry is None:
                self._registry = FileRegistry(owners)
        return self._registry

    async def _read_registry(self) -> dict[str, tuple[str, ...]]:
        owners = await self._ledger.file_owners()
        # Once, before the first result lands: what a killed run left in the output goes.
        await self._output.prepare(owners)
        return owners

    async def _foreign(self, fetch: Fetch) -> bool:
        """The last guard: a result that succeeded in this run never landed before, so a
        file at one of its names in the output folder is no file of the journal (a
        hand-made cut put there after the job was submitted). It is not written over:
        the result stays ``succeeded``, told once. (Results fed from the journal are not
        refused here: after a crash their own file may be there, not yet journaled; their
        downloads are guarded instead, see :meth:`_land`.)"""
        if not isinstance(self._output, LocalOutput):
            return False
        folder = self._output.folder
        names = [result_filename(fetch.filename, n) for n in range(len(fetch.result_urls))]
        there = await asyncio.to_thread(lambda: [n for n in names if os.path.lexists(folder / n)])
        if not there:
            return False
        self._emit(
            Warned(
                fetch.id,
                message=(
                    f"job {fetch.id}: {folder / there[0]} exists and was not written by this "
                    "campaign; nothing was written over (the result stays succeeded). Move "
                    "the file away, then run `apixo-batch download`: the result stays "
                    "downloadable until its URLs expire"
                ),
            )
        )
        return True

    def _tell_taken(self, fetch: Fetch, clashes: list[tuple[str, str]]) -> None:
        # Overwriting would lose a paid result: this one waits, with its URLs journaled,
        # until the user renames one of the two.
        named = ", ".join(f"{name} (job {owner}'s file)" for name, owner in clashes)
        self._emit(
            Warned(
                fetch.id,
                message=(
                    f"job {fetch.id}: its results would be written over {named}; nothing "
                    "was downloaded. Change output.filename so the names differ (e.g. "
                    "'{id}_.mp4'; a job gone from the job file keeps its names until it "
                    "is back in it), then run `apixo-batch download`: the result stays "
                    "downloadable until its URLs expire"
                ),
            )
        )

    async def _held(self) -> bool:
        """False once this runner's lease is lost for good: its rows are its adopter's,
        who lands them (a late landing here would write over the adopter's file, with
        another task's bytes when this runner's task id came too late to be the job's).
        While the lease is only not live (a renewal late, the database away) landings
        wait for it."""
        lease = self._ledger.runner
        if lease is None:
            return True
        while lease.fenced():
            if lease.past_term():
                return False
            await self._clock.sleep(lease.lease_s / 6)
        return True

    async def _land(self, fetch: Fetch) -> None:
        if not await self._held():
            return  # the run stops (exit 75): the result is another runner's to land
        files = await self._files()
        clashes = files.clashes(fetch.id, fetch.filename, len(fetch.result_urls))
        if clashes:
            self._tell_taken(fetch, clashes)
            return
        if self.names is not None and len(fetch.result_urls) > 1:
            # A task of one result lands on its job's own name, which its journal row
            # holds for every runner already (a name another runner reserves is checked
            # against the jobs' own names, and the check before submits reads the
            # reservations): only the names of further results need reserving.
            wanted = [result_filename(fetch.filename, n) for n in range(len(fetch.result_urls))]
            taken = await self.names.reserve(fetch.id, wanted)
            if taken:
                self._tell_taken(fetch, taken)
                return
        if fetch.fresh and await self._foreign(fetch):
            return
        landed = Landed()
        found = 0
        # After a crash (the machine's, between a rename and its journaling) a file at a
        # name the journal never recorded as this job's may be its own result or someone
        # else's: only the same bytes are kept, nothing is written over.
        own = {name.casefold() for name in fetch.landed}
        try:
            for n, url in enumerate(fetch.result_urls):
                name = result_filename(fetch.filename, n)
                guard = name.casefold() not in own
                got = await self._download(fetch, url, name, fresh=fetch.fresh, guard=guard)
                landed.add(name, got.sha256, got.bytes)
                found += got.found
                files.hold(name.rpartition("/")[2], fetch.id)
        except OutputTaken as exc:
            partial = self._ledger.record_partial(fetch.id, landed)
            if partial is not None:
                await partial
            self._emit(
                Warned(
                    fetch.id,
                    message=(
                        f"job {fetch.id}: {exc}; the result stays succeeded. Move the file "
                        "away, then run `apixo-batch download`: the result stays downloadable "
                        "until its URLs expire"
                    ),
                )
            )
            return
        except ResultExpired as exc:
            await self._ledger.record_expired(fetch.id, str(exc), landed)
            self._emit(Expired(fetch.id, model=fetch.model, message=str(exc)))
            return
        except DownloadError as exc:
            partial = self._ledger.record_partial(fetch.id, landed)
            if partial is not None:
                await partial
            if exc.local:
                self._disk_refused(str(exc))
                return
            self.retries += 1
            self._emit(
                Retried(fetch.id, call="download", error=f"{exc}; left for `apixo-batch download`")
            )
            return
        # Not durable: after a power loss the file is verified or fetched again.
        await self._ledger.record_done(fetch.id, landed)
        self._emit(
            Downloaded(
                fetch.id,
                model=fetch.model,
                files=landed.files,
                bytes=landed.bytes,
                found=found or None,
            )
        )
