"""``jobs_file`` rows: CSV cells converted to the model's types, JSONL lines as job objects.

Both readers stream: one row in memory at a time, whatever the file's size.
Conversion never fails here: a cell that does not convert ("abc" for a
duration) stays a string and the model's strict validation reports it with
the job id and field, like any other bad value.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from ..catalog.models import MODELS, all_input_keys
from ._base import Issues, check_id

__all__ = ["ROW_SUFFIXES", "read_csv_ids", "read_id_rows", "read_rows"]

#: jobs_file suffixes and their format
ROW_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

_SPECIAL_COLUMNS = ("id", "model", "provider")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EMPTY: Any = object()

Converter = Callable[[str], Any]


def read_rows(
    path: Path, display: str, default_model: str | None, issues: Issues
) -> Iterator[tuple[object, str]]:
    """Each row of a jobs_file as (raw job, source); problems of the file itself become issues."""
    kind = ROW_SUFFIXES.get(path.suffix.lower())
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            if kind == "csv":
                yield from _csv_rows(fh, display, default_model, issues)
            else:
                yield from _jsonl_rows(fh, display, issues)
    except UnicodeDecodeError as exc:
        issues.add(display, "", f"not UTF-8 text (bad byte at offset {exc.start})")
    except OSError as exc:
        issues.add(display, "", f"cannot read: {exc.strerror or exc}")
    except csv.Error as exc:
        issues.add(display, "", f"unreadable CSV: {exc}")


def _jsonl_rows(lines: Iterator[str], display: str, issues: Issues) -> Iterator[tuple[object, str]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{display} line {number}"
        try:
            # Without its line break: an error at the end of the line is at its column,
            # not at column 1 of a line that does not exist.
            yield json.loads(line.rstrip("\r\n")), where
        except json.JSONDecodeError as exc:
            issues.add(where, "", f"invalid JSON: {exc.msg} (column {exc.colno})")


def _csv_rows(
    lines: Iterator[str], display: str, default_model: str | None, issues: Issues
) -> Iterator[tuple[object, str]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        issues.add(display, "", "empty file: a CSV jobs_file needs a header row")
        return
    names = [name.strip() for name in header]
    columns = _columns(names, display, issues)
    if columns is None:
        return
    id_at = names.index("id")
    model_at = names.index("model") if "model" in names else None
    provider_at = names.index("provider") if "provider" in names else None
    width = len(names)

    # Which converter each column needs depends on the row's model: worked out once per model.
    plans: dict[str, list[tuple[int, str, Converter]]] = {}
    # Row numbers count the header as row 1, as a spreadsheet shows them.
    for number, row in enumerate(reader, 2):
        if not row or (not row[0].strip() and not "".join(row).strip()):
            continue  # a blank line, or a spreadsheet's empty row
        where = f"{display} row {number}"
        if len(row) != width:
            issues.add(where, "", f"{len(row)} cells, the header has {width}")
            continue
        model = row[model_at].strip() if model_at is not None else ""
        effective = model or default_model or ""
        if effective not in MODELS:
            effective = ""  # unknown models share one plan: junk cannot grow the table
        plan = plans.get(effective)
        if plan is None:
            convert = _converters(effective)
            plan = plans[effective] = [(i, key, convert.get(key, _text)) for i, key in columns]
        inp: dict[str, Any] = {}
        for i, key, fn in plan:
            cell = row[i]
            if cell:
                value = fn(cell)
                if value is not _EMPTY:
                    inp[key] = value
        job: dict[str, Any] = {"id": row[id_at].strip(), "input": inp}
        if model:
            job["model"] = model
        if provider_at is not None and row[provider_at].strip():
            job["provider"] = row[provider_at].strip()
        yield job, where


def _columns(names: list[str], display: str, issues: Issues) -> list[tuple[int, str]] | None:
    """(cell index, input key) of a CSV header's input columns; None without an id column."""
    if "id" not in names:
        issues.add(f"{display} row 1", "id", f"no id column (header: {', '.join(names)})")
        return None
    known = all_input_keys()
    columns: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            issues.add(f"{display} row 1", name, "column given twice")
        elif not name:
            issues.add(f"{display} row 1", "", f"column {i + 1} has no name")
        elif name not in known and name not in _SPECIAL_COLUMNS:
            issues.add(f"{display} row 1", name, "unknown column (not an input of any model)")
        elif name not in _SPECIAL_COLUMNS:
            columns.append((i, name))
        seen.add(name)
    return columns


