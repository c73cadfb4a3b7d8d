"""The APIXO docs' recipe, as a typical user would write it: the baseline apixo-batch must beat.

Issue 7. One asyncio task per job, an ``asyncio.Semaphore(max_concurrent)``
around each; per job: POST the submit, sleep the model's documented first-poll
delay (kling-2-6, 5 s video: 50 s), poll every 5 s until success or failed,
``await resp.read()`` the whole file into memory and write it to disk. A 429 is
met the way a quick script does: sleep 1 s and send the same request again. No
rate limiter (the docs give none), no journal, no resume, no hash check. Every
wait is multiplied by ``--time-scale`` so it can run against the simulator.

    .venv/bin/python bench/recipe_baseline.py --base-url http://127.0.0.1:8787/api/v1 \\
        --key sim-key --jobs 200 --max-concurrent 200 --time-scale 0.01 --out /tmp/x

``--jobs-file`` takes a JSONL file of ``{"model", "input", "first_poll"}`` objects
instead (bench/compare.py's mixed campaign): each job waits its own model's
documented first poll, then polls every 5 s like the others.

Prints one JSON line: done, failed, requests, 429s, wall_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

MODEL = "kling-2-6"
FIRST_POLL_S = 50.0  # kling-2-6 page: first poll after 50 s for a 5 s video
POLL_EVERY_S = 5.0  # "then every 5-10 s"
RETRY_429_S = 1.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = {"done": 0, "failed": 0, "requests": 0, "429s": 0}
    headers = {"Authorization": f"Bearer {args.key}"}
    scale = args.time_scale
    out = Path(args.out)
    slots = asyncio.Semaphore(args.max_concurrent)

    async def call(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
        while True:
            counts["requests"] += 1
            async with session.request(method, url, headers=headers, **kw) as resp:
                if resp.status == 429:
                    counts["429s"] += 1
                    await asyncio.sleep(RETRY_429_S * scale)
                    continue
                return await resp.json()

    jobs: list[dict[str, Any]] = [
        {
            "model": MODEL,
            "first_poll": FIRST_POLL_S,
            "input": {
                "mode": "text-to-video",
                "prompt": f"benchmark scene {i}",
                "duration": 5,
                "sound": False,
            },
        }
        for i in range(args.jobs)
    ]
    if args.jobs_rows:
        jobs = args.jobs_rows

    async def job(session: aiohttp.ClientSession, i: int) -> None:
        async with slots:
            spec = jobs[i]
            model = spec["model"]
            body = {"request_type": "async", "input": spec["input"]}
            answer = await call(session, "POST", f"{args.base_url}/generateTask/{model}", json=body)
            if answer.get("code") != 200:
                counts["failed"] += 1
                return
            task_id = answer["data"]["taskId"]
            await asyncio.sleep(float(spec["first_poll"]) * scale)
            while True:
                status = await call(
                    session,
                    "GET",
                    f"{args.base_url}/statusTask/{model}",
                    params={"taskId": task_id},
                )
                data = status.get("data") or {}
                if data.get("state") == "success":
                    break
                if data.get("state") == "failed":
                    counts["failed"] += 1
                    return
                await asyncio.sleep(POLL_EVERY_S * scale)
            url = json.loads(data["resultJson"])["resultUrls"][0]
            async with session.get(url) as resp:
                content = await resp.read()  # the whole video in memory
            (out / f"job-{i:06d}.mp4").write_bytes(content)
            counts["done"] += 1

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:  # aiohttp's defaults, as most scripts do
        await asyncio.gather(*(job(session, i) for i in range(len(jobs))))
    return {**counts, "wall_s": round(time.monotonic() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True, help="API base URL, ending in /api/v1")
    parser.add_argument("--key", required=True)
    parser.add_argument("--jobs", type=int, default=100, help="kling-2-6 text-to-video 5 s jobs")
    parser.add_argument("--jobs-file", help="JSONL of {model, input, first_poll}: replaces --jobs")
    parser.add_argument("--max-concurrent", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--out", default="out-baseline")
    args = parser.parse_args()
    args.jobs_rows = None
    if args.jobs_file:
        lines = Path(args.jobs_file).read_text(encoding="utf-8").splitlines()
        args.jobs_rows = [json.loads(line) for line in lines if line.strip()]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
