"""The jobs table, declared once: one job's row as the rest of the program sees it.

:class:`JobRow`'s fields are the table's columns, in order, each with its SQL
declaration and, where SQL holds it otherwise, how it is read and written. The
table's ``CREATE TABLE`` (:func:`jobs_table`), the SELECT list (:data:`SELECT`)
and the row mapping (:meth:`JobRow.from_sql`) are built from them; :class:`Change`
names what a state change may set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from .states import STATES, JobState

__all__ = [
    "CHANGES",
    "COLUMNS",
    "SELECT",
    "Change",
    "Column",
    "JobRow",
    "jobs_table",
    "json_list",
]


def json_list(text: str | None) -> tuple[str, ...]:
    # Most rows hold no list yet: skip the JSON parser for them.
    if not text or text == "[]":
        return ()
    return tuple(json.loads(text))


def _json_text(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def _finite(value: float | None) -> float | None:
    # Versions that let --time-scale be inf journaled inf expiries: read them as unknown.
    return value if value is None or math.isfinite(value) else None


def _sql(
    decl: str,
    read: Callable[[Any], Any] | None = None,
    write: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A JobRow field's column: its SQL declaration, and converters where SQL differs."""
    return {"decl": decl, "read": read, "write": write}


_LIST = _sql("TEXT", json_list, _json_text)  # a JSON array of strings


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the journal knows it (each field a column of the ``jobs`` table)."""

    id: str = field(metadata=_sql("TEXT PRIMARY KEY"))
    #: position in file order
    idx: int = field(metadata=_sql("INTEGER NOT NULL"))
    model: str = field(metadata=_sql("TEXT NOT NULL"))
    provider: str = field(metadata=_sql("TEXT NOT NULL"))
    input_json: str = field(metadata=_sql("TEXT NOT NULL"))
    input_hash: str = field(metadata=_sql("TEXT NOT NULL"))
    filename: str = field(metadata=_sql("TEXT NOT NULL"))
    cost_usd: float | None = field(metadata=_sql("REAL"))
    in_file: bool = field(metadata=_sql("INTEGER NOT NULL DEFAULT 1", bool))
    state: JobState = field(metadata=_sql("TEXT NOT NULL", STATES.__getitem__))
    task_id: str | None = field(metadata=_sql("TEXT"))
    request_type: str | None = field(metadata=_sql("TEXT"))
    attempts: int = field(metadata=_sql("INTEGER NOT NULL DEFAULT 0"))
    possibly_duplicated: bool = field(metadata=_sql("INTEGER NOT NULL DEFAULT 0", bool))
    #: the job file's input hash while it differs from the one submitted (paid)
    changed_input_hash: str | None = field(metadata=_sql("TEXT"))
    submitted_at: float | None = field(metadata=_sql("REAL"))
    completed_at: float | None = field(metadata=_sql("REAL"))
    result_urls: tuple[str, ...] = field(metadata=_LIST)
    expires_at: float | None = field(metadata=_sql("REAL", _finite))
    files: tuple[str, ...] = field(metadata=_LIST)
    bytes: int | None = field(metadata=_sql("INTEGER"))
    sha256: tuple[str, ...] = field(metadata=_LIST)
    fail_code: str | None = field(metadata=_sql("TEXT"))
    fail_msg: str | None = field(metadata=_sql("TEXT"))
    cost_time_ms: int | None = field(metadata=_sql("INTEGER"))
    arrived_via: str | None = field(metadata=_sql("TEXT"))
    #: the fingerprint of the key that created its task (None: the run's one key, as
    #: every task was before key pools); added by schema step 2
    key_fp: str | None = field(default=None, metadata=_sql("TEXT"))

    @property
    def landed_files(self) -> tuple[str, ...]:
        """The files on disk as journaled (what the manifest and the review page show): a
        ``done`` job's, or those a partial landing journaled with their sizes. A job sent
        back to be fetched again keeps its names (still its own) without claiming them."""
        if self.state is JobState.DONE or self.bytes is not None:
            return self.files
        return ()

    @property
    def input(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.input_json)
        return value

    @classmethod
    def from_sql(cls, row: Sequence[Any]) -> JobRow:
        """A row selected with :data:`SELECT` (hot: 100k per manifest, so only the columns
        SQL holds otherwise are converted)."""
        values = list(row)
        for i, read in _READERS:
            values[i] = read(values[i])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the ``jobs`` table."""

    name: str
    #: its SQL type and constraints
    decl: str
    #: SQL value -> JobRow value, where they differ
    read: Callable[[Any], Any] | None = None
    #: Python value -> SQL value, where they differ
    write: Callable[[Any], Any] | None = None


#: columns added by a later schema step (``ALTER TABLE``): not in step 1's table, and
#: after ``updated_at`` in the table as step 2 leaves it
LATER_COLUMNS = frozenset({"key_fp"})

COLUMNS: tuple[Column, ...] = (
    *(Column(f.name, **f.metadata) for f in fields(JobRow) if f.name not in LATER_COLUMNS),
    # The journal's own: every change stamps it; nothing outside the journal reads it.
    Column("updated_at", "REAL NOT NULL"),
    *(Column(f.name, **f.metadata) for f in fields(JobRow) if f.name in LATER_COLUMNS),
)

#: the SELECT list that :meth:`JobRow.from_sql` reads
SELECT = ", ".join(f.name for f in fields(JobRow))

_READERS = tuple((i, c.read) for i, c in enumerate(COLUMNS) if c.read is not None)


def jobs_table() -> str:
    return "CREATE TABLE IF NOT EXISTS jobs ({})".format(
        ", ".join(f"{c.name} {c.decl}" for c in COLUMNS if c.name not in LATER_COLUMNS)
    )


class Change(TypedDict, total=False):
    """What a state change may set besides the state (a key left out keeps its value)."""

    attempts: int
    task_id: str | None
    request_type: str
    possibly_duplicated: bool
    submitted_at: float
    completed_at: float
    result_urls: Sequence[str]
    expires_at: float
    files: Sequence[str]
    bytes: int | None
    sha256: Sequence[str]
    fail_code: str | None
    fail_msg: str | None
    cost_time_ms: int | None
    arrived_via: str
    key_fp: str | None


#: every key of :class:`Change`, with how its column stores a value (None: as it is)
CHANGES: dict[str, Callable[[Any], Any] | None] = {
    c.name: c.write for c in COLUMNS if c.name in Change.__optional_keys__
}
