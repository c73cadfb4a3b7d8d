"""Why a run stops: one list of :class:`Stop` values, from which the exit code follows.

A stop has a kind and a reason. Each kind reaches a *level* of the pipeline,
and every stage reacts to the levels that concern it, once, when the level is
first reached (a reaction registered with :meth:`Stops.on`):

=============  =====================================================  ==========
level          what halts                                             kinds
=============  =====================================================  ==========
``ADMISSION``  no new job is admitted                                 budget, stranded
``SUBMITS``    and submits not yet on the wire go back to the queue   refused, fatal,
                                                                      unreachable,
                                                                      storage
``FOLLOW``     and polls stop (tasks are left pending)                key-refused
``ALL``        and, after the grace, everything else (downloads)      interrupted,
                                                                      fenced
=============  =====================================================  ==========

Fatal answers stop submits, never the polls and downloads of paid work
(invariant 4), unless the key itself is refused: then no poll can learn
anything more, but files of what already succeeded still land.

A stop worth telling (budget, refused, fatal, unreachable, storage) is told once,
as a ``stopped`` event, by :meth:`Stops.request` when its kind first comes; the
stages only request stops. Stranded slots are told by the tasks left pending, a
refused poll by the summary's ``fatal``, an interrupt by the one who sent it.

Exit code: several stops may force one, and which wins must not depend on the
order they came in (CI scripts branch on it). The highest in this list wins;
without any, the jobs' ends decide:

====  ===================================  ============================================
code  stop kinds                           why it outranks what follows
====  ===================================  ============================================
130   interrupted                          someone chose to end the run: the other stops
                                           may be its echoes, and a service manager that
                                           sent SIGTERM expects it
3     refused, fatal, key-refused          the account (key, balance, access) must be
                                           fixed by a person: no retry gets past it
75    fenced                               this runner's lease was lost (several runners
                                           on one PostgreSQL campaign): its journal
                                           writes may fail with it, which is no disk to
                                           fix; another runner goes on with the work
74    storage                              our disk (or bucket) must be fixed, often by
                                           housekeeping a script can do
75    unreachable                          nothing to fix: the same command, later
0/1   budget, stranded, or none            every job done (0) or not (1)
====  ===================================  ============================================

So for any two stops, in either order: 130 with an interrupt; else 3 with a
refusal; else 75 when fenced; else 74 with storage; else 75 with unreachable; else
0 or 1. The
reason the summary tells is the reason of the stop that chose the code.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ApiError, AuthError, InsufficientBalance
from ..events import Emitter, Stopped
from ..exitcodes import ExitCode

__all__ = [
    "BUDGET_STEP",
    "EXIT_PRECEDENCE",
    "INTERRUPTED_STEP",
    "UNREACHABLE_STEP",
    "Level",
    "Stop",
    "StopKind",
    "Stops",
    "no_access",
    "refusal_step",
    "storage_stop",
]


class Level(enum.IntEnum):
    ADMISSION = 1
    SUBMITS = 2
    FOLLOW = 3
    ALL = 4


class StopKind(enum.Enum):
    """A kind of stop: the level it reaches, the exit code it forces (None: counts decide)
    and whether it is told as a ``stopped`` event."""

    BUDGET = ("budget", Level.ADMISSION, None, True)
    STRANDED = ("stranded", Level.ADMISSION, None, False)
    REFUSED = ("refused", Level.SUBMITS, ExitCode.FATAL_API, True)
    FATAL = ("fatal", Level.SUBMITS, ExitCode.FATAL_API, True)
    UNREACHABLE = ("unreachable", Level.SUBMITS, ExitCode.TEMP_FAIL, True)
    #: our disk failed (full, read-only, I/O error): no new work whose results need it
    STORAGE = ("storage", Level.SUBMITS, ExitCode.IO_ERROR, True)
    KEY_REFUSED = ("key-refused", Level.FOLLOW, ExitCode.FATAL_API, False)
    INTERRUPTED = ("interrupted", Level.ALL, ExitCode.INTERRUPTED, False)
    #: this runner's lease is lost past its term: another runner may have its work
    FENCED = ("fenced", Level.ALL, ExitCode.TEMP_FAIL, True)

    def __init__(self, label: str, level: Level, exit_code: ExitCode | None, told: bool) -> None:
        self.label = label
        self.level = level
        self.exit_code = exit_code
        self.told = told


#: The exit codes stops force, the one that wins first (the table above says why).
EXIT_PRECEDENCE: tuple[ExitCode, ...] = (
    ExitCode.INTERRUPTED,
    ExitCode.FATAL_API,
    ExitCode.IO_ERROR,
    ExitCode.TEMP_FAIL,
)


@dataclass(frozen=True, slots=True)
class Stop:
    kind: StopKind
    reason: str
    #: the API's refusal, for the summary's ``fatal`` (fatal and key-refused stops)
    fatal: str | None = None
    #: the balance read before the first submit, told with a pre-flight refusal
    balance_usd: float | None = None
    #: what the operator does about it, in one sentence (the summary's ``next_step``)
    next_step: str | None = None


def storage_stop(why: str, *, paid_untold: bool = False) -> Stop:
    """Our disk failed (``why`` says where and how): no new work whose results need it.

    ``paid_untold``: a paid task's id could not be journaled, so the reason must not
    promise that nothing paid is forgotten: the warning lines name those tasks."""
    if paid_untold:
        reason = (
            f"{why}; a paid task id the journal could not keep is named in a warning line: "
            "keep it (the next run submits that job again); the same command resumes once "
            "the disk is fixed"
        )
    else:
        reason = f"{why}; nothing paid is forgotten: the same command resumes once it is fixed"
    return Stop(StopKind.STORAGE, reason, next_step=STORAGE_STEP)


#: What to do after each kind of stop whose remedy does not depend on the answer.
STORAGE_STEP = "free or fix the disk (or bucket) named above, then run the same command"
UNREACHABLE_STEP = "run the same command once APIXO answers again: it resumes where this run ended"
BUDGET_STEP = "raise --budget (or leave it out) and run the same command to submit the rest"
INTERRUPTED_STEP = "run the same command again to resume"


def refusal_step(exc: ApiError) -> str:
    """What to do after APIXO refused the account (401, 402, 403): one next step."""
    if isinstance(exc, AuthError):
        return (
            "fix the API key (APIXO_API_KEY or --api-key-file), then run the same command: "
            "nothing was lost"
        )
    if isinstance(exc, InsufficientBalance):
        return "top up the APIXO account, then run the same command: nothing was lost"
    return "get the key access to that route (or drop the jobs of that model), then run again"


#: the API route of each client endpoint, as a person reads it in a stop line
_ROUTES = {
    "submit": "POST /generateTask/{model}",
    "status": "GET /statusTask/{model}",
    "balance": "GET /apikeys/current-balance",
}


def no_access(endpoint: str, model: str | None = None) -> str:
    """What a 403 on ``endpoint`` means, for people: "this key has no access to <route>",
    the route named with its model (access is granted per key, route and model)."""
    route = _ROUTES.get(endpoint, endpoint).replace("{model}", model or "<model>")
    return f"this key has no access to {route}"


class Stops:
    """The stops of one run, in the order they came; stages react to the levels reached.

    ``emit`` is the run's: each stop worth telling is told through it, once."""

    def __init__(self, emit: Emitter | None = None) -> None:
        self.all: list[Stop] = []
        self._emit = emit
        self._level = 0
        self._reactions: list[tuple[Level, Callable[[], None]]] = []

    def on(self, level: Level, reaction: Callable[[], None]) -> None:
        """Call ``reaction`` once, when ``level`` is first reached (at once if it is)."""
        if self._level >= level:
            reaction()
        else:
            self._reactions.append((level, reaction))

    def request(self, stop: Stop) -> bool:
        """Record ``stop``, tell it if it is the first of a kind worth telling, and start
        the reactions of the levels it reaches first; True if it reached a new level."""
        first_of_kind = all(s.kind is not stop.kind for s in self.all)
        self.all.append(stop)
        if first_of_kind and stop.kind.told and self._emit is not None:
            # Told before the stages react: the reason comes first, its consequences after.
            self._emit(
                Stopped(reason=stop.reason, balance_usd=stop.balance_usd, stop=stop.kind.label)
            )
        if stop.kind.level <= self._level:
            return False
        self._level = stop.kind.level
        due = [r for lvl, r in self._reactions if lvl <= self._level]
        self._reactions = [(lvl, r) for lvl, r in self._reactions if lvl > self._level]
        for reaction in due:
            reaction()
        return True

    def reached(self, level: Level) -> bool:
        return self._level >= level

    @property
    def interrupted(self) -> bool:
        return any(s.kind is StopKind.INTERRUPTED for s in self.all)

    def _telling(self) -> Stop | None:
        """The stop the summary tells: the one whose code the run exits with (the first of
        equals; an interrupt needs no reason), else the budget or the slots."""
        stops = [s for s in self.all if s.kind is not StopKind.INTERRUPTED]
        for code in EXIT_PRECEDENCE:
            if code is ExitCode.IO_ERROR:
                fenced = [s for s in stops if s.kind is StopKind.FENCED]
                if fenced:
                    return fenced[0]
            for s in stops:
                if s.kind.exit_code is code:
                    return s
        return stops[0] if stops else None

    @property
    def reason(self) -> str | None:
        """Why submitting stopped, for people (see :meth:`_telling`)."""
        told = self._telling()
        return told.reason if told else None

    @property
    def next_step(self) -> str | None:
        """The one thing to do next, from the same stop as :attr:`reason`: one remedy,
        never two that disagree (an interrupt's "resume" only when nothing else stopped)."""
        told = self._telling()
        if told is not None and told.next_step is not None:
            return told.next_step
        return INTERRUPTED_STEP if self.interrupted else None

    @property
    def fatal(self) -> str | None:
        return next((s.fatal for s in self.all if s.fatal), None)

    def exit_code(self, all_done: bool) -> ExitCode:
        """The first code of :data:`EXIT_PRECEDENCE` a stop forces, whatever the order the
        stops came in; without one, from the jobs' ends."""
        forced = {s.kind.exit_code for s in self.all}
        fenced = any(s.kind is StopKind.FENCED for s in self.all)
        for code in EXIT_PRECEDENCE:
            if code is ExitCode.IO_ERROR and fenced:
                return ExitCode.TEMP_FAIL  # the lease lost, the journal with it: no disk
            if code in forced:
                return code
        return ExitCode.OK if all_done else ExitCode.FAILED_JOBS
