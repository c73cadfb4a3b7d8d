"""A run's end: what it learned kept for the next, the books closed (manifest, counts,
spend), the :class:`RunResult`, the review page and the ``summary`` event."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable

from ..apixo.limits import ConcurrencyLimit, RequestBucket
from ..errors import JournalError
from ..jobs import Campaign
from ..journal import JobRow, JobState, Ledger, RunRecord
from ..journal.pg import is_database
from ..outputs.output import Output
from ..outputs.paths import storage_failure
from ..planning.selection import Selection
from .books import close_books, review_page
from .learned import remember_rate
from .options import RunResult
from .startup import StartUp
from .stop import Stops
from .turnaround import Turnaround
from .wiring import RunParts, Stages

__all__ = ["finish"]


def _selected_done(rows: Iterable[JobRow], selection: Selection) -> bool:
    """Every job the selection picked and this run could submit ended done: jobs left
    queued (outside --only/--model, past --limit) are not this run's to finish."""
    return all(
        r.state is JobState.DONE
        for r in rows
        if r.state is not JobState.QUEUED
        and (r.in_file or r.task_id is not None)
        and selection.picks(r.id, r.model)
    )


async def _rest_held_by_others(ledger: Ledger) -> bool:
    """A runner told ``--leave-early`` left the jobs live runners hold to them: done when
    those are all that is not done (a Kubernetes Job's pod, say, ends succeeded)."""
    lease = ledger.runner
    if lease is None:
        return False
    try:
        return await lease.not_done_unheld() == 0
    except Exception:
        return False  # unknown: not all done, as counted


async def finish(
    ledger: Ledger,
    parts: RunParts,
    *,
    campaign: Campaign,
    output: Output,
    bucket: RequestBucket,
    account: str | None,
    start: StartUp | None,
    stages: Stages | None,
    started: float,
    storage_stop: Callable[[str], None],
) -> RunResult:
    """The result of the run, with the books closed as far as the disk allows."""
    try:
        await remember_rate(ledger, bucket, account)
        if parts.pool is not None and parts.pool.pooled:
            # Each key's learned rate, kept under its own digest (key and base URL).
            for other in parts.pool.accounts[1:]:
                await remember_rate(ledger, other.bucket, other.account)
    except Exception as exc:
        why = storage_failure(exc)
        if why is None:
            raise
        storage_stop(why)
    submitter = stages.submitter if stages is not None else None
    stops: Stops = parts.stops
    # Kept before the books are closed: the review page written with them reads it.
    record = RunRecord(
        ended_at=parts.clock.wall(),
        wall_s=round(parts.clock.monotonic() - started, 3),
        submitted=submitter.submitted if submitter else 0,
        changed=ledger.changes,
        stops=tuple(s.kind.label for s in stops.all),
        stop_reason=stops.reason,
        budget_usd=parts.options.budget,
    )
    try:
        await ledger.keep_run(record)
    except Exception as exc:
        # Unkept, the page shows an earlier run: the run itself goes on to its books.
        why = storage_failure(exc)
        if why is not None:
            storage_stop(why)
        elif not isinstance(exc, JournalError):
            raise
    books = await close_books(ledger, output, storage_stop)
    counts, totals, manifest = books.counts, books.totals, books.manifest
    slots: ConcurrencyLimit = parts.slots
    turnaround: Turnaround = parts.turnaround
    stats = bucket.statistics()
    all_done = counts.get("done", 0) == sum(counts.values())
    selection = parts.options.selection
    if selection.narrowed and not all_done and books.manifest is not None:
        all_done = await ledger.read_rows(lambda rows: _selected_done(rows, selection))
    if not all_done and parts.options.leave_early:
        all_done = await _rest_held_by_others(ledger)
    pool = parts.pool if parts.pool is not None and parts.pool.pooled else None
    keys = [a.statistics() for a in pool.accounts] if pool else []
    result = RunResult(
        exit_code=stops.exit_code(all_done),
        counts=counts,
        submitted=submitter.submitted if submitter else 0,
        # The journal's totals unread at the end: unknown, never a reassuring zero.
        possibly_duplicated=totals.possibly_duplicated if totals else None,
        requests=sum(k.requests for k in keys) if keys else stats.sent,
        rate_limited=sum(k.rate_limited for k in keys) if keys else stats.rate_limited,
        learned_rpm=stats.learned_rpm,
        learned_limit=stats.learned_limit,
        learned_slots=slots.cap if slots.statistics().shrinks else None,
        slot_turnaround=turnaround.statistics(),
        planned_wall_s=start.planned_wall_s if start else None,
        retries=stages.retries if stages else 0,
        wall_s=parts.clock.monotonic() - started,
        spent_usd=totals.spent_known_usd if totals else None,
        unknown_price_jobs=totals.spent_unknown_jobs if totals else None,
        fatal=stops.fatal,
        stop_reason=stops.reason,
        interrupted=stops.interrupted,
        input_changed=list(start.synced.changed_after_submit or []) if start else [],
        arrived=books.arrived,
        fail_codes=books.fail_codes,
        per_model=books.per_model,
        never_submitted=books.never_submitted,
        submit_cut_off=books.submit_cut_off,
        next_step=stops.next_step or _fetch_later(stages, ledger.where),
        manifest=books.manifest_at if manifest else None,
        output_dir=campaign.output_dir,
        keys=keys,
    )
    if parts.options.review and books.manifest is not None:
        result.review = await review_page(
            ledger, campaign, output, result.summary(), parts.emit, totals
        )
    result.store_requests = output.requests()
    parts.emit(result.summary())
    return result


def _fetch_later(stages: Stages | None, journal: str) -> str | None:
    """Downloads that gave up in a run nothing stopped: their results are paid and their
    URLs journaled, so fetching them later is the one thing left to do (with the
    ``--state`` of a journal in a database, as shown)."""
    gave_up = stages.lander.retries if stages is not None else 0
    if not gave_up:
        return None
    state = f" --state {shlex.quote(journal)}" if is_database(journal) else ""
    return (
        f"`apixo-batch download{state}` fetches the {gave_up} result(s) whose download gave up "
        "(paid already; their URLs stay valid until they expire)"
    )
