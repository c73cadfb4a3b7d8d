"""Benchmark: the start-up check of ``done`` files against the journal, at 100,000 jobs.

Builds a journal of ``--rows`` done jobs, each with a small file in a temporary
output folder, deletes 1% of the files, then times what every ``run`` and
``download`` does at start-up (:func:`~apixo_batch.pipeline.startup.refetch_off_disk`:
a stat per file on the journal's thread, the bad jobs moved back to ``succeeded``)
while a ticker on the event loop measures its longest stall (the check must not
block the loop). Then times ``verify``'s hash of every file.

    .venv/bin/python bench/disk_check.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path

from apixo_batch.clock import SystemClock
from apixo_batch.journal import AsyncJournal, Journal, NewJob, SqliteLedger
from apixo_batch.outputs.ondisk import problems
from apixo_batch.pipeline.startup import refetch_off_disk


def _build(folder: Path, rows: int) -> Path:
    path = folder / "state.sqlite"
    journal = Journal(path)
    text = json.dumps({"prompt": "x"})
    jobs = (
        NewJob(f"job-{i:06d}", i, "kling-2-6", "auto", text, f"h{i}", f"job-{i:06d}.mp4", 0.3)
        for i in range(rows)
    )
    journal.sync(jobs, time.time())
    data = b"\x00\x00\x00\x10ftypmp42result"
    digest = hashlib.sha256(data).hexdigest()
    for i in range(rows):
        (folder / f"job-{i:06d}.mp4").write_bytes(data)
    with journal.transaction() as db:
        db.execute(
            "UPDATE jobs SET state='done', files=json_array(filename), bytes=?, "
            "sha256=json_array(?), result_urls=json_array('https://h/' || id)",
            (len(data), digest),
        )
    journal.close()
    for i in range(0, rows, 100):
        (folder / f"job-{i:06d}.mp4").unlink()
    return path


async def _check(path: Path, folder: Path) -> tuple[float, float, int]:
    ledger = SqliteLedger(AsyncJournal(Journal(path)), SystemClock())
    stall = 0.0
    done = False

    async def tick() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    found = await refetch_off_disk(ledger, folder)
    took = time.perf_counter() - start
    done = True
    await ticker
    await ledger.close()
    return took, stall, len(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _build(folder, args.rows)
        took, stall, found = asyncio.run(_check(path, folder))
        print(
            f"start-up check of {args.rows:,} done jobs: {took:.2f} s, {found} moved back, "
            f"longest event-loop stall {stall * 1000:.1f} ms"
        )
        journal = Journal(path, lock=False)
        start = time.perf_counter()
        hashed = sum(1 for _ in problems(journal.iter_done_files(), folder, hashed=True))
        print(f"verify's hash of every file: {time.perf_counter() - start:.2f} s, {hashed} found")
        journal.close()


if __name__ == "__main__":
    main()
