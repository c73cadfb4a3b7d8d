"""`make demo`: start the built-in simulator and run jobs/campaign.yaml against it.

Everything happens on 127.0.0.1 with a fake key; nothing leaves the machine.
The simulator and the run share ``--time-scale`` so a campaign of 60-120 s
generations finishes in a few seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_SCALE = os.environ.get("DEMO_TIME_SCALE", "0.05")
KEY = "sim-demo-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the simulator did not come up at {url}")


def main() -> int:
    port = free_port()
    env = {**os.environ, "APIXO_API_KEY": KEY}
    cli = [sys.executable, "-m", "apixo_batch"]
    job_file = ROOT / "jobs" / "campaign.yaml"
    out_dir = ROOT / "out" / "demo"
    shown_out = out_dir.relative_to(ROOT)
    # --out as the run gets it: the plan names the folder the run writes to, and reads
    # its journal when an earlier demo left one.
    print(f"$ apixo-batch plan {job_file.relative_to(ROOT)} --out {shown_out}", flush=True)
    subprocess.run([*cli, "plan", str(job_file), "--out", str(out_dir)], check=True)
    sim = subprocess.Popen(
        [*cli, "simulate", "--port", str(port), "--time-scale", TIME_SCALE], env=env
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/_sim/stats")
        env["APIXO_BASE_URL"] = f"http://127.0.0.1:{port}/api/v1"
        run = [*cli, "run", str(job_file), "--out", str(out_dir), "--time-scale", TIME_SCALE]
        print(
            f"\n$ apixo-batch run {job_file.relative_to(ROOT)} --out {shown_out}"
            f" --time-scale {TIME_SCALE}",
            flush=True,
        )
        code = subprocess.run(run, env=env).returncode
        print(f"\n$ apixo-batch status {job_file.relative_to(ROOT)} --out {shown_out}", flush=True)
        subprocess.run([*cli, "status", str(job_file), "--out", str(out_dir)], env=env)
        print(
            "\n$ apixo-batch run ... (again: a finished campaign costs zero requests)", flush=True
        )
        again = subprocess.run(run, env=env).returncode
        print(f"\nfiles and manifest in {out_dir}")
        return code or again
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
