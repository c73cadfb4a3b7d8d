"""Benchmark: ``apixo-batch plan`` on a 100,000-row CSV campaign.

Generates the CSV (every model and mode mixed, jobs/make_large.py's generator)
in a temporary folder, runs ``python -m apixo_batch plan`` on it in a fresh
process, and reports wall time and the child's peak RSS against the targets
(5 s, 500 MB). Exit status 1 when a target is missed. ``--journal``: the campaign
synced into a journal first (every job queued), so ``plan`` also reads it.

    .venv/bin/python bench/plan_large.py [--rows 100000] [--runs 3] [--journal]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 5.0
TARGET_MB = 500.0

JOB_FILE = """\
name: bench
output: {dir: out}
defaults:
  model: kling-2-5-turbo-pro
  input: {duration: 5, aspect_ratio: "16:9", negative_prompt: "blur, low quality"}
jobs_file: prompts.csv
"""


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_large", REPO / "jobs" / "make_large.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan(job_file: Path, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    # cwd=REPO: "-m apixo_batch" then finds this checkout whatever is installed.
    done = subprocess.run(
        [sys.executable, "-m", "apixo_batch", "plan", str(job_file), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"plan exited {done.returncode}:\n{done.stderr}")
    return elapsed, done.stdout


def _journal(job_file: Path) -> None:
    """The campaign synced into its journal (what a run's start does), every job queued."""
    sys.path.insert(0, str(REPO))
    from apixo_batch.defaults import state_path
    from apixo_batch.jobs import load_campaign
    from apixo_batch.journal import Journal
    from apixo_batch.journal.reconcile import jobs_of
    from apixo_batch.journal.store import FILE_STAMP

    campaign = load_campaign(job_file)
    assert isinstance(campaign.output_dir, Path)
    campaign.output_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(state_path(campaign.output_dir, campaign.path, campaign.name))
    try:
        journal.sync(jobs_of(campaign), time.time())
        with journal.transaction():
            journal.set_meta_in_tx(FILE_STAMP, campaign.stamp)
    finally:
        journal.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--journal", action="store_true", help="plan beside a journal")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="apixo-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        _generator().write(folder / "prompts.csv", args.rows)
        size_mb = (folder / "prompts.csv").stat().st_size / 1e6
        took = time.perf_counter() - started
        print(f"generated {args.rows:,} rows ({size_mb:.1f} MB) in {took:.1f} s")
        job_file = folder / "bench.yaml"
        job_file.write_text(JOB_FILE, encoding="utf-8")

        _, out = _plan(job_file, "--json")
        jobs = json.loads(out)["jobs"]
        assert jobs == args.rows, f"plan saw {jobs} jobs, expected {args.rows}"
        if args.journal:
            _journal(job_file)
            _, out = _plan(job_file, "--json")
            queued = json.loads(out)["journal"]["to_submit"]["jobs"]
            assert queued == args.rows, f"plan saw {queued} jobs to submit"
        times = []
        for run in range(1, args.runs + 1):
            elapsed, out = _plan(job_file)
            times.append(elapsed)
            print(f"run {run}: {elapsed:.2f} s")
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    print(out.rstrip().splitlines()[-7] if out.count("\n") > 7 else out)
    best, worst = min(times), max(times)
    ok = best <= TARGET_S and rss_mb <= TARGET_MB
    print(
        f"plan, {args.rows:,} rows: best {best:.2f} s, worst {worst:.2f} s "
        f"(target {TARGET_S:.0f} s); "
        f"peak RSS {rss_mb:.0f} MB (target {TARGET_MB:.0f} MB): {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
