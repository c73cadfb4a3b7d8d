"""CPU per aiohttp request, sent back to back, paced one at a time, or paced in groups.

    python bench/request_cost.py [--requests 2000] [--rate 110]

Prints figures, asserts nothing. The same GET (the balance endpoint of a
simulator in its own process) is sent ``--requests`` times: all at once, then
paced at ``--rate`` a second one request per wake-up, then in groups of 11
(a group every 0.1 s) and 110 (every second), then one at a time at a quarter
of the rate. The overhead benchmark sends about 110 API requests a second; how
its requests are spread in time moves its CPU as much as what each one does,
which is why the poll scheduler sends polls in rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
from pathlib import Path

import aiohttp
from _harness import KEY, simulator


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _paced(base_url: str, n: int, rate: float, group: int) -> tuple[float, float]:
    """CPU µs per request and wall seconds for ``n`` requests, ``group`` at a time."""
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}
    url = f"{base_url}/apikeys/current-balance"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def one() -> None:
            async with session.get(url, headers=headers) as resp:
                await resp.read()

        await asyncio.gather(*(one() for _ in range(50)))  # connections open, code warm
        loop = asyncio.get_running_loop()
        cpu, start = _cpu(), loop.time()
        tasks: list[asyncio.Task[None]] = []
        for i in range(0, n, group):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks += [asyncio.create_task(one()) for _ in range(min(group, n - i))]
        await asyncio.gather(*tasks)
        return (_cpu() - cpu) / n * 1e6, loop.time() - start


async def _main(base_url: str, n: int, rate: float) -> None:
    cases = [
        ("back to back", 1e9, 1),
        (f"{rate:g}/s, one per wake-up", rate, 1),
        (f"{rate:g}/s, groups of {round(rate / 10)}", rate, max(1, round(rate / 10))),
        (f"{rate:g}/s, groups of {round(rate)}", rate, max(1, round(rate))),
        (f"{rate / 4:g}/s, one per wake-up", rate / 4, 1),
    ]
    for label, r, group in cases:
        us, wall = await _paced(base_url, n, r, group)
        print(f"request cost  {label:28s} {us:6.0f} µs of CPU per request ({n} in {wall:.1f} s)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=110.0)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rate <= 0:
        parser.error("--requests and --rate must be positive")
    with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp)) as sim:
        try:
            import uvloop  # the loop the command line runs on, where installed
        except ImportError:
            asyncio.run(_main(sim.base_url, args.requests, args.rate))
        else:
            uvloop.run(_main(sim.base_url, args.requests, args.rate))


if __name__ == "__main__":
    main(sys.argv[1:])
