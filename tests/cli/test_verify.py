"""`verify` without a run behind it: what it says and how it exits (no network)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from e2e import simple_jobs, write_campaign

from apixo_batch.cli import entry as cli
from apixo_batch.journal import JobState, Journal, NewJob

S = JobState


def _journal_with_one_done(out: Path, data: bytes) -> None:
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / ".apixo-batch.sqlite")
    text = json.dumps({"prompt": "x"})
    journal.sync([NewJob("a", 0, "kling-2-6", "auto", text, "h", "a.mp4", 0.3)], time.time())
    journal.transition("a", S.SUBMITTING, 0.0)
    journal.transition("a", S.SUBMITTED, 0.0, task_id="t-a")
    journal.transition("a", S.SUCCEEDED, 0.0, result_urls=["https://h/a"])
    journal.transition(
        "a",
        S.DONE,
        0.0,
        files=["a.mp4"],
        bytes=len(data),
        sha256=[hashlib.sha256(data).hexdigest()],
    )
    journal.close()
    (out / "a.mp4").write_bytes(data)


def test_no_journal_yet_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_campaign(tmp_path, simple_jobs(1))
    assert cli.main(["verify", str(job_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("apixo-batch: no journal at ") and err.count("\n") == 1


def test_an_s3_output_is_not_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job_file = write_campaign(tmp_path, simple_jobs(1))
    assert cli.main(["verify", str(job_file), "--out", "s3://bucket/prefix"]) == 2
    assert "s3:// outputs are not verified" in capsys.readouterr().err


def test_fix_moves_the_bad_job_back_and_a_clean_folder_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_campaign(tmp_path, simple_jobs(1))
    out = tmp_path / "out"
    _journal_with_one_done(out, b"\x00\x00\x00\x10ftypmp42clip")
    assert cli.main(["verify", str(job_file)]) == 0
    assert capsys.readouterr().out == "verify: 1 done job(s), every file as journaled\n"

    (out / "a.mp4").write_bytes(b"\x00\x00\x00\x10ftypmp42CLIP")
    assert cli.main(["verify", str(job_file), "--fix"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"hash: job a: {out / 'a.mp4'}: sha256 differs from the journal's"
    assert lines[2].startswith("verify: 1 job(s) moved back to succeeded")
    journal = Journal(out / ".apixo-batch.sqlite", lock=False)
    try:
        row = journal.get("a")
    finally:
        journal.close()
    assert row is not None and row.state is S.SUCCEEDED and row.result_urls == ("https://h/a",)
    # Nothing done is left to verify: the job waits for `download`.
    assert cli.main(["verify", str(job_file)]) == 0
