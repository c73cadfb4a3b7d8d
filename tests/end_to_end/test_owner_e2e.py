"""End to end: an output folder belongs to one journal and one campaign (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import read_manifest, run_cli, simple_jobs, write_campaign

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01"]
OWNER = ".apixo-batch-owner.json"


def _named(root: Path, file: str, name: str, jobs: list[dict[str, Any]]) -> Path:
    doc = {"name": name, "output": {"dir": "out", "filename": "{id}.mp4"}, "jobs": jobs}
    path = root / file
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


async def test_a_second_journal_on_an_owned_folder_is_refused_before_any_submit(
    simulator: Any, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    first = await run_cli(sim, "run", str(job_file), *FAST)
    assert first.code == 0, first.stderr
    owner = json.loads((tmp_path / "out" / OWNER).read_text())
    journal = tmp_path / "out" / ".apixo-batch.sqlite"
    assert owner["journal"] == str(journal) and owner["campaign"] == "e2e"
    assert owner["journal_id"]
    paid = sim.stats()["submits_accepted"]
    assert paid == 3

    other = tmp_path / "other.sqlite"
    second = await run_cli(sim, "run", str(job_file), "--state", str(other), *FAST)
    assert second.code == 2, second.stderr
    line = _one_line(second.stderr)
    assert str(journal) in line and "'e2e'" in line and "--out" in line, line
    assert f"--state {journal}" in line, line
    assert sim.stats()["submits_accepted"] == paid  # nothing sent by the second journal
    assert json.loads((tmp_path / "out" / OWNER).read_text()) == owner

    # `download` with the other journal is refused the same way.
    fetched = await run_cli(sim, "download", str(job_file), "--state", str(other), *FAST)
    assert fetched.code == 2, fetched.stderr
    assert str(journal) in _one_line(fetched.stderr)

    # The owner's journal resumes as before: nothing paid again, every job done.
    again = await run_cli(sim, "run", str(job_file), *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == paid
    assert [e["state"] for e in read_manifest(tmp_path / "out")] == ["done"] * 3


async def test_two_campaigns_on_one_folder_the_second_is_refused(
    simulator: Any, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    a = _named(tmp_path, "a.yaml", "campaign-a", simple_jobs(2, prefix="a"))
    hero = [{**simple_jobs(1)[0], "id": "hero"}]
    b = _named(tmp_path, "b.yaml", "campaign-b", hero)
    assert (await run_cli(sim, "run", str(a), *FAST)).code == 0
    paid = sim.stats()["submits_accepted"]
    assert paid == 2

    # The same default journal: it is campaign-a's.
    same = await run_cli(sim, "run", str(b), *FAST)
    assert same.code == 2, same.stderr
    line = _one_line(same.stderr)
    assert "'campaign-a'" in line and "'campaign-b'" in line and ".apixo-batch.sqlite" in line
    assert sim.stats()["submits_accepted"] == paid

    # Its own journal, the same folder: the folder is campaign-a's.
    own = await run_cli(sim, "run", str(b), "--state", str(tmp_path / "b.sqlite"), *FAST)
    assert own.code == 2, own.stderr
    line = _one_line(own.stderr)
    assert "campaign 'campaign-a'" in line and "--out" in line, line
    assert sim.stats()["submits_accepted"] == paid
    assert [e["id"] for e in read_manifest(tmp_path / "out")] == ["a-0000", "a-0001"]

    # Elsewhere, campaign-b runs.
    moved = await run_cli(sim, "run", str(b), "--out", str(tmp_path / "b-out"), *FAST)
    assert moved.code == 0, moved.stderr
    assert [e["id"] for e in read_manifest(tmp_path / "b-out")] == ["hero"]


async def test_campaign_b_is_never_told_campaign_a_s_results(
    simulator: Any, tmp_path: Path
) -> None:
    """Both campaigns have a job `hero`, one output folder, no --state: the default
    journal is campaign-a's. B's `run` is refused (one line, exit 2, 0 submits), and so
    are its `status`, `review`, `plan` and `verify`, which used to tell A's `hero` as
    B's (done 1, nothing to submit). A's files and manifest stay A's."""
    sim = await simulator(time_scale=0.01)
    a = _named(tmp_path, "a.yaml", "campaign-a", [{**simple_jobs(1)[0], "id": "hero"}])
    b = _named(tmp_path, "b.yaml", "campaign-b", [{**simple_jobs(2)[1], "id": "hero"}])
    assert (await run_cli(sim, "run", str(a), *FAST)).code == 0
    out = tmp_path / "out"
    a_manifest = (out / "manifest.jsonl").read_bytes()
    a_hero = (out / "hero.mp4").read_bytes()
    journal = out / ".apixo-batch.sqlite"

    for command in ("run", "download", "status", "review", "plan", "verify"):
        extra = FAST if command in ("run", "download") else []
        res = await run_cli(sim, command, str(b), *extra)
        assert res.code == 2, (command, res.code, res.stdout, res.stderr)
        line = _one_line(res.stderr)
        assert f"the journal {journal} is for the campaign 'campaign-a', not 'campaign-b'" in (
            line
        ), (command, line)
        assert "hero" not in res.stdout and "done" not in res.stdout, (command, res.stdout)
    status = await run_cli(sim, "status", str(b), "--json")
    assert status.code == 2 and json.loads(status.stdout)["counts"] == {}
    assert sim.stats()["submits_accepted"] == 1
    assert (out / "manifest.jsonl").read_bytes() == a_manifest
    assert (out / "hero.mp4").read_bytes() == a_hero
    assert not (out / "review.html").exists() or "campaign-b" not in (
        out / "review.html"
    ).read_text(encoding="utf-8")


