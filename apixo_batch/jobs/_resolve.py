"""One job as written -> the jobs it stands for: defaults merged, matrix expanded, input checked.

Merging rules (docs/jobfile.md has the user's version):

- ``defaults.input`` is shared by every model, so a default key the job's
  model or mode does not take is left out for that job; keys written in the
  job itself are strict.
- A job removes a default key by setting it to ``null``.
- A matrix key's values replace the job's value for that key; the top-level
  matrix, like the defaults, skips keys the job's model or mode does not take.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..catalog.models import MODELS, InputIssue, ModelSpec, accepts, all_input_keys, validate_input
from ._base import JOB_KEYS, MAX_ID_LENGTH, PROVIDERS, Issues, check_id, short

__all__ = ["Defaults", "Expanded", "Matrix", "Resolver", "parse_matrix"]

#: (input key, values) in the order written
Matrix = tuple[tuple[str, tuple[Any, ...]], ...]

_MISSING: Any = object()
_NO_MATRIX: list[tuple[str, dict[str, Any]]] = [("", {})]
_NO_NULLS: frozenset[str] = frozenset()
_SUFFIX_MAX = 24  # characters of one value in an id suffix
_NOT_SAFE = re.compile(r"[^A-Za-z0-9.]+")
_DOTS = re.compile(r"\.{2,}")
_RATIO = re.compile(r"(?<=\d):(?=\d)")
_JOB_KEYS = frozenset(JOB_KEYS)


@dataclass(frozen=True, slots=True)
class Defaults:
    """The job file's ``defaults`` section, already checked."""

    model: str | None = None
    #: defaults.model was given but is wrong: reported once, its jobs are not checked further
    model_broken: bool = False
    provider: str = "auto"
    input: Mapping[str, Any] = field(default_factory=dict)


class Expanded(NamedTuple):
    """One job after defaults and matrix; ``valid`` is False when its input has problems."""

    # A NamedTuple, not a frozen dataclass: one is built per row, and it is the cheaper to
    # build (bench/plan_large.py measures a 100,000-row plan).
    id: str
    model: str
    provider: str
    input: dict[str, Any]
    source: str
    valid: bool


def parse_matrix(value: object, where: str, name: str, issues: Issues) -> Matrix:
    """Check a ``matrix:`` mapping (input key -> list of plain values); bad entries are dropped."""
    if not isinstance(value, dict):
        issues.add(where, name, "must be a mapping of input key -> list of values")
        return ()
    known = all_input_keys()
    out: list[tuple[str, tuple[Any, ...]]] = []
    for key, values in value.items():
        dotted = f"{name}.{key}"
        if key not in known:
            issues.add(where, dotted, "unknown input key (not an input of any model)")
        elif not isinstance(values, list) or not values:
            issues.add(where, dotted, "must be a non-empty list of values")
        elif any(v is None or not isinstance(v, str | int | float) for v in values):
            issues.add(where, dotted, "values must be plain strings, numbers or booleans")
        elif len({(type(v), v) for v in values}) != len(values):
            issues.add(where, dotted, "a value is listed twice")
        else:
            out.append((str(key), tuple(values)))
    return tuple(out)


def _suffix_part(key: str, value: Any, position: int) -> str:
    # Readable and deterministic: 16:9 -> 16x9, True -> sound, False -> no-sound,
    # a long prompt -> its first words; the position when nothing usable is left.
    if isinstance(value, bool):
        name = key.replace("_", "-")
        return name if value else f"no-{name}"
    text = _DOTS.sub(".", _NOT_SAFE.sub("-", _RATIO.sub("x", str(value)))).strip("-.")
    text = text[:_SUFFIX_MAX].rstrip("-.")
    return text or str(position + 1)


def _combos(matrix: Matrix) -> list[tuple[str, dict[str, Any]]]:
    if not matrix:
        return _NO_MATRIX
    choices = [
        [(_suffix_part(key, value, i), key, value) for i, value in enumerate(values)]
        for key, values in matrix
    ]
    return [
        ("".join("-" + part for part, _, _ in combo), {key: value for _, key, value in combo})
        for combo in itertools.product(*choices)
    ]


