"""``apixo-batch plan``: the plan printed as a table on a terminal, as plain aligned text
in a pipe, or as one JSON object (the figures come from :mod:`apixo_batch.planning.plan`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..clock import human_duration
from ..defaults import state_path
from ..errors import JobFileError, PathError, StorageError
from ..exitcodes import ExitCode
from ..jobs import Campaign, load_campaign
from ..planning.forecast import expected_generation_s
from ..planning.kind import Kind
from ..planning.order import longest_first
from ..planning.plan import Plan, make_plan
from ..planning.resume import JournalJob, Resume, resume_figures
from ..planning.selection import Again, Selection
from .select import flat, selection_of, unmatched_only

if TYPE_CHECKING:  # the journal is imported only when there is one to read
    from ..journal import Clash
    from ..outputs.ondisk import Problem

__all__ = ["JournalView", "format_text", "plan_command"]


def plan_command(args: argparse.Namespace) -> int:
    """``apixo-batch plan JOBFILE``: print the plan (exit 0) or the file's problems (exit 2)."""
    try:
        campaign = load_campaign(args.jobfile, out_dir=getattr(args, "out", None))
    except JobFileError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.INVALID
    if args.fail_code and not args.retry_failed:
        print("apixo-batch: --fail-code narrows --retry-failed: give --retry-failed too",
              file=sys.stderr)  # fmt: skip
        return ExitCode.INVALID
    selection = selection_of(args)
    order = getattr(args, "order", "longest")
    try:
        refused = unmatched_only(args, (job.id for job in campaign.iter_jobs()))
        if refused is not None:
            print(f"apixo-batch: {refused}", file=sys.stderr)
            return ExitCode.INVALID
        view = _journal_view(args, campaign)
        # With a journal the table is what it leaves to submit, selected; without, the
        # file's jobs the selection picks.
        shown = campaign if view is not None else _planned(campaign, selection, order)
    except StorageError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.IO_ERROR
    except PathError as exc:
        print(f"apixo-batch: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except JobFileError as exc:  # the file changed while it was read
        print(exc, file=sys.stderr)
        return ExitCode.INVALID
    plan = make_plan(
        shown,
        max_concurrent=args.max_concurrent,
        rpm=args.rpm,
        order=getattr(args, "order", "longest"),
        now=None if view is None else (view.resume.groups, view.resume.runs),
    )
    if args.json:
        data = plan.to_dict()
        data["journal"] = None if view is None else view.to_dict()
        print(json.dumps(data, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich(plan, sys.stdout, view)
    else:
        sys.stdout.write(format_text(plan, view))
    return ExitCode.OK


def _planned(campaign: Campaign, selection: Selection, order: str) -> Campaign:
    """The jobs the plan's table covers: those ``--only``/``--model`` pick, and of them
    with ``--limit N`` the first N in the start order (``--order``)."""
    if not selection.narrowed:
        return campaign
    picked = campaign.narrowed(selection.picks) if selection.filtered else campaign
    if selection.limit is None or picked.job_count <= selection.limit:
        return picked
    jobs = [(Kind.of(job.model, job.input), job.index, job.id) for job in picked.iter_jobs()]
    if order == "longest":
        ranked = longest_first(
            list(dict.fromkeys(kind for kind, _, _ in jobs)),
            partial(expected_generation_s, None),
        )
        rank = {kind: i for i, kind in enumerate(ranked)}
        jobs.sort(key=lambda job: (rank[job[0]], job[1]))
    first = {job_id for _, _, job_id in jobs[: selection.limit]}
    return campaign.narrowed(lambda job_id, model: job_id in first)


@dataclass(frozen=True, slots=True)
class JournalView:
    """What the campaign's journal says ``run`` would do now, and what it finds on disk."""

    resume: Resume
    #: jobs ``run`` would refuse before their submit, names taken (as ``run`` checks them)
    clashes: tuple[Clash, ...] = ()
    #: ``done`` files gone or not of their journaled size (a stat each, as ``run`` does)
    off_disk: tuple[Problem, ...] = ()
    #: where the output's names are shown from (a folder; None: object storage)
    folder: Path | None = None

    @property
    def off_disk_jobs(self) -> int:
        return len({p.job_id for p in self.off_disk})

    def shown(self, name: str) -> str:
        return name if self.folder is None else str(self.folder / name)

    def to_dict(self) -> dict[str, Any]:
        data = self.resume.to_dict()
        if not self.resume.journal:
            data["path"] = None  # no journal yet: the folder's files alone were checked
        data["clashes"] = [
            {"job": c.job_id, "file": self.shown(c.name), "holder": c.holder, "result": c.result}
            for c in self.clashes[:SHOWN_JSON]
        ]
        data["off_disk"] = {
            "jobs": self.off_disk_jobs,
            "problems": [
                {"job": p.job_id, "path": str(p.path), "kind": p.kind, "detail": p.detail}
                for p in self.off_disk[:SHOWN_JSON]
            ],
        }
        return data


#: clashes and files off disk listed in ``plan --json`` (the rest are counted)
SHOWN_JSON = 100
#: ... and listed one a line in the text
SHOWN_LINES = 10


def _journal_view(args: argparse.Namespace, campaign: Campaign) -> JournalView | None:
    """The journal's figures when the campaign has one (read-only, no run lock), else None."""
    from ..journal import Journal
    from ..journal.clash import find_clashes
    from ..outputs.ondisk import problems
    from ..pipeline.owner import other_campaign

    state = getattr(args, "state", None)
    path = (
        Path(state).resolve()
        if state
        else state_path(campaign.output_dir, campaign.path, campaign.name)
    )
    folder = campaign.output_dir if isinstance(campaign.output_dir, Path) else None
    if not path.is_file():
        return _first_run(campaign, folder, args)
    exists = None if folder is None else _exists_in(folder)
    clashes: list[Clash] = []

    def refuse(candidates: Iterable[tuple[str, str]]) -> set[str]:
        # The check `run` makes at its start, before any submit: the same rule.
        clashes.extend(find_clashes(journal.output_rows(holders=True), candidates, exists))
        return {c.job_id for c in clashes}

    journal = Journal(path, lock=False)
    try:
        refused = other_campaign(path, journal.get_meta("campaign"), campaign.name)
        if refused is not None:
            raise PathError(refused)  # another campaign's jobs are not this one's plan
        # The journal synced from this very file holds its jobs: the file is not read again.
        synced = bool(campaign.stamp) and journal.file_stamp() == campaign.stamp
        rows = [JournalJob(*row) for row in journal.plan_rows()]
        spent = journal.totals()["spent_known_usd"]
        resume = resume_figures(
            campaign,
            rows,
            journal=str(path),
            spent_usd=spent,
            synced=synced,
            budget=getattr(args, "budget", None),
            order=getattr(args, "order", "longest"),
            refuse=refuse,
            again=_again(args),
        )
        off_disk = () if folder is None else tuple(problems(journal.iter_done_files(), folder))
    finally:
        journal.close()
    return JournalView(resume, tuple(clashes), off_disk, folder)


def _first_run(
    campaign: Campaign, folder: Path | None, args: argparse.Namespace
) -> JournalView | None:
    """No journal yet: None, unless files in the output folder are at names of the file's
    jobs. The first run refuses those jobs before any submit (no job of a journal wrote
    the files); the view then holds what it would do (``journal`` empty, no path)."""
    from ..journal.clash import find_clashes

    if folder is None or not folder.is_dir():
        return None
    with os.scandir(folder) as entries:
        if not any(entries):
            return None  # an empty folder: nothing in the way, the file is not read again
    exists = _exists_in(folder)
    clashes: list[Clash] = []

    def refuse(candidates: Iterable[tuple[str, str]]) -> set[str]:
        clashes.extend(find_clashes((), candidates, exists))
        return {c.job_id for c in clashes}

    resume = resume_figures(
        campaign,
        (),
        journal="",
        spent_usd=0.0,
        budget=getattr(args, "budget", None),
        order=getattr(args, "order", "longest"),
        refuse=refuse,
        again=Again(selection=selection_of(args)),
    )
    return JournalView(resume, tuple(clashes), (), folder) if clashes else None


def _again(args: argparse.Namespace) -> Again:
    """The ended jobs ``run`` would send again with these options, and its selection."""
    return Again(
        failed=args.retry_failed,
        fail_codes=flat(args.fail_code),
        expired=args.retry_expired,
        reroll=args.reroll,
        selection=selection_of(args),
    )


def _exists_in(folder: Path) -> Callable[[str], bool]:
    """``os.path.lexists`` of a name in ``folder``, as ``run`` asks it, from one listing:
    a name listed is there; a name listed only in another case is asked of the disk (a
    case-insensitive one says it is there)."""
    try:
        listed = set(os.listdir(folder))
    except OSError:
        listed = set()
    folded = {name.casefold() for name in listed}
    base = str(folder)

    def exists(name: str) -> bool:
        if name in listed:
            return True
        return name.casefold() in folded and os.path.lexists(os.path.join(base, name))

    return exists


_HEADERS = ("model", "mode", "duration", "tier", "jobs", "output", "price/s", "cost")
_RIGHT = {"duration", "jobs", "output", "price/s", "cost"}


def _cells(plan: Plan) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            row.model,
            row.mode,
            f"{row.duration} s",
            row.tier,
            f"{row.jobs:,}",
            f"{row.output_seconds:,} s",
            "unknown" if row.price_per_second is None else f"${row.price_per_second:.3f}",
            "unknown" if row.cost_usd is None else _usd(row.cost_usd),
        )
        for row in plan.rows
    ]
    rows.append(
        (
            "total",
            "",
            "",
            "",
            f"{plan.jobs:,}",
            f"{plan.output_seconds:,} s",
            "",
            # The table keeps it short; the summary below says how many prices are unknown.
            _usd(plan.known_cost_usd)
            if not plan.unknown_cost_jobs
            else f"≥ {_usd(plan.known_cost_usd)}",
        )
    )
    return rows


def format_text(plan: Plan, view: JournalView | None = None) -> str:
    """The plan as plain aligned text: no colour, no escape codes (for pipes and logs)."""
    table: list[tuple[str, ...]] = [tuple(h.upper() for h in _HEADERS), *_cells(plan)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    lines = [_header_line(plan), ""]
    for line in table:
        cells = (
            cell.rjust(width) if name in _RIGHT else cell.ljust(width)
            for cell, width, name in zip(line, widths, _HEADERS, strict=True)
        )
        lines.append("  ".join(cells).rstrip())
    lines += ["", *_summary_lines(plan), *_journal_lines(view)]
    return "\n".join(lines) + "\n"


def _print_rich(plan: Plan, stream: TextIO, view: JournalView | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    # rich turns colour off by itself when NO_COLOR is set.
    console = Console(file=stream, no_color="NO_COLOR" in os.environ or None)
    table = Table(title=_header_line(plan), title_justify="left", box=box.SIMPLE_HEAD)
    for name in _HEADERS:
        if name in _RIGHT:
            table.add_column(name, justify="right", no_wrap=True)
        else:
            table.add_column(name, no_wrap=True)
    cells = _cells(plan)
    for line in cells[:-1]:
        table.add_row(*line)
    table.add_section()
    table.add_row(*cells[-1], style="bold")
    if (
        Measurement.get(console, console.options.update_width(10_000), table).maximum
        > console.width
    ):
        # Too narrow for the table: plain columns read better than "standar…" cut short.
        stream.write(format_text(plan, view))
        return
    console.print(table)
    for text in [*_summary_lines(plan), *_journal_lines(view)]:
        console.print(text, highlight=False, markup=False)


def _header_line(plan: Plan) -> str:
    if plan.whole is not None:
        return (
            f"Campaign {plan.name!r}: {plan.jobs:,} jobs to submit now, of the "
            f"{plan.whole.jobs:,} in {_shown(plan.job_file)}"
        )
    return f"Campaign {plan.name!r}: {plan.jobs:,} jobs from {_shown(plan.job_file)}"


def _summary_lines(plan: Plan) -> list[str]:
    folder = (
        f"Output folder:  {plan.output_dir}"
        if isinstance(plan.output_dir, Path)
        else f"Output:         {plan.output_dir} (object storage)"
    )
    whole = plan.whole
    file_line = []
    if whole is not None:
        cost = _usd(whole.known_cost_usd)
        if whole.unknown_cost_jobs:
            cost = f"≥ {cost} + {whole.unknown_cost_jobs:,} of unknown price"
        file_line = [f"Job file:       {whole.jobs:,} jobs, {cost} in all"]
        if plan.jobs == 0:
            return [*file_line, "Nothing to submit: estimated cost $0.00", folder]
    lines = [
        *file_line,
        f"Output video:   {plan.output_seconds:,} s ({human_duration(plan.output_seconds)})"
        f" in {plan.jobs:,} files",
        f"Estimated cost: {_cost(plan)}",
    ]
    if plan.unknown_price_models:
        models = ", ".join(plan.unknown_price_models)
        lines.append(f"                (no published price for {models}: add them under prices:)")
    reason = {
        "concurrency": f"the concurrency limit (--max-concurrent {plan.max_concurrent:,})",
        "rate": f"the request rate (--rpm {plan.rpm:,})",
        "longest task": "the longest single task",
    }[plan.bound]
    lines += [
        f"Estimated time: about {human_duration(plan.wall_time_s)}, set by {reason}"
        f" ({'longest generations first' if plan.order == 'longest' else 'file order'})",
        f"  concurrency:  {human_duration(plan.concurrency_bound_s)}"
        f"  (task time / {plan.max_concurrent:,} in flight)",
        f"  request rate: {human_duration(plan.rate_bound_s)}"
        f"  ({round(plan.requests):,} requests / {plan.rpm:,} per minute)",
        f"  longest task: up to {human_duration(plan.longest_task_s)}",
        folder,
    ]
    return lines


def _journal_lines(view: JournalView | None) -> list[str]:
    """What ``run`` would do now, from the journal (nothing without one)."""
    if view is None:
        return []
    r = view.resume
    cost = _usd(r.to_submit_usd)
    if r.to_submit_unknown:
        cost = f"≥ {cost} + {r.to_submit_unknown:,} of unknown price"
    lines = [
        "",
        f"Journal {r.journal}: run would now"
        if r.journal
        else "No journal yet, files in the output folder: run would now",
        f"  submit        {r.to_submit:,} jobs for {cost}",
    ]
    if r.new and r.journal:
        lines.append(
            f"  new           {r.new:,} ids the journal does not know: {_ids(r.new_ids, r.new)}"
        )
    if r.refused:
        lines.append(
            f"  refuse        {r.refused:,} before their submit: their file names are taken"
            f" (failed, {_OUTPUT_EXISTS}; nothing paid)"
        )
        lines += [f"    {_clash_line(c, view)}" for c in view.clashes[:SHOWN_LINES]]
        if len(view.clashes) > SHOWN_LINES:
            lines.append(f"    ... and {len(view.clashes) - SHOWN_LINES:,} more")
    if not r.journal:
        return lines
    lines += [
        f"  done          {r.done:,}",
        f"  in flight     {r.in_flight:,} (followed, not paid again)",
        f"  to download   {r.to_download:,} (not paid again)",
    ]
    if view.off_disk:
        lines.append(
            f"  fetch again   {view.off_disk_jobs:,} done jobs whose files are missing or"
            " changed on disk (from their journaled URLs while they live; not paid again)"
        )
        lines += [f"    {p.line()}" for p in view.off_disk[:SHOWN_LINES]]
        if len(view.off_disk) > SHOWN_LINES:
            lines.append(f"    ... and {len(view.off_disk) - SHOWN_LINES:,} more")
    if r.failed:
        lines.append(f"  failed        {r.failed:,} (left failed; --retry-failed submits again)")
    if r.expired:
        lines.append(f"  expired       {r.expired:,}")
    if r.orphaned:
        lines.append(
            f"  orphaned      {r.orphaned:,} in the journal, no longer in the job file"
            f" ({r.orphaned_paid:,} paid for): {_ids(r.orphaned_ids, r.orphaned)}"
        )
    if r.pay_again:
        lines.append(
            f"  WARNING: {r.new:,} new ids and {r.orphaned_paid:,} paid jobs gone from the file"
            f" (renamed? a new top-level matrix?): run would pay for {r.pay_again:,} jobs"
            f" again (about {_usd(r.pay_again_usd)})"
        )
    if r.budget is not None and r.fit_budget is not None:
        lines.append(
            f"  --budget {_usd(r.budget)}: {r.fit_budget:,} of the {r.to_submit:,} jobs fit"
            f" ({_usd(r.fit_budget_usd or 0.0)}; {_usd(r.spent_usd)} spent before)"
        )
        if r.unfit_budget:
            more = r.unfit_budget - len(r.unfit_budget_ids)
            named = ", ".join(r.unfit_budget_ids) + (f" and {more:,} more" if more else "")
            lines.append(
                f"    {r.unfit_budget:,} do not fit what is left and stay pending: {named}"
            )
    return lines


_OUTPUT_EXISTS = "OUTPUT_EXISTS"  # journal.clash's fail code, without importing the journal


def _clash_line(c: Clash, view: JournalView) -> str:
    where = view.shown(c.name)
    whose = "a file no job of this campaign wrote" if c.holder is None else f"job {c.holder}'s file"
    if c.result > 1:
        return f"job {c.job_id}: its result {c.result} would land on {where}, {whose}"
    return f"job {c.job_id}: {where} is {whose}"


def _ids(shown: tuple[str, ...], total: int) -> str:
    more = total - len(shown)
    return ", ".join(shown) + (f", ... ({more:,} more)" if more > 0 else "")


def _cost(plan: Plan) -> str:
    if plan.unknown_cost_jobs == 0:
        return _usd(plan.known_cost_usd)
    jobs = plan.unknown_cost_jobs
    return (
        f"≥ {_usd(plan.known_cost_usd)} + {jobs:,} job{'s' if jobs != 1 else ''} of unknown price"
    )


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
