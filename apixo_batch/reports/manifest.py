"""What a run shows and leaves behind: the manifest, the summary, event lines.

The manifest is written from the journal, in job-file order, atomically
(temp file, fsync, rename), at the end of every run and on interrupt.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..clock import human_duration
from ..events import Event, Summary
from ..journal import Decision, JobRow, JobState

__all__ = [
    "ManifestInfo",
    "manifest_entry",
    "manifest_state",
    "render_summary",
    "write_manifest",
]


def manifest_state(state: JobState) -> str:
    """The four states a manifest knows: done, failed, expired, pending."""
    if state in (JobState.DONE, JobState.FAILED, JobState.EXPIRED):
        return state.value
    return "pending"


def _iso(ts: float | None) -> str | None:
    # A journal written by a version that let --time-scale be inf holds inf expiries.
    if ts is None or not math.isfinite(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def manifest_entry(
    row: JobRow, decision: Decision | None = None, strays: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One job's line in manifest.jsonl; ``decision``: the review page's, if any;
    ``strays``: its stray tasks (several runners), if any."""
    entry: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "state": manifest_state(row.state),
        "task_id": row.task_id,
        "files": list(row.landed_files),
        "bytes": row.bytes,
        "sha256": list(row.sha256),
        "fail_code": row.fail_code,
        "fail_msg": row.fail_msg,
        "cost_time_ms": row.cost_time_ms,
        "result_urls": list(row.result_urls),
        "expires_at": _iso(row.expires_at),
        "estimated_cost_usd": row.cost_usd,
        "arrived_via": row.arrived_via,
        "possibly_duplicated": row.possibly_duplicated,
    }
    if not row.in_file:
        entry["in_job_file"] = False
    if row.changed_input_hash:
        entry["input_changed_after_submit"] = True
    if row.take > 1:
        # `run --reroll`: this take's files above; the earlier takes' files stay on disk.
        entry["take"] = row.take
        entry["earlier_files"] = list(row.earlier_files)
        entry["seed"] = row.input.get("seed")
    if row.key_fp is not None:
        # A pool's task: the fingerprint of the key that created it (only it reads it).
        entry["key"] = row.key_fp
    if decision is not None and decision.decision is not None:
        # Only decided jobs carry it: an undone decision is no decision.
        entry["review"] = decision.as_json()
    if strays:
        # Paid tasks of this job besides its own (a runner cut off while its row was
        # adopted): their results are the user's too, fetched from these URLs.
        entry["stray_tasks"] = strays
    return entry


@dataclass
class ManifestInfo:
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=dict)
    fail_codes: dict[str, list[str]] = field(default_factory=dict)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)


