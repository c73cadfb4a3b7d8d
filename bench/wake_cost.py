"""What this machine charges a thread for waking up after a sleep. Prints figures, asserts nothing.

    python bench/wake_cost.py

A thread that sleeps and wakes does almost nothing, yet on some VMs each
wake-up is charged a lot of CPU, more the longer the sleep (the woken thread
runs slowly for a while, probably on cold caches). The engine is several
threads that mostly wait, so this weighs on its CPU figures: read them with it.
"""

from __future__ import annotations

import time


def main() -> None:
    for sleep_s, n in ((0.002, 1000), (0.01, 300), (0.05, 60), (0.25, 12), (1.0, 3)):
        cpu, wall = time.thread_time(), time.monotonic()
        for _ in range(n):
            time.sleep(sleep_s)
        cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
        print(
            f"wake-up after {sleep_s * 1000:6.1f} ms of sleep: {cpu / n * 1e6:7.1f} µs of CPU "
            f"({cpu / wall * 100:.2f} % of the wall time), {n} wake-ups"
        )


if __name__ == "__main__":
    main()
