"""``verify``: every ``done`` job's files hashed against the journal; ``--fix`` sends the bad
ones back to ``succeeded`` so that the next ``run`` or ``download`` fetches them again."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from ..defaults import state_path
from ..errors import ApixoError, JobFileError, StorageError
from ..exitcodes import ExitCode
from ..jobs import load_campaign
from ..journal import DoneFiles, Journal
from ..location import S3Location
from ..outputs.ondisk import Problem, problems
from ..pipeline.owner import other_campaign

__all__ = ["verify_command"]


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


def verify_command(args: argparse.Namespace) -> int:
    try:
        campaign = load_campaign(args.jobfile, out_dir=args.out)
    except JobFileError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    except OSError as exc:
        _err(f"cannot read the job file: {exc}")
        return ExitCode.INVALID
    folder = campaign.output_dir
    if isinstance(folder, S3Location):
        _err(f"{folder}: verify checks an output folder; s3:// outputs are not verified")
        return ExitCode.INVALID
    state = (
        Path(args.state).resolve()
        if args.state
        else state_path(folder, campaign.path, campaign.name)
    )
    if not state.exists():
        _err(f"no journal at {state}: this campaign has not run yet")
        return ExitCode.FAILED_JOBS
    try:
        # --fix writes: it holds the journal's lock (a run using it is refused, one line).
        journal = Journal(state, lock=args.fix)
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    except ApixoError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    refused = other_campaign(state, journal.get_meta("campaign"), campaign.name)
    if refused is not None:
        journal.close()
        _err(refused)
        return ExitCode.INVALID
    try:
        rows = list(journal.iter_done_files())
        found = _hashed(rows, folder)
        for p in found:
            print(p.line())
        jobs = list(dict.fromkeys(p.job_id for p in found))
        print(
            f"verify: {len(found)} problem(s) in {len(jobs)} of {len(rows)} done job(s)"
            if found
            else f"verify: {len(rows)} done job(s), every file as journaled"
        )
        if jobs and args.fix:
            now = time.time()
            [moved] = journal.execute_batch([lambda j: j.refetch(jobs, now)])
            if isinstance(moved, Exception):
                raise moved
            print(
                f"verify: {len(jobs)} job(s) moved back to succeeded: the next `apixo-batch "
                "download` (or `run`) fetches them again from their journaled result URLs, "
                "no new submit (a URL past its expiry ends the job expired)"
            )
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    finally:
        journal.close()
    return ExitCode.FAILED_JOBS if found else ExitCode.OK


def _hashed(rows: list[DoneFiles], folder: Path) -> list[Problem]:
    """The problems of ``rows``, every file hashed on a thread of its own (a daemon: Ctrl-C
    ends the command at once)."""
    out: list[Problem] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            out.extend(problems(rows, folder, hashed=True))
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=work, name="apixo-verify", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if failed:
        raise failed[0]
    return out
