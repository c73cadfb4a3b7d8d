"""Value objects and small checks shared by the job-file modules."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog.models import Clock
from ..errors import FieldIssue, JobFileError

__all__ = [
    "JOB_KEYS",
    "MAX_ID_LENGTH",
    "MAX_SHOWN",
    "PROVIDERS",
    "TOP_KEYS",
    "Issues",
    "Job",
    "JobGroup",
    "check_filename",
    "check_id",
    "input_hash",
    "short",
]

PROVIDERS = ("auto", "value", "official")
TOP_KEYS = ("name", "output", "defaults", "jobs", "jobs_file", "matrix", "prices", "notify")
JOB_KEYS = ("id", "model", "provider", "input", "matrix")
MAX_ID_LENGTH = 100
#: problems listed in one JobFileError; the rest are counted (100k bad rows must not fill memory)
MAX_SHOWN = 200
_MAX_NAME_BYTES = 255  # the file-name limit of ext4, APFS and NTFS

_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]|\.\.")


@dataclass(frozen=True, slots=True)
class Job:
    """One validated job, ready to submit."""

    id: str
    #: 0-based position in file order after matrix expansion
    index: int
    model: str
    #: auto | value | official
    provider: str
    #: validated, normalized input (what is sent as the request's ``input``)
    input: Mapping[str, Any]
    #: sha256 of the canonical JSON of model, provider and input: a changed job gets a new hash
    input_hash: str
    #: output file name, relative to the campaign's output directory
    filename: str
    #: where the job came from, for messages: "jobs.yaml job 3, line 12", "prompts.csv row 12"
    source: str


@dataclass(frozen=True, slots=True)
class JobGroup:
    """Jobs that cost and take the same: same model, mode, duration and price tier.

    The catalog's clocks depend on nothing else (duration, and resolution,
    which is wan-2-5's tier), so one clock serves the whole group.
    """

    model: str
    mode: str
    duration: int
    #: the price variant that applies ("sound", "1080p", "pro", "default", ...)
    tier: str
    clock: Clock
    count: int
    #: one job's input: every job of the group prices and times alike
    sample_input: Mapping[str, Any]


def input_hash(model: str, provider: str, inp: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of what would be submitted for a job."""
    blob = json.dumps(
        {"model": model, "provider": provider, "input": inp},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_id(value: object) -> str | None:
    """Why ``value`` cannot be a job id (ids become file names), or None when it can."""
    if not isinstance(value, str):
        if value is None:
            return "required"
        return f"must be a string, got {type(value).__name__} {short(value)} (quote it)"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{len(value)} characters, at most {MAX_ID_LENGTH} allowed"
    bad = _UNSAFE.search(value)
    if bad is not None:
        return f"{short(value)} is not safe as a file name (contains {bad.group()!r})"
    if value == ".":
        return "'.' is not safe as a file name"
    return None


def check_filename(name: str) -> str | None:
    """Why a rendered output file name is unusable, or None when it is fine."""
    if not name.endswith(".mp4"):
        return f"{short(name)} does not end in .mp4"
    bad = _UNSAFE.search(name)
    if bad is not None:
        return f"{short(name)} is not a plain file name (contains {bad.group()!r})"
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        return f"{short(name)} is longer than {_MAX_NAME_BYTES} bytes"
    return None


def short(value: object, limit: int = 40) -> str:
    """A repr short enough for a one-line message (a 1,001-character prompt is not)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Issues:
    """Collects problems: keeps the first ``cap`` and counts the rest, so memory stays bounded."""

    def __init__(self, cap: int = MAX_SHOWN) -> None:
        self.cap = cap
        self.shown: list[FieldIssue] = []
        self.total = 0

    def add(self, where: str, field: str, message: str) -> None:
        self.total += 1
        if len(self.shown) < self.cap:
            self.shown.append(FieldIssue(where, field, message))

    def __bool__(self) -> bool:
        return self.total > 0

    def error(self, source: str) -> JobFileError:
        """The JobFileError listing what was kept, saying how many more there were."""
        err = JobFileError(self.shown, source)
        hidden = self.total - len(self.shown)
        if hidden:
            # JobFileError counts only the issues it holds; restate the true total.
            head = f"{source}: " if source else ""
            lines = [f"{head}{self.total} problems found (first {len(self.shown)} shown)"]
            lines += [f"  - {issue}" for issue in self.shown]
            lines.append(f"  ... and {hidden} more")
            err.args = ("\n".join(lines),)
        return err
