"""Key pools (issue 34): two keys against one key, a key revoked mid-run, a journal resumed
with one of its two keys. Ratios in one run; asserts nothing.

One simulator subprocess per case serves two keys, each an account of its own with the
same limits L (slots ``L_SLOTS``, requests ``L_RPM`` a minute); the engine is told 90 %
of them per key (``max_concurrent=… rpm=…`` in its key file). Generation takes a fixed
``TASK_S`` real seconds, so the campaign is slot-bound: its wall-time bound is
jobs / slots x TASK_S.

* ``one-key`` / ``two-keys``: the same campaign with the first key alone, then with both.
  Wanted: two keys take at most 0.55 of one key's wall time, 0 answers 429.
* ``revoke``: both keys; the second is revoked (``POST /_sim/revoke/FP``: submits refused
  with 401, its tasks still read) once it has created a quarter of the jobs. Wanted:
  every job done, 0 lost, 0 submitted twice, exit 0, the summary names the retired key.
* ``resume-one``: both keys; the run is killed once both keys' slots are full; the journal
  is resumed with the first key alone. Wanted: the second key's tasks stay in flight and
  are reported (one line), none is submitted again.

    cd /tmp && PYTHONPATH=/work/main /work/main/.venv/bin/python \
        /work/main/bench/key_pool.py [case ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import KEY, Sim, campaign, engine_code, run_engine, simulator, workdir  # noqa: E402

SECOND = "sim-bench-key-2"
L_SLOTS = 50
L_RPM = 3000
TASK_S = 1.0
JOBS = 900
SCALE = 0.02
TOLD = f"max_concurrent={int(L_SLOTS * 0.9)} rpm={int(L_RPM * 0.9)}"


def fp(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def sim_config() -> dict[str, Any]:
    return {
        "time_scale": SCALE,
        "balance": 1e9,
        "file_size": 64 << 10,
        "duration_override_s": [TASK_S, TASK_S],
        "concurrency_limit": L_SLOTS,
        "rpm_limit": L_RPM,
        "keys": [{"key": SECOND, "balance": 1e9, "concurrency_limit": L_SLOTS, "rpm_limit": L_RPM}],
    }


def key_file(wd: Path, *keys: str) -> Path:
    path = wd / f"keys-{len(keys)}.txt"
    path.write_text("".join(f"{k} {TOLD}\n" for k in keys), encoding="utf-8")
    return path


def one_campaign(keys: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    with workdir() as wd:
        job_file = campaign(wd, JOBS)
        with simulator(wd, **sim_config()) as sim:
            m = run_engine(
                sim,
                job_file,
                "--time-scale",
                str(SCALE),
                "--api-key-file",
                str(key_file(wd, *keys)),
            )
            return m, sim.stats()


def keys_and_wall() -> list[str]:
    one, one_stats = one_campaign((KEY,))
    two, two_stats = one_campaign((KEY, SECOND))
    bound_one = JOBS / int(L_SLOTS * 0.9) * TASK_S
    bound_two = bound_one / 2
    lines = []
    for name, m, st, bound in (
        ("one-key", one, one_stats, bound_one),
        ("two-keys", two, two_stats, bound_two),
    ):
        per_key = {k: v["submits"] for k, v in st["keys"].items()}
        lines.append(
            f"{name}: exit {m.code}, {m.summary.get('counts')}, wall {m.wall_s:.1f} s "
            f"(slot bound {bound:.1f} s, {bound / m.wall_s:.2f} of it), 429s {st['rate_limited']}, "
            f"submits per key {per_key}, peak running per key "
            f"{[v['peak_running'] for v in st['keys'].values()]}"
        )
    lines.append(
        f"two keys / one key wall time: {two.wall_s / one.wall_s:.3f} (wanted <= 0.55); "
        f"throughput against one key's doubled: {one.wall_s / (2 * two.wall_s):.2f} "
        "(wanted >= 0.9); against the slot bound (no detection delay, start-up or download "
        f"counted): one key {bound_one / one.wall_s:.2f}, two keys {bound_two / two.wall_s:.2f}"
    )
    return lines


def _revoke_when(sim: Sim, at_submits: int, done: threading.Event) -> None:
    while not done.is_set():
        if sim.stats()["keys"][fp(SECOND)]["submits"] >= at_submits:
            req = urllib.request.Request(sim.url + f"/_sim/revoke/{fp(SECOND)}", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
            return
        time.sleep(0.02)


def revoke() -> list[str]:
    with workdir() as wd:
        job_file = campaign(wd, JOBS)
        with simulator(wd, **sim_config()) as sim:
            done = threading.Event()
            watcher = threading.Thread(target=_revoke_when, args=(sim, JOBS // 4, done))
            watcher.start()
            keys = key_file(wd, KEY, SECOND)
            m = run_engine(sim, job_file, "--time-scale", str(SCALE), "--api-key-file", str(keys))
            done.set()
            watcher.join()
            st = sim.stats()
    retired = [k for k in m.summary.get("keys") or [] if k["state"] == "retired"]
    return [
        f"revoke: exit {m.code}, {m.summary.get('counts')}, accepted submits "
        f"{st['submits_accepted']} of {JOBS} jobs, duplicate submits {st['duplicate_submits']}, "
        f"401s on submit {st['requests'].get('POST /generateTask', {}).get('401', 0)}, "
        f"submits per key { {k: v['submits'] for k, v in st['keys'].items()} }, "
        f"retired {[(k['key'], k['retired']) for k in retired]}"
    ]


def _journaled(out: Path) -> int:
    path = out / ".apixo-batch.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            return int(
                db.execute("SELECT count(*) FROM jobs WHERE task_id IS NOT NULL").fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def resume_one() -> list[str]:
    with workdir() as wd:
        job_file = campaign(wd, 200)
        cfg = {**sim_config(), "duration_override_s": [10.0, 10.0]}
        with simulator(wd, **cfg) as sim:
            env = {**os.environ, "APIXO_BASE_URL": sim.base_url}
            env.pop("APIXO_API_KEY", None)
            keys = key_file(wd, KEY, SECOND)
            args = [sys.executable, "-m", "apixo_batch", "run", str(job_file), "--json"]
            first = subprocess.Popen(
                [*args, "--time-scale", str(SCALE), "--api-key-file", str(keys)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            end = time.monotonic() + 60
            # Killed once both keys' slots are full: each key has tasks in flight.
            while _journaled(wd / "out") < 2 * int(L_SLOTS * 0.9) and time.monotonic() < end:
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
            first.wait()
            before = sim.stats()
            second = run_engine(sim, job_file, "--time-scale", str(SCALE))  # APIXO_API_KEY=KEY
            after = sim.stats()
    told = [
        e["message"]
        for e in second.events
        if e["event"] == "warning" and e.get("key") == fp(SECOND)
    ]
    on_second = before["keys"][fp(SECOND)]["submits"]
    return [
        f"resume-one: first run killed with {before['submits_accepted']} tasks "
        f"({on_second} on the second key); resumed with the first key alone: exit "
        f"{second.code}, {second.summary.get('counts')}, submits during the resume "
        f"{after['submits_accepted'] - before['submits_accepted']}, lines about the second "
        f"key {len(told)}: {json.dumps(told)}"
    ]


CASES = {"keys": keys_and_wall, "revoke": revoke, "resume-one": resume_one}


def main(argv: list[str]) -> None:
    print(f"engine code: {engine_code()}")
    for name in argv or list(CASES):
        for line in CASES[name]():
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
