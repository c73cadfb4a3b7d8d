"""review.html for large journals (issue 23): writing time and size, linear in the jobs.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \\
        /work/main/bench/review_large.py [10000 100000 ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from apixo_batch.journal import Journal, NewJob
from apixo_batch.reports.review import write_review


def one(n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "j.sqlite", lock=False)
        inp = {"mode": "text-to-video", "duration": 5, "sound": False}
        jobs = (
            NewJob(f"job-{i:06d}", i, "kling-2-6", "auto",
                   json.dumps({**inp, "prompt": f"scene {i} " + "word " * 30}), f"h{i}",
                   f"job-{i:06d}.mp4", 0.3)
            for i in range(n)
        )  # fmt: skip
        journal.sync(jobs, time.time())
        started = time.process_time()
        path = write_review(journal.iter_all(), Path(tmp), name="bench", job_file="bench.yaml")
        cpu = time.process_time() - started
        size = path.stat().st_size
        journal.close()
    return f"{n:>8,} jobs: {cpu:6.2f} s CPU, {cpu / n * 1e6:6.1f} µs a job, {size / 1e6:7.1f} MB"


def main(argv: list[str]) -> None:
    for n in [int(a) for a in argv] or [10_000, 100_000]:
        print(one(n), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
