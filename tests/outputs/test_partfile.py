"""The ``.part`` file of one download: what stays on disk when a write is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from apixo_batch.outputs import partfile
from apixo_batch.outputs.partfile import PartFile

#: the start of an MP4: a 24-byte ftyp box
MP4 = (24).to_bytes(4, "big") + b"ftypisom" + bytes(12) + b"body" * 100


def _full_disk(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> None:
    """``os.write`` as on a full disk: the file exists, ``after`` bytes fit, then ENOSPC."""
    real = os.write
    room = [after]

    def write(fd: int, data: bytes | memoryview) -> int:
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[: room[0]]))
        room[0] -= n
        return n

    monkeypatch.setattr(partfile.os, "write", write)


def _part(tmp_path: Path) -> tuple[PartFile, Path]:
    path = tmp_path / "v.mp4.part"
    part = PartFile.fresh(path, chunk_size=1 << 20)
    assert not part.add(MP4, lambda: "v.mp4")  # a small file: its only write is the commit's
    return part, path


def test_a_commit_the_full_disk_refused_leaves_no_empty_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file's bytes are all written by its commit; on a full disk the commit
    creates the file and cannot write a byte: kept for a resume, it is removed (296 empty
    ``.part`` files once stayed behind a full results disk)."""
    part, path = _part(tmp_path)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        part.commit(tmp_path / "v.mp4")
    assert path.exists() and path.stat().st_size == 0  # what the commit left
    part.close_keeping_bytes()
    assert not path.exists()
    assert not (tmp_path / "v.mp4").exists()


def test_a_commit_refused_part_way_keeps_its_bytes_for_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part, path = _part(tmp_path)
    _full_disk(monkeypatch, after=100)
    with pytest.raises(OSError, match="No space"):
        part.commit(tmp_path / "v.mp4")
    part.close_keeping_bytes()
    assert path.read_bytes() == MP4[:100]


def test_a_landed_part_is_not_touched_by_a_late_keep(tmp_path: Path) -> None:
    part, path = _part(tmp_path)
    part.commit(tmp_path / "v.mp4")
    part.close_keeping_bytes()
    assert (tmp_path / "v.mp4").read_bytes() == MP4 and not path.exists()
