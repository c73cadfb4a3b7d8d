"""``apixo-batch plan``: what a run would do, what it would cost, how long it would take.

No network: everything comes from the job file and the catalog (clocks and
prices). :func:`make_plan` holds the figures, so ``run`` can reuse its cost
and time estimates; :func:`plan_command` prints them, as a table on a
terminal, as plain aligned text in a pipe, or as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from .catalog import MODELS, Clock, PriceTable
from .errors import JobFileError
from .exitcodes import ExitCode
from .forecast import Kind, forecast, in_start_order
from .jobs import Campaign, JobGroup, load_campaign
from .storage.location import Destination

__all__ = [
    "Plan",
    "PlanRow",
    "estimate_cost",
    "format_text",
    "make_plan",
    "plan_command",
    "requests_per_task",
]

Bound = Literal["concurrency", "rate", "longest task"]


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One line of the plan: jobs of one model, mode, duration and price tier."""

    model: str
    mode: str
    duration: int
    #: the price variant ("sound", "1080p", "pro", "default", ...)
    tier: str
    jobs: int
    output_seconds: int
    #: USD per output second, None when nobody knows it
    price_per_second: float | None
    cost_usd: float | None
    #: mean of the model's typical generation time for one task
    mean_task_s: float
    #: the model's longest typical generation time for one task
    max_task_s: float
    #: 1 submit + the polls from the first poll to the mean completion
    requests_per_task: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``plan`` reports, as numbers."""

    name: str
    job_file: Path
    output_dir: Destination
    jobs: int
    rows: tuple[PlanRow, ...]
    output_seconds: int
    #: the estimated cost of the jobs whose price is known
    known_cost_usd: float
    #: jobs whose price nobody knows (kling-2-1 and kling-2-5 until the job file's prices: say)
    unknown_cost_jobs: int
    #: models with jobs of unknown price
    unknown_price_models: tuple[str, ...]
    max_concurrent: int
    rpm: int
    #: estimated API requests of the whole run (submits and polls)
    requests: int
    #: total task time divided by the tasks allowed in flight
    concurrency_bound_s: float
    #: requests divided by the requests allowed per minute
    rate_bound_s: float
    #: no run ends before its slowest task does
    longest_task_s: float
    #: the forecast (:mod:`~.forecast`): jobs started in ``order`` on the first free
    #: slot within the rate, each holding its slot for its generation and detection
    wall_time_s: float
    #: the largest of the three bounds: what sets the wall time
    bound: Bound
    order: str = "longest"

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``plan --json`` prints)."""
        return {
            "name": self.name,
            "job_file": str(self.job_file),
            "output_dir": str(self.output_dir),
            "jobs": self.jobs,
            "output_seconds": self.output_seconds,
            "cost": {
                "known_usd": round(self.known_cost_usd, 4),
                "unknown_jobs": self.unknown_cost_jobs,
                "unknown_price_models": list(self.unknown_price_models),
                "complete": self.unknown_cost_jobs == 0,
            },
            "groups": [
                {
                    "model": row.model,
                    "mode": row.mode,
                    "duration": row.duration,
                    "tier": row.tier,
                    "jobs": row.jobs,
                    "output_seconds": row.output_seconds,
                    "price_per_second": row.price_per_second,
                    "cost_usd": None if row.cost_usd is None else round(row.cost_usd, 4),
                    "mean_task_s": row.mean_task_s,
                    "requests_per_task": row.requests_per_task,
                }
                for row in self.rows
            ],
            "wall_time": {
                "seconds": round(self.wall_time_s, 1),
                "bound": self.bound,
                "concurrency_bound_s": round(self.concurrency_bound_s, 1),
                "rate_bound_s": round(self.rate_bound_s, 1),
                "longest_task_s": self.longest_task_s,
                "requests": self.requests,
                "max_concurrent": self.max_concurrent,
                "rpm": self.rpm,
                "order": self.order,
            },
        }


def requests_per_task(clock: Clock) -> int:
    """API requests one task is expected to take: its submit, then polls until the mean finish."""
    mean = (clock.typical_min + clock.typical_max) / 2
    polls = 1 + math.ceil(max(0.0, mean - clock.first_poll) / clock.interval)
    return 1 + polls


def estimate_cost(campaign: Campaign) -> tuple[float, int]:
    """(USD for the jobs whose price is known, number of jobs whose price is not)."""
    known, unknown = 0.0, 0
    for group in campaign.groups:
        cost = _group_cost(group, campaign.prices)
        if cost is None:
            unknown += group.count
        else:
            known += cost
    return known, unknown


def _group_cost(group: JobGroup, prices: PriceTable) -> float | None:
    cost = MODELS[group.model].cost(group.sample_input, prices)
    return None if cost is None else cost * group.count


