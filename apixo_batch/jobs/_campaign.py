"""The campaign: the job file's settings checked, its jobs validated in one streaming pass."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from ..catalog.models import MODELS, PriceTable, all_input_keys
from ..errors import JobFileError
from ..location import Destination, is_s3, parse_s3
from ._base import (
    PROVIDERS,
    TOP_KEYS,
    Issues,
    Job,
    JobGroup,
    check_filename,
    check_id,
    input_hash,
    short,
)
from ._resolve import Defaults, Expanded, Matrix, Resolver, parse_matrix
from ._rows import ROW_SUFFIXES, read_csv_ids, read_id_rows, read_rows
from ._yamlfile import read_yaml

__all__ = ["Campaign", "load_campaign"]

DEFAULT_FILENAME = "{id}.mp4"
_TEMPLATE_FIELDS = ("id", "model", "index")

_GroupKey = tuple[str, str, int, str]


@dataclass(frozen=True)
class _Source:
    """What it takes to stream the jobs again: listed jobs, the rows file, the merge rules."""

    display: str
    listed: tuple[tuple[object, str], ...]
    rows_path: Path | None
    rows_display: str
    default_model: str | None
    resolver: Resolver
    template: str

    def expand(self, issues: Issues) -> Iterator[tuple[int, Expanded, str]]:
        """(index, job, rendered file name) for every job in file order."""
        raw_jobs: Iterator[tuple[object, str]] = iter(self.listed)
        if self.rows_path is not None:
            rows = read_rows(self.rows_path, self.rows_display, self.default_model, issues)
            raw_jobs = itertools.chain(raw_jobs, rows)
        index = 0
        template = self.template
        for raw, source in raw_jobs:
            for job in self.resolver.resolve(raw, source, issues):
                yield index, job, template.format(id=job.id, model=job.model, index=index)
                index += 1

    def ids(self, issues: Issues) -> Iterator[str]:
        """Every job's id in file order, the inputs of the jobs_file's rows unchecked."""
        for raw, source in self.listed:
            # The listed jobs are few and in memory already: checked whole.
            for job in self.resolver.resolve(raw, source, issues):
                yield job.id
        if self.rows_path is None:
            return
        if ROW_SUFFIXES[self.rows_path.suffix.lower()] == "csv" and not self.resolver.has_matrix:
            # One job per row, named as written: the ids alone (100,000 rows in ~0.15 s).
            problem = self.resolver.model_problem
            yield from read_csv_ids(self.rows_path, self.rows_display, problem, issues)
            return
        for raw, source in read_id_rows(self.rows_path, self.rows_display, issues):
            yield from self.resolver.ids(raw, source, issues)


@dataclass(frozen=True)
class Campaign:
    """A validated job file. Jobs are streamed by :meth:`iter_jobs`, never all held at once."""

    name: str
    #: the job file
    path: Path
    #: a local folder (absolute; ``output.dir`` relative to the job file, or the override)
    #: or an S3 location (``s3://BUCKET/PREFIX``)
    output_dir: Destination
    filename_template: str
    #: the job file's price table (model -> USD per output second, or -> {variant: USD})
    prices: PriceTable
    job_count: int
    #: job counts by model, mode, duration and price tier, in order of first appearance
    groups: tuple[JobGroup, ...] = ()
    #: the job file could not be read: no jobs, the journal alone says what there is
    #: (``status``, ``download``, ``review``); a run leaves the journal's jobs as they are
    from_journal: bool = False
    #: the job file and its jobs_file as they were read (sizes and modification times):
    #: a journal synced from the same stamp holds the file's jobs without reading them
    stamp: str = ""
    #: notification URLs (Apprise) as written, ``${VAR}`` not yet expanded: a secret read
    #: from the environment only by the run that sends (:meth:`notify_urls`)
    notify: tuple[str, ...] = ()
    #: ``output.shared``: the output folder is one mount every runner of the campaign
    #: writes to (several runners on several hosts may then use a local folder)
    shared_out: bool = False
    _source: _Source | None = field(default=None, repr=False, compare=False)
    #: (id, model) -> the job is one of this view's (see :meth:`narrowed`)
    _pick: Callable[[str, str], bool] | None = field(default=None, repr=False, compare=False)

    def narrowed(self, pick: Callable[[str, str], bool]) -> Campaign:
        """A view of the jobs ``pick(id, model)`` keeps, counted and grouped again (one
        pass over the file), their indexes and file names as in the whole campaign. For
        figures (``plan --only``); a run syncs the whole file, never a view of it."""
        view = replace(self, _pick=pick)
        groups: dict[tuple[str, str, Any, str], list[Any]] = {}
        count = 0
        for job in view.iter_jobs():
            count += 1
            tier = MODELS[job.model].price_variant(job.input)
            key = (job.model, job.input["mode"], job.input["duration"], tier)
            group = groups.get(key)
            if group is None:
                groups[key] = [1, job.input]
            else:
                group[0] += 1
        return replace(
            view,
            job_count=count,
            groups=tuple(
                JobGroup(model, mode, duration, tier, MODELS[model].clock(sample), n, sample)
                for (model, mode, duration, tier), (n, sample) in groups.items()
            ),
        )

    def iter_jobs(self) -> Iterator[Job]:
        """Every job in file order, validated again as the jobs_file is read again.

        Raises JobFileError if the files changed since loading and a job no
        longer passes.
        """
        if self._source is None:
            return
        issues = Issues()
        for index, job, filename in self._source.expand(issues):
            if issues:
                break
            if self._pick is not None and not self._pick(job.id, job.model):
                continue
            yield Job(
                id=job.id,
                index=index,
                model=job.model,
                provider=job.provider,
                input=job.input,
                input_hash=input_hash(job.model, job.provider, job.input),
                filename=filename,
                source=job.source,
            )
        if issues:
            raise issues.error(self._source.display)

    def iter_ids(self) -> Iterator[str]:
        """Every job's id in file order, without validating the jobs_file's rows: the
        file's shape, the ids (unique), the models and the matrix are checked, the inputs
        are not (``load_campaign`` and :meth:`iter_jobs` check them). For ``status``, which
        tells the jobs added and removed since the last run: a 100,000-row CSV in a
        fraction of the time of :meth:`iter_jobs`.

        Raises JobFileError listing the problems found.
        """
        if self._source is None:
            return
        issues = Issues()
        seen: dict[str, None] = {}
        for job_id in self._source.ids(issues):
            if job_id in seen:
                issues.add(f"job {job_id!r}", "id", "duplicate id")
                continue
            seen[job_id] = None
            yield job_id
        if issues:
            raise issues.error(self._source.display)

    def notify_urls(self, environ: Mapping[str, str]) -> list[str]:
        """The ``notify:`` URLs with every ``${VAR}`` replaced from ``environ``.

        Raises JobFileError naming the entry and the variable when one is not set (an
        empty value counts as not set: a URL with a hole in it would fail at the end of
        the night, not now)."""
        issues = Issues()
        urls = []
        for i, raw in enumerate(self.notify):

            def value(m: re.Match[str], i: int = i) -> str:
                found = environ.get(m.group(1), "")
                if not found:
                    issues.add(self.path.name, f"notify[{i}]", f"${{{m.group(1)}}} is not set")
                return found

            urls.append(_ENV_REF.sub(value, raw))
        if issues:
            raise issues.error(self.path.name)
        return urls

    def cost(self, job: Job) -> float | None:
        """What ``job`` costs at the catalog's prices and this file's own (None: unknown)."""
        spec = MODELS.get(job.model)
        return spec.cost(job.input, self.prices) if spec else None


def load_campaign(
    path: str | Path, *, out_dir: str | Path | None = None, check_jobs: bool = True
) -> Campaign:
    """Read and validate a job file and its jobs_file.

    Everything is checked before anything is returned: the file's shape,
    every job against its model, unique ids and output file names. Raises
    :class:`JobFileError` listing every problem found (the first 200, and
    how many more). ``out_dir`` overrides ``output.dir`` (relative to the
    current directory, as on a command line). ``check_jobs=False``: the settings only,
    the jobs neither read nor counted (``job_count`` 0), for what needs no job.
    """
    job_file = Path(path).absolute()
    display = job_file.name
    stamp = _stamp(job_file)
    issues = Issues()
    data, job_lines = read_yaml(job_file, display, issues)
    if issues:
        raise issues.error(display)
    if data is None:
        raise _one(display, "", "the job file is empty")
    if not isinstance(data, dict):
        raise _one(display, "", f"the job file must be a mapping, got {type(data).__name__}")

    for key in data:
        # x-* keys are the file's own (anchors to merge from, notes), as in Compose files.
        if key not in TOP_KEYS and not str(key).startswith("x-"):
            issues.add(display, str(key), f"unknown top-level key (allowed: {', '.join(TOP_KEYS)})")
    name = _name(data, job_file, display, issues)
    base = job_file.parent
    output = _mapping(data.get("output"), display, "output", ("dir", "filename", "shared"), issues)
    shared_out = output.get("shared", False)
    if not isinstance(shared_out, bool):
        issues.add(display, "output.shared", "must be true or false")
        shared_out = False
    out_text = _text(output.get("dir"), display, "output.dir", issues) or f"out/{name}"
    output_dir = _destination(out_text, out_dir, base, display, issues)
    template = _template(output.get("filename", DEFAULT_FILENAME), display, issues)
    defaults = _defaults(data.get("defaults"), display, issues)
    matrix: Matrix = ()
    if data.get("matrix") is not None:
        matrix = parse_matrix(data["matrix"], display, "matrix", issues)
    prices = _prices(data.get("prices"), display, issues)
    notify = _notify(data.get("notify"), display, issues)
    listed = _listed(data.get("jobs"), display, job_lines, issues)
    rows_path, rows_display = _rows_file(data.get("jobs_file"), base, display, issues)

    source = _Source(
        display=display,
        listed=listed,
        rows_path=rows_path,
        rows_display=rows_display,
        default_model=defaults.model,
        resolver=Resolver(defaults, matrix),
        template=template or DEFAULT_FILENAME,
    )
    stamp += "|" + _stamp(rows_path)
    count, groups = _check_jobs(source, bool(template), issues) if check_jobs else (0, ())
    if issues:
        raise issues.error(display)
    return Campaign(
        name=name,
        path=job_file,
        output_dir=output_dir,
        filename_template=source.template,
        prices=prices,
        job_count=count,
        groups=groups,
        stamp=stamp,
        notify=notify,
        shared_out=shared_out,
        _source=source,
    )


#: ``${VAR}`` in a notify URL: a name as POSIX shells take it
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _notify(value: object, display: str, issues: Issues) -> tuple[str, ...]:
    """``notify:``: one Apprise URL or a list of them (checked for shape here; the run
    expands ``${VAR}`` and Apprise reads the URL)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        issues.add(display, "notify", "must be a URL or a list of URLs")
        return ()
    urls = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            issues.add(display, f"notify[{i}]", "must be a non-empty URL (text)")
            continue
        rest = _ENV_REF.sub("", item)
        if "${" in rest:
            issues.add(display, f"notify[{i}]", "a ${ is not closed: write ${NAME}")
            continue
        urls.append(item.strip())
    return tuple(urls)