class Resolver:
    """Turns raw jobs (a YAML list item, a CSV row, a JSONL object) into checked jobs."""

    def __init__(self, defaults: Defaults, matrix: Matrix) -> None:
        self._defaults = defaults
        self._matrix = matrix
        self._matrix_keys = {key for key, _ in matrix}
        self._known = all_input_keys()
        self._default_mode = defaults.input.get("mode")
        # (model, mode) -> the default items that model and mode take: worked out once,
        # not once per row of a 100,000-row file.
        self._shared: dict[tuple[str, str | None], tuple[tuple[str, Any], ...]] = {}

    def resolve(self, raw: object, source: str, issues: Issues) -> list[Expanded]:
        """The jobs ``raw`` expands to; every problem is added to ``issues``.

        A job whose id or model is unusable expands to nothing (its problems
        are still reported); the others come back with ``valid`` telling
        whether their input passed.
        """
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            issues.add(source, "", f"a job must be a mapping (id, model, input, ...), got {kind}")
            return []
        job_id = raw.get("id")
        id_problem = check_id(job_id)
        # Messages name the job by id once the id is usable, else by where it was written.
        # Built only when there is something to report: most jobs have nothing.
        where = source if id_problem is not None else None
        if id_problem is not None:
            issues.add(source, "id", id_problem)

        before = issues.total
        if not raw.keys() <= _JOB_KEYS:
            for key in raw:
                if key not in _JOB_KEYS:
                    allowed = ", ".join(JOB_KEYS)
                    message = f"unknown job key (allowed: {allowed})"
                    issues.add(where or _at(job_id, source), str(key), message)

        defaults = self._defaults
        model = raw.get("model")
        if model is None:
            model = defaults.model
            if model is None and not defaults.model_broken:
                message = "required (there is no defaults.model)"
                issues.add(where or _at(job_id, source), "model", message)
        spec = MODELS.get(model) if type(model) is str else None
        if spec is None and model is not None:
            message = f"unknown model {short(model)} (known: {', '.join(MODELS)})"
            issues.add(where or _at(job_id, source), "model", message)

        provider = raw.get("provider")
        if provider is None:
            provider = defaults.provider
        elif provider not in PROVIDERS:
            message = f"got {short(provider)}, expected auto, value or official"
            issues.add(where or _at(job_id, source), "provider", message)

        value = raw.get("input")
        written: dict[str, Any] | None
        if type(value) is dict and value.keys() <= self._known and None not in value.values():
            written, nulls = dict(value), _NO_NULLS  # the common case, checked in C
        else:
            written, nulls = self._written_input(value, where or _at(job_id, source), issues)
        own: Matrix = ()
        if raw.get("matrix") is not None:
            own = parse_matrix(raw["matrix"], where or _at(job_id, source), "matrix", issues)
        if spec is None or written is None:
            return []

        default_mode = None if "mode" in nulls else self._default_mode
        matrix = self._job_matrix(spec, written.get("mode", default_mode), nulls, own)

        clean = issues.total == before and id_problem is None
        out: list[Expanded] = []
        for suffix, overrides in _combos(matrix):
            # The job's own keys first, so a stored input reads like the job as written.
            # With no matrix, ``written`` is this call's own copy: filled in place.
            merged = {**written, **overrides} if overrides else written
            from_defaults: list[str] = []
            for key, item in self._defaults_for(spec, merged.get("mode", default_mode)):
                if key not in merged and key not in nulls:
                    merged[key] = item
                    from_defaults.append(key)
            normalized, problems = validate_input(spec.name, merged)
            full_id = f"{job_id}{suffix}"
            if problems or (suffix and len(full_id) > MAX_ID_LENGTH):
                job_where = where or _at(full_id, source)
                for problem in problems:
                    message = _explain(problem, merged, from_defaults)
                    issues.add(job_where, problem.field, message)
                if len(full_id) > MAX_ID_LENGTH:
                    message = f"with its matrix suffix over {MAX_ID_LENGTH} characters"
                    issues.add(job_where, "id", message)
            if id_problem is None:
                valid = clean and not problems
                out.append(Expanded(full_id, spec.name, provider, normalized, source, valid))
        return out

    def _job_matrix(
        self, spec: ModelSpec, mode: object, nulls: frozenset[str], own: Matrix
    ) -> Matrix:
        """The matrix one job expands by: the top-level one's keys its model (and mode)
        take and it does not set to null, then its own."""
        if not self._matrix:
            return own
        own_keys = {key for key, _ in own}
        # With mode itself in the matrix, only the model can rule a key out up front.
        hint = None if "mode" in self._matrix_keys else mode
        shared = tuple(
            (key, values)
            for key, values in self._matrix
            if key not in own_keys and key not in nulls and accepts(spec, _mode(hint), key)
        )
        return shared + own

    @property
    def has_matrix(self) -> bool:
        return bool(self._matrix)

    def model_problem(self, model: object) -> str | None:
        """Why a job of ``model`` (None: the default's) has no id, as :meth:`resolve`
        reports it: None when it has one, "" when it was reported already (a broken
        ``defaults.model``)."""
        if model is None:
            model = self._defaults.model
            if model is None:
                return (
                    "" if self._defaults.model_broken else "required (there is no defaults.model)"
                )
        if type(model) is not str or model not in MODELS:
            return f"unknown model {short(model)} (known: {', '.join(MODELS)})"
        return None

    def ids(self, raw: object, source: str, issues: Issues) -> list[str]:
        """The ids ``raw`` expands to, as :meth:`resolve` names them, its input unchecked:
        what ``status`` compares with the journal. A job :meth:`resolve` would drop for a
        bad id, model or input shape is dropped here too, with the problem in ``issues``."""
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            issues.add(source, "", f"a job must be a mapping (id, model, input, ...), got {kind}")
            return []
        job_id = raw.get("id")
        problem = check_id(job_id)
        if problem is not None:
            issues.add(source, "id", problem)
            return []
        model = raw.get("model")
        problem = self.model_problem(model)
        if problem is not None:
            if problem:
                issues.add(_at(job_id, source), "model", problem)
            return []
        spec = MODELS[str(model if model is not None else self._defaults.model)]
        own_raw = raw.get("matrix")
        if not self._matrix and own_raw is None:
            return [str(job_id)]  # the common case: no matrix, the id as written
        value = raw.get("input")
        if value is not None and not isinstance(value, dict):
            issues.add(_at(job_id, source), "input", "must be a mapping of input keys to values")
            return []
        written = value or {}
        nulls = frozenset(k for k, v in written.items() if v is None and k in self._known)
        own: Matrix = ()
        if own_raw is not None:
            own = parse_matrix(own_raw, _at(job_id, source), "matrix", issues)
        mode = written.get("mode")
        if mode is None and "mode" not in nulls:
            mode = self._default_mode
        out = []
        for suffix, _ in _combos(self._job_matrix(spec, mode, nulls, own)):
            full_id = f"{job_id}{suffix}"
            if suffix and len(full_id) > MAX_ID_LENGTH:
                message = f"with its matrix suffix over {MAX_ID_LENGTH} characters"
                issues.add(_at(full_id, source), "id", message)
            out.append(full_id)
        return out

    def _defaults_for(self, spec: ModelSpec, mode: object) -> tuple[tuple[str, Any], ...]:
        # A mode the model does not have refuses nothing (validation reports it) and must
        # not add a cache entry: a file full of junk modes cannot grow the table.
        key = (spec.name, mode if type(mode) is str and mode in spec.modes else None)
        items = self._shared.get(key)
        if items is None:
            items = tuple(
                (name, value)
                for name, value in self._defaults.input.items()
                if accepts(spec, key[1], name)
            )
            self._shared[key] = items
        return items

    def _written_input(
        self, value: object, where: str, issues: Issues
    ) -> tuple[dict[str, Any] | None, frozenset[str]]:
        """The job's own input without its nulls, and the keys it sets to null."""
        if value is None:
            return {}, _NO_NULLS
        if not isinstance(value, dict):
            issues.add(where, "input", "must be a mapping of input keys to values")
            return None, _NO_NULLS
        written: dict[str, Any] = {}
        nulls: set[str] = set()
        for key, item in value.items():
            if type(key) is not str:
                issues.add(where, f"input.{key}", "input keys must be strings")
            elif item is not None:
                written[key] = item  # an unknown key is left to the model's strict check
            elif key in self._known:
                nulls.add(key)
            else:
                issues.add(where, f"input.{key}", "unknown key (not an input of any model)")
        return written, frozenset(nulls)


def _at(job_id: object, source: str) -> str:
    return f"job {job_id!r} ({source})"


def _mode(value: object) -> str | None:
    # A mode written wrong (a list, a number) must not break lookups: validation reports it.
    return value if isinstance(value, str) else None


def _explain(problem: InputIssue, merged: Mapping[str, Any], from_defaults: list[str]) -> str:
    key = problem.field.removeprefix("input.").split("[", 1)[0].split(".", 1)[0]
    value = merged.get(key, _MISSING)
    message = problem.message
    if message.startswith("Input should") and value is not _MISSING:
        message += f", got {short(value)}"
    if key == "aspect_ratio" and isinstance(value, int) and not isinstance(value, bool):
        message += ' (YAML reads an unquoted 16:9 as a number: write "16:9" in quotes)'
    if key in from_defaults:
        message += " (the value comes from defaults.input)"
    return message
