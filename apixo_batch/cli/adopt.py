"""``apixo-batch adopt JOBFILE JOB_ID TASK_ID``: a paid task id journaled as a job's task.

For a task id an operator holds from anywhere (a warning's line, APIXO's dashboard):
the job must be in the journal and have no other task id. No API call is made; the
next ``run`` or ``download`` follows the task and downloads its result.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from ..defaults import state_path
from ..errors import JobFileError, JournalError, StorageError
from ..exitcodes import ExitCode
from ..jobs import load_campaign
from ..journal import Journal
from ..journal.unrecorded import AdoptRefused, adopt_task
from ..outputs.paths import storage_failure

__all__ = ["adopt_command"]


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


def adopt_command(args: argparse.Namespace) -> int:
    job_id: str = args.job_id
    task_id: str = args.task_id.strip()
    if not task_id or any(c.isspace() or not c.isprintable() for c in task_id):
        _err(f"TASK_ID must be one word, got {args.task_id!r}")
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
        with journal.transaction():  # durable
            adopted = adopt_task(journal, job_id, task_id, "async", time.time())
    except AdoptRefused as exc:
        _err(str(exc))
        return ExitCode.INVALID
    except (sqlite3.Error, OSError) as exc:
        why = storage_failure(exc)
        _err(why or f"the journal {state} cannot be written: {exc}")
        return ExitCode.IO_ERROR
    finally:
        journal.close()
    if adopted:
        print(
            f"job {job_id}: task {task_id} journaled as its paid task; the next "
            "`apixo-batch run` or `download` follows it and downloads the result"
        )
    else:
        print(f"job {job_id}: task {task_id} is already its task; nothing changed")
    return ExitCode.OK
