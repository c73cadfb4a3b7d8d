"""One run of a campaign as a pipeline of stages, under one supervisor.

====================  ===============================================================
module                what it holds
====================  ===============================================================
``options``           :class:`RunOptions` (what a run is told), :class:`RunResult`
``stop``              why a run stops: :class:`Stop` values, levels, the exit code
``admission``         meters (budget, slots) and the permits, in the order jobs start
``submitter``         the submit on the wire, the task id durable, retries, doubt
``follower``          polls and callbacks until each task's end; releases its slot
``lander``            downloads to disk, the file-name registry, ``done``/``expired``
``scheduler``         the follower's poll timers (one heap)
``callbacks``         callback mode's token and receiver
``turnaround``        from a task's end known to the next submit out
``learned``           the account's rate and completion times, kept for the next run
``books``             manifest, counts and spend, whatever the disk allows
``preflight``         the balance read before the first submit
``startup``           reconcile, start informed, forecast, ``started``
``wiring``            the stages built and joined by streams, in one task group
``result``            the books closed, the result, the ``summary``
``supervisor``        one run's lifetimes: values, journal and output, the network
====================  ===============================================================
"""

from __future__ import annotations

from .options import Mode, RunOptions, RunResult, summary_dict
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
    "Stop",
    "StopKind",
    "Stops",
    "Supervisor",
    "summary_dict",
]