def _stamp(path: Path | None) -> str:
    """A file's size and modification time (ns): changed, its content may have."""
    if path is None:
        return "-"
    try:
        st = path.stat()
    except OSError:
        return "?"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check_jobs(
    source: _Source, check_files: bool, issues: Issues
) -> tuple[int, tuple[JobGroup, ...]]:
    """The streaming pass: ids and file names unique, jobs counted by group."""
    # Only ids and file names are kept, so a 100,000-row file stays small in memory.
    ids: dict[str, str] = {}
    files: dict[str, str] = {}
    groups: dict[_GroupKey, list[Any]] = {}
    count = 0
    for _, job, filename in source.expand(issues):
        count += 1
        first = ids.get(job.id)
        if first is not None:
            issues.add(_at(job), "id", f"duplicate id (first used by {first})")
            continue
        ids[job.id] = job.source
        if check_files:
            problem = check_filename(filename)
            if problem is not None:
                issues.add(_at(job), "output.filename", problem)
            # Case-folded: "A.mp4" and "a.mp4" are one file on macOS and Windows.
            other = files.setdefault(filename.casefold(), job.id)
            if other != job.id:
                message = f"{filename!r} is also job {other!r}'s file"
                issues.add(_at(job), "output.filename", message)
        if job.valid:
            inp = job.input
            tier = MODELS[job.model].price_variant(inp)
            key = (job.model, inp["mode"], inp["duration"], tier)
            group = groups.get(key)
            if group is None:
                groups[key] = [1, inp]
            else:
                group[0] += 1
    if count == 0 and not issues:
        issues.add(source.display, "jobs", "no jobs: give a jobs list, a jobs_file, or both")
    return count, tuple(
        JobGroup(model, mode, duration, tier, MODELS[model].clock(sample), n, sample)
        for (model, mode, duration, tier), (n, sample) in groups.items()
    )


