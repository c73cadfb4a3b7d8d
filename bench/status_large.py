"""Benchmark: ``apixo-batch status`` on a 100,000-job journal (issue 30).

Generates the 100,000-row CSV campaign of ``plan_large.py``, syncs a journal from it as
a run would (its jobs, and the job file's stamp), then times ``python -m apixo_batch
status`` in a fresh process: with the file unchanged since that sync (the jobs are not
read again), once the CSV was touched (its ids read again, without validating the rows,
and compared with the journal's), and once edited (its first row removed, one added: the
ids read and compared must say so). Target 1 s each; exit status 1 when it is missed.

    .venv/bin/python bench/status_large.py [--rows 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plan_large import JOB_FILE, _generator

from apixo_batch.jobs import load_campaign
from apixo_batch.journal import Journal, jobs_of
from apixo_batch.journal.store import FILE_STAMP

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 1.0


def _status(job_file: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "apixo_batch", "status", str(job_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"status exited {done.returncode}:\n{done.stderr}")
    return elapsed, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="apixo-bench-") as tmp:
        folder = Path(tmp)
        _generator().write(folder / "prompts.csv", args.rows)
        job_file = folder / "bench.yaml"
        job_file.write_text(JOB_FILE, encoding="utf-8")
        campaign = load_campaign(job_file)
        assert isinstance(campaign.output_dir, Path)
        campaign.output_dir.mkdir(parents=True)
        journal = Journal(campaign.output_dir / ".apixo-batch.sqlite", lock=False)
        journal.sync(jobs_of(campaign), time.time())
        with journal.transaction():
            journal.set_meta_in_tx(FILE_STAMP, campaign.stamp)
        journal.close()

        fast = []
        for run in range(1, args.runs + 1):
            elapsed, out = _status(job_file)
            fast.append(elapsed)
            print(f"unchanged file, run {run}: {elapsed:.2f} s")
        assert "unchanged since the last run" in out, out
        rows = folder / "prompts.csv"
        touched = []
        for run in range(1, args.runs + 1):
            os.utime(rows)  # touched: its ids read and compared again
            elapsed, out = _status(job_file)
            assert "no job added or removed" in out, out
            touched.append(elapsed)
            print(f"touched file (ids read and compared), run {run}: {elapsed:.2f} s")
        lines = rows.read_text(encoding="utf-8").splitlines(keepends=True)
        first = lines[1].split(",", 1)
        gone = first[0]
        lines = [lines[0], *lines[2:], f"bench-new,{first[1]}"]
        rows.write_text("".join(lines), encoding="utf-8")
        edited, out = _status(job_file)
        assert f"1 job(s) added (bench-new) and 1 job(s) removed ({gone})" in out, out
        print(f"edited file (a row removed, one added): {edited:.2f} s")

    best, best_touched = min(fast), min(touched)
    ok = max(best, best_touched, edited) <= TARGET_S
    print(
        f"status, {args.rows:,} jobs (target {TARGET_S:.0f} s): unchanged file best {best:.2f} s, "
        f"worst {max(fast):.2f} s; touched best {best_touched:.2f} s, worst {max(touched):.2f} s; "
        f"edited {edited:.2f} s: {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
