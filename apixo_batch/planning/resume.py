"""What ``run`` would do NOW, from the job file and the campaign's journal.

``plan`` on a campaign that has run already: the jobs it would submit (and for how
much), the ones done, in flight or waiting for a download, the failed ones, the jobs
the journal holds that the file no longer does (orphaned) and the file's new ids. A
campaign whose ids all changed (a new top-level ``matrix``, a renamed ``id``) shows
as N new and N orphaned: ``run`` would pay for those jobs again. The same rules as
:mod:`apixo_batch.journal.reconcile` and the budget meter, read without writing.

The jobs to submit are also grouped as the plan's table groups a job file
(:attr:`Resume.groups`, :attr:`Resume.runs`), so the table, the cost and the time
``plan`` prints are those of what ``run`` would do now. Jobs ``run`` would refuse
before their submit (a name taken, :mod:`apixo_batch.journal.clash`) are left out
of them, through the ``refuse`` callable the caller gives.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from ..catalog.models import MODELS
from ..jobs import Campaign, JobGroup
from .forecast import expected_generation_s
from .kind import Kind
from .order import longest_first
from .selection import Again, take_filename

__all__ = ["JournalJob", "Resume", "resume_figures"]

#: ids listed by name (orphaned, new); the rest are counted
SHOWN_IDS = 10
#: ids of jobs that do not fit the budget named (the rest are counted)
SHOWN_UNFIT = 5

#: journal states whose task was (or may have been) paid for
_PAID = frozenset({"submitting", "submitted", "succeeded", "done", "expired"})


class JournalJob(NamedTuple):
    """One journal row, as much as the figures need (one SELECT)."""

    id: str
    state: str
    input_hash: str
    #: a task id is recorded (paid for)
    has_task: bool
    fail_code: str | None
    #: the job's price when it was synced in (None: unknown)
    cost_usd: float | None = None
    #: the job file held it at the last sync
    in_file: bool = True
    kind: Kind | None = None
    #: its output name, as journaled
    filename: str = ""
    #: the inputs its price and clock read (mode, duration, resolution, sound)
    sample: Mapping[str, Any] | None = None
    #: the take it is on (a ``--reroll`` lands the next one at ``<stem>-take<N>.mp4``)
    take: int = 1


class _Submit(NamedTuple):
    """A job ``run`` would submit now."""

    id: str
    filename: str
    kind: Kind
    cost: float | None
    sample: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resume:
    """The figures; costs are the job file's prices (``None`` counts as unknown)."""

    journal: str
    #: jobs ``run`` would submit now (queued, new, interrupted submits, failed ones
    #: with --retry-failed)
    to_submit: int
    to_submit_usd: float
    to_submit_unknown: int
    #: of ``to_submit``: ids the journal does not know yet
    new: int
    done: int
    in_flight: int
    #: results APIXO holds that are not downloaded yet (no new payment)
    to_download: int
    failed: int
    expired: int
    #: journal ids no longer in the file
    orphaned: int
    #: of ``orphaned``: jobs paid for (or possibly paid for)
    orphaned_paid: int
    #: new ids that look like paid jobs renamed: min(new, orphaned_paid)
    pay_again: int
    pay_again_usd: float
    retry_failed: bool
    #: what the journal counts as already spent (the budget's starting point)
    spent_usd: float
    budget: float | None = None
    #: jobs of ``to_submit`` that fit the budget, in the start order (None: no budget)
    fit_budget: int | None = None
    fit_budget_usd: float | None = None
    #: priced jobs of ``to_submit`` that do not fit it, and the first few of their ids
    unfit_budget: int = 0
    unfit_budget_ids: tuple[str, ...] = ()
    #: jobs ``run`` would refuse before their submit (their names are taken): not counted
    #: in ``to_submit``
    refused: int = 0
    #: the jobs to submit by model, mode, duration and price tier (the plan's table)
    groups: tuple[JobGroup, ...] = ()
    #: the jobs to submit as (kind, jobs in a row), in file order (the plan's forecast)
    runs: tuple[tuple[Kind, int], ...] = ()
    #: the first orphaned ids, and the first new ones
    orphaned_ids: tuple[str, ...] = ()
    new_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.journal,
            "to_submit": {
                "jobs": self.to_submit,
                "known_usd": round(self.to_submit_usd, 4),
                "unknown_jobs": self.to_submit_unknown,
                "new": self.new,
                "new_ids": list(self.new_ids),
            },
            "refused": self.refused,
            "orphaned_ids": list(self.orphaned_ids),
            "done": self.done,
            "in_flight": self.in_flight,
            "to_download": self.to_download,
            "failed": self.failed,
            "expired": self.expired,
            "orphaned": self.orphaned,
            "orphaned_paid": self.orphaned_paid,
            "pay_again": {"jobs": self.pay_again, "usd": round(self.pay_again_usd, 4)},
            "retry_failed": self.retry_failed,
            "spent_usd": round(self.spent_usd, 4),
            "budget": None
            if self.budget is None
            else {
                "usd": self.budget,
                "fit_jobs": self.fit_budget,
                "fit_usd": None if self.fit_budget_usd is None else round(self.fit_budget_usd, 4),
                "unfit_jobs": self.unfit_budget,
                "unfit_ids": list(self.unfit_budget_ids),
            },
        }


