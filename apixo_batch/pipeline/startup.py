"""A run's start-up: the journal brought in line with the job file, what earlier runs
learned, the files of ``done`` jobs checked on disk, the forecast, and the ``started``
event with its warnings. Nothing is paid here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..apixo.limits import RequestBucket
from ..errors import MissingApiKey
from ..events import Emitter, Started, Warned
from ..jobs import Campaign
from ..journal import Clash, JobRow, JobState, Ledger, SyncResult, jobs_of
from ..outputs.ondisk import Problem, problems
from ..planning.completion import CompletionModel
from ..planning.forecast import expected_generation_s, forecast_run
from ..planning.kind import Kind
from ..planning.order import longest_first
from .adoption import adopt_unrecorded
from .learned import start_informed
from .options import RunOptions

__all__ = ["StartUp", "start_up"]

S = JobState

#: problems told one line each at start-up; the rest in one line with their count
SHOWN_PROBLEMS = 10


@dataclass(frozen=True, slots=True)
class StartUp:
    """What the journal held once reconciled: the work of this run."""

    synced: SyncResult
    #: tasks paid for by earlier runs and not yet ended: followed, never submitted again
    in_flight: list[JobRow]
    queued: int
    queued_cost: float
    unknown_price_jobs: int
    #: spend journaled by earlier runs (known prices)
    spent_before: float
    #: results of earlier runs still to be fetched
    to_download: int
    #: the queued jobs' predicted wall time (this run's clock), when there are any to submit
    planned_wall_s: float | None
    #: this run submits (``run`` with queued jobs)
    submit: bool

    @property
    def needs_api(self) -> bool:
        return self.submit or bool(self.in_flight)

    @property
    def idle(self) -> bool:
        """Nothing to submit, follow or fetch: the run makes no request at all."""
        return not self.needs_api and self.to_download == 0


async def start_up(
    ledger: Ledger,
    campaign: Campaign,
    options: RunOptions,
    *,
    bucket: RequestBucket,
    completions: CompletionModel,
    account: str | None,
    has_key: bool,
    emit: Emitter,
    folder: Path | None = None,
) -> StartUp:
    """Reconcile, start informed, forecast; tell ``started`` and what needs a warning.

    Raises :class:`MissingApiKey` before ``started`` when the work needs the API and no
    key was given: a run that cannot start says only why. ``folder``: the output folder
    whose ``done`` files are checked (a stat each, on the journal's thread)."""
    run_mode = options.mode == "run"
    # Before reconcile: a job whose id was kept is still `submitting`, and adopted it is
    # followed, not counted as a submit cut off by a crash (nor sent again).
    await adopt_unrecorded(ledger, emit, reserve=run_mode)
    recovered, synced = await ledger.reconcile(
        None if campaign.from_journal else jobs_of(campaign),
        again=options.again,
    )
    if campaign.stamp and not campaign.from_journal:
        await ledger.keep_file_stamp(campaign.stamp)  # `status` then needs no new look
    off_disk = [] if folder is None else await refetch_off_disk(ledger, folder)
    clashes = await refuse_clashes(ledger, folder) if run_mode else []
    spent_before = (await ledger.totals()).spent_known_usd
    await start_informed(ledger, bucket, completions, account)
    in_flight = await ledger.in_flight()
    selection = options.selection
    if selection.filtered and not run_mode:
        # `download --only`: the other tasks are left for a later download. A run follows
        # every task in flight whatever it selects: each holds one of the account's slots
        # that its submits would otherwise count as free, and paid work is seen to its end
        # (invariant 4), as its results are fetched.
        in_flight = [r for r in in_flight if selection.picks(r.id, r.model)]
    if selection.narrowed and run_mode:
        queued_cost, unknown, queued, runs = await _selected_queue(ledger, options, completions)
    else:
        queued_cost, unknown, queued = await ledger.queued_cost()
        runs = None
    counts = await ledger.counts()
    planned_wall_s = None
    if run_mode and queued:
        planned_wall_s = forecast_run(
            runs if runs is not None else await ledger.queued_runs(),
            completions,
            order=options.order,
            callback=options.callback_url is not None,
            slots=options.max_concurrent,
            rpm=min(float(options.rpm), bucket.rate_per_s * 60.0),
            time_scale=options.time_scale,
        )
    submit = run_mode and queued > 0
    if run_mode and not submit and ledger.runner is not None:
        # Nothing free, but other runners hold unfinished work: this runner stays to
        # adopt it should they die (or to claim what they give back).
        elsewhere, _ = await ledger.runner.remaining()
        submit = elsewhere > 0
    start = StartUp(
        synced=synced,
        in_flight=in_flight,
        queued=queued,
        queued_cost=queued_cost,
        unknown_price_jobs=unknown,
        spent_before=spent_before,
        to_download=counts.get(S.SUCCEEDED.value, 0),
        planned_wall_s=planned_wall_s,
        submit=submit,
    )
    if start.needs_api and not has_key:
        raise MissingApiKey("no API key was given (api_key=), and this run has API work")
    emit(
        Started(
            per_model=await ledger.counts_by_model(),
            spent_usd=round(spent_before, 4),
            jobs=sum(counts.values()),
            queued=queued if run_mode else 0,
            in_flight=len(in_flight),
            to_download=start.to_download,
            done=counts.get(S.DONE.value, 0),
            estimated_cost_usd=round(queued_cost, 4),
            unknown_price_jobs=unknown,
            planned_wall_s=planned_wall_s and round(planned_wall_s, 1),
        )
    )
    for job_id in synced.changed_after_submit or []:
        emit(Warned(job_id, message=_changed_advice(job_id, synced.ended.get(job_id), campaign)))
    if synced.refused_unchanged:
        emit(Warned(message=_refused_line(synced.refused_unchanged)))
    expired = counts.get(S.EXPIRED.value, 0)
    if run_mode and expired and not options.retry_expired:
        # Before --retry-expired nothing could send them again, and nothing said so.
        emit(
            Warned(
                message=f"{expired} expired job(s) (their results lapsed before the download) "
                f"are not submitted again: `apixo-batch run {_shown(campaign)} "
                "--retry-expired` submits them (a new task each, paid)"
            )
        )
    _tell_off_disk(off_disk, emit)
    _tell_clashes(clashes, folder, emit)
    if recovered:
        emit(
            Warned(
                message=f"{recovered} submit(s) were cut off by a crash and will be sent again "
                "(counted as possibly duplicated)",
            )
        )
    return start


async def _selected_queue(
    ledger: Ledger, options: RunOptions, completions: CompletionModel
) -> tuple[float, int, int, list[tuple[Kind, int]]]:
    """(known USD, jobs of unknown price, jobs, runs of a kind in file order) of the queued
    jobs this run may submit: those ``--only``/``--model`` pick, the first ``--limit`` of
    them in the start order. What the balance check and the forecast weigh: a smoke test
    of three jobs is not refused for the balance the whole night would need."""
    selection = options.selection
    picked = [q for q in await ledger.queued_brief() if selection.picks(q[0], q[1])]
    if selection.limit is not None and len(picked) > selection.limit:
        ranked = picked
        if options.order == "longest":
            kinds = longest_first(
                dict.fromkeys(q[3] for q in picked), partial(expected_generation_s, completions)
            )
            rank = {kind: i for i, kind in enumerate(kinds)}
            ranked = sorted(picked, key=lambda q: rank[q[3]])  # stable: file order within
        first = {q[0] for q in ranked[: selection.limit]}
        picked = [q for q in picked if q[0] in first]
    runs: list[tuple[Kind, int]] = []
    for _, _, _, kind in picked:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    known = sum(q[2] for q in picked if q[2] is not None)
    unknown = sum(1 for q in picked if q[2] is None)
    return known, unknown, len(picked), runs


#: what generates the new input of a job whose task ended, by the state it ended in
_AGAIN_FLAG = {"failed": "--retry-failed", "done": "--reroll", "expired": "--retry-expired"}


def _changed_advice(job_id: str, ended: str | None, campaign: Campaign) -> str:
    """One line for a job whose input changed after its task was paid: what happens, and
    the one command that generates the new input."""
    if ended is None:
        return (
            f"job {job_id}: its input changed after it was submitted; the paid task follows "
            "the submitted input. Once it ends, the new input is generated by `apixo-batch run "
            f"{_shown(campaign)} --reroll --only {job_id}` (done) or `--retry-failed --only "
            f"{job_id}` (failed)"
        )
    flag = _AGAIN_FLAG[ended]
    return (
        f"job {job_id}: its input changed after its task ended {ended}; nothing is sent for "
        f"it unless asked: `apixo-batch run {_shown(campaign)} {flag} --only {job_id}` "
        "submits the new input (a new task, paid)"
    )


def _shown(campaign: Campaign) -> str:
    """The job file as a command should name it: relative to here when below it."""
    try:
        return str(campaign.path.relative_to(Path.cwd()))
    except ValueError:
        return str(campaign.path)


#: ids named in one line; the rest counted
SHOWN_IDS = 5


def _refused_line(refused: dict[str, str]) -> str:
    """One line for the failed jobs --retry-failed left alone (their input was refused and
    has not changed)."""
    codes: dict[str, int] = {}
    for code in refused.values():
        codes[code] = codes.get(code, 0) + 1
    told = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in sorted(codes.items()))
    ids = list(refused)
    more = f", +{len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return (
        f"{len(ids)} failed job(s) not submitted again: APIXO refused their input ({told}) "
        f"and it has not changed since ({', '.join(ids[:SHOWN_IDS])}{more}); edit the input, "
        "or name the code with --fail-code to pay for the same input again"
    )


