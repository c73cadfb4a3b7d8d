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

Runs alternate, A B, B A, A B, ..., after one warm-up run that is not
counted: this project's VMs drift by up to 20 % within an hour, and each run's
clean-up (thousands of deleted files) weighs on the next run's file creations
on ext4 without a journal; alternating puts both on the two sides alike. Runs
whose engine exits with anything but 0 stop the comparison. The simulator of
each run is the side's own (its CPU is not counted); when the two sides'
simulators differ, the work they ask of the engine may too, and ab.py says so.
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
_EXIT = re.compile(r"exit (-?[0-9]+)")
# Run in each side's interpreter: every module of the package, imported, and where from.
# A module missing from the side's tree would otherwise be found in the editable install.
_WHERE_FROM = """
import importlib, pkgutil, sys
import apixo_batch
for info in pkgutil.walk_packages(apixo_batch.__path__, "apixo_batch."):
    if not info.name.endswith(".__main__"):  # importing it would run the CLI
        importlib.import_module(info.name)
for name, module in sorted(sys.modules.items()):
    if name == "apixo_batch" or name.startswith("apixo_batch."):
        print(getattr(module, "__file__", None) or "")
"""


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


def _sha(rev: str) -> str | None:
    """The commit of ``rev``; None for the working tree."""
    if rev == WORK:
        return None
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"{rev}: not a commit of {ROOT} (or {WORK} for the working tree)")


def _export(label: str, sha: str | None, into: Path) -> tuple[str, Path]:
    """A side as a directory of its own: (a name for it, the directory)."""
    if sha is None:
        return "working tree", ROOT
    tree = into / f"{label}-{sha[:12]}"  # the same commit may be both sides
    tree.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", sha, "apixo_batch"],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError:
        sys.exit(f"{sha[:12]}: has no apixo_batch/ to measure")
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
        [sys.executable, "-c", _WHERE_FROM],
        env=_env(side.tree),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    own = side.tree.resolve()
    strays = [f for f in found if not Path(f).resolve().is_relative_to(own)]
    if not found or strays:
        where = strays[0] if strays else "nothing"
        sys.exit(f"side {side.label} ({side.rev}) would run {where}, not its own code: stopped")


def _run(side: Side, jobs: int, cwd: Path) -> tuple[float, float, str]:
    """One engine_bench overhead run: (s per 1,000 tasks, reference loop ms, its line)."""
    out = subprocess.run(
        [sys.executable, str(HERE / "engine_bench.py"), "overhead", "--jobs", str(jobs)],
        env=_env(side.tree),
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("overhead")), "")
    figure, reference = _PER_1000.search(line), _REFERENCE.search(line)
    exits = _EXIT.findall(line)
    if out.returncode or figure is None or reference is None:
        sys.exit(f"side {side.label}: engine_bench exited {out.returncode}:\n{out.stderr[-2000:]}")
    if not exits or any(code != "0" for code in exits):
        sys.exit(f"side {side.label}: the engine did not exit 0, its CPU says nothing:\n{line}")
    return float(figure.group(1)), float(reference.group(1)), line


def _simulators_differ(a: str | None, b: str | None) -> bool:
    if a == b:
        return False
    revs = [r for r in (a, b) if r is not None]  # one rev alone: against the working tree
    rc = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", *revs, "--", "apixo_batch/simulator"]
    ).returncode
    return rc != 0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("a", metavar="REV_A", help=f"a git revision, or {WORK}")
    parser.add_argument("b", metavar="REV_B", help=f"a git revision, or {WORK}")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run (default 2000)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="runs before the counted ones, not counted (default 1)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.jobs < 1 or args.warmup < 0:
        parser.error("--rounds and --jobs must be at least 1, --warmup at least 0")
    shas = [_sha(args.a), _sha(args.b)]
    if _simulators_differ(*shas):
        print("note: the two sides' simulators differ; so may the work they ask of the engine")
    with tempfile.TemporaryDirectory(prefix="apixo-ab-") as tmp:
        base = Path(tmp)
        neutral = base / "cwd"
        neutral.mkdir()
        sides = []
        for label, sha in zip("AB", shas, strict=True):
            name, tree = _export(label, sha, base)
            side = Side(label, name, tree)
            _check_imports(side, neutral)
            sides.append(side)
        for _ in range(args.warmup):
            _run(sides[0], args.jobs, neutral)
        for n in range(1, args.rounds + 1):
            for side in sides if n % 2 else sides[::-1]:
                figure, reference, line = _run(side, args.jobs, neutral)
                side.figures.append(figure)
                side.references.append(reference)
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