def resume_figures(
    campaign: Campaign,
    rows: Iterable[JournalJob],
    *,
    journal: str,
    spent_usd: float,
    synced: bool = False,
    retry_failed: bool = False,
    budget: float | None = None,
    order: str = "longest",
    refuse: Callable[[Iterable[tuple[str, str]]], Collection[str]] | None = None,
    again: Again | None = None,
) -> Resume:
    """The figures for ``campaign`` against the journal ``rows`` (see the module docstring).

    ``synced``: the journal was last synced from this very job file (same stamp), so its
    ``in_file`` rows, in file order, are the file's jobs and the file is not read again.
    ``refuse``: given the jobs to submit as (id, the name their take lands at) in file
    order, the ids ``run`` would refuse before their submit.
    ``again``: the ended jobs sent again and the selection (``--only``, ``--model``,
    ``--limit``); jobs outside it are neither submitted nor counted."""
    if again is None:
        again = Again(failed=retry_failed)
    retry_failed = again.failed
    known: dict[str, JournalJob] = {}
    file_jobs: list[tuple[JournalJob | None, _Submit, str]] = []
    if synced:
        for row in rows:
            if row.in_file:
                assert row.kind is not None
                sample = row.sample if row.sample is not None else row.kind.drives
                job = _Submit(row.id, row.filename, row.kind, row.cost_usd, sample)
                file_jobs.append((row, job, row.input_hash))
            else:
                known[row.id] = row
        figures = _figures(file_jobs, again)
    else:
        known = {row.id: row for row in rows}
        figures = _figures(
            (
                (
                    known.pop(job.id, None),
                    _Submit(
                        job.id,
                        job.filename,
                        Kind.of(job.model, job.input),
                        campaign.cost(job),
                        job.input,
                    ),
                    job.input_hash,
                )
                for job in campaign.iter_jobs()
            ),
            again,
        )
    submit, counts, new_ids, new_usd, new_unknown = figures
    new = len(new_ids)
    refused: Collection[str] = ()
    if refuse is not None and submit:
        refused = refuse((job.id, job.filename) for job in submit)
        if refused:
            submit = [job for job in submit if job.id not in refused]
    # After the refusals, as in ``run``: they end before the first submit, the limit
    # counts the jobs that start.
    limit = again.selection.limit
    if limit is not None and len(submit) > limit:
        first = {job.id for job in _in_start_order(submit, order)[:limit]}
        submit = [job for job in submit if job.id in first]
        fresh = set(new_ids)
        kept_new = [job for job in submit if job.id in fresh]
        new_ids = [job.id for job in kept_new]
        new = len(new_ids)
        new_usd = sum(job.cost for job in kept_new if job.cost is not None)
        new_unknown = sum(1 for job in kept_new if job.cost is None)
    orphaned = len(known)
    orphaned_paid = sum(1 for row in known.values() if row.state in _PAID or row.has_task)
    pay_again = min(new, orphaned_paid)
    # The new jobs' mean price: the renamed ones cost what the new ones do.
    priced_new = new - new_unknown
    pay_again_usd = new_usd / priced_new * min(pay_again, priced_new) if priced_new else 0.0
    fit = fit_usd = None
    unfit: list[str] = []
    if budget is not None:
        fit, fit_usd, unfit = _fit(submit, budget, spent_usd, order)
    return Resume(
        journal=journal,
        to_submit=len(submit),
        to_submit_usd=sum(job.cost for job in submit if job.cost is not None),
        to_submit_unknown=sum(1 for job in submit if job.cost is None),
        new=new,
        done=counts["done"],
        in_flight=counts["submitted"],
        to_download=counts["succeeded"],
        failed=counts["failed"],
        expired=counts["expired"],
        orphaned=orphaned,
        orphaned_paid=orphaned_paid,
        pay_again=pay_again,
        pay_again_usd=pay_again_usd,
        retry_failed=retry_failed,
        spent_usd=spent_usd,
        budget=budget,
        fit_budget=fit,
        fit_budget_usd=fit_usd,
        unfit_budget=len(unfit),
        unfit_budget_ids=tuple(unfit[:SHOWN_UNFIT]),
        refused=len(refused),
        groups=_groups(submit),
        runs=_runs(submit),
        orphaned_ids=tuple(list(known)[:SHOWN_IDS]),
        new_ids=tuple(new_ids[:SHOWN_IDS]),
    )


