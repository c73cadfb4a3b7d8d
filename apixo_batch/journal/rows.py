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

from ..planning.selection import take_filename
from .states import STATES, JobState

__all__ = [
    "CHANGES",
    "COLUMNS",
    "SELECT",
    "Change",
    "Column",
    "JobRow",
    "OutputRow",
    "added_columns",
    "jobs_table",
    "json_list",
    "output_row",
    "take_filename",
]


def json_list(text: str | None) -> tuple[str, ...]:
    # Most rows hold no list yet: skip the JSON parser for them.
    if not text or text == "[]":
        return ()
    return tuple(json.loads(text))


#: (id, the name its take lands at, its files with earlier takes', in the file (0/1),
#: state, how many result URLs the task brought: None before it succeeded): one job as
#: the check of names sees it (``Journal.output_rows``), the same from either backend
OutputRow = tuple[str, str, tuple[str, ...], int, str, int | None]

#: the columns :func:`output_row` takes, in order (the result count as each SQL spells it)
OUTPUT_COLUMNS = "id, filename, take, files, earlier_files, in_file, state"


def output_row(
    job_id: str,
    filename: str,
    take: int,
    files: str | None,
    earlier: str | None,
    in_file: Any,
    state: str,
    results: int | None,
) -> OutputRow:
    """One job's :data:`OutputRow` from its columns (:data:`OUTPUT_COLUMNS`, then the
    result count)."""
    landed = json_list(files)
    if earlier and earlier != "[]":
        landed = (*json_list(earlier), *landed)
    return (
        str(job_id),
        take_filename(filename, int(take)),
        landed,
        int(in_file),
        str(state),
        None if results is None else int(results),
    )


def _json_text(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def _finite(value: float | None) -> float | None:
    # Versions that let --time-scale be inf journaled inf expiries: read them as unknown.
    return value if value is None or math.isfinite(value) else None


def _sql(
    decl: str,
    read: Callable[[Any], Any] | None = None,
    write: Callable[[Any], Any] | None = None,
    since: int = 1,
) -> dict[str, Any]:
    """A JobRow field's column: its SQL declaration, converters where SQL differs, and the
    schema step that adds it (:mod:`.schema`)."""
    return {"decl": decl, "read": read, "write": write, "since": since}


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
    # Added by schema step 2 (``since``): kept out of step 1's CREATE TABLE.
    #: the take the job is on: 1, then one more per ``--reroll``
    take: int = field(default=1, metadata=_sql("INTEGER NOT NULL DEFAULT 1", since=2))
    #: the files of earlier takes, kept on disk and held by the job
    earlier_files: tuple[str, ...] = field(
        default=(), metadata={**_LIST, "decl": "TEXT NOT NULL DEFAULT '[]'", "since": 2}
    )
    # Added by schema step 3.
    #: the fingerprint of the key that created its task (None: the run's one key, as
    #: every task was before key pools)
    key_fp: str | None = field(default=None, metadata=_sql("TEXT", since=3))

    @property
    def out_name(self) -> str:
        """The file name this take's first result lands at (see :func:`take_filename`)."""
        return take_filename(self.filename, self.take)

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
    #: the schema step that adds the column (1: the CREATE TABLE)
    since: int = 1


COLUMNS: tuple[Column, ...] = (
    *(Column(f.name, **f.metadata) for f in fields(JobRow)),
    # The journal's own: every change stamps it; nothing outside the journal reads it.
    Column("updated_at", "REAL NOT NULL"),
)

#: the SELECT list that :meth:`JobRow.from_sql` reads
SELECT = ", ".join(f.name for f in fields(JobRow))

_READERS = tuple((i, c.read) for i, c in enumerate(COLUMNS) if c.read is not None)


def jobs_table() -> str:
    """Step 1's CREATE TABLE: the columns later steps add are left to them."""
    return "CREATE TABLE IF NOT EXISTS jobs ({})".format(
        ", ".join(f"{c.name} {c.decl}" for c in COLUMNS if c.since == 1)
    )


def added_columns(step: int) -> tuple[str, ...]:
    """The ``ALTER TABLE`` statements of the columns schema step ``step`` adds."""
    return tuple(
        f"ALTER TABLE jobs ADD COLUMN {c.name} {c.decl}" for c in COLUMNS if c.since == step
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
    take: int
    earlier_files: Sequence[str]
    key_fp: str | None


#: every key of :class:`Change`, with how its column stores a value (None: as it is)
CHANGES: dict[str, Callable[[Any], Any] | None] = {
    c.name: c.write for c in COLUMNS if c.name in Change.__optional_keys__
}
