"""One journal, one campaign, one output folder: checked before anything is sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ..defaults import STATE_FILE
from ..errors import PathError
from ..journal import Ledger
from ..location import Destination
from ..outputs.owner import OWNER_FILE, FolderLock, Owner, claim_folder, read_owner
from .books import MANIFEST

__all__ = ["other_campaign", "own_output"]


def other_campaign(journal: Path | str, kept: str | None, campaign: str) -> str | None:
    """The one line refusing ``campaign`` a journal kept for the campaign ``kept`` (None
    when it is the same, or the journal keeps no name yet): what ``run`` and ``download``
    say before anything is sent, and what ``status``, ``review``, ``plan`` and ``verify``
    say instead of telling another campaign's jobs as this one's."""
    if kept is None or kept == campaign:
        return None
    return (
        f"the journal {journal} is for the campaign '{kept}', not '{campaign}': give "
        f"campaign '{campaign}' its own --state and --out (or output.dir), or run "
        f"campaign '{kept}'"
    )


SHOWN = 3


async def own_output(
    ledger: Ledger, campaign: str, where: Destination, journal: Path | str
) -> FolderLock | None:
    """The journal kept for ``campaign`` alone, and a local output folder bound to this
    journal and campaign and locked for the run (None for object storage, which keeps
    its own rule). Another campaign's journal, or a folder another journal or campaign
    owns, is PathError: one line naming the owner and what to do.

    A folder without an owner file (never bound, or its owner file deleted by hand) is
    another journal's when it holds that journal's file, or a manifest listing paid
    tasks this journal does not know; otherwise it is bound to this journal (the owner
    file written again, when it is this journal's folder)."""
    refused = other_campaign(journal, await ledger.keep_campaign(campaign), campaign)
    if refused is not None:
        raise PathError(refused)
    if not isinstance(where, Path):
        return None
    me = Owner(await ledger.identity(), str(journal), campaign)
    if read_owner(where) is None:
        _journal_in(where, journal)
        # Off the loop: a 100,000-job manifest is read whole.
        paid = await asyncio.to_thread(_manifest_tasks, where / MANIFEST)
        if paid:
            known = await ledger.known_task_ids(paid)
            foreign = [task for task in paid if task not in known]
            if foreign:
                raise PathError(_foreign(where, journal, foreign))
    # The runners of a PostgreSQL campaign on one host share its folder.
    return claim_folder(where, me, shared=ledger.runner is not None)


def _journal_in(where: Path, journal: Path | str) -> None:
    """A folder filled before owner files: its journal in it is its owner (a journal in
    a database is never the file in the folder)."""
    found = where / STATE_FILE
    if found.exists() and (isinstance(journal, str) or found.resolve() != journal.resolve()):
        raise PathError(
            f"the output folder {where} holds the journal {found}, not {journal}: give "
            f"--out another folder, or --state {found} to go on with it"
        )


def _manifest_tasks(path: Path) -> list[str]:
    """The task ids the folder's manifest lists, in order (none without a manifest): the
    paid work of the journal that wrote it. A line that is not a manifest entry is
    skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise PathError(f"the output folder's manifest {path} cannot be read: {exc}") from None
    tasks: list[str] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        task = entry.get("task_id") if isinstance(entry, dict) else None
        if isinstance(task, str) and task:
            tasks.append(task)
    return tasks


def _foreign(where: Path, journal: Path | str, foreign: list[str]) -> str:
    more = len(foreign) - SHOWN
    shown = ", ".join(foreign[:SHOWN]) + (f" and {more} more" if more > 0 else "")
    return (
        f"the output folder {where} holds another journal's results: its {MANIFEST} lists "
        f"{len(foreign)} paid task(s) the journal {journal} does not know ({shown}), and its "
        f"owner file {OWNER_FILE} is gone: give --out another folder, or the --state of the "
        "journal that wrote them"
    )
