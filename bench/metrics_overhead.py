"""What the metrics cost a run (issue 35): prints figures as ratios, asserts nothing.

    python bench/metrics_overhead.py [--jobs N] [--repeat N] [--scrape-every S]

The overhead campaign of engine_bench.py (N jobs, 999 in flight at once: the cap of
--max-concurrent, generations of 15-21 s at --time-scale 0.3, 64 KiB results) runs
alternately without and with ``--metrics-port`` and ``--metrics-textfile``, against one
simulator in its own process. During the runs with metrics, a thread of this process
scrapes ``/metrics`` every ``--scrape-every`` seconds (1 s: fifteen times Prometheus's
default, the worst a scraper does) and times each answer.

Figures: the answer time of ``/metrics`` (p50, p95, max) while 990 or more tasks were in
flight (target under 50 ms); the engine's CPU with metrics against without (target
under 1.05), the median of the pairs, each pair run back to back so the VM's drift
from one hour to the next weighs on both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    Measured,
    campaign,
    engine_code,
    free_port,
    reference_cpu_ms,
    run_engine,
    simulator,
    workdir,
)
from prometheus_client.parser import text_string_to_metric_families

FLAGS = ("--max-concurrent", "999", "--rpm", "9999", "--time-scale", "0.3")


class Scraper(threading.Thread):
    """GET /metrics every ``every`` seconds; keeps (seconds to answer, tasks in flight)."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.every = every
        self.answers: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    text = resp.read().decode()
            except OSError:
                self.stop.wait(0.05)  # not listening yet, or the run has ended
                continue
            took = time.perf_counter() - t0
            in_flight = 0.0
            for family in text_string_to_metric_families(text):
                if family.name == "apixo_batch_tasks_in_flight" and family.samples:
                    in_flight = family.samples[0].value
            self.answers.append((took, in_flight))
            self.stop.wait(self.every)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_pair(n: int, every: float) -> tuple[Measured, Measured, Scraper]:
    with workdir() as wd_plain, workdir() as wd_metrics:
        job_plain = campaign(wd_plain, n)
        job_metrics = campaign(wd_metrics, n)
        with simulator(wd_plain, time_scale=0.3, file_size=64 * 1024, balance=n * 10.0) as sim:
            plain = run_engine(sim, job_plain, *FLAGS)
            port = free_port()
            scraper = Scraper(f"http://127.0.0.1:{port}/metrics", every)
            scraper.start()
            textfile = wd_metrics / "apixo.prom"
            with_metrics = run_engine(
                sim,
                job_metrics,
                *FLAGS,
                "--metrics-port",
                str(port),
                "--metrics-textfile",
                str(textfile),
            )
            scraper.stop.set()
            scraper.join(10)
    return plain, with_metrics, scraper


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--scrape-every", type=float, default=1.0)
    args = parser.parse_args(argv)
    ratios: list[float] = []
    loaded: list[float] = []
    every_answer: list[float] = []
    for i in range(args.repeat):
        plain, with_metrics, scraper = one_pair(args.jobs, args.scrape_every)
        ratio = with_metrics.cpu_s / plain.cpu_s
        ratios.append(ratio)
        full = [took for took, in_flight in scraper.answers if in_flight >= 990]
        loaded += full
        every_answer += [took for took, _ in scraper.answers]
        print(
            f"pair {i + 1}: CPU without {plain.cpu_s:.2f} s (exit {plain.code}, "
            f"{plain.wall_s:.1f} s), with metrics {with_metrics.cpu_s:.2f} s (exit "
            f"{with_metrics.code}, {with_metrics.wall_s:.1f} s): ratio {ratio:.3f}; "
            f"{len(scraper.answers)} scrapes, {len(full)} at >= 990 in flight"
        )
    ms = [t * 1000 for t in loaded] or [float("nan")]
    all_ms = [t * 1000 for t in every_answer] or [float("nan")]
    print(
        f"/metrics at >= 990 tasks in flight: {len(loaded)} answers, p50 {pct(ms, 0.5):.1f} ms, "
        f"p95 {pct(ms, 0.95):.1f} ms, max {max(ms):.1f} ms (target < 50 ms: "
        f"{'met' if max(ms) < 50 else 'NOT met'} by the max); all scrapes: p50 "
        f"{pct(all_ms, 0.5):.1f} ms, max {max(all_ms):.1f} ms"
    )
    med = statistics.median(ratios)
    print(
        f"engine CPU with metrics / without: median {med:.3f} over {len(ratios)} pair(s) "
        f"({', '.join(f'{r:.3f}' for r in ratios)}); target < 1.05: "
        f"{'met' if med < 1.05 else 'NOT met'}; {args.jobs} jobs, scrape every "
        f"{args.scrape_every:g} s, textfile every 5 s; reference loop "
        f"{reference_cpu_ms():.0f} ms CPU; engine code {engine_code()}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
