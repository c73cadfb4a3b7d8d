"""Engine CPU of two revisions, A against B (issue 4): interleaved runs, medians. Asserts nothing.

    .venv/bin/python bench/ab.py REV_A REV_B [--rounds 3] [--jobs 2000]

A side is a git revision, exported to a temporary directory, or ``WORK``: the
working tree as it is, uncommitted changes included. Every run is
``bench/engine_bench.py overhead`` of this checkout (the same measuring code
for both sides), with the side's package first on ``PYTHONPATH``, its modules
compiled beforehand, and the working directory outside any checkout.

Why the care: ``python -m`` puts the current directory first on ``sys.path``,
so a comparison started from inside a checkout runs that checkout's code on
both sides and measures only noise. Stops 10 to 12 of issue 4 compared trees
that way. Before measuring, each side's engine interpreter reports the package
it imports; a side that would import something else stops the comparison.

Runs alternate A, B, A, B, ...: this project's VMs drift by up to 20 % within
an hour, and alternation puts the drift on both sides alike. The simulator of
each run is the side's own (it runs in its own process; its CPU is not counted).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = "WORK"

_PER_1000 = re.compile(r"= ([0-9.]+) s per 1,000 tasks")
_REFERENCE = re.compile(r"reference loop ([0-9]+) ms")


@dataclass
class Side:
    label: str
    rev: str
    tree: Path
    figures: list[float] = field(default_factory=list)
    references: list[float] = field(default_factory=list)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _export(rev: str, into: Path) -> tuple[str, Path]:
    """``rev`` as a directory of its own: (a name for it, the directory)."""
    if rev == WORK:
        return "working tree", ROOT
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = into / sha[:12]
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", sha, "apixo_batch"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)  # our own archive: nothing in it points outside
    return sha[:12], tree


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    return env


def _check_imports(side: Side, cwd: Path) -> None:
    # Compiled first: where PYTHONDONTWRITEBYTECODE is set, every engine process would
    # otherwise compile the package again, ~150 ms of CPU that the other side may not pay.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(side.tree / "apixo_batch")], check=True
    )
    found = subprocess.run(
        [sys.executable, "-c", "import apixo_batch; print(apixo_batch.__file__)"],
        env=_env(side.tree),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(side.tree.resolve()):
        sys.exit(f"side {side.label} ({side.rev}) would run {found}, not its own code: stopped")


def _run(side: Side, jobs: int, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(HERE / "engine_bench.py"), "overhead", "--jobs", str(jobs)],
        env=_env(side.tree),
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("overhead")), "")
    figure, reference = _PER_1000.search(line), _REFERENCE.search(line)
    if out.returncode or figure is None or reference is None:
        sys.exit(f"side {side.label}: engine_bench exited {out.returncode}:\n{out.stderr[-2000:]}")
    side.figures.append(float(figure.group(1)))
    side.references.append(float(reference.group(1)))
    return line


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("a", metavar="REV_A", help=f"a git revision, or {WORK}")
    parser.add_argument("b", metavar="REV_B", help=f"a git revision, or {WORK}")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run (default 2000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apixo-ab-") as tmp:
        base = Path(tmp)
        neutral = base / "cwd"
        neutral.mkdir()
        sides = []
        for label, rev in (("A", args.a), ("B", args.b)):
            name, tree = _export(rev, base)
            side = Side(label, name, tree)
            _check_imports(side, neutral)
            sides.append(side)
        for n in range(1, args.rounds + 1):
            for side in sides:
                line = _run(side, args.jobs, neutral)
                print(
                    f"{side.label} {side.rev} run {n}: {side.figures[-1]:.2f} s per 1,000 tasks "
                    f"(reference loop {side.references[-1]:.0f} ms); {line}",
                    flush=True,
                )
    a, b = (statistics.median(s.figures) for s in sides)
    for side in sides:
        print(
            f"{side.label} {side.rev}: median {statistics.median(side.figures):.2f} s per 1,000 "
            f"tasks (runs {', '.join(f'{f:.2f}' for f in side.figures)}; reference loop "
            f"{min(side.references):.0f}-{max(side.references):.0f} ms)"
        )
    print(f"B against A: {(b - a) / a * 100:+.1f} % engine CPU per task (medians)")


if __name__ == "__main__":
    main(sys.argv[1:])