def _at(job: Expanded) -> str:
    return f"job {job.id!r} ({job.source})"


def _destination(
    out_text: str, out_dir: str | Path | None, base: Path, display: str, issues: Issues
) -> Destination:
    """The output from ``--out`` (relative to here) or ``output.dir`` (to the job file)."""
    if out_dir is not None:
        if isinstance(out_dir, str) and is_s3(out_dir):
            try:
                return parse_s3(out_dir)
            except ValueError as exc:
                raise _one("--out", "", str(exc)) from None
        return Path(out_dir).resolve()
    if is_s3(out_text):
        try:
            return parse_s3(out_text)
        except ValueError as exc:
            issues.add(display, "output.dir", str(exc))
            return Path(base)
    return (base / out_text).resolve()


def _one(where: str, field_name: str, message: str) -> JobFileError:
    issues = Issues()
    issues.add(where, field_name, message)
    return issues.error(where)


def _name(data: Mapping[Any, Any], job_file: Path, display: str, issues: Issues) -> str:
    name = data.get("name")
    if name is None:
        return job_file.stem
    # The name is the default output folder, so it follows the rules of an id.
    problem = check_id(name)
    if problem is not None:
        issues.add(display, "name", problem)
        return job_file.stem
    return str(name)


def _mapping(
    value: object, where: str, name: str, allowed: tuple[str, ...], issues: Issues
) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        issues.add(where, name, f"must be a mapping ({', '.join(allowed)})")
        return {}
    for key in value:
        if key not in allowed:
            issues.add(where, f"{name}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
    return value


def _text(value: object, where: str, name: str, issues: Issues) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        issues.add(where, name, f"must be a non-empty string, got {short(value)}")
        return None
    return value


def _template(value: object, where: str, issues: Issues) -> str | None:
    """The checked filename template, or None when it is unusable (reported once)."""
    template = _text(value, where, "output.filename", issues)
    if template is None:
        return None
    try:
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in _TEMPLATE_FIELDS:
                issues.add(
                    where,
                    "output.filename",
                    f"unknown placeholder {{{field_name}}} (use {{id}}, {{model}}, {{index}})",
                )
                return None
        sample = template.format(id="job-id", model="model", index=0)
    except (ValueError, TypeError) as exc:
        issues.add(where, "output.filename", f"bad template {template!r}: {exc}")
        return None
    problem = check_filename(sample)
    if problem is not None:
        issues.add(where, "output.filename", f"{template!r} renders to {problem}")
        return None
    return template


def _defaults(value: object, where: str, issues: Issues) -> Defaults:
    section = _mapping(value, where, "defaults", ("model", "provider", "input"), issues)
    model = section.get("model")
    broken = False
    if model is not None and (not isinstance(model, str) or model not in MODELS):
        known = ", ".join(MODELS)
        issues.add(where, "defaults.model", f"unknown model {short(model)} (known: {known})")
        model, broken = None, True
    provider = section.get("provider")
    if provider is None:
        provider = "auto"
    elif provider not in PROVIDERS:
        issues.add(
            where, "defaults.provider", f"got {short(provider)}, expected auto, value or official"
        )
        provider = "auto"
    inp = section.get("input")
    clean: dict[str, Any] = {}
    if inp is not None and not isinstance(inp, dict):
        issues.add(where, "defaults.input", "must be a mapping of input keys to values")
    elif inp is not None:
        known_keys = all_input_keys()
        for key, item in inp.items():
            if key not in known_keys:
                issues.add(
                    where, f"defaults.input.{key}", "unknown key (not an input of any model)"
                )
            elif item is not None:
                clean[key] = item
    return Defaults(model=model, model_broken=broken, provider=str(provider), input=clean)


def _prices(value: object, where: str, issues: Issues) -> dict[str, float | dict[str, float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        issues.add(where, "prices", "must map a model to a price or to {variant: price}")
        return {}
    table: dict[str, float | dict[str, float]] = {}
    for model, entry in value.items():
        name = f"prices.{model}"
        spec = MODELS.get(model) if isinstance(model, str) else None
        if spec is None:
            issues.add(where, name, f"unknown model (known: {', '.join(MODELS)})")
        elif isinstance(entry, dict):
            tiers = _price_tiers(spec.name)
            by_tier: dict[str, float] = {}
            for tier, price in entry.items():
                if tier not in tiers:
                    allowed = ", ".join(sorted(tiers))
                    issues.add(where, f"{name}.{tier}", f"unknown variant (allowed: {allowed})")
                elif (checked := _price(price, where, f"{name}.{tier}", issues)) is not None:
                    by_tier[str(tier)] = checked
            table[model] = by_tier
        elif (checked := _price(entry, where, name, issues)) is not None:
            table[model] = checked
    return table


def _price(value: object, where: str, name: str, issues: Issues) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        issues.add(where, name, f"must be a number (USD per output second), got {short(value)}")
        return None
    if value < 0:
        issues.add(where, name, f"must not be negative, got {value}")
        return None
    return float(value)


@cache
def _price_tiers(model: str) -> frozenset[str]:
    """The price variants a model's inputs can select, plus "default".

    The catalog knows a variant only as a function of the input, so every
    combination of the model's finite-valued inputs is tried.
    """
    spec = MODELS[model]
    choices: list[tuple[str, tuple[Any, ...]]] = []
    for key, info in spec.input_model.model_fields.items():
        values = _finite_values(info.annotation)
        if values:
            choices.append((key, values))
    keys = [key for key, _ in choices]
    tiers = {"default"}
    for combo in itertools.product(*(values for _, values in choices)):
        tiers.add(spec.price_variant(dict(zip(keys, combo, strict=True))))
    return frozenset(tiers)


def _finite_values(annotation: Any) -> tuple[Any, ...]:
    if annotation is bool:
        return (True, False)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if len(args) == 1 and args[0] is not annotation:
        return _finite_values(args[0])
    return ()


def _listed(
    value: object, display: str, lines: list[int], issues: Issues
) -> tuple[tuple[object, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        issues.add(display, "jobs", "must be a list of jobs")
        return ()
    return tuple(
        (raw, f"{display} job {i + 1}" + (f", line {lines[i]}" if i < len(lines) else ""))
        for i, raw in enumerate(value)
    )


def _rows_file(value: object, base: Path, display: str, issues: Issues) -> tuple[Path | None, str]:
    text = _text(value, display, "jobs_file", issues)
    if text is None:
        return None, ""
    path = base / text
    if path.suffix.lower() not in ROW_SUFFIXES:
        issues.add(display, "jobs_file", f"{text!r}: expected a .csv or .jsonl file")
        return None, text
    if not path.is_file():
        issues.add(display, "jobs_file", f"{text!r} not found (looked for {path})")
        return None, text
    return path, text
