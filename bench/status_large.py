"""Benchmark: ``apixo-batch status`` on a 100,000-job journal (issue 30).

Generates the 100,000-row CSV campaign of ``plan_large.py``, syncs a journal from it as
a run would (its jobs, and the job file's stamp), then times ``python -m apixo_batch
status`` in a fresh process: with the file unchanged since that sync (the jobs are not
read again; target 1 s), and once the CSV was touched (validated again, the ids
compared with the journal's). Exit status 1 when the target is missed.

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
        os.utime(folder / "prompts.csv")  # touched: validated and compared again
        slow, out = _status(job_file)
        assert "no job added or removed" in out, out
        print(f"touched file (validated, ids compared): {slow:.2f} s")

    best = min(fast)
    ok = best <= TARGET_S
    print(
        f"status, {args.rows:,} jobs: best {best:.2f} s, worst {max(fast):.2f} s with the file "
        f"unchanged (target {TARGET_S:.0f} s): {'OK' if ok else 'MISSED'}; {slow:.2f} s edited"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
