"""Why a run stops: one list of :class:`Stop` values, from which the exit code follows.

A stop has a kind and a reason. Each kind reaches a *level* of the pipeline,
and every stage reacts to the levels that concern it, once, when the level is
first reached (a reaction registered with :meth:`Stops.on`):

=============  =====================================================  ==========
level          what halts                                             kinds
=============  =====================================================  ==========
``ADMISSION``  no new job is admitted                                 budget, stranded
``SUBMITS``    and submits not yet on the wire go back to the queue   refused, fatal,
                                                                      unreachable
``FOLLOW``     and polls stop (tasks are left pending)                key-refused
``ALL``        and, after the grace, everything else (downloads)      interrupted
=============  =====================================================  ==========

Fatal answers stop submits, never the polls and downloads of paid work
(invariant 4), unless the key itself is refused: then no poll can learn
anything more, but files of what already succeeded still land.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..exitcodes import ExitCode

__all__ = ["Level", "Stop", "StopKind", "Stops", "storage_stop"]


class Level(enum.IntEnum):
    ADMISSION = 1
    SUBMITS = 2
    FOLLOW = 3
    ALL = 4


class StopKind(enum.Enum):
    """A kind of stop: the level it reaches and the exit code it forces (None: counts decide)."""

    BUDGET = ("budget", Level.ADMISSION, None)
    STRANDED = ("stranded", Level.ADMISSION, None)
    REFUSED = ("refused", Level.SUBMITS, ExitCode.FATAL_API)
    FATAL = ("fatal", Level.SUBMITS, ExitCode.FATAL_API)
    UNREACHABLE = ("unreachable", Level.SUBMITS, ExitCode.TEMP_FAIL)
    #: our disk failed (full, read-only, I/O error): no new work whose results need it
    STORAGE = ("storage", Level.SUBMITS, ExitCode.IO_ERROR)
    KEY_REFUSED = ("key-refused", Level.FOLLOW, ExitCode.FATAL_API)
    INTERRUPTED = ("interrupted", Level.ALL, ExitCode.INTERRUPTED)

    def __init__(self, label: str, level: Level, exit_code: ExitCode | None) -> None:
        self.label = label
        self.level = level
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Stop:
    kind: StopKind
    reason: str
    #: the API's refusal, for the summary's ``fatal`` (fatal and key-refused stops)
    fatal: str | None = None


def storage_stop(why: str) -> Stop:
    """Our disk failed (``why`` says where and how): no new work whose results need it."""
    reason = f"{why}; nothing paid is forgotten: the same command resumes once it is fixed"
    return Stop(StopKind.STORAGE, reason)


class Stops:
    """The stops of one run, in the order they came; stages react to the levels reached."""

    def __init__(self) -> None:
        self.all: list[Stop] = []
        self._level = 0
        self._reactions: list[tuple[Level, Callable[[], None]]] = []

    def on(self, level: Level, reaction: Callable[[], None]) -> None:
        """Call ``reaction`` once, when ``level`` is first reached (at once if it is)."""
        if self._level >= level:
            reaction()
        else:
            self._reactions.append((level, reaction))

    def request(self, stop: Stop) -> bool:
        """Record ``stop``; True if it reached a level not reached before."""
        self.all.append(stop)
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

    @property
    def reason(self) -> str | None:
        """Why submitting stopped, for people: a refusal first, else the budget or slots."""
        for forced in (True, False):
            for s in self.all:
                if s.kind is not StopKind.INTERRUPTED and (s.kind.exit_code is not None) is forced:
                    return s.reason
        return None

    @property
    def submits_stopped_by(self) -> Stop | None:
        """The first stop that stopped submits for a reason other than an interrupt."""
        kinds = (
            StopKind.REFUSED,
            StopKind.FATAL,
            StopKind.UNREACHABLE,
            StopKind.STORAGE,
            StopKind.KEY_REFUSED,
            StopKind.STRANDED,
        )
        return next((s for s in self.all if s.kind in kinds), None)

    @property
    def fatal(self) -> str | None:
        return next((s.fatal for s in self.all if s.fatal), None)

    def exit_code(self, all_done: bool) -> ExitCode:
        """From the most severe stop; without one that forces a code, from the jobs' ends."""
        forced = [s.kind for s in self.all if s.kind.exit_code is not None]
        if forced:
            code = max(forced, key=lambda k: k.level).exit_code
            assert code is not None
            return code
        return ExitCode.OK if all_done else ExitCode.FAILED_JOBS
