"""The exit status of every command, in one place (SPEC section 2)."""

from __future__ import annotations

import enum

__all__ = ["MEANINGS", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``apixo-batch`` exits with; a run's :class:`~apixo_batch.RunResult` carries one."""

    #: every job done (downloaded)
    OK = 0
    #: the run finished but some jobs failed or expired, or were left pending
    FAILED_JOBS = 1
    #: the job file, the command line or a path is invalid (and no request was sent)
    INVALID = 2
    #: a fatal API answer (bad key, no balance, no access) stopped the run; it resumes
    FATAL_API = 3
    #: a bug: an error nothing else caught, told in one line (sysexits' EX_SOFTWARE)
    SOFTWARE = 70
    #: the local disk or the journal failed during the run (sysexits' EX_IOERR)
    IO_ERROR = 74
    #: the API or the file host stayed unreachable past the run's patience (EX_TEMPFAIL);
    #: or, with several runners on one PostgreSQL campaign, this runner's lease was lost
    #: ("another runner took over; nothing lost")
    TEMP_FAIL = 75
    #: interrupted (SIGINT/SIGTERM, or SIGHUP: the terminal hung up); resumable the same way
    INTERRUPTED = 130


#: each code in a few words, for a line a person reads away from the terminal (notifications)
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "every job done",
    ExitCode.FAILED_JOBS: "some jobs failed, expired or are left pending",
    ExitCode.INVALID: "invalid job file, command line or path; nothing was sent",
    ExitCode.FATAL_API: "the API refused the account (key, balance or access): fix it, rerun",
    ExitCode.SOFTWARE: "internal error (a bug)",
    ExitCode.IO_ERROR: "the local disk or the journal failed",
    ExitCode.TEMP_FAIL: "the API or the file host stayed unreachable (or another runner took "
    "over): rerun later",
    ExitCode.INTERRUPTED: "interrupted; the same command resumes",
}
