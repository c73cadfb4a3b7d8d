"""Commands on a journal in PostgreSQL: ``journal import``, and the reads of the others.

``status``, ``plan``, ``review``, ``verify`` and ``adopt`` read a database's
campaign from a copy in a SQLite file of their own (:func:`local_copy`), made in
one read-only snapshot of the database: the same code then reads it as it reads a
journal file, so both backends say the same. What they write (``verify --fix``,
``adopt``) goes to the database at once, on rows that are then nobody's: runners
of the campaign running meanwhile take them over (fetch, follow) within a third of
a lease, or the next run does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import runtime
from ..errors import ApixoError, JournalError, StorageError
from ..exitcodes import ExitCode
from ..journal.pg.url import is_database, shown

__all__ = ["database_of", "journal_command", "local_copy", "shown_state", "state_option"]


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


def database_of(args: argparse.Namespace) -> str | None:
    """The database URL the command was given (a copy of it is what ``args.state`` names)."""
    url = getattr(args, "database", None)
    return url if isinstance(url, str) else None


def shown_state(args: argparse.Namespace, state: Path) -> str:
    """The journal as messages name it: the database without its password, or the file."""
    url = database_of(args)
    return shown(url) if url else str(state)


def state_option(args: argparse.Namespace) -> str:
    """`` --state URL`` for a command the user is told to run next, when theirs had a
    database (password masked), else nothing: the default journal needs no option."""
    url = database_of(args)
    return f" --state {shlex.quote(shown(url))}" if url else ""


@contextmanager
def local_copy(args: argparse.Namespace) -> Iterator[int | None]:
    """With ``args.state`` a database: its campaign copied into a temporary SQLite file
    that ``args.state`` names while the command runs (no file: the database holds no
    campaign yet), ``args.database`` the URL. Yields None, or the exit code after the one
    line saying why the database could not be read."""
    url = args.state
    if not is_database(url):
        yield None
        return
    from ..journal.pg.transfer import export_campaign

    with tempfile.TemporaryDirectory(prefix="apixo-pg-") as tmp:
        copy = Path(tmp) / "journal.sqlite"
        try:
            runtime.run(export_campaign(url, copy))
        except StorageError as exc:
            _err(str(exc))
            yield ExitCode.IO_ERROR
            return
        except ApixoError as exc:
            _err(str(exc))
            yield ExitCode.INVALID
            return
        args.database = url
        args.state = str(copy)
        try:
            yield None
        finally:
            args.state = url


def refetch(args: argparse.Namespace, campaign: str, job_ids: list[str]) -> None:
    """``verify --fix`` on a database: ``job_ids`` back to ``succeeded`` (for any runner)."""
    url = database_of(args)
    assert url is not None

    async def go() -> None:
        from ..clock import SystemClock
        from ..journal import open_ledger

        ledger = await open_ledger(url, campaign, SystemClock(), anchor=Path(args.state))
        try:
            await ledger.refetch(job_ids)
        finally:
            await ledger.close()

    runtime.run(go())


def adopt(args: argparse.Namespace, campaign: str, job_id: str, task_id: str) -> bool:
    """``adopt`` on a database: the task journaled (durable), for any runner to follow."""
    url = database_of(args)
    assert url is not None

    async def go() -> bool:
        from ..clock import SystemClock
        from ..journal import open_ledger

        ledger = await open_ledger(url, campaign, SystemClock(), anchor=Path(args.state))
        try:
            return await ledger.adopt(job_id, task_id, "async")
        finally:
            await ledger.close()

    return runtime.run(go())


def journal_command(args: argparse.Namespace) -> int:
    """``journal import OLD.sqlite --state postgresql://…``."""
    url = args.state
    if not is_database(url):
        _err(
            "journal import: --state (or APIXO_BATCH_STATE) must name the PostgreSQL "
            "database to import into (postgresql://…)"
        )
        return ExitCode.INVALID
    source = Path(args.source)
    if is_database(args.source) or not source.is_file():
        _err(f"journal import: no journal file at {args.source}; nothing was imported")
        return ExitCode.INVALID
    from ..journal.pg.transfer import import_campaign

    try:
        done = runtime.run(import_campaign(source, url))
    except JournalError as exc:  # refused, or not a journal: nothing written
        _err(str(exc))
        return ExitCode.INVALID
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    where = shown(url)
    print(
        f"campaign '{done.campaign}': {done.jobs} job(s) and {done.tasks} task id(s) imported "
        f"from {source} into {where} ({source} is unchanged: keep it until a run on the "
        f"database has gone well). Go on with `apixo-batch run JOBFILE --state "
        f"{shlex.quote(where)}`"
    )
    return ExitCode.OK
