"""``export --kept DIR``: the kept takes under their job ids, hard-linked, with export.jsonl;
again after a change of mind; a kept job not on disk named, exit 1."""

from __future__ import annotations

import json
import os
from contextlib import closing
from pathlib import Path

from e2e import run_cli, simple_jobs, write_campaign

from apixo_batch.journal import Journal


def _decide(state: Path, **decisions: str | None) -> None:
    with closing(Journal(state, lock=False)) as journal:
        for job_id, decision in decisions.items():
            journal.decide(job_id.replace("_", "-"), decision, note="n", reviewer="ana", at=1.0)


async def test_export_places_the_kept_takes_and_follows_a_change_of_mind(
    simulator, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(4), output={"dir": "out",
                              "filename": "{index:02d}-{id}.mp4"})  # fmt: skip
    assert (await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")).code == 0
    out, kept = tmp_path / "out", tmp_path / "kept"
    state = out / ".apixo-batch.sqlite"
    _decide(state, job_0000="keep", job_0002="keep", job_0001="reject")

    res = await run_cli(sim, "export", str(job_file), "--kept", str(kept))
    assert res.code == 0, res.stderr
    assert "2 kept job(s), 2 file(s)" in res.stdout
    assert sorted(p.name for p in kept.iterdir()) == [
        "export.jsonl",
        "job-0000.mp4",
        "job-0002.mp4",
    ]
    lines = [json.loads(x) for x in (kept / "export.jsonl").read_text().splitlines()]
    assert [(x["id"], x["file"], x["source"]) for x in lines] == [
        ("job-0000", "job-0000.mp4", "00-job-0000.mp4"),
        ("job-0002", "job-0002.mp4", "02-job-0002.mp4"),
    ]
    assert lines[0]["review"]["reviewer"] == "ana" and lines[0]["how"] == "link"
    # A hard link: the same bytes under a second name, no copy.
    assert os.stat(kept / "job-0000.mp4").st_ino == os.stat(out / "00-job-0000.mp4").st_ino

    _decide(state, job_0002=None, job_0003="keep")
    (out / "03-job-0003.mp4").unlink()
    again = await run_cli(sim, "export", str(job_file), "--kept", str(kept))
    assert again.code == 1
    assert "kept job not exported: job-0003 (03-job-0003.mp4: not on disk)" in again.stderr
    assert sorted(p.name for p in kept.iterdir()) == ["export.jsonl", "job-0000.mp4"]
    assert "Traceback" not in again.stderr


async def test_export_into_the_output_folder_itself_is_refused(simulator, tmp_path: Path) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(1))
    assert (await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")).code == 0
    res = await run_cli(sim, "export", str(job_file), "--kept", str(tmp_path / "out"))
    assert res.code == 2 and "the output folder itself" in res.stderr


async def test_a_kept_take_is_exported_after_a_reroll_of_its_job(simulator, tmp_path: Path) -> None:
    """The decision names its take: kept take 1, rerolled since, take 1's file is exported."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    assert (await run_cli(sim, "run", str(job_file), "--time-scale", "0.01")).code == 0
    out, kept = tmp_path / "out", tmp_path / "kept"
    _decide(out / ".apixo-batch.sqlite", job_0000="keep")
    again = await run_cli(
        sim, "run", str(job_file), "--reroll", "--only", "job-0000", "--time-scale", "0.01"
    )
    assert again.code == 0, again.stderr
    assert (out / "job-0000-take2.mp4").exists()
    res = await run_cli(sim, "export", str(job_file), "--kept", str(kept))
    assert res.code == 0, res.stderr
    [line] = [json.loads(x) for x in (kept / "export.jsonl").read_text().splitlines()]
    assert (line["source"], line["review"]["take"]) == ("job-0000.mp4", 1)
    assert os.stat(kept / "job-0000.mp4").st_ino == os.stat(out / "job-0000.mp4").st_ino
