"""``apixo-batch adopt JOBFILE JOB_ID TASK_ID``: a paid task id journaled as a job's task.

For a task id an operator holds from anywhere (a warning's line, APIXO's dashboard):
the job must be in the journal and have no other task id, and APIXO is asked about the
task first (one status request, for the job's model): a task APIXO does not know for
that model (404), or whose answer names another model, is refused and the journal left
as it is. The next ``run`` or ``download`` follows an adopted task and downloads its
result.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from .. import runtime
from ..apixo.client import ApixoClient, TaskStatus
from ..apixo.secret import ApiKey, redact
from ..defaults import state_path
from ..errors import (
    ApiError,
    AuthError,
    Forbidden,
    InsufficientBalance,
    JobFileError,
    JournalError,
    NotFound,
    StorageError,
    TransportError,
)
from ..exitcodes import ExitCode
from ..jobs import load_campaign
from ..journal import Journal
from ..journal.unrecorded import AdoptRefused, adopt_task, adoptable
from ..outputs.paths import storage_failure
from .environment import KEY_VAR, base_url, load_api_key

__all__ = ["adopt_command"]


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


class _Refused(Exception):
    """APIXO's answer (or its silence) refuses the adoption: the line and the exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def adopt_command(args: argparse.Namespace) -> int:
    job_id: str = args.job_id
    task_id: str = args.task_id.strip()
    if not task_id or any(c.isspace() or not c.isprintable() for c in task_id):
        _err(f"TASK_ID must be one word, got {args.task_id!r}")
        return ExitCode.INVALID
    try:
        key = load_api_key(args.api_key_file)
    except (OSError, ValueError) as exc:
        _err(f"cannot read --api-key-file: {exc}")
        return ExitCode.INVALID
    try:
        campaign = load_campaign(args.jobfile, out_dir=args.out)
    except JobFileError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    except OSError as exc:
        _err(f"cannot read the job file: {exc}")
        return ExitCode.INVALID
    state = (
        Path(args.state).resolve()
        if args.state
        else state_path(campaign.output_dir, campaign.path, campaign.name)
    )
    if not state.exists():
        _err(f"no journal at {state}: job {job_id!r} is not in the journal")
        return ExitCode.INVALID
    try:
        journal = Journal(state)  # locked: never beside a run of the same journal
    except StorageError as exc:  # unreadable
        _err(str(exc))
        return ExitCode.IO_ERROR
    except JournalError as exc:  # another run holds it
        _err(str(exc))
        return ExitCode.INVALID
    try:
        try:
            if not adoptable(journal, job_id, task_id):
                print(f"job {job_id}: task {task_id} is already its task; nothing changed")
                return ExitCode.OK
            row = journal.get(job_id)
            assert row is not None  # adoptable() refuses a job not in the journal
            if key is None:
                _err(
                    f"{KEY_VAR} is not set (or give --api-key-file): adopt asks APIXO about "
                    f"task {task_id} first; nothing changed"
                )
                return ExitCode.INVALID
            told = _ask(key, base_url(args.base_url), job_id, row.model, task_id)
            with journal.transaction():  # durable
                adopt_task(journal, job_id, task_id, "async", time.time())
        except AdoptRefused as exc:
            _err(str(exc))
            return ExitCode.INVALID
        except _Refused as exc:
            _err(redact(str(exc), key))
            return exc.code
        except (sqlite3.Error, OSError) as exc:
            why = storage_failure(exc)
            _err(why or f"the journal {state} cannot be written: {exc}")
            return ExitCode.IO_ERROR
    finally:
        journal.close()
    print(
        f"job {job_id}: task {task_id} ({told.state} at APIXO) journaled as its paid task; "
        "the next `apixo-batch run` or `download` follows it and downloads the result"
    )
    return ExitCode.OK


def _ask(key: ApiKey, url: str, job_id: str, model: str, task_id: str) -> TaskStatus:
    """APIXO's status of ``task_id`` for ``model``; :class:`_Refused` when it does not
    know the task for that model, names another model, or cannot be asked."""
    nothing = "not adopted, the journal unchanged"
    try:
        told = runtime.run(_status(key, url, model, task_id))
    except NotFound as exc:
        raise _Refused(
            f"APIXO does not know task {task_id} for model {model}, job {job_id}'s model "
            f"({exc.status}: {exc.api_message or 'not found'}): {nothing}; check the task "
            "id, and that it was created for this job's model",
            ExitCode.INVALID,
        ) from None
    except (AuthError, Forbidden, InsufficientBalance) as exc:
        raise _Refused(
            f"APIXO refused the status of task {task_id} ({exc}): {nothing}", ExitCode.FATAL_API
        ) from None
    except (ApiError, TransportError) as exc:
        raise _Refused(
            f"could not ask APIXO about task {task_id} ({exc}): {nothing}; try again",
            ExitCode.TEMP_FAIL,
        ) from None
    if told.model is not None and told.model != model:
        raise _Refused(
            f"task {task_id} is a {told.model} task, and the job's model is {model}: {nothing}",
            ExitCode.INVALID,
        )
    return told


async def _status(key: ApiKey, url: str, model: str, task_id: str) -> TaskStatus:
    async with ApixoClient(key, url) as client:
        return await client.status(model, task_id)
