"""One journal, one campaign, one output folder: checked before anything is sent."""

from __future__ import annotations

from pathlib import Path

from ..defaults import STATE_FILE
from ..errors import PathError
from ..journal import Ledger
from ..location import Destination
from ..outputs.owner import FolderLock, Owner, claim_folder, read_owner

__all__ = ["other_campaign", "own_output"]


def other_campaign(journal: Path, kept: str | None, campaign: str) -> str | None:
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


async def own_output(
    ledger: Ledger, campaign: str, where: Destination, journal: Path
) -> FolderLock | None:
    """The journal kept for ``campaign`` alone, and a local output folder bound to this
    journal and campaign and locked for the run (None for object storage, which keeps
    its own rule). Another campaign's journal, or a folder another journal or campaign
    owns, is PathError: one line naming the owner and what to do."""
    refused = other_campaign(journal, await ledger.keep_campaign(campaign), campaign)
    if refused is not None:
        raise PathError(refused)
    if not isinstance(where, Path):
        return None
    return _bind(where, Owner(await ledger.identity(), str(journal), campaign), journal)


def _bind(where: Path, me: Owner, journal: Path) -> FolderLock:
    if read_owner(where) is None:
        # A folder filled before owner files: its journal in it is its owner.
        found = where / STATE_FILE
        if found.exists() and found.resolve() != journal.resolve():
            raise PathError(
                f"the output folder {where} holds the journal {found}, not {journal}: give "
                f"--out another folder, or --state {found} to go on with it"
            )
    return claim_folder(where, me)
