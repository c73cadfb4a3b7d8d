"""The journal's tables, and one job's row as the rest of the program sees it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .states import STATES, JobState

__all__ = ["COLUMNS", "SCHEMA", "SCHEMA_VERSION", "JobRow", "json_list"]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    input_json TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    filename TEXT NOT NULL,
    cost_usd REAL,
    in_file INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    task_id TEXT,
    request_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    possibly_duplicated INTEGER NOT NULL DEFAULT 0,
    changed_input_hash TEXT,
    submitted_at REAL,
    completed_at REAL,
    result_urls TEXT,
    expires_at REAL,
    files TEXT,
    bytes INTEGER,
    sha256 TEXT,
    fail_code TEXT,
    fail_msg TEXT,
    cost_time_ms INTEGER,
    arrived_via TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state, idx);
CREATE INDEX IF NOT EXISTS jobs_order_idx ON jobs (in_file, idx, id);
-- Not UNIQUE on purpose: should the API ever hand out a task id twice, both paid
-- tasks must still be journaled (a constraint error would lose the second one).
CREATE INDEX IF NOT EXISTS jobs_task_idx ON jobs (task_id) WHERE task_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_history (
    task_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS completions (
    clock_key TEXT NOT NULL,
    seconds REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS completions_key_idx ON completions (clock_key, at);
"""

COLUMNS = (
    "id idx model provider input_json input_hash filename cost_usd in_file state task_id "
    "request_type attempts possibly_duplicated changed_input_hash submitted_at completed_at "
    "result_urls expires_at files bytes sha256 fail_code fail_msg cost_time_ms arrived_via"
).split()


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the journal knows it."""

    id: str
    idx: int
    model: str
    provider: str
    input_json: str
    input_hash: str
    filename: str
    cost_usd: float | None
    in_file: bool
    state: JobState
    task_id: str | None
    request_type: str | None
    attempts: int
    possibly_duplicated: bool
    changed_input_hash: str | None
    submitted_at: float | None
    completed_at: float | None
    result_urls: tuple[str, ...]
    expires_at: float | None
    files: tuple[str, ...]
    bytes: int | None
    sha256: tuple[str, ...]
    fail_code: str | None
    fail_msg: str | None
    cost_time_ms: int | None
    arrived_via: str | None

    @property
    def input(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.input_json)
        return value

    @classmethod
    def from_sql(cls, row: Sequence[Any]) -> JobRow:
        """A row selected with the columns in ``COLUMNS`` order (hot: 100k per manifest)."""
        (
            id_, idx, model, provider, input_json, input_hash, filename, cost_usd, in_file,
            state, task_id, request_type, attempts, dup, changed, submitted_at, completed_at,
            result_urls, expires_at, files, bytes_, sha256, fail_code, fail_msg, cost_time_ms,
            arrived_via,
        ) = row  # fmt: skip
        return cls(
            id_, idx, model, provider, input_json, input_hash, filename, cost_usd,
            bool(in_file), STATES[state], task_id, request_type, attempts, bool(dup), changed,
            submitted_at, completed_at, json_list(result_urls), _finite(expires_at),
            json_list(files),
            bytes_, json_list(sha256), fail_code, fail_msg, cost_time_ms, arrived_via,
        )  # fmt: skip


def _finite(value: float | None) -> float | None:
    # Versions that let --time-scale be inf journaled inf expiries: read them as unknown.
    return value if value is None or math.isfinite(value) else None


def json_list(text: str | None) -> tuple[str, ...]:
    # Most rows hold no list yet: skip the JSON parser for them.
    if not text or text == "[]":
        return ()
    return tuple(json.loads(text))
