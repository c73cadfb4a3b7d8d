"""Closing a run's books: the manifest written, the counts and spend read, whatever the
disk allows. A disk that refuses is told as one reason, never raised."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import Emitter
from ..jobs import Campaign
from ..journal import JobState, Ledger, Totals
from ..paths import storage_failure
from ..report import ManifestInfo, manifest_state

__all__ = ["Books", "close_books", "review_page"]


@dataclass
class Books:
    counts: dict[str, int]
    manifest: ManifestInfo | None = None
    totals: Totals | None = None
    #: why the disk refused the manifest (a storage failure), if it did
    refused: str | None = None
    arrived: dict[str, int] = field(default_factory=dict)
    fail_codes: dict[str, list[str]] = field(default_factory=dict)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    #: file jobs still queued: no task was ever asked for them
    never_submitted: int = 0


async def close_books(ledger: Ledger, manifest_path: Path) -> Books:
    """The manifest, else (the disk refused it) the counts from the journal if it reads."""
    try:
        manifest = await ledger.write_manifest(manifest_path)
    except Exception as exc:
        why = storage_failure(exc)
        if why is None:
            raise
        counts = {"done": 0, "failed": 0, "expired": 0, "pending": 0}
        with contextlib.suppress(Exception):
            for state, n in (await ledger.counts()).items():
                counts[manifest_state(JobState(state))] += n
        books = Books(counts, refused=why)
    else:
        books = Books(
            manifest.counts,
            manifest,
            arrived=manifest.arrived,
            fail_codes=manifest.fail_codes,
            per_model=manifest.per_model,
        )
    with contextlib.suppress(Exception):
        books.totals = await ledger.totals()
    with contextlib.suppress(Exception):
        books.never_submitted = (await ledger.counts()).get(JobState.QUEUED.value, 0)
    return books


async def review_page(
    ledger: Ledger, campaign: Campaign, out_dir: Path, summary: dict[str, Any], emit: Emitter
) -> Path | None:
    """The campaign's review page; a failure to write it costs a warning, not the run."""
    try:
        return await ledger.write_review(
            out_dir, name=campaign.name, job_file=_shown(campaign.path), summary=summary
        )
    except Exception as exc:
        emit("warning", message=f"review.html not written: {exc}")
        return None


def _shown(path: Path) -> str:
    """The job file as the retry command should name it: relative to here when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
