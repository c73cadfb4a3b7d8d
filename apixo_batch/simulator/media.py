"""Deterministic, playable MP4 bytes for result files, any byte range on demand.

A result file is a real clip (H.264 in MP4: ``ftyp``, ``moov``, ``mdat``) of the
task's duration and aspect ratio, shipped with the package (scripts/make_clips.py
made them), followed by a ``free`` box that pads it to the configured size with a
pseudo-random payload of its own per task: players skip ``free`` boxes, so every
result plays, and no two results have the same bytes or checksum. The payload is
cut into 64 KiB blocks, block ``b`` being ``SHAKE-128(key || b)`` where the key
derives from (seed, task id, result index). A block depends on nothing before it,
so a Range request or a multi-gigabyte file costs one block of memory, and the same
seed gives the same bytes on every machine and Python version.

A configured size smaller than the clip gives the older form: an ``ftyp`` box and
an ``mdat`` box header over the payload, exactly that size, and not playable.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import struct
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "BLOCK",
    "Mp4Content",
    "RangeNotSatisfiable",
    "clip_for",
    "mp4_header",
    "parse_range",
]

BLOCK = 64 * 1024

# ftyp: size 32, major brand isom, minor version 0x200, compatible brands.
_FTYP = struct.pack(">I4s4sI", 32, b"ftyp", b"isom", 0x200) + b"isomiso2avc1mp41"


def mp4_header(size: int) -> bytes:
    """The ``ftyp`` box and the ``mdat`` box header of a ``size``-byte file."""
    rest = size - len(_FTYP)
    if rest < 2**32:
        return _FTYP + struct.pack(">I4s", rest, b"mdat")
    # 64-bit "largesize" form: size field 1, then the real size after the type.
    return _FTYP + struct.pack(">I4sQ", 1, b"mdat", rest)


def _free_header(size: int) -> bytes:
    """A ``free`` box header for a box of ``size`` bytes, header included."""
    if size < 2**32:
        return struct.pack(">I4s", size, b"free")
    return struct.pack(">I4sQ", 1, b"free", size)


@functools.cache
def _clip(name: str) -> bytes:
    return (importlib.resources.files(__package__) / "clips" / f"{name}.mp4").read_bytes()


def clip_for(inp: Mapping[str, Any]) -> bytes:
    """The playable clip of a task's input: its duration (5 or 10 s) and aspect ratio
    (16:9 unless it asks for 9:16 or 1:1)."""
    seconds = 10 if inp.get("duration") == 10 else 5
    shape = {"9:16": "9x16", "1:1": "1x1"}.get(str(inp.get("aspect_ratio")), "16x9")
    return _clip(f"{seconds}s-{shape}")


class Mp4Content:
    """The bytes of one result file: ``size`` long, a pure function of its identity."""

    __slots__ = ("_header", "_key", "playable", "size")

    def __init__(
        self, seed: int, task_id: str, index: int, size: int, clip: bytes | None = None
    ) -> None:
        if size < 64:
            raise ValueError("a result file is at least 64 bytes")
        self.size = size
        self._key = hashlib.blake2b(
            f"{seed}:{task_id}:{index}:{size}".encode(), digest_size=32
        ).digest()
        # The clip, then a free box over the rest (16 bytes: room for a 64-bit header).
        self.playable = clip is not None and size >= len(clip) + 16
        if clip is not None and self.playable:
            rest = size - len(clip)
            free = _free_header(rest)
            self._header = clip + free
        else:
            self._header = mp4_header(size)

    @property
    def etag(self) -> str:
        return '"' + self._key[:12].hex() + '"'

    def _block(self, number: int, length: int) -> bytes:
        # SHAKE output for a shorter length is a prefix of the longer one, so a
        # tail block may be produced short without changing the file's bytes.
        return hashlib.shake_128(self._key + number.to_bytes(8, "big")).digest(length)

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (exclusive), in pieces of at most one block."""
        end = self.size if end is None else min(end, self.size)
        head = len(self._header)
        if start < head and start < end:
            yield self._header[start : min(end, head)]
        pos = max(start, head) - head
        stop = end - head
        while pos < stop:
            number, offset = divmod(pos, BLOCK)
            upto = min(BLOCK, stop - number * BLOCK)
            yield self._block(number, upto)[offset:upto]
            pos = number * BLOCK + upto

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start``..``end`` at once (tests; avoid for big files)."""
        return b"".join(self.chunks(start, end))

    def sha256(self) -> str:
        """Hex SHA-256 of the whole file, streamed."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (start, end exclusive), or None for the whole file.

    Supports ``bytes=N-M``, ``bytes=N-`` and ``bytes=-S``. A malformed header or
    several ranges are ignored (RFC 9110 allows serving the whole file);
    a range starting past the end raises :class:`RangeNotSatisfiable`.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:
        if not last.isdigit():
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # "5-2" is invalid syntax, not an unsatisfiable range
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, min(int(last) + 1 if last else size, size)