def write_manifest(
    rows: Iterable[JobRow],
    path: Path,
    decisions: Mapping[str, Decision] | None = None,
    strays: Mapping[str, list[dict[str, Any]]] | None = None,
) -> ManifestInfo:
    """Write ``path`` atomically from the journal's rows (file order), each with its review
    decision from ``decisions``; returns counts for the summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter({"done": 0, "failed": 0, "expired": 0, "pending": 0})
    arrived: Counter[str] = Counter()
    fails: dict[str, list[str]] = defaultdict(list)
    per_model: dict[str, Counter[str]] = defaultdict(Counter)
    # Not mkstemp: its 0600 would make the manifest unreadable to whoever may read the
    # videos beside it. Created like them, with the process's umask.
    tmp = str(path.parent / f".manifest-{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row in rows:
                if not row.in_file and row.task_id is None:
                    continue  # removed from the file before it cost anything
                entry = manifest_entry(
                    row,
                    decisions.get(row.id) if decisions else None,
                    strays.get(row.id) if strays else None,
                )
                # ASCII output keeps json on its C encoder (bench/scaling.py writes 100k rows).
                out.write(json.dumps(entry) + "\n")
                counts[entry["state"]] += 1
                per_model[row.model][entry["state"]] += 1
                if row.arrived_via:
                    arrived[row.arrived_via] += 1
                if entry["state"] in ("failed", "expired"):
                    fails[row.fail_code or "UNKNOWN"].append(row.id)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ManifestInfo(
        path, dict(counts), dict(arrived), dict(fails), {m: dict(c) for m, c in per_model.items()}
    )


def key_line(key: Mapping[str, Any]) -> str:
    """One key of a pool, by its fingerprint: state, tasks against its limit, requests,
    what it learned, spend (and why it was retired)."""
    learned = []
    if key.get("learned_rpm"):
        learned.append(f"~{key['learned_rpm']:,} rpm")
    if key.get("learned_slots"):
        learned.append(f"~{key['learned_slots']:,} slots")
    line = (
        f"key {key['key']} {key['state']}: {key['in_flight']}/{key['max_concurrent']} in "
        f"flight, {key['rpm']:,}/{key['rpm_limit']:,} rpm, {key['submitted']} submitted, "
        f"{key['rate_limited']} rate-limited, spent ~${key['spent_usd']:.2f}"
    )
    if learned:
        line += f", learned {' and '.join(learned)}"
    if key.get("retired"):
        line += f"; retired: {key['retired']}"
    return line


def render_summary(summary: Summary, out: IO[str] | None = None) -> None:
    """The plain end-of-run summary for people (stderr)."""
    out = out or sys.stderr
    counts = summary.counts
    line = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("done", "failed", "expired", "pending"))
    print(f"\napixo-batch: {plural(summary.jobs, 'job')}: {line}", file=out)
    rpt = summary.requests_per_task
    print(
        f"  submitted {summary.submitted} this run, "
        f"{plural(summary.requests, 'API request')}"
        + (f" ({rpt} per task)" if rpt is not None else "")
        + f", {summary.rate_limited} rate-limited, {summary.retries} retried",
        file=out,
    )
    took = f"  took {human_duration(summary.wall_s)}"
    if summary.planned_wall_s is not None:
        took += f", planned {human_duration(summary.planned_wall_s)}"
    turnaround = summary.slot_turnaround_s
    if turnaround:
        took += (
            f"; a freed slot's next submit left after {turnaround['p50']:.3f} s "
            f"(p50), {turnaround['p90']:.3f} s (p90)"
        )
    print(took, file=out)
    if summary.learned_rpm:
        how = f" ({summary.learned_limit})" if summary.learned_limit else ""
        print(
            f"  the account accepted about {summary.learned_rpm:,} requests/min{how}: "
            "the next run starts just under it",
            file=out,
        )
    if summary.learned_slots:
        print(
            f"  the account held about {summary.learned_slots:,} tasks at once "
            "(submits over it were answered 429 and waited for a slot)",
            file=out,
        )
    per_model = summary.per_model
    if len(per_model) > 1 or any(set(c) - {"done"} for c in per_model.values()):
        width = max(len(m) for m in per_model)
        states = ("done", "failed", "expired", "pending")
        print("  " + "model".ljust(width) + "".join(f"{s:>9}" for s in states), file=out)
        for model in sorted(per_model):
            c = per_model[model]
            print(
                "  " + model.ljust(width) + "".join(f"{c.get(s, 0):>9}" for s in states), file=out
            )
    for key in summary.keys or []:
        print("  " + key_line(key), file=out)
    spent, unknown = summary.spent_usd, summary.unknown_price_jobs
    if spent is None:
        cost = "  estimated spend unknown (the journal's totals could not be read)"
    else:
        cost = f"  estimated spend ${spent:.2f}"
    if unknown:
        cost += f" + {unknown} job(s) of unknown price"
    print(cost, file=out)
    cut_off = summary.submit_cut_off or 0
    if summary.possibly_duplicated is None:
        print("  possibly duplicated submits: unknown (the journal could not be read)", file=out)
    elif summary.possibly_duplicated > cut_off:
        print(
            f"  {summary.possibly_duplicated - cut_off} job(s) possibly submitted twice "
            "(a submit was cut off before its answer was journaled)",
            file=out,
        )
    if cut_off:
        # Pending, and a task of theirs may exist: neither "never submitted" nor "twice".
        print(
            f"  {cut_off} pending job(s) may have been submitted already (the answer was cut "
            "off): the next run submits them again, possibly paying twice",
            file=out,
        )
    if summary.arrived:
        print(
            "  results arrived by " + ", ".join(f"{k}: {v}" for k, v in summary.arrived.items()),
            file=out,
        )
    for code, ids in summary.fail_codes.items():
        n = summary.fail_counts.get(code, len(ids))
        more = f", ... ({n} in all)" if n > len(ids) else ""
        print(f"  {code} x{n}: {', '.join(ids)}{more}", file=out)
    for job in summary.input_changed:
        print(f"  warning: job {job} changed after it was submitted", file=out)
    if summary.never_submitted:
        # After a stop, `run` would stop again until its cause is fixed: the next step says
        # what to do, and this line only counts.
        how = (
            ""
            if summary.next_step
            else ": `apixo-batch run` submits them (`download` only fetches what was)"
        )
        print(f"  {summary.never_submitted} pending job(s) were never submitted{how}", file=out)
    if summary.stop_reason:
        print(f"  stopped submitting: {summary.stop_reason}", file=out)
    if summary.interrupted:
        resume = "" if summary.next_step else ": run the same command again to resume"
        print(f"  interrupted{resume}", file=out)
    if summary.manifest:
        print(f"  files in {summary.output_dir}, manifest {summary.manifest}", file=out)
    if summary.next_step:
        print(f"  next: {summary.next_step}", file=out)


def plural(n: int, noun: str) -> str:
    """``1 job``, ``2 jobs``: a count with its noun as people write it."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_EVENT_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def event_line(event: Event) -> str:
    """One ``--json`` line."""
    # One encoder for every event: json.dumps builds a new one per call when given options.
    return _EVENT_ENCODER.encode(event.as_dict())