async def refetch_off_disk(ledger: Ledger, folder: Path) -> list[Problem]:
    """Every ``done`` job whose files in ``folder`` are gone or not of their journaled
    size goes back to ``succeeded``: the lander fetches it again from its journaled
    URLs (no new submit; an expired URL ends it ``expired``). The problems found."""
    found = await ledger.read_done(lambda rows: list(problems(rows, folder)))
    await ledger.refetch(list(dict.fromkeys(p.job_id for p in found)))
    return found


def _tell_off_disk(found: list[Problem], emit: Emitter) -> None:
    shown = found[:SHOWN_PROBLEMS]
    for p in shown:
        emit(
            Warned(
                p.job_id,
                message=f"job {p.job_id}: {p.path}: {p.detail} ({p.kind}); fetched again "
                "from its journaled result URL(s), not submitted again",
            )
        )
    rest = len({p.job_id for p in found} - {p.job_id for p in shown})
    if rest:
        emit(
            Warned(
                message=f"{rest} more done job(s) whose files are not on disk as journaled "
                "are fetched again from their journaled result URLs",
            )
        )


async def refuse_clashes(ledger: Ledger, folder: Path | None) -> list[Clash]:
    """Queued jobs whose output name is another job's file, or (``folder``) a file no job
    of the journal wrote, ended ``failed`` (``OUTPUT_EXISTS``) before any submit: never
    paid, nothing written over. One ``lexists`` per queued job, on the journal's thread."""
    if folder is None:
        return await ledger.refuse_clashes(None, str)
    return await ledger.refuse_clashes(
        lambda name: os.path.lexists(folder / name), lambda name: str(folder / name)
    )


def _tell_clashes(found: list[Clash], folder: Path | None, emit: Emitter) -> None:
    for c in found[:SHOWN_PROBLEMS]:
        emit(
            Warned(c.job_id, message=c.message(str(c.name if folder is None else folder / c.name)))
        )
    if len(found) > SHOWN_PROBLEMS:
        emit(
            Warned(
                message=f"{len(found) - SHOWN_PROBLEMS} more job(s) were not submitted: their "
                "output name is taken (failed, OUTPUT_EXISTS; see the manifest)"
            )
        )
