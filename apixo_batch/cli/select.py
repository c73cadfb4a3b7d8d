"""The selectors of the campaign commands (``--only``, ``--model``, ``--limit``) read
from parsed arguments; light, so ``plan`` imports it without the engine."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ..planning.selection import Selection, unmatched

__all__ = ["flat", "selection_of", "unmatched_only"]


def flat(lists: list[list[str]] | None) -> tuple[str, ...]:
    """A repeatable ``a,b`` option's names, once each, in order."""
    return tuple(dict.fromkeys(name for names in lists or () for name in names))


def selection_of(args: argparse.Namespace) -> Selection:
    """``--only``, ``--model`` and ``--limit`` as given (the commands without one: none)."""
    return Selection(
        flat(getattr(args, "only", None)),
        flat(getattr(args, "model", None)),
        getattr(args, "limit", None),
    )


def unmatched_only(args: argparse.Namespace, ids: Iterable[str]) -> str | None:
    """The one line that refuses ``--only`` patterns matching none of ``ids``, or None."""
    patterns = flat(getattr(args, "only", None))
    missing = unmatched(patterns, ids)
    if not missing:
        return None
    shown = ", ".join(repr(p) for p in missing)
    return f"--only {shown} matches no job of {args.jobfile}"
