"""``apixo-batch plan``: the plan printed as a table on a terminal, as plain aligned text
in a pipe, or as one JSON object (the figures come from :mod:`apixo_batch.planning.plan`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import TextIO

from ..clock import human_duration
from ..defaults import state_path
from ..errors import JobFileError, StorageError
from ..exitcodes import ExitCode
from ..jobs import Campaign, load_campaign
from ..planning.forecast import expected_generation_s
from ..planning.kind import Kind
from ..planning.order import longest_first
from ..planning.plan import Plan, make_plan
from ..planning.resume import JournalJob, Resume, resume_figures
from ..planning.selection import Again, Selection
from .select import flat, selection_of, unmatched_only

__all__ = ["format_text", "plan_command"]


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
    try:
        refused = unmatched_only(args, (job.id for job in campaign.iter_jobs()))
        shown = _planned(campaign, selection, getattr(args, "order", "longest"))
    except JobFileError as exc:  # the file changed while it was read
        print(exc, file=sys.stderr)
        return ExitCode.INVALID
    if refused is not None:
        print(f"apixo-batch: {refused}", file=sys.stderr)
        return ExitCode.INVALID
    plan = make_plan(
        shown,
        max_concurrent=args.max_concurrent,
        rpm=args.rpm,
        order=getattr(args, "order", "longest"),
    )
    try:
        resume = _resume(args, campaign)
    except StorageError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.IO_ERROR
    except JobFileError as exc:  # the file changed while it was read
        print(exc, file=sys.stderr)
        return ExitCode.INVALID
    if args.json:
        data = plan.to_dict()
        data["journal"] = None if resume is None else resume.to_dict()
        print(json.dumps(data, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich(plan, sys.stdout, resume)
    else:
        sys.stdout.write(format_text(plan, resume))
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


def _resume(args: argparse.Namespace, campaign: Campaign) -> Resume | None:
    """The journal's figures when the campaign has one (read-only, no run lock), else None."""
    from ..journal import Journal

    state = getattr(args, "state", None)
    path = (
        Path(state).resolve()
        if state
        else state_path(campaign.output_dir, campaign.path, campaign.name)
    )
    if not path.is_file():
        return None
    journal = Journal(path, lock=False)
    try:
        # The journal synced from this very file holds its jobs: the file is not read again.
        synced = bool(campaign.stamp) and journal.file_stamp() == campaign.stamp
        rows = [JournalJob(*row) for row in journal.plan_rows()]
        spent = journal.totals()["spent_known_usd"]
    finally:
        journal.close()
    return resume_figures(
        campaign,
        rows,
        journal=str(path),
        spent_usd=spent,
        synced=synced,
        budget=getattr(args, "budget", None),
        order=getattr(args, "order", "longest"),
        again=Again(
            failed=args.retry_failed,
            fail_codes=flat(args.fail_code),
            expired=args.retry_expired,
            reroll=args.reroll,
            selection=selection_of(args),
        ),
    )


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


def format_text(plan: Plan, resume: Resume | None = None) -> str:
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
    lines += ["", *_summary_lines(plan), *_resume_lines(resume)]
    return "\n".join(lines) + "\n"


def _print_rich(plan: Plan, stream: TextIO, resume: Resume | None = None) -> None:
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
        stream.write(format_text(plan, resume))
        return
    console.print(table)
    for text in [*_summary_lines(plan), *_resume_lines(resume)]:
        console.print(text, highlight=False, markup=False)


def _header_line(plan: Plan) -> str:
    return f"Campaign {plan.name!r}: {plan.jobs:,} jobs from {_shown(plan.job_file)}"


def _summary_lines(plan: Plan) -> list[str]:
    lines = [
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
        f"Output folder:  {plan.output_dir}"
        if isinstance(plan.output_dir, Path)
        else f"Output:         {plan.output_dir} (object storage)",
    ]
    return lines


def _resume_lines(resume: Resume | None) -> list[str]:
    """What ``run`` would do now, from the journal (nothing without one)."""
    if resume is None:
        return []
    r = resume
    cost = _usd(r.to_submit_usd)
    if r.to_submit_unknown:
        cost = f"≥ {cost} + {r.to_submit_unknown:,} of unknown price"
    new = f", {r.new:,} of them new in the file" if r.new else ""
    lines = [
        "",
        f"Journal {r.journal}: run would now",
        f"  submit        {r.to_submit:,} jobs for {cost}{new}",
        f"  done          {r.done:,}",
        f"  in flight     {r.in_flight:,} (followed, not paid again)",
        f"  to download   {r.to_download:,} (not paid again)",
    ]
    if r.failed:
        lines.append(f"  failed        {r.failed:,} (left failed; --retry-failed submits again)")
    if r.expired:
        lines.append(f"  expired       {r.expired:,}")
    if r.orphaned:
        lines.append(
            f"  orphaned      {r.orphaned:,} in the journal, no longer in the job file"
            f" ({r.orphaned_paid:,} paid for)"
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
