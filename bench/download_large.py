"""Download a large file from a local server: throughput and peak memory, next to curl.

Serves a deterministic MP4-like body (default 300 MB) from an aiohttp server in
a subprocess on 127.0.0.1, downloads it with :func:`apixo_batch.outputs.download.download_file`,
checks the SHA-256, and prints MB/s and the downloading process's peak RSS;
then the same URL with ``curl -o /dev/null`` and ``curl -o FILE`` if curl is
installed. Targets: peak RSS <= 150 MB, throughput >= 0.7 x curl's.

    .venv/bin/python bench/download_large.py [--mb 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

from apixo_batch.clock import SystemClock
from apixo_batch.outputs.download import download_file

MB = 1_000_000
BLOCK = 1 << 20
FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
RSS_TARGET_MB = 150.0
CURL_RATIO_TARGET = 0.7


def blocks(size: int) -> Iterator[bytes]:
    """The body, one block at a time: an ftyp box, then a repeated pseudo-random block."""
    first = FTYP + random.Random(7).randbytes(BLOCK - len(FTYP))
    rest = random.Random(8).randbytes(BLOCK)
    sent = 0
    while sent < size:
        block = first if sent == 0 else rest
        block = block[: size - sent]
        sent += len(block)
        yield block


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size):
        digest.update(block)
    return digest.hexdigest()


def serve(size: int, port_file: Path) -> None:
    """Run the file host until killed; write the port to ``port_file`` once listening."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        resp.content_length = size
        await resp.prepare(request)
        for block in blocks(size):
            await resp.write(block)
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/video.mp4", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        await asyncio.to_thread(port_file.write_text, str(port))
        await asyncio.Event().wait()

    asyncio.run(main())


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


async def one_download(url: str, dest: Path, size: int) -> tuple[float, float]:
    """(MB/s, CPU seconds of this process, worker threads included) for one download."""
    async with aiohttp.ClientSession() as session:
        started, cpu = time.perf_counter(), time.process_time()
        result = await download_file(session, url, dest, clock=SystemClock())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.bytes != size:
        raise SystemExit(f"wrong size: {result.bytes} != {size}")
    if result.sha256 != expected_sha256(size):
        raise SystemExit("wrong sha256")
    return size / MB / elapsed, cpu


def timed(command: list[str], size: int) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return size / MB / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="body size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3, help="downloads per tool (median kept)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.mb * MB
    if args.serve:
        serve(size, args.serve)
        return

    curl = shutil.which("curl")
    openssl = shutil.which("openssl")  # OpenSSL's SHA-256, as hashlib uses (coreutils' is slower)
    rates: dict[str, list[float]] = {}
    cpu: list[float] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="apixo-bench-") as tmp:
        work = Path(tmp)
        port_file = work / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--mb", str(args.mb), "--serve", str(port_file)]
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None:
                    raise SystemExit("the file server did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}/video.mp4"
            baseline = peak_rss_mb()
            out = work / "out.mp4"
            # Interleaved, so that every tool sees the same background load.
            for _ in range(args.runs):
                rate, used = asyncio.run(one_download(url, out, size))
                rates.setdefault("download_file", []).append(rate)
                cpu.append(used)
                out.unlink()
                if curl is None:
                    continue
                fetch = [curl, "-sS", "--fail", "-o"]
                rates.setdefault("curl -o /dev/null", []).append(
                    timed([*fetch, "/dev/null", url], size)
                )
                rates.setdefault("curl -o file", []).append(timed([*fetch, str(out), url], size))
                out.unlink()
                if openssl is not None:
                    # The same promise as download_file: bytes hashed and on disk.
                    script = (
                        f'{" ".join(fetch)} "$1" "$2" && {openssl} dgst -sha256 "$1" && sync "$1"'
                    )
                    rates.setdefault("curl + openssl sha256 + sync", []).append(
                        timed(["sh", "-c", script, "sh", str(out), url], size)
                    )
                    out.unlink()
            peak = peak_rss_mb()
        finally:
            server.terminate()
            server.wait()

    print(f"body {args.mb} MB from 127.0.0.1, {args.runs} interleaved runs, median MB/s")
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:30} {statistics.median(values):7.1f}   ({runs})")
    print(f"download_file CPU: {statistics.median(cpu):.2f} s per run (worker thread included)")
    verdict = "ok" if peak <= RSS_TARGET_MB else "MISSED"
    print(f"peak RSS {peak:.1f} MB (before downloading {baseline:.1f} MB): {verdict}")
    if "curl -o file" not in rates:
        print("curl not installed: no comparison")
        return
    ours = statistics.median(rates["download_file"])
    for name in ("curl -o file", "curl + openssl sha256 + sync"):
        if name in rates:
            ratio = ours / statistics.median(rates[name])
            verdict = "ok" if ratio >= CURL_RATIO_TARGET else "MISSED"
            print(f"ratio to {name}: {ratio:.2f} (target >= {CURL_RATIO_TARGET}): {verdict}")


if __name__ == "__main__":
    main()
