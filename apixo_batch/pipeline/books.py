"""Closing a run's books: the manifest written, the counts and spend read, whatever the
disk allows. A disk that refuses is told as one reason, never raised."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ApixoError, DownloadError, JournalError, PathError
from ..events import Emitter, Summary, Warned
from ..jobs import Campaign
from ..journal import JobState, Ledger, Totals
from ..journal.pg import is_database
from ..location import Destination, S3Location
from ..outputs.output import Output
from ..outputs.paths import storage_failure
from ..reports.manifest import ManifestInfo, manifest_state, write_manifest
from ..reports.review import REVIEW_FILE, write_review

__all__ = [
    "MANIFEST",
    "Books",
    "bind_output",
    "close_books",
    "publish",
    "review_page",
    "same_output",
    "write_manifest_from",
]

MANIFEST = "manifest.jsonl"


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
    #: file jobs still queued that no submit ever reached
    never_submitted: int | None = None
    #: file jobs still queued whose submit was cut off on the wire (a task may exist)
    submit_cut_off: int | None = None
    #: where the manifest is now (a path, or an ``s3://`` URL)
    manifest_at: Path | str | None = None


async def close_books(ledger: Ledger, output: Output, refused: Callable[[str], None]) -> Books:
    """The manifest, written and published in the output, else (the disk refused it) the
    counts from the journal if it reads. What the storage refused goes to ``refused``."""
    books = await _count(ledger, output.local_dir / MANIFEST)
    if books.refused is not None:
        refused(books.refused)
    if books.manifest is not None:
        books.manifest_at = await publish(output, MANIFEST, "application/x-ndjson", refused)
    return books


async def write_manifest_from(ledger: Ledger, path: Path) -> ManifestInfo:
    """The manifest written from the journal's rows, on the journal's thread."""
    strays = await ledger.strays()
    return await ledger.read_reviewed(
        lambda rows, decided: write_manifest(rows, path, decided, strays)
    )


async def _count(ledger: Ledger, manifest_path: Path) -> Books:
    try:
        manifest = await write_manifest_from(ledger, manifest_path)
    except Exception as exc:
        why = storage_failure(exc)
        if why is None:
            raise
        counts = {"done": 0, "failed": 0, "expired": 0, "pending": 0}
        with _unless_unreadable():
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
    # Left None (unknown, never $0.00) when the journal cannot be read.
    with _unless_unreadable():
        books.totals = await ledger.totals()
    with _unless_unreadable():
        queued = (await ledger.counts()).get(JobState.QUEUED.value, 0)
        # One job is told once: a cut-off submit is "possibly submitted", not "never".
        books.submit_cut_off = await ledger.queued_cut_off()
        books.never_submitted = queued - books.submit_cut_off
    return books


@contextlib.contextmanager
def _unless_unreadable() -> Iterator[None]:
    """What cannot be read from the journal (its disk failing, the journal refusing) stays
    unknown; anything else, a bug, goes on as it is."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, JournalError) and storage_failure(exc) is None:
            raise


async def review_page(
    ledger: Ledger,
    campaign: Campaign,
    output: Output,
    summary: Summary,
    emit: Emitter,
    totals: Totals | None = None,
) -> Path | str | None:
    """The campaign's review page, written and published in the output; a failure to write
    or upload it costs a warning, not the run."""
    try:
        job_file = _shown(campaign.path)
        runs = await ledger.last_runs()
        await ledger.read_reviewed(
            lambda rows, decided: write_review(
                rows,
                output.local_dir,
                name=campaign.name,
                job_file=job_file,
                summary=summary,
                totals=totals,
                runs=runs,
                state=ledger.where if is_database(ledger.where) else None,
                decisions=decided,
            )
        )
    except Exception as exc:
        # The disk or the journal refusing costs the page, told; a bug goes on as it is.
        if not isinstance(exc, OSError | ApixoError) and storage_failure(exc) is None:
            raise
        emit(Warned(message=f"{REVIEW_FILE} not written: {exc}"))
        return None

    def refused(why: str) -> None:
        emit(Warned(message=why))

    return await publish(output, REVIEW_FILE, "text/html", refused)


def _shown(path: Path) -> str:
    """The job file as the retry command should name it: relative to here when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def same_output(ledger: Ledger, where: Destination, journal: Path | str) -> None:
    """A journal beside the job file (an ``s3://`` output) fills one output: another one
    with it would call done what was never put there (PathError, one line)."""
    if not isinstance(where, S3Location):
        return
    was = await ledger.output()
    if was is not None and was != str(where):
        raise PathError(
            f"the journal {journal} is for results in {was}, not {where}: give --state a "
            "new journal's path to fill a new output, or keep the output"
        )


async def bind_output(ledger: Ledger, where: Destination) -> None:
    """Once the output answered (a mistyped bucket binds nothing): the journal's now."""
    if isinstance(where, S3Location):
        await ledger.keep_output(str(where))


async def publish(
    output: Output, name: str | None, content_type: str, refused: Callable[[str], None]
) -> Path | str | None:
    """A file written in the output's local folder, made to appear in the output (its path
    or URL); a store that refuses it is told to ``refused``, as a full disk would be, and
    the local copy's path is returned."""
    if not name:
        return None
    try:
        return await output.publish(name, content_type)
    except DownloadError as exc:
        refused(f"{name} not uploaded: {exc}")
        return output.local_dir / name
