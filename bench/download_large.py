"""Download a large file from a local server: throughput and peak memory, next to curl.

Serves a deterministic MP4-like body (default 300 MB) from an aiohttp server in
a subprocess on 127.0.0.1, downloads it with :func:`apixo_batch.download.download_file`,
checks the SHA-256, and prints MB/s and the downloading process's peak RSS;
then the same URL with ``curl -o /dev/null`` and ``curl -o FILE`` if curl is
installed. Targets: peak RSS <= 150 MB, throughput >= 0.7 x curl's.

    .venv/bin/python bench/download_large.py [--mb 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from apixo_batch.download import download_file

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
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.to_thread(port_file.write_text, str(port))
        await asyncio.Event().wait()

    asyncio.run(main())


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


async def one_download(url: str, dest: Path, size: int) -> float:
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        result = await download_file(session, url, dest, clock=SystemClock())
        elapsed = time.perf_counter() - started
    if result.bytes != size:
        raise SystemExit(f"wrong size: {result.bytes} != {size}")
    if result.sha256 != expected_sha256(size):
        raise SystemExit("wrong sha256")
    return size / MB / elapsed


def timed_curl(url: str, out: str, size: int) -> float | None:
    curl = shutil.which("curl")
    if curl is None:
        return None
    started = time.perf_counter()
    subprocess.run([curl, "-sS", "--fail", "-o", out, url], check=True)
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
            ours = []
            for n in range(args.runs):
                dest = work / f"video-{n}.mp4"
                ours.append(asyncio.run(one_download(url, dest, size)))
                dest.unlink()
            peak = peak_rss_mb()
            curl_null = [timed_curl(url, "/dev/null", size) for _ in range(args.runs)]
            curl_file = []
            for n in range(args.runs):
                out = work / f"curl-{n}.mp4"
                curl_file.append(timed_curl(url, str(out), size))
                out.unlink(missing_ok=True)
        finally:
            server.terminate()
            server.wait()

    rate = statistics.median(ours)
    print(f"body: {args.mb} MB, {args.runs} runs each, median throughput")
    print(f"download_file : {rate:8.1f} MB/s  (runs: {', '.join(f'{r:.0f}' for r in ours)})")
    print(f"peak RSS      : {peak:8.1f} MB  (before downloading: {baseline:.1f} MB)")
    verdict = "ok" if peak <= RSS_TARGET_MB else "MISSED"
    print(f"  target      : <= {RSS_TARGET_MB:.0f} MB -> {verdict}")
    if curl_null[0] is None:
        print("curl          : not installed, no comparison")
        return
    null_rate = statistics.median(r for r in curl_null if r is not None)
    file_rate = statistics.median(r for r in curl_file if r is not None)
    print(f"curl -o null  : {null_rate:8.1f} MB/s")
    print(f"curl -o file  : {file_rate:8.1f} MB/s")
    ratio = rate / file_rate
    print(
        f"  ratio vs curl -o file: {ratio:.2f} (target >= {CURL_RATIO_TARGET}) -> "
        f"{'ok' if ratio >= CURL_RATIO_TARGET else 'MISSED'};"
        f" vs curl -o /dev/null: {rate / null_rate:.2f}"
    )


if __name__ == "__main__":
    main()