def make_plan(campaign: Campaign, *, max_concurrent: int, rpm: int, order: str = "longest") -> Plan:
    """The plan's figures for ``max_concurrent`` tasks in flight and ``rpm`` requests a minute,
    jobs started in ``order`` (``longest`` or ``file``)."""
    rows = tuple(_row(group, campaign.prices) for group in _catalog_order(campaign.groups))
    task_seconds = sum(row.mean_task_s * row.jobs for row in rows)
    requests = sum(row.requests_per_task * row.jobs for row in rows)
    concurrency_s = task_seconds / max_concurrent
    rate_s = requests / rpm * 60.0
    longest_s = max((row.max_task_s for row in rows), default=0.0)
    bounds: dict[Bound, float] = {
        "concurrency": concurrency_s,
        "rate": rate_s,
        "longest task": longest_s,
    }
    bound = max(bounds, key=lambda name: bounds[name])
    unknown_models = sorted({row.model for row in rows if row.cost_usd is None})
    return Plan(
        name=campaign.name,
        job_file=campaign.path,
        output_dir=campaign.output_dir,
        jobs=campaign.job_count,
        rows=rows,
        output_seconds=sum(row.output_seconds for row in rows),
        known_cost_usd=sum(row.cost_usd for row in rows if row.cost_usd is not None),
        unknown_cost_jobs=sum(row.jobs for row in rows if row.cost_usd is None),
        unknown_price_models=tuple(unknown_models),
        max_concurrent=max_concurrent,
        rpm=rpm,
        requests=requests,
        concurrency_bound_s=concurrency_s,
        rate_bound_s=rate_s,
        longest_task_s=longest_s,
        wall_time_s=forecast(
            in_start_order(_runs(campaign, order), None, order=order),
            slots=max_concurrent,
            rpm=rpm,
        ).wall_s,
        bound=bound,
        order=order,
    )


def _runs(campaign: Campaign, order: str) -> Iterable[tuple[Kind, int]]:
    """The campaign's jobs as (kind, jobs in a row) in file order: by group when the order
    does not depend on the file's (a group's jobs are alike), else job by job."""
    if order == "longest":
        return [((g.model, g.sample_input), g.count) for g in campaign.groups]
    return (((job.model, job.input), 1) for job in campaign.iter_jobs())


def _catalog_order(groups: Iterable[JobGroup]) -> list[JobGroup]:
    models = list(MODELS)

    def key(group: JobGroup) -> tuple[int, int, int, int, str]:
        spec = MODELS[group.model]
        modes = list(spec.modes)
        # Published tiers in the catalog's order (silent before sound, 720p before 1080p).
        tiers = list(spec.prices)
        tier = tiers.index(group.tier) if group.tier in tiers else len(tiers)
        return (
            models.index(group.model),
            modes.index(group.mode),
            group.duration,
            tier,
            group.tier,
        )

    return sorted(groups, key=key)


def _row(group: JobGroup, prices: PriceTable) -> PlanRow:
    spec = MODELS[group.model]
    clock = group.clock
    return PlanRow(
        model=group.model,
        mode=group.mode,
        duration=group.duration,
        tier=group.tier,
        jobs=group.count,
        output_seconds=group.duration * group.count,
        price_per_second=spec.price_per_second(group.sample_input, prices),
        cost_usd=_group_cost(group, prices),
        mean_task_s=(clock.typical_min + clock.typical_max) / 2,
        max_task_s=float(clock.typical_max),
        requests_per_task=requests_per_task(clock),
    )


# ---------------------------------------------------------------------------
# Output


def plan_command(args: argparse.Namespace) -> int:
    """``apixo-batch plan JOBFILE``: print the plan (exit 0) or the file's problems (exit 2)."""
    try:
        campaign = load_campaign(args.jobfile, out_dir=getattr(args, "out", None))
    except JobFileError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.INVALID
    plan = make_plan(
        campaign,
        max_concurrent=args.max_concurrent,
        rpm=args.rpm,
        order=getattr(args, "order", "longest"),
    )
    if args.json:
        print(json.dumps(plan.to_dict(), ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich(plan, sys.stdout)
    else:
        sys.stdout.write(format_text(plan))
    return ExitCode.OK


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


def format_text(plan: Plan) -> str:
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
    lines += ["", *_summary_lines(plan)]
    return "\n".join(lines) + "\n"


def _print_rich(plan: Plan, stream: TextIO) -> None:
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
        stream.write(format_text(plan))
        return
    console.print(table)
    for text in _summary_lines(plan):
        console.print(text, highlight=False, markup=False)


def _header_line(plan: Plan) -> str:
    return f"Campaign {plan.name!r}: {plan.jobs:,} jobs from {_shown(plan.job_file)}"


def _summary_lines(plan: Plan) -> list[str]:
    lines = [
        f"Output video:   {plan.output_seconds:,} s ({_duration(plan.output_seconds)})"
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
        f"Estimated time: about {_duration(plan.wall_time_s)}, set by {reason}"
        f" ({'longest generations first' if plan.order == 'longest' else 'file order'})",
        f"  concurrency:  {_duration(plan.concurrency_bound_s)}"
        f"  (task time / {plan.max_concurrent:,} in flight)",
        f"  request rate: {_duration(plan.rate_bound_s)}"
        f"  ({plan.requests:,} requests / {plan.rpm:,} per minute)",
        f"  longest task: up to {_duration(plan.longest_task_s)}",
        f"Output folder:  {plan.output_dir}"
        if isinstance(plan.output_dir, Path)
        else f"Output:         {plan.output_dir} (object storage)",
    ]
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


def _duration(seconds: float) -> str:
    """45 s, 2 min 5 s, 3 h 12 min, 2 d 3 h: precise enough for an estimate."""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    """``python -m apixo_batch.plan JOBFILE``: the same as ``apixo-batch plan``."""
    from .cli import main as cli_main

    return cli_main(["plan", *(argv if argv is not None else sys.argv[1:])])
