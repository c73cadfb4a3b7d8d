"""Results of 300 MB into S3 (Ceph's RGW) against the same results onto the local disk, in
one session (issue 24). Asserts nothing; prints the figures and the ratio.

One simulator (results of ``--mb`` MB each, at ``--time-scale 0.001`` so generation
takes a fraction of a second) and one throwaway RGW (``tests/rgw.py``: memstore, so the
store's "disk" is RAM, as the local disk's page cache is). Each round runs the same
campaign twice, alternating which goes first: ``apixo-batch run --out DIR`` and
``apixo-batch run --out s3://bench/roundN``. Landing throughput is the result bytes over
the time from the first result reported to the last one landed (the engine's own
``succeeded`` and ``downloaded`` events), so generation and start-up weigh on neither.
Peak RSS is the CLI process's own (``wait4``).

Targets: S3 throughput at least 0.7 of local disk's; peak RSS at most 150 MB with a 300 MB
result (``--jobs 1``), and bounded by part size x parts in flight with more.

Both the store and the simulator share this machine's cores with the engine: on 2 cores,
RGW's own MD5 of every part and the OSD's copy compete with the download, which a
remote store would not.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \
        /work/main/bench/s3_bench.py [--mb 300] [--jobs 1 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _harness import Measured, campaign, run_engine, simulator, workdir  # noqa: E402
from rgw import rgw_missing, start_rgw  # noqa: E402

MB = 1_000_000
SCALE = "0.001"


def landing_mb_s(m: Measured) -> float:
    got = [e for e in m.events if e["event"] == "downloaded"]
    firsts = [e["at"] for e in m.events if e["event"] == "succeeded"]
    if m.code != 0 or not got or not firsts:
        raise SystemExit(f"run failed (exit {m.code}): {m.summary.get('stop_reason')}")
    total = sum(e["bytes"] for e in got)
    return total / MB / (max(e["at"] for e in got) - min(firsts))


def one(sim: Any, job_file: Path, out: str) -> tuple[float, float, dict[str, int]]:
    m = run_engine(sim, job_file, "--out", out, "--time-scale", SCALE, "--no-review")
    rate = landing_mb_s(m)
    print(f"    {out}: {rate:.1f} MB/s, CPU {m.cpu_s:.2f} s, peak RSS {m.max_rss_mb:.0f} MB")
    return rate, m.max_rss_mb, m.summary.get("store_requests") or {}


def ceiling(jobs: int, mb: int) -> float:
    """What the store takes with nothing else to do: ``jobs`` objects of ``mb`` MB uploaded
    from memory by the engine's own client and part settings (no download, no hashing)."""
    import asyncio
    import time

    from apixo_batch.location import S3Location
    from apixo_batch.outputs.s3 import S3Store

    async def go() -> float:
        store = S3Store(S3Location("bench", "ceiling/"))
        body = bytes(store.part_size)
        parts = -(-mb * MB // store.part_size)

        async def one_object(n: int) -> None:
            key = f"ceiling/{n}"
            got = await store.call("create_multipart_upload", key=key)

            async def part(i: int) -> None:
                held = await store.budget.take(store.part_size)
                try:
                    await store.call(
                        "upload_part", key=key, UploadId=got["UploadId"], PartNumber=i, Body=body
                    )
                finally:
                    store.budget.give(held)

            await asyncio.gather(*(part(i) for i in range(1, parts + 1)))
            await store.call("abort_multipart_upload", key=key, UploadId=got["UploadId"])

        t0 = time.monotonic()
        await asyncio.gather(*(one_object(n) for n in range(jobs)))
        took = time.monotonic() - t0
        await store.close()
        return jobs * parts * store.part_size / MB / took

    return asyncio.run(go())


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (a thread's affinity is its own)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the store's daemons on the last core, the engine and simulator on the others "
        "(both runs): the store then takes no CPU from the engine, as a remote one would not",
    )
    a = ap.parse_args()
    why = rgw_missing()
    if why is not None:
        raise SystemExit(f"no S3 server: {why}")
    with workdir() as root:
        gw = start_rgw(root / "rgw", memstore_bytes=(max(a.jobs) * a.mb * MB * 3) + (1 << 30))
        if a.pin:
            cores = sorted(os.sched_getaffinity(0))
            for _, proc in gw._procs:
                pin(proc.pid, {cores[-1]})
            os.sched_setaffinity(0, set(cores[:-1]))
            print(f"store on core {cores[-1]}, engine and simulator on {cores[:-1]}")
        try:
            os.environ.update(
                AWS_ENDPOINT_URL=gw.endpoint,
                AWS_ACCESS_KEY_ID=gw.access_key,
                AWS_SECRET_ACCESS_KEY=gw.secret_key,
                AWS_DEFAULT_REGION=gw.region,
            )
            import botocore.session

            s3 = botocore.session.get_session().create_client("s3")
            s3.create_bucket(Bucket="bench")
            from apixo_batch.outputs.s3 import MIB, part_settings

            size, inflight = part_settings()
            print(f"{a.mb} MB results; parts of {size // MIB} MiB, {inflight} in flight")
            with simulator(root, file_size=a.mb * MB, time_scale=float(SCALE)) as sim:
                for jobs in a.jobs:
                    rows: dict[str, list[tuple[float, float]]] = {"disk": [], "s3": []}
                    requests: dict[str, int] = {}
                    for r in range(a.rounds):
                        order = ["disk", "s3"] if r % 2 == 0 else ["s3", "disk"]
                        for kind in order:
                            (root / f"{kind}-{jobs}-{r}").mkdir()
                            job_file = campaign(root / f"{kind}-{jobs}-{r}", jobs)
                            if kind == "disk":
                                out = str(root / f"out-{jobs}-{r}")
                                rows[kind].append(one(sim, job_file, out)[:2])
                                shutil.rmtree(out)
                            else:
                                mb_s, rss, requests = one(sim, job_file, f"s3://bench/{jobs}-{r}")
                                rows[kind].append((mb_s, rss))
                                _empty(s3, f"{jobs}-{r}/")
                    disk = statistics.median(x for x, _ in rows["disk"])
                    obj = statistics.median(x for x, _ in rows["s3"])
                    top = statistics.median(ceiling(jobs, a.mb) for _ in range(a.rounds))
                    print(
                        f"jobs={jobs}: disk {disk:6.1f} MB/s (peak RSS "
                        f"{max(m for _, m in rows['disk']):.0f} MB)   s3 {obj:6.1f} MB/s (peak "
                        f"RSS {max(m for _, m in rows['s3']):.0f} MB)   ratio {obj / disk:.2f}"
                    )
                    print(
                        f"  the store alone (uploads from memory): {top:.1f} MB/s; the run to "
                        f"S3 reached {obj / top:.2f} of it"
                    )
                    print(f"  each run: disk {rows['disk']}  s3 {rows['s3']}")
                    print(f"  store requests of the last s3 run: {requests}")
        finally:
            gw.stop()


def _empty(s3: Any, prefix: str) -> None:
    """Free the memstore between runs."""
    listed = s3.list_objects_v2(Bucket="bench", Prefix=prefix).get("Contents", [])
    for item in listed:
        s3.delete_object(Bucket="bench", Key=item["Key"])


if __name__ == "__main__":
    main()
