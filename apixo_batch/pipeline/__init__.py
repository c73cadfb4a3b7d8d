"""One run of a campaign as a pipeline of stages, under one supervisor.

====================  ===============================================================
module                what it holds
====================  ===============================================================
``options``           :class:`RunOptions` (what a run is told), :class:`RunStatistics`,
                      :class:`RunResult`
``stop``              why a run stops: :class:`Stop` values, levels, the exit code
``admission``         meters (budget, slots) and the permits, in the order jobs start
``submitter``         the submit on the wire, the task id durable, retries, doubt
``follower``          polls and callbacks until each task's end; releases its slot
``lander``            downloads to disk, the file-name registry, ``done``/``expired``
``preflight``         the balance read before the first submit
``supervisor``        resources, reconciliation, the task group, shutdown, the result
====================  ===============================================================
"""

from __future__ import annotations

from .options import Mode, RunOptions, RunResult, RunStatistics, summary_dict
from .stop import Level, Stop, StopKind, Stops
from .supervisor import Supervisor

#: the name embedders know: one run of a campaign
Engine = Supervisor

__all__ = [
    "Engine",
    "Level",
    "Mode",
    "RunOptions",
    "RunResult",
    "RunStatistics",
    "Stop",
    "StopKind",
    "Stops",
    "Supervisor",
    "summary_dict",
]
