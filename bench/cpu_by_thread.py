"""Engine CPU per thread (issue 4): where the CPU of one run goes. Prints figures, asserts nothing.

    python bench/cpu_by_thread.py [JOBS] [TIME_SCALE]

Runs ``apixo-batch run`` (2,000 jobs, ``--max-concurrent 999 --rpm 9999``, 64 KiB
results by default) against the simulator in its own process, sampling
``/proc/PID/task/*/stat`` every 0.1 s; prints user and system CPU per thread
(the event loop is the thread whose id is the process id). Linux only.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import KEY, campaign, disk, engine_code, reference_cpu_ms, simulator, workdir


def main(n: int, ts: str) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    with workdir() as wd:
        job_file = campaign(wd, n)
        where = disk(wd)
        with simulator(wd, time_scale=float(ts), file_size=64 << 10) as sim:
            env = {**os.environ, "APIXO_API_KEY": KEY, "APIXO_BASE_URL": sim.base_url}
            cmd = [sys.executable, "-m", "apixo_batch", "run", str(job_file), "--json"]
            cmd += ["--max-concurrent", "999", "--rpm", "9999", "--time-scale", ts]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            last: dict[str, tuple[str, float, float]] = {}
            while proc.poll() is None:
                for stat in glob.glob(f"/proc/{proc.pid}/task/*/stat"):
                    try:
                        text = Path(stat).read_text()
                    except OSError:
                        continue
                    name = text[text.index("(") + 1 : text.rindex(")")]
                    fields = text.rsplit(")", 1)[1].split()
                    tid = stat.split("/")[4]
                    label = "event loop" if tid == str(proc.pid) else f"{name}-{tid}"
                    last[tid] = (label, int(fields[11]) / tick, int(fields[12]) / tick)
                time.sleep(0.1)
            wall = time.monotonic() - t0
            requests = sim.stats()["api_requests_total"]
    total = sum(u + s for _, u, s in last.values())
    print(
        f"cpu-by-thread {n} jobs in {wall:.1f} s, exit {proc.returncode}; "
        f"{requests / n:.2f} API requests/task; CPU {total:.1f} s = {total / n * 1000:.2f} s "
        f"per 1,000 tasks (sampled every 0.1 s); {where}; "
        f"reference loop {reference_cpu_ms():.0f} ms CPU; engine code {engine_code()}"
    )
    for label, user, system in sorted(last.values(), key=lambda r: -(r[1] + r[2])):
        if user + system >= 0.05:
            print(
                f"  {label:24s} user {user:6.2f} s  sys {system:6.2f} s  = "
                f"{(user + system) / n * 1000:.2f} ms/task"
            )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 2000, sys.argv[2] if len(sys.argv) > 2 else "0.3"
    )
