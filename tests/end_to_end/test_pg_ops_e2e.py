"""End to end with a PostgreSQL journal (issue 33): the commands that read a journal say
what they say on SQLite, ``journal import`` moves a campaign with its task ids, and a
first run whose key is refused creates nothing in the database."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e import (
    assert_byte_exact,
    finish,
    journaled_task_ids,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]


def _twin(tmp_path: Path, jobs: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The same campaign twice, in folders ``lite`` and ``pg``."""
    files = []
    for name in ("lite", "pg"):
        (tmp_path / name).mkdir()
        files.append(write_campaign(tmp_path / name, jobs))
    return files[0], files[1]


def _tables(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    return 0 if row is None else int(row[0])


def _masked(text: str, lite: Path, pg: Path, url_shown: str) -> str:
    """``text`` with what must differ between the two twins (folders, the journal's name)
    replaced by one word."""
    text = text.replace(str(pg.parent), "<dir>").replace(str(lite.parent), "<dir>")
    text = text.replace(url_shown, "<journal>")
    return re.sub(r"<dir>/out/\.apixo-batch\.sqlite", "<journal>", text)


def _without_runners(text: str) -> str:
    """``status`` of a database less its runners (a journal file has none): its lines,
    or its JSON key."""
    if text.startswith("{"):
        found = json.loads(text)
        found.pop("runners", None)
        return json.dumps(found) + "\n"
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith("  runners ") and not re.match(r"    #\d+ ", line)
    ]
    return "".join(kept)


async def test_read_commands_say_the_same_on_both_backends(
    simulator, tmp_path: Path, pg_cluster: Any
) -> None:
    """status (text, --json), plan --json, verify and review: the same exit codes and the
    same words for one campaign kept in SQLite and in PostgreSQL; the database named with
    its password masked, and the next command told with the --state given."""
    secret = "pw-not-shown-9"
    pg_cluster.new_database("reads_db")
    url = pg_cluster.url("reads_db", password=secret)
    url_shown = url.replace(secret, "***")
    sim = await simulator(time_scale=0.01, results_per_task=1)
    lite, pg = _twin(tmp_path, simple_jobs(6))
    assert (await run_cli(sim, "run", str(lite), *FAST)).code == 0
    assert (await run_cli(sim, "run", str(pg), "--state", url, *FAST)).code == 0
    # One result damaged in each: verify finds it on both.
    for job_file in (lite, pg):
        (job_file.parent / "out" / "job-0002.mp4").write_bytes(b"not the video")
    seen: list[str] = []
    for command in (
        ["status"],
        ["status", "--json"],
        ["status", "--check-files"],
        ["plan", "--json"],
        ["verify"],
        ["review"],
    ):
        a = await run_cli(sim, command[0], str(lite), *command[1:])
        b = await run_cli(sim, command[0], str(pg), *command[1:], "--state", url)
        seen += [b.stdout, b.stderr]
        assert a.code == b.code, (command, a.stderr, b.stderr)
        ours, theirs = a.stdout, b.stdout
        if command[0] == "status":
            # The same words but for the runners, which only a database has.
            ours, theirs = _without_runners(ours), _without_runners(theirs)
        assert _masked(ours, lite, pg, url_shown) == _masked(theirs, lite, pg, url_shown)
        assert _masked(a.stderr, lite, pg, url_shown) == _masked(b.stderr, lite, pg, url_shown)
        assert "Traceback" not in b.stderr
    status = json.loads((await run_cli(sim, "status", str(pg), "--json", "--state", url)).stdout)
    assert status["journal"] == url_shown and status["counts"] == {"done": 6}
    # Only the database has runners: the one that ran, and left.
    [runner] = status["runners"]
    assert runner["stopped"] and not runner["live"] and runner["jobs"] == {}
    page = (pg.parent / "out" / "review.html").read_text(encoding="utf-8")
    seen.append(page)
    # The page's ready-to-paste commands name the database, password masked.
    assert f"campaign.yaml --state '{url_shown}'\"" in page
    # verify --fix on the database: the damaged job goes back to be fetched; download
    # fetches it from its journaled URL, no new submit.
    fixed = await run_cli(sim, "verify", str(pg), "--fix", "--state", url)
    seen += [fixed.stdout, fixed.stderr]
    assert fixed.code == 1, fixed.stderr
    assert f"`apixo-batch download --state '{url_shown}'`" in fixed.stdout
    again = await run_cli(sim, "download", str(pg), "--state", url, *FAST)
    assert again.code == 0, again.stderr
    [entry] = [e for e in read_manifest(pg.parent / "out") if e["id"] == "job-0002"]
    assert_byte_exact(sim, pg.parent / "out", entry)
    assert sim.stats()["submits_accepted"] == 12
    assert (await run_cli(sim, "verify", str(pg), "--state", url)).code == 0
    assert all(secret not in text for text in seen)