async def test_a_deleted_owner_file_leaves_the_folder_protected_and_its_journal_rebinds_it(
    simulator: Any, tmp_path: Path
) -> None:
    """The owner's journal lives outside the folder (`--state`), and the folder's owner
    file was deleted by hand: the manifest still lists the owner's paid tasks, so another
    journal is refused in one line before any submit (`run` and `download`), the folder
    left as it was; the owner's journal runs on and writes its owner file again."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    out = tmp_path / "out"
    mine, other = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    first = await run_cli(sim, "run", str(job_file), "--state", str(mine), *FAST)
    assert first.code == 0, first.stderr
    owner = json.loads((out / OWNER).read_text())
    paid = sim.stats()["submits_accepted"]
    assert paid == 3 and owner["journal"] == str(mine)
    (out / OWNER).unlink()
    manifest = (out / "manifest.jsonl").read_bytes()
    videos = {p.name: p.read_bytes() for p in out.glob("*.mp4")}

    second = await run_cli(sim, "run", str(job_file), "--state", str(other), *FAST)
    assert second.code == 2, second.stderr
    line = _one_line(second.stderr)
    assert f"the output folder {out} holds another journal's results" in line, line
    assert "lists 3 paid task(s)" in line and OWNER in line and "--out" in line, line
    assert str(other) in line, line
    assert sim.stats()["submits_accepted"] == paid  # nothing paid twice
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert {p.name: p.read_bytes() for p in out.glob("*.mp4")} == videos
    assert not (out / OWNER).exists()  # not bound to the refused journal

    fetched = await run_cli(sim, "download", str(job_file), "--state", str(other), *FAST)
    assert fetched.code == 2, fetched.stderr
    assert "holds another journal's results" in _one_line(fetched.stderr)

    # The owner's journal: its own tasks, so its folder; the owner file is written again.
    again = await run_cli(sim, "run", str(job_file), "--state", str(mine), *FAST)
    assert again.code == 0, again.stderr
    assert json.loads((out / OWNER).read_text()) == owner
    assert sim.stats()["submits_accepted"] == paid
    assert [e["state"] for e in read_manifest(out)] == ["done"] * 3

    # And with the owner file back, the other journal meets the usual refusal.
    third = await run_cli(sim, "run", str(job_file), "--state", str(other), *FAST)
    assert third.code == 2 and f"belongs to the journal {mine}" in _one_line(third.stderr)
    assert sim.stats()["submits_accepted"] == paid


async def test_a_deleted_owner_file_in_a_folder_with_nothing_paid_binds_the_next_journal(
    simulator: Any, tmp_path: Path
) -> None:
    """No manifest (or one without a paid task) is no other journal's work: the folder
    goes to the journal that runs on it, as a new folder does."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text(
        json.dumps({"id": "job-0000", "state": "pending", "task_id": None}) + "\n",
        encoding="utf-8",
    )
    ran = await run_cli(sim, "run", str(job_file), "--state", str(tmp_path / "b.sqlite"), *FAST)
    assert ran.code == 0, ran.stderr
    assert json.loads((out / OWNER).read_text())["journal"] == str(tmp_path / "b.sqlite")
    assert sim.stats()["submits_accepted"] == 2