def read_id_rows(path: Path, display: str, issues: Issues) -> Iterator[tuple[object, str]]:
    """Each row as the little a job's id depends on: its id, model and mode (a CSV's other
    cells neither converted nor kept; a JSONL line whole). For ``status``, which compares
    ids with the journal's: a 100,000-row CSV in a fraction of :func:`read_rows`' time.
    The file's shape is checked as :func:`read_rows` checks it; the cells are not."""
    kind = ROW_SUFFIXES.get(path.suffix.lower())
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            if kind == "csv":
                yield from _csv_id_rows(fh, display, issues)
            else:
                yield from _jsonl_rows(fh, display, issues)
    except UnicodeDecodeError as exc:
        issues.add(display, "", f"not UTF-8 text (bad byte at offset {exc.start})")
    except OSError as exc:
        issues.add(display, "", f"cannot read: {exc.strerror or exc}")
    except csv.Error as exc:
        issues.add(display, "", f"unreadable CSV: {exc}")


def read_csv_ids(
    path: Path, display: str, model_problem: Callable[[str | None], str | None], issues: Issues
) -> Iterator[str]:
    """The ids of a CSV jobs_file's rows, for a campaign without a matrix (each row is
    one job, its id as written): the file's shape, each id and each row's model checked
    (``model_problem``, as the resolver words it), nothing else read."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                issues.add(display, "", "empty file: a CSV jobs_file needs a header row")
                return
            names = [name.strip() for name in header]
            if _columns(names, display, issues) is None:
                return
            id_at = names.index("id")
            model_at = names.index("model") if "model" in names else None
            width = len(names)
            # A file has a handful of models: each is judged once.
            judged: dict[str, str | None] = {}
            for number, row in enumerate(reader, 2):
                if not row or (not row[0].strip() and not "".join(row).strip()):
                    continue
                if len(row) != width:
                    where = f"{display} row {number}"
                    issues.add(where, "", f"{len(row)} cells, the header has {width}")
                    continue
                job_id = row[id_at].strip()
                problem = check_id(job_id)
                if problem is not None:
                    issues.add(f"{display} row {number}", "id", problem)
                    continue
                model = row[model_at].strip() if model_at is not None else ""
                if model in judged:
                    problem = judged[model]
                else:
                    problem = judged[model] = model_problem(model or None)
                if problem is not None:
                    if problem:
                        issues.add(f"job {job_id!r} ({display} row {number})", "model", problem)
                    continue
                yield job_id
    except UnicodeDecodeError as exc:
        issues.add(display, "", f"not UTF-8 text (bad byte at offset {exc.start})")
    except OSError as exc:
        issues.add(display, "", f"cannot read: {exc.strerror or exc}")
    except csv.Error as exc:
        issues.add(display, "", f"unreadable CSV: {exc}")


def _csv_id_rows(
    lines: Iterator[str], display: str, issues: Issues
) -> Iterator[tuple[object, str]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        issues.add(display, "", "empty file: a CSV jobs_file needs a header row")
        return
    names = [name.strip() for name in header]
    if _columns(names, display, issues) is None:
        return
    id_at = names.index("id")
    model_at = names.index("model") if "model" in names else None
    mode_at = names.index("mode") if "mode" in names else None
    width = len(names)
    for number, row in enumerate(reader, 2):
        if not row or (not row[0].strip() and not "".join(row).strip()):
            continue
        if len(row) != width:
            issues.add(f"{display} row {number}", "", f"{len(row)} cells, the header has {width}")
            continue
        job: dict[str, Any] = {"id": row[id_at].strip()}
        if model_at is not None and (model := row[model_at].strip()):
            job["model"] = model
        if mode_at is not None and (mode := row[mode_at].strip()):
            job["input"] = {"mode": mode}
        yield job, f"{display} row {number}"


@functools.cache
def _converters(model: str) -> dict[str, Converter]:
    """key -> cell converter for one model (every model's keys for an unknown model)."""
    specs = [MODELS[model]] if model in MODELS else list(MODELS.values())
    table: dict[str, Converter] = {}
    for spec in specs:
        for key, info in spec.input_model.model_fields.items():
            table.setdefault(key, _converter_for(info.annotation))
    return table


def _converter_for(annotation: Any) -> Converter:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _converter_for(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _converter_for(inner[0]) if len(inner) == 1 else _text
    if origin is Literal:
        first = get_args(annotation)[0]
        if isinstance(first, bool):
            return _bool
        return _int if isinstance(first, int) else _choice
    if origin is list:
        return _list
    if annotation is bool:
        return _bool
    if annotation is int:
        return _int
    if annotation is float:
        return _float
    return _text


def _text(cell: str) -> Any:
    # Free text (a prompt) is kept exactly as written, spaces and all.
    return cell if cell else _EMPTY


def _choice(cell: str) -> Any:
    return cell.strip() or _EMPTY


def _int(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return _EMPTY
    # int() would also take "1_0"; only plain digits are a number here.
    return int(text) if _INT.fullmatch(text) else text


def _float(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return _EMPTY
    return float(text) if _FLOAT.fullmatch(text) else text


def _bool(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return _EMPTY
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _list(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return _EMPTY
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return [part.strip() for part in text.split("|") if part.strip()]
