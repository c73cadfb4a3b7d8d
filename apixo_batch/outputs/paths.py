"""Paths checked before anything is created on disk: a folder that can be a folder, a file
that can be a file, each named with what stands in its way."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from ..errors import PathError, StorageError

__all__ = ["check_file", "check_folder", "storage_failure"]


def _ancestor_problem(path: Path) -> str | None:
    """Why the folders above ``path`` cannot hold it, or None."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            return None
        if parent.is_symlink():
            return f"{parent} is a broken symbolic link"
    return None


def _check(path: Path, what: str, *, folder: bool) -> None:
    if path.exists():
        if path.is_dir() != folder:
            kind = "a file, not a folder" if folder else "a folder, not a file"
            raise PathError(f"{what} {path}: it is {kind}")
        if not os.access(path, (os.W_OK | os.X_OK) if folder else (os.R_OK | os.W_OK)):
            state = (
                "the folder is not writable" if folder else "the file is not readable and writable"
            )
            raise PathError(f"{what} {path}: {state}")
        return
    problem = _ancestor_problem(path)
    if problem is not None:
        raise PathError(f"{what} {path}: {problem}")


def check_folder(path: Path, what: str) -> None:
    """``path`` is, or can become, a writable folder; else :class:`PathError` naming it."""
    _check(path, what, folder=True)


def check_file(path: Path, what: str) -> None:
    """``path`` is, or can become, a writable file; else :class:`PathError` naming it."""
    _check(path, what, folder=False)


#: what a disk says when it fails a run: full, over quota, read-only, broken
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def storage_failure(exc: BaseException) -> str | None:
    """One line for a failure of our disk inside ``exc`` (a group, a cause): the journal's
    SQLite saying it is full or cannot write, or an OSError of a full or broken disk.
    None when the failure is something else."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = storage_failure(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, StorageError):  # the journal's database failed (journal/pg)
        return str(exc)
    if isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in ("full", "disk", "readonly", "read-only")
    ):
        return f"the journal cannot be written: {exc}"
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where}: {exc.strerror or exc}"
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            found = storage_failure(linked)
            if found is not None:
                return found
    return None
