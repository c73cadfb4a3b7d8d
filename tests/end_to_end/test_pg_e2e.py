"""End to end with the journal in PostgreSQL: the real CLI, the real simulator, a real
cluster (tests/pg.py), and the same outcomes as a SQLite journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e import (
    ALL_MODES,
    assert_byte_exact,
    finish,
    kill_when,
    read_manifest,
    run_cli,
    simple_jobs,
    start_cli,
    write_campaign,
)

pytestmark = pytest.mark.e2e

FAST = ["--time-scale", "0.01", "--json"]
#: what two runs of one campaign must agree on, whichever journal kept it
_SAME = (
    "id",
    "model",
    "state",
    "files",
    "bytes",
    "fail_code",
    "estimated_cost_usd",
    "possibly_duplicated",
)


def _outcome(out: Path) -> list[dict[str, Any]]:
    return [{k: e.get(k) for k in _SAME} for e in read_manifest(out)]


def _task_ids(url: str) -> int:
    """Jobs with a task id in the database now (0 before the run made its tables)."""
    with psycopg.connect(url) as conn:
        made = conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()
        if made is None or not made[0]:
            return 0
        row = conn.execute("SELECT count(*) FROM jobs WHERE task_id IS NOT NULL").fetchone()
    return 0 if row is None else int(row[0])


async def test_every_mode_same_outcome_as_sqlite(simulator, tmp_path: Path, pg_url: str) -> None:
    """The 12 modes end done, byte-exact, on PostgreSQL; manifest, counts and exit code are
    those of the same campaign kept in SQLite, and the database holds every task id."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    (tmp_path / "lite").mkdir()
    (tmp_path / "pg").mkdir()
    lite = write_campaign(tmp_path / "lite", ALL_MODES)
    res_lite = await run_cli(sim, "run", str(lite), *FAST)
    pg = write_campaign(tmp_path / "pg", ALL_MODES)
    res_pg = await run_cli(sim, "run", str(pg), "--state", pg_url, *FAST)
    assert res_pg.code == res_lite.code == 0, res_pg.stderr
    assert _outcome(tmp_path / "pg" / "out") == _outcome(tmp_path / "lite" / "out")
    for entry in read_manifest(tmp_path / "pg" / "out"):
        assert_byte_exact(sim, tmp_path / "pg" / "out", entry)
    assert res_pg.summary["counts"] == res_lite.summary["counts"]
    assert not (tmp_path / "pg" / "out" / ".apixo-batch.sqlite").exists()
    assert _task_ids(pg_url) == len(ALL_MODES)
    # The same inputs twice (one campaign per journal): each submitted once per journal.
    assert sim.stats()["submits_accepted"] == 2 * len(ALL_MODES)
    # A second run has nothing to do: zero requests, every job still done.
    again = await run_cli(sim, "run", str(pg), "--state", pg_url, *FAST)
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == 2 * len(ALL_MODES)


async def test_kill_9_resumes_without_paying_twice(simulator, tmp_path: Path, pg_url: str) -> None:
    """kill -9 once task ids are in the database: the next run follows them (never submits a
    job whose task id was journaled again), every job ends done byte-exact."""
    sim = await simulator(time_scale=0.02, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(30))
    proc = await start_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    await kill_when(proc, lambda: _task_ids(pg_url) >= 10)
    await finish(proc)
    journaled = _task_ids(pg_url)
    res = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert res.code == 0, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 30 and all(e["state"] == "done" for e in manifest)
    for entry in manifest:
        assert_byte_exact(sim, tmp_path / "out", entry)
    stats = sim.stats()
    flagged = sum(1 for e in manifest if e["possibly_duplicated"])
    # Extra submits only for tasks created but never journaled, each one flagged.
    assert stats["submits_accepted"] - 30 <= flagged
    assert journaled >= 10


async def test_a_second_run_joins_the_campaign(simulator, tmp_path: Path, pg_url: str) -> None:
    """A second run on one campaign's database while the first runs is a second runner:
    it takes only what nobody holds, nothing is submitted twice, and both end with every
    job done (exit 0)."""
    sim = await simulator(time_scale=0.05, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(6))
    first = await start_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    await kill_when(first, lambda: _task_ids(pg_url) >= 1, sig=0)
    second = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    done = await finish(first)
    assert second.code == 0, second.stderr
    assert "Traceback" not in second.stderr
    assert done.code == 0, done.stderr
    assert sim.stats()["submits_accepted"] == 6
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 6 and all(e["state"] == "done" for e in manifest)


async def test_password_never_shown(simulator, tmp_path: Path, pg_cluster: Any) -> None:
    """A password in the URL appears nowhere: not in the output, the manifest, the owner
    file or an error line (the test cluster trusts any password)."""
    secret = "Sup3r-s3cret-pw"
    pg_cluster.new_database("pw_db")
    url = pg_cluster.url("pw_db", password=secret)
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    res = await run_cli(sim, "run", str(job_file), "--state", url, *FAST)
    assert res.code == 0, res.stderr
    bad = await run_cli(
        sim, "run", str(job_file), "--state", url.replace("/pw_db", "/no_such_db"), *FAST
    )
    assert bad.code == 74 and "no_such_db" in bad.stderr and "Traceback" not in bad.stderr
    status = await run_cli(sim, "status", str(job_file), "--state", url)
    assert status.code == 0 and "***" in status.stdout, status.stderr
    seen = [res.stdout, res.stderr, bad.stdout, bad.stderr, status.stdout, status.stderr]
    seen += [
        p.read_text(errors="replace")
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and p.suffix != ".mp4"
    ]
    assert all(secret not in text for text in seen)
    assert any("***" in text for text in seen)


