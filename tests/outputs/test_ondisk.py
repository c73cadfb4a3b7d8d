"""The files of done jobs checked against the journal (a stat each at start-up, a hash
each in `verify`), and the jobs whose files are off moved back to be fetched again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from stagefakes import memory_ledger, new_job, row

from apixo_batch.clock import FakeClock
from apixo_batch.errors import JournalError
from apixo_batch.events import Event, Warned
from apixo_batch.journal import JobState, Ledger
from apixo_batch.journal.store import Journal
from apixo_batch.outputs.ondisk import problems
from apixo_batch.pipeline.startup import SHOWN_PROBLEMS, _tell_off_disk, refetch_off_disk

S = JobState
CLIP = b"\x00\x00\x00\x18ftypmp42" + b"video" * 200


def _land(ledger: Ledger, job_id: str, folder: Path, *contents: bytes) -> None:
    """Take the job to `done` with ``contents`` as its files, written in ``folder``."""
    j: Journal = ledger._j.sync
    j.transition(job_id, S.SUBMITTING, 0.0)
    j.transition(job_id, S.SUBMITTED, 0.0, task_id=f"t-{job_id}")
    j.transition(
        job_id,
        S.SUCCEEDED,
        0.0,
        result_urls=[f"https://h/{job_id}/{n}" for n in range(len(contents))],
    )
    names = [job_id + ("" if n == 0 else f"-{n + 1}") + ".mp4" for n in range(len(contents))]
    for name, data in zip(names, contents, strict=True):
        (folder / name).write_bytes(data)
    j.transition(
        job_id,
        S.DONE,
        0.0,
        files=names,
        bytes=sum(len(c) for c in contents),
        sha256=[hashlib.sha256(c).hexdigest() for c in contents],
    )


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    ledger = await memory_ledger(FakeClock(), [new_job(i) for i in range(5)])
    for i in range(4):
        _land(ledger, f"job-{i}", tmp_path, CLIP + bytes([i]))
    return ledger


def _found(ledger: Ledger, folder: Path, *, hashed: bool) -> list[tuple[str, str, str]]:
    rows = ledger._j.sync.iter_done_files()
    return [(p.job_id, p.kind, p.path.name) for p in problems(rows, folder, hashed=hashed)]


async def test_files_as_journaled_are_no_problem(ledger: Ledger, tmp_path: Path) -> None:
    assert _found(ledger, tmp_path, hashed=True) == []


async def test_gone_resized_and_rewritten_files_are_told_apart(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A stat sees a file gone or of another size; only a hash sees one rewritten whole."""
    (tmp_path / "job-0.mp4").unlink()
    (tmp_path / "job-1.mp4").write_bytes(b"garbage!")
    same_size = bytearray((tmp_path / "job-2.mp4").read_bytes())
    same_size[100] ^= 0xFF
    (tmp_path / "job-2.mp4").write_bytes(bytes(same_size))
    assert _found(ledger, tmp_path, hashed=False) == [
        ("job-0", "missing", "job-0.mp4"),
        ("job-1", "size", "job-1.mp4"),
    ]
    assert _found(ledger, tmp_path, hashed=True) == [
        ("job-0", "missing", "job-0.mp4"),
        ("job-1", "size", "job-1.mp4"),
        ("job-2", "hash", "job-2.mp4"),
    ]


async def test_a_folder_where_the_file_was_is_missing(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "job-3.mp4").unlink()
    (tmp_path / "job-3.mp4").mkdir()
    assert _found(ledger, tmp_path, hashed=False) == [("job-3", "missing", "job-3.mp4")]


async def test_every_file_of_a_job_is_checked(tmp_path: Path) -> None:
    """Two results: the second gone is a problem of the job; sizes are the job's total."""
    ledger = await memory_ledger(FakeClock(), [new_job(0)])
    _land(ledger, "job-0", tmp_path, CLIP, CLIP + b"2")
    assert _found(ledger, tmp_path, hashed=True) == []
    (tmp_path / "job-0-2.mp4").write_bytes(CLIP + b"22")
    assert _found(ledger, tmp_path, hashed=False) == [("job-0", "size", "job-0.mp4")]
    (tmp_path / "job-0-2.mp4").unlink()
    assert _found(ledger, tmp_path, hashed=False) == [("job-0", "missing", "job-0-2.mp4")]


async def test_off_disk_jobs_go_back_to_succeeded_with_their_urls(
    ledger: Ledger, tmp_path: Path
) -> None:
    """done -> succeeded (the table allows it), sizes and hashes forgotten, names and
    result URLs kept: the lander's feeder finds them and writes over what is at their
    own names; no file is claimed meanwhile. The jobs whose files are there stay done."""
    (tmp_path / "job-0.mp4").unlink()
    (tmp_path / "job-1.mp4").write_bytes(b"garbage!")
    found = await refetch_off_disk(ledger, tmp_path)
    assert [p.job_id for p in found] == ["job-0", "job-1"]
    for job_id in ("job-0", "job-1"):
        r = row(ledger, job_id)
        assert r.state is S.SUCCEEDED
        assert r.files == (f"{job_id}.mp4",) and r.landed_files == ()
        assert r.sha256 == () and r.bytes is None
        assert r.result_urls == (f"https://h/{job_id}/0",)
        assert r.task_id == f"t-{job_id}"
    assert row(ledger, "job-2").state is S.DONE
    assert row(ledger, "job-4").state is S.QUEUED
    assert await refetch_off_disk(ledger, tmp_path) == []


async def test_only_done_jobs_are_moved_back(ledger: Ledger) -> None:
    with pytest.raises(JournalError, match="illegal state change queued -> succeeded"):
        await ledger.refetch(["job-4"])
    assert row(ledger, "job-4").state is S.QUEUED


async def test_many_off_disk_jobs_are_told_in_a_few_lines(tmp_path: Path) -> None:
    """An empty output folder under an old journal: a line each for the first few, then
    one line with the count of the rest."""
    n = SHOWN_PROBLEMS + 5
    ledger = await memory_ledger(FakeClock(), [new_job(i) for i in range(n)])
    for i in range(n):
        _land(ledger, f"job-{i}", tmp_path, CLIP)
    empty = tmp_path / "empty"
    empty.mkdir()
    events: list[Event] = []
    _tell_off_disk(await refetch_off_disk(ledger, empty), events.append)
    lines = [e.message for e in events if isinstance(e, Warned)]
    assert len(lines) == SHOWN_PROBLEMS + 1
    assert lines[0].startswith(f"job job-0: {empty / 'job-0.mp4'}: not on disk (missing)")
    assert "not submitted again" in lines[0]
    assert lines[-1].startswith("5 more done job(s)")
    assert ledger._j.sync.counts() == {"succeeded": n}
