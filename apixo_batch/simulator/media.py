"""Deterministic MP4 bytes for result files, any byte range on demand.

A result file is an ``ftyp`` box, an ``mdat`` box header covering the rest of
the file, then a pseudo-random payload. The payload is cut into 64 KiB blocks,
block ``b`` being ``SHAKE-128(key || b)`` where the key derives from
(seed, task id, result index). A block depends on nothing before it, so a
Range request or a multi-gigabyte file costs one block of memory, and the same
seed gives the same bytes on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

__all__ = ["BLOCK", "Mp4Content", "RangeNotSatisfiable", "mp4_header", "parse_range"]

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


class Mp4Content:
    """The bytes of one result file: ``size`` long, a pure function of its identity."""

    __slots__ = ("_header", "_key", "size")

    def __init__(self, seed: int, task_id: str, index: int, size: int) -> None:
        if size < 64:
            raise ValueError("a result file is at least 64 bytes")
        self.size = size
        self._key = hashlib.blake2b(
            f"{seed}:{task_id}:{index}:{size}".encode(), digest_size=32
        ).digest()
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
