"""The owner of a local output folder: one journal and one campaign.

The first run to bind a folder writes ``.apixo-batch-owner.json`` in it (atomically: a
temporary file linked to its name, so two runs racing for a new folder find one owner)
naming the journal's identity (a random id the journal keeps), its path and the
campaign. Every later run or download on that folder must be that journal and that
campaign, or it is refused before anything is sent. While a run holds the folder, it
holds an exclusive ``flock`` on the owner file (freed by the kernel if the run dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import PathError

__all__ = ["OWNER_FILE", "FolderLock", "Owner", "claim_folder", "read_owner"]

OWNER_FILE = ".apixo-batch-owner.json"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a folder belongs to: a journal (its identity, and its path for the message)
    and a campaign."""

    journal_id: str
    journal: str
    campaign: str

    def same(self, other: Owner) -> bool:
        return self.journal_id == other.journal_id and self.campaign == other.campaign


def read_owner(folder: Path) -> Owner | None:
    """The folder's owner, or None if no run bound it yet; an owner file that cannot be
    read is one line (PathError)."""
    path = folder / OWNER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PathError(f"the output folder's owner file {path} cannot be read: {exc}") from None
    try:
        doc = json.loads(text)
        return Owner(str(doc["journal_id"]), str(doc["journal"]), str(doc["campaign"]))
    except (ValueError, KeyError, TypeError):
        raise PathError(
            f"the output folder's owner file {path} is damaged: if no other journal or "
            "campaign writes into this folder, remove it and run again"
        ) from None


class FolderLock:
    """An exclusive lock on a folder's owner file, held while a run uses the folder."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def claim_folder(folder: Path, me: Owner, *, shared: bool = False) -> FolderLock:
    """The folder bound to ``me`` if no one owns it yet, and locked while the caller
    holds it; PathError (one line: the owner, and what to do) if it belongs to another
    journal or campaign, or another run holds it. ``shared``: the runners of one shared
    (PostgreSQL) campaign hold it together; a single run still holds it alone."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OWNER_FILE
    if not path.exists():
        _write_owner(path, me)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = read_owner(folder)
            held = f" (journal {owner.journal}, campaign '{owner.campaign}')" if owner else ""
            raise PathError(
                f"another apixo-batch run is using the output folder {folder}{held}: wait "
                "for it to finish, or give --out another folder"
            ) from None
        owner = read_owner(folder)
        if owner is not None and not owner.same(me):
            raise PathError(refusal(folder, owner, me))
    except BaseException:
        os.close(fd)
        raise
    return FolderLock(fd)


def refusal(folder: Path, owner: Owner, me: Owner) -> str:
    """The one line that refuses ``me`` a folder ``owner`` owns."""
    if owner.campaign != me.campaign:
        whose = f"the campaign '{owner.campaign}' (journal {owner.journal})"
        mine = f"'{me.campaign}'"
        todo = f"give campaign '{me.campaign}' --out another folder"
    else:
        whose = f"the journal {owner.journal} (campaign '{owner.campaign}')"
        mine = f"the journal {me.journal}"
        todo = f"give --out another folder, or --state {owner.journal} to go on with it"
    return f"the output folder {folder} belongs to {whose}, not to {mine}: {todo}"


def _write_owner(path: Path, me: Owner) -> None:
    """The owner file written whole under a temporary name, then linked to its own: a
    reader never sees half of it, and of two runs racing, one owner wins (the other
    finds the file there and is checked against it)."""
    doc = {"journal_id": me.journal_id, "journal": me.journal, "campaign": me.campaign}
    # A name of its own (not the pid's: runners in containers sharing a mount all run as
    # pid 1, and one's O_TRUNC would empty another's file before it is linked).
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another run bound it first: it is checked against its owner
        except OSError:
            # A file system without hard links: a rename is atomic too (last one wins,
            # and each run then checks the owner it reads under the lock).
            if not path.exists():
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
