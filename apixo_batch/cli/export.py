"""``export --kept DIR``: the takes kept on the review page, under their job names, in DIR.

Each kept job's files (the take the decision was made on) are hard-linked into DIR where
the filesystem allows (no copy of a video: the same bytes under a second name), else
copied, as ``<job id>.<ext>`` (``<job id>-2.<ext>``... for a job of several results).
Each lands under a temporary name and is renamed: an interrupted export leaves whole
files or none. ``DIR/export.jsonl`` says what was exported, from where, how, and the
decision that chose it; written last, atomically.

A kept job whose file is not on disk (not downloaded, removed) is named and skipped, the
exit is then 1. Exporting again replaces what the last export placed (a job no longer
kept leaves DIR); other files in DIR are left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .. import runtime
from ..defaults import state_path
from ..errors import ApixoError, JobFileError, StorageError
from ..exitcodes import ExitCode
from ..jobs import load_campaign
from ..journal import KEEP, Decision, JobRow, Journal
from ..location import S3Location, is_s3, parse_s3
from ..pipeline.owner import other_campaign
from ..reports.review import take_of as _take_of

__all__ = ["EXPORT_MANIFEST", "export_command"]

EXPORT_MANIFEST = "export.jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _err(message: str) -> None:
    print(f"apixo-batch: {message}", file=sys.stderr)


@dataclass
class _Exported:
    linked: int = 0
    copied: int = 0


def export_command(args: argparse.Namespace) -> int:
    try:
        campaign = load_campaign(args.jobfile, out_dir=args.out, check_jobs=False)
    except JobFileError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    except OSError as exc:
        _err(f"cannot read the job file: {exc}")
        return ExitCode.INVALID
    folder = campaign.output_dir
    if isinstance(folder, S3Location) != is_s3(str(args.kept)):
        _err(
            f"--kept {args.kept}: a folder's kept takes export to another folder, an s3:// "
            "output's to another s3:// prefix"
        )
        return ExitCode.INVALID
    state = (
        Path(args.state).resolve()
        if args.state
        else state_path(folder, campaign.path, campaign.name)
    )
    if not state.exists():
        _err(f"no journal at {state}: this campaign has not run yet")
        return ExitCode.FAILED_JOBS
    try:
        journal = Journal(state, lock=False)
    except StorageError as exc:
        _err(str(exc))
        return ExitCode.IO_ERROR
    except ApixoError as exc:
        _err(str(exc))
        return ExitCode.INVALID
    try:
        refused = other_campaign(state, journal.get_meta("campaign"), campaign.name)
        if refused is not None:
            _err(refused)
            return ExitCode.INVALID
        kept = [d for d in journal.decisions().values() if d.decision == KEEP]
        rows = {d.job_id: journal.get(d.job_id) for d in kept}
    finally:
        journal.close()
    if isinstance(folder, S3Location):
        return _to_s3(kept, rows, folder, str(args.kept))
    target = Path(args.kept).absolute()
    if target.resolve() == folder.resolve():
        _err(f"--kept {target}: that is the output folder itself; name another folder")
        return ExitCode.INVALID
    try:
        target.mkdir(parents=True, exist_ok=True)
        return _export(kept, rows, folder, target)
    except OSError as exc:
        _err(f"cannot write {exc.filename or target}: {exc.strerror or exc}")
        return ExitCode.IO_ERROR


def _export(
    kept: list[Decision], rows: dict[str, JobRow | None], folder: Path, target: Path
) -> int:
    lines: list[dict[str, Any]] = []
    missing: list[str] = []
    done = _Exported()
    order = sorted(kept, key=lambda d: _file_order(rows, d))
    before = _exported_before(target / EXPORT_MANIFEST)
    for decision in order:
        row = rows[decision.job_id]
        files = _files_of(row, decision) if row is not None else ()
        if not files:
            missing.append(f"{decision.job_id} (no file on disk: not downloaded)")
            continue
        for n, rel in enumerate(files, 1):
            source = folder / rel
            if not source.is_file():
                missing.append(f"{decision.job_id} ({rel}: not on disk)")
                continue
            name = _name(decision.job_id, rel, n)
            how = _place(source, target / name)
            if how == "link":
                done.linked += 1
            else:
                done.copied += 1
            lines.append(_line(decision, name, rel, how, source.stat().st_size))
    _write_manifest(target / EXPORT_MANIFEST, lines)
    # A job kept at the last export and not now (rejected, undone since) leaves DIR: what
    # is there is what is kept.
    for name in before - {line["file"] for line in lines}:
        (target / name).unlink(missing_ok=True)
    return _told(lines, missing, str(target), str(target / EXPORT_MANIFEST), done.linked,
                 done.copied)  # fmt: skip


def _file_order(rows: dict[str, JobRow | None], d: Decision) -> tuple[int, str]:
    row = rows[d.job_id]
    return (row.idx if row is not None else -1, d.job_id)


def _line(decision: Decision, name: str, source: str, how: str, size: int) -> dict[str, Any]:
    return {
        "id": decision.job_id,
        "file": name,
        "source": source,
        "how": how,
        "bytes": size,
        "review": decision.as_json(),
    }


def _told(
    lines: list[dict[str, Any]],
    missing: list[str],
    target: str,
    manifest: str,
    linked: int,
    copied: int,
) -> int:
    jobs = len({line["id"] for line in lines})
    print(
        f"export: {jobs} kept job(s), {len(lines)} file(s) in {target} ({linked} hard-"
        f"linked, {copied} copied); what was exported: {manifest}"
    )
    for why in missing[:20]:
        _err(f"kept job not exported: {why}")
    if len(missing) > 20:
        _err(f"and {len(missing) - 20} more kept job(s) not exported")
    return ExitCode.FAILED_JOBS if missing else ExitCode.OK


def _to_s3(
    kept: list[Decision], rows: dict[str, JobRow | None], source: S3Location, kept_at: str
) -> int:
    try:
        target = parse_s3(kept_at)
    except ValueError as exc:
        _err(f"--kept: {exc}")
        return ExitCode.INVALID
    if (target.bucket, target.prefix) == (source.bucket, source.prefix):
        _err(f"--kept {target}: that is the output itself; name another prefix")
        return ExitCode.INVALID
    try:
        return runtime.run(_export_s3(kept, rows, source, target))
    except ApixoError as exc:  # the store refusing, unreachable, or the s3 extra missing
        _err(f"export to {target}: {exc}")
        return ExitCode.IO_ERROR


async def _export_s3(
    kept: list[Decision], rows: dict[str, JobRow | None], source: S3Location, target: S3Location
) -> int:
    """Each kept file copied inside the store (CopyObject: its bytes never come here) to
    ``<prefix><job id>.<ext>``, then ``export.jsonl`` beside them; objects the last export
    placed for jobs no longer kept are deleted."""
    from ..outputs.s3 import S3Store

    reading, store = S3Store(source), S3Store(target)
    lines: list[dict[str, Any]] = []
    missing: list[str] = []
    try:
        before = await _exported_before_s3(store, target)
        for decision in sorted(kept, key=lambda d: _file_order(rows, d)):
            row = rows[decision.job_id]
            files = _files_of(row, decision) if row is not None else ()
            if not files:
                missing.append(f"{decision.job_id} (no file in the store: not downloaded)")
                continue
            for n, rel in enumerate(files, 1):
                found = await reading.head(source.key(rel))
                if found is None:
                    missing.append(f"{decision.job_id} ({source.url(rel)}: not in the store)")
                    continue
                name = _name(decision.job_id, rel, n)
                await store.call(
                    "copy_object",
                    key=target.key(name),
                    CopySource={"Bucket": source.bucket, "Key": source.key(rel)},
                )
                lines.append(_line(decision, name, source.url(rel), "copy", found.size))
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        await store.call(
            "put_object",
            key=target.key(EXPORT_MANIFEST),
            Body=body,
            ContentType="application/x-ndjson",
        )
        for name in before - {line["file"] for line in lines}:
            await store.call("delete_object", key=target.key(name))
    finally:
        await reading.close()
        await store.close()
    return _told(lines, missing, target.url(), target.url(EXPORT_MANIFEST), 0, len(lines))


async def _exported_before_s3(store: Any, target: S3Location) -> set[str]:
    from ..outputs.s3 import StoreFailure

    try:
        got = await store.call("get_object", key=target.key(EXPORT_MANIFEST))
        async with got["Body"] as stream:
            text = (await stream.read()).decode("utf-8", "replace")
    except StoreFailure as exc:
        if exc.code in ("404", "NoSuchKey", "NotFound"):
            return set()
        raise
    return _names_in(text)


def _files_of(row: JobRow, decision: Decision) -> tuple[str, ...]:
    """The files of the take the decision was made on: the job's current take's, or an
    earlier take's kept beside them (``run --reroll``)."""
    if decision.take == row.take:
        return row.landed_files
    return tuple(f for f in row.earlier_files if _take_of(f, row.filename) == decision.take)