async def test_status_tells_the_next_command_with_its_state(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """Tasks in flight when a run was killed: status on the database says they are
    followed by `apixo-batch run` or `download` with the same --state."""
    sim = await simulator(time_scale=0.05, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(8))
    proc = await start_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    await kill_when(proc, lambda: _in_flight(pg_url) >= 2)
    await finish(proc)
    res = await run_cli(sim, "status", str(job_file), "--state", pg_url)
    assert res.code == 0, res.stderr
    assert f"`apixo-batch run` or `download` --state {pg_url} follows them" in res.stdout


def _in_flight(url: str) -> int:
    with psycopg.connect(url) as conn:
        made = conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()
        if made is None or not made[0]:
            return 0
        row = conn.execute("SELECT count(*) FROM jobs WHERE state = 'submitted'").fetchone()
    return 0 if row is None else int(row[0])


def _journal_files(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.iterdir()
        if p.name.startswith(".apixo-batch.sqlite") and not p.name.endswith("-shm")
    }


async def test_import_mid_flight_resumes_on_postgresql_without_paying_twice(
    simulator, tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """A SQLite campaign killed with tasks running, imported: the SQLite files are left
    byte for byte; the run on PostgreSQL follows every journaled task (0 of them
    submitted again), every job ends done byte-exact, and the runs kept and the file
    names came along. A second import, or one into a database with another campaign,
    is refused in one line (exit 2)."""
    sim = await simulator(time_scale=0.05, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(20))
    out = tmp_path / "out"
    first = await run_cli(sim, "run", str(job_file), "--budget", "0.2", *FAST)
    assert first.code == 1, first.stderr  # a kept run for the review page
    proc = await start_cli(sim, "run", str(job_file), *FAST)
    await kill_when(proc, lambda: journaled_task_ids(out) >= 10)
    await finish(proc)
    journal = out / ".apixo-batch.sqlite"
    import sqlite3

    with sqlite3.connect(journal) as db:
        tasks = dict(db.execute("SELECT id, task_id FROM jobs WHERE task_id IS NOT NULL"))
        running = db.execute("SELECT count(*) FROM jobs WHERE state = 'submitted'").fetchone()[0]
        history = db.execute("SELECT count(*) FROM task_history").fetchone()[0]
    assert running >= 1  # imported mid-flight: tasks still running at APIXO
    # The journal and its log; -shm is SQLite's shared-memory index, which any reader
    # (this test's own above) may write.
    before = _journal_files(out)
    submits_before = sim.stats()["submits_accepted"]

    moved = await run_cli(sim, "journal", "import", str(journal), "--state", pg_url)
    assert moved.code == 0, moved.stderr
    assert "20 job(s)" in moved.stdout and f"{history} task id(s)" in moved.stdout
    assert _journal_files(out) == before  # the SQLite journal untouched

    again = await run_cli(sim, "journal", "import", str(journal), "--state", pg_url)
    assert again.code == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already holds campaign" in again.stderr and "Traceback" not in again.stderr

    shutil.move(journal, tmp_path / "old.sqlite")  # the run must use the database alone
    res = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert res.code == 0, res.stderr
    assert not journal.exists()
    manifest = read_manifest(out)
    assert len(manifest) == 20 and all(e["state"] == "done" for e in manifest)
    for entry in manifest:
        assert_byte_exact(sim, out, entry)
    with psycopg.connect(pg_url) as conn:
        now = dict(conn.execute("SELECT id, task_id FROM jobs WHERE task_id IS NOT NULL"))
        kept = conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'last_%'").fetchone()
    # Every task id journaled before the import is still its job's, and only the jobs
    # without one were submitted: 0 resubmits.
    assert {j: now[j] for j in tasks} == tasks
    assert sim.stats()["submits_accepted"] - submits_before == 20 - len(tasks)
    assert kept is not None and kept[0] >= 1
    assert [e["files"] for e in manifest] == [[f"job-{i:04d}.mp4"] for i in range(20)]

    pg_cluster.new_database("other_campaign")
    other = pg_cluster.url("other_campaign")
    (tmp_path / "b").mkdir()
    elsewhere = write_campaign(tmp_path / "b", simple_jobs(2), name="other")
    assert (await run_cli(sim, "run", str(elsewhere), "--state", other, *FAST)).code == 0
    refused = await run_cli(
        sim, "journal", "import", str(tmp_path / "old.sqlite"), "--state", other
    )
    assert refused.code == 2 and "already holds campaign 'other'" in refused.stderr


async def test_import_refuses_what_is_not_a_journal(tmp_path: Path, pg_url: str) -> None:
    """A missing file, a file that is no journal, or a target that is not a database:
    one line, exit 2, nothing created in the database."""
    from e2e import run_env

    env = {"PATH": "/usr/bin:/bin"}
    missing = await run_env(
        "journal", "import", str(tmp_path / "nope.sqlite"), "--state", pg_url, env=env
    )
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all " * 100)
    bad = await run_env("journal", "import", str(junk), "--state", pg_url, env=env)
    no_url = await run_env("journal", "import", str(junk), "--state", str(tmp_path / "x"), env=env)
    for res in (missing, bad, no_url):
        assert res.code == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert _tables(pg_url) == 0 or "cannot be read" in bad.stderr


async def test_a_key_refused_on_a_first_run_creates_nothing_in_the_database(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """As on SQLite: a first run whose key is refused exits 3 and creates no table, no
    row, no output folder; with the key fixed the same command runs the campaign."""
    sim = await simulator(time_scale=0.01)
    job_file = str(write_campaign(tmp_path, simple_jobs(3)))
    res = await run_cli(sim, "run", job_file, "--state", pg_url, *FAST, key="not-the-key")
    assert res.code == 3, res.stderr
    assert _tables(pg_url) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml"]  # noqa: ASYNC240
    assert res.summary["never_submitted"] == 3
    assert (await run_cli(sim, "run", job_file, "--state", pg_url, *FAST)).code == 0
    assert _tables(pg_url) > 0