def _figures(
    file_jobs: Iterable[tuple[JournalJob | None, _Submit, str]], again: Again
) -> tuple[list[_Submit], dict[str, int], list[str], float, int]:
    """(jobs to submit in file order, jobs per state left alone, new ids, their known USD,
    new jobs of unknown price): the reconcile's rules, nothing written."""
    submit: list[_Submit] = []
    counts = dict.fromkeys(("done", "submitted", "succeeded", "failed", "expired"), 0)
    new_ids: list[str] = []
    new_unknown = 0
    new_usd = 0.0
    selection = again.selection
    for row, job, input_hash in file_jobs:
        if selection.filtered and not selection.picks(job.id, job.kind.model):
            continue
        if row is None:
            new_ids.append(job.id)
            if job.cost is None:
                new_unknown += 1
            else:
                new_usd += job.cost
            submit.append(job)
            continue
        state, take = row.state, row.take
        if (
            state == "failed"
            and not row.has_task
            and (row.fail_code == "SUBMIT_ERROR" or row.input_hash != input_hash)
        ):
            state = "queued"  # a submit never answered, or an input fixed: queued again
        elif state == "failed":
            unchanged = row.input_hash == input_hash
            if again.failed_again(job.id, job.kind.model, row.fail_code, unchanged) == "retry":
                state = "queued"
        elif again.picks(state, job.id, job.kind.model):
            if state == "done":
                take += 1  # --reroll: a new take, landing at its own name
            state = "queued"  # --reroll, --retry-expired
        if state in ("queued", "submitting"):
            submit.append(job._replace(filename=take_filename(job.filename, take)))
        elif state in counts:
            counts[state] += 1
    return submit, counts, new_ids, new_usd, new_unknown


def _groups(submit: list[_Submit]) -> tuple[JobGroup, ...]:
    """The jobs by model, mode, duration and price tier, as the job file's loader groups
    them (first appearance first); a model the catalog does not know is left out."""
    # Counted first by what decides the group (the kind, the mode, the sound toggle), a
    # hashable key of few values: the price tier is then asked once per distinct one.
    counted: dict[tuple[Kind, Any, Any], list[Any]] = {}
    for job in submit:
        sample = job.sample
        key = (job.kind, sample.get("mode"), sample.get("sound"))
        seen = counted.get(key)
        if seen is None:
            counted[key] = [1, sample]
        else:
            seen[0] += 1
    groups: dict[tuple[str, Any, Any, str], list[Any]] = {}
    for (kind, mode, _), (n, sample) in counted.items():
        spec = MODELS.get(kind.model)
        if spec is None:
            continue
        group_key = (kind.model, mode, sample.get("duration"), spec.price_variant(sample))
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = [n, sample]
        else:
            group[0] += n
    return tuple(
        JobGroup(model, str(mode), int(duration or 0), tier, MODELS[model].clock(sample), n, sample)
        for (model, mode, duration, tier), (n, sample) in groups.items()
    )


def _runs(submit: list[_Submit]) -> tuple[tuple[Kind, int], ...]:
    """The jobs' kinds in file order, alike neighbours counted together."""
    runs: list[list[Any]] = []
    last: Kind | None = None
    for job in submit:
        kind = job.kind
        # Rows of a journal share their kinds: most neighbours are the same object.
        if last is not None and (kind is last or kind == last):
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
            last = kind
    return tuple((kind, count) for kind, count in runs)


def _in_start_order(submit: list[_Submit], order: str) -> list[_Submit]:
    """``submit`` (in file order) in the order ``run`` starts them (``--order``)."""
    if order != "longest":
        return submit
    ranked = longest_first(
        dict.fromkeys(job.kind for job in submit), partial(expected_generation_s, None)
    )
    rank = {kind: i for i, kind in enumerate(ranked)}
    return sorted(submit, key=lambda job: rank[job.kind])


def _fit(
    submit: list[_Submit], budget: float, spent: float, order: str
) -> tuple[int, float, list[str]]:
    """The budget meter's rule: jobs in start order, each admitted when it fits what is left
    of the budget and skipped when it does not (the next ones are still weighed); jobs of
    unknown price are skipped. (jobs that fit, their USD, ids of the priced ones that do not)"""
    submit = _in_start_order(submit, order)
    committed, jobs = spent, 0
    unfit: list[str] = []
    for job in submit:
        cost = job.cost
        if cost is None:
            continue
        if committed + cost > budget + 1e-9:
            unfit.append(job.id)
            continue
        committed += cost
        jobs += 1
    return jobs, committed - spent, unfit