async def test_env_var_names_the_database(simulator, tmp_path: Path, pg_url: str) -> None:
    """APIXO_BATCH_STATE puts the journal in the database when --state is not given."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    from e2e import cli_env, start_with

    env = {**cli_env(sim), "APIXO_BATCH_STATE": pg_url}
    res = await finish(await start_with(env, "run", str(job_file), *FAST))
    assert res.code == 0, res.stderr
    assert _task_ids(pg_url) == 2
    assert not (tmp_path / "out" / ".apixo-batch.sqlite").exists()


def test_no_driver_is_one_line_exit_2(tmp_path: Path) -> None:
    """Without psycopg, a postgresql:// state is one line naming the extra, exit 2."""
    import subprocess
    import sys

    job_file = write_campaign(tmp_path, simple_jobs(1))
    code = (
        "import sys; sys.modules['psycopg'] = None; "
        "from apixo_batch.cli.entry import main; "
        f"sys.exit(main(['run', {str(job_file)!r}, '--state', "
        "'postgresql://u:hunter2@127.0.0.1:1/x']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apixo-batch[pg]" in lines[0] and "hunter2" not in lines[0]


async def test_download_fetches_again_from_the_database(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """`download --state postgresql://…` fetches a deleted result again from its journaled
    URL (the job is not submitted again)."""
    sim = await simulator(time_scale=0.01, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    res = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert res.code == 0, res.stderr
    (tmp_path / "out" / "job-0001.mp4").unlink()
    again = await run_cli(sim, "download", str(job_file), "--state", pg_url, *FAST)
    assert again.code == 0, again.stderr
    [entry] = [e for e in read_manifest(tmp_path / "out") if e["id"] == "job-0001"]
    assert_byte_exact(sim, tmp_path / "out", entry)
    assert sim.stats()["submits_accepted"] == 3


async def test_database_restart_mid_run_loses_no_task_id(
    simulator, tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    """PostgreSQL restarted while a run submits: the run ends in one line (74: the journal
    failed) or finishes; the next run ends every job done, and only submits whose task id
    never reached the database are sent again, each flagged."""
    sim = await simulator(time_scale=0.05, results_per_task=1)
    job_file = write_campaign(tmp_path, simple_jobs(40))
    proc = await start_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    await kill_when(proc, lambda: _task_ids(pg_url) >= 10, sig=0)
    pg_cluster.restart()
    first = await finish(proc)
    assert first.code in (0, 74), first.stderr
    assert "Traceback" not in first.stderr
    res = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert res.code == 0, res.stderr
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 40 and all(e["state"] == "done" for e in manifest)
    flagged = sum(1 for e in manifest if e["possibly_duplicated"])
    assert sim.stats()["submits_accepted"] - 40 <= flagged


async def test_reroll_keeps_the_first_take_on_postgresql(
    simulator, tmp_path: Path, pg_url: str
) -> None:
    """Issue 32's reroll with the journal in PostgreSQL: `run --reroll --only wan-0000`
    sends one new task with a new seed; wan-0000.mp4 stays, the take lands as
    wan-0000-take2.mp4, the manifest and the database name both; wan-0001 is untouched."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2, model="wan-2-5", prefix="wan"))
    first = await run_cli(sim, "run", str(job_file), "--state", pg_url, *FAST)
    assert first.code == 0, first.stderr
    out = tmp_path / "out"
    before = (out / "wan-0000.mp4").read_bytes()
    res = await run_cli(
        sim, "run", str(job_file), "--state", pg_url, *FAST, "--reroll", "--only", "wan-0000"
    )
    assert res.code == 0, res.stderr
    assert sim.stats()["submits_accepted"] == 3
    seeds = [
        t.input.get("seed") for t in sim.tasks.values() if t.input["prompt"] == "scene number 0"
    ]
    assert seeds[0] is None and isinstance(seeds[1], int)
    assert (out / "wan-0000.mp4").read_bytes() == before
    entries = {e["id"]: e for e in read_manifest(out)}
    take = entries["wan-0000"]
    assert_byte_exact(sim, out, take)
    assert (take["state"], take["files"], take["earlier_files"], take["take"]) == (
        "done", ["wan-0000-take2.mp4"], ["wan-0000.mp4"], 2,
    )  # fmt: skip
    assert take["seed"] == seeds[1]
    # A first take's entry names no take (as with SQLite).
    assert "take" not in entries["wan-0001"] and entries["wan-0001"]["files"] == ["wan-0001.mp4"]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT id, take, earlier_files, files FROM jobs ORDER BY id"
        ).fetchall()
    assert rows == [
        ("wan-0000", 2, '["wan-0000.mp4"]', '["wan-0000-take2.mp4"]'),
        ("wan-0001", 1, "[]", '["wan-0001.mp4"]'),
    ]
    assert not (out / ".apixo-batch.sqlite").exists()