def _name(job_id: str, rel: str, n: int) -> str:
    """``<job id>.<ext>``, ``<job id>-2.<ext>`` for a second result; a character a file
    name should not hold becomes ``_``."""
    suffix = PurePosixPath(rel).suffix
    stem = _UNSAFE.sub("_", job_id).lstrip(".") or "job"
    return f"{stem}{'' if n == 1 else f'-{n}'}{suffix}"


def _place(source: Path, dest: Path) -> str:
    """``dest`` made the same file as ``source``: a hard link where the filesystem allows,
    else a copy; under a temporary name, then renamed over whatever is there."""
    with contextlib.suppress(FileNotFoundError):
        if dest.samefile(source):
            return "link"  # already this file (a link of an earlier export)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
            how = "link"
        except OSError as exc:
            # Another filesystem, or one without hard links: the bytes are copied.
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, tmp)
            how = "copy"
        os.replace(tmp, dest)
    finally:
        # Renaming a link over another link of the same file does nothing (POSIX): the
        # temporary name would stay.
        tmp.unlink(missing_ok=True)
    return how


def _exported_before(path: Path) -> set[str]:
    """The file names the last export placed, as its manifest lists them (none if none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    return _names_in(text)


def _names_in(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        try:
            name = json.loads(line).get("file")
        except (ValueError, AttributeError):
            continue
        if isinstance(name, str) and name == PurePosixPath(name).name:
            names.add(name)  # a bare name in DIR, never a path elsewhere
    return names


def _write_manifest(path: Path, lines: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
