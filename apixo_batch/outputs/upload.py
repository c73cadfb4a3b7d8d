"""One result streamed into an object: the :class:`~apixo_batch.outputs.download.Sink` of an upload.

An object appears under its final key only whole: a result no larger than one part
is one PutObject, a larger one is a multipart upload that only
CompleteMultipartUpload makes visible, after the size and the MP4 header were
checked. The SHA-256, known only once the last byte went by, is then set on the
object by a copy onto itself (metadata only: the data is not sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .partfile import HEAD, grow_head
from .s3 import META_SHA256, S3Store, StoreFailure, metadata

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["ObjectUpload"]

log = logging.getLogger(__name__)


#: a transfer of more parts than this is a large one
LARGE_PARTS = 4


class ObjectUpload:
    """One result on its way into an object: a :class:`~apixo_batch.outputs.download.Sink`.

    Each part's bytes are reserved from the store's budget before it fills (the
    size of a part, or what is left of the file when that is less); parts are hashed
    in order as they fill and sent in the background, each keeping its reservation
    until S3 has it. A transfer of more than four parts also takes one of the
    store's places for large transfers, so that each has a part on the wire while
    the next fills.
    """

    def __init__(self, store: S3Store, key: str, metadata: dict[str, str]) -> None:
        self._store = store
        self.key = key
        self._metadata = metadata
        self.size = 0
        self.head = b""
        self._hasher: _Hash = hashlib.sha256()
        self._part = io.BytesIO()
        self._hashing: asyncio.Future[None] | None = None
        self._reserved = 0  # bytes of the budget held for the part filling
        self._large = False  # one of the store's places for large transfers is ours
        self._total: int | None = None
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}  # part number -> ETag
        self._next = 1
        self._sending: list[asyncio.Task[None]] = []
        #: uploads given up by a reset (the server restarted the body), aborted at the end
        self._stale: list[tuple[str, list[asyncio.Task[None]]]] = []

    @property
    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    async def open(self) -> None:
        """Before the download starts: when the last result was large, this one likely is
        too, and waits for its place without holding a connection open meanwhile."""
        if self._store.large_seen:
            await self._store.large.acquire()
            self._large = True

    async def reserve(self, total: int | None) -> None:
        """Memory for the part about to fill, once the body's length is known (and again
        on a resume, which keeps what it holds)."""
        self._total = total
        store = self._store
        large = total is None or total > LARGE_PARTS * store.part_size
        store.large_seen = large
        if large and not self._large:
            await store.large.acquire()
            self._large = True
        elif self._large and not large:
            self._large = False
            store.large.release()
        if not self._reserved:
            self._reserved = await store.budget.take(self._need())

    def _need(self) -> int:
        part = self._store.part_size
        if self._total is None or self._total <= self.size:
            return part
        return min(part, self._total - self.size)

    def _give_back(self) -> None:
        if self._reserved:
            self._store.budget.give(self._reserved)
            self._reserved = 0
        if self._large:
            self._large = False
            self._store.large.release()

    def add(self, piece: bytes, where: Callable[[], str]) -> bool:
        if len(self.head) < HEAD:
            self.head = grow_head(self.head, piece, where)
        self._part.write(piece)
        self.size += len(piece)
        return self._part.tell() >= self._store.part_size

    def _cut(self) -> io.BytesIO:
        """The part, rewound; the next starts anew.

        A part is a BytesIO that owns its bytes, so each byte is copied once: botocore
        would wrap ``bytes`` in a BytesIO that shares them, and aiohttp's read of its
        buffer would copy them all again."""
        data, self._part = self._part, io.BytesIO()
        data.seek(0)
        return data

    async def flush(self) -> None:
        self._raise_failed()
        if self._upload_id is None:
            got = await self._store.call(
                "create_multipart_upload",
                key=self.key,
                ContentType="video/mp4",
                Metadata=self._metadata,
            )
            self._upload_id = got["UploadId"]
        data = self._cut()
        # Hashed in a thread while the next part fills (in order: one hash at a time).
        await self._hashed()
        self._hashing = asyncio.ensure_future(asyncio.to_thread(self._hash, self._hasher, data))
        self._send_part(data)
        # The part's bytes go with its send and its reservation: nothing here may keep
        # them alive once S3 has them, while this waits for the next part's memory.
        del data
        self._reserved = await self._store.budget.take(self._need())

    def _send_part(self, data: io.BytesIO) -> None:
        number, self._next = self._next, self._next + 1
        held, self._reserved = self._reserved, 0
        sending = asyncio.ensure_future(self._send(number, data))
        if held:
            # Given back when the send ends however it ends, cancelled before its first
            # step included (a coroutine that never started runs no `finally`).
            budget = self._store.budget
            sending.add_done_callback(lambda _: budget.give(held))
        self._sending.append(sending)

    async def _hashed(self) -> None:
        if self._hashing is not None:
            hashing, self._hashing = self._hashing, None
            await asyncio.shield(hashing)

    @staticmethod
    def _hash(hasher: _Hash, data: io.BytesIO) -> None:
        with data.getbuffer() as view:
            hasher.update(view)

    async def _send(self, number: int, data: io.BytesIO) -> None:
        upload_id = self._upload_id
        got = await self._store.call(
            "upload_part",
            key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentLength=data.getbuffer().nbytes,
        )
        if upload_id == self._upload_id:
            self._parts[number] = got["ETag"]

    def _raise_failed(self) -> None:
        for task in self._sending:
            failed = task.exception() if task.done() and not task.cancelled() else None
            if failed is not None:
                raise failed

    async def drain(self) -> None:
        if self._sending:
            await asyncio.shield(asyncio.gather(*self._sending))

    async def quiesce(self) -> BaseException | None:
        if not self._sending:
            return None
        await asyncio.wait(self._sending)
        for task in self._sending:
            if not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    def reset(self) -> None:
        if self._upload_id is not None:
            self._stale.append((self._upload_id, self._sending))
        self._upload_id, self._sending, self._parts, self._next = None, [], {}, 1
        self._part = io.BytesIO()
        self._hasher = hashlib.sha256()
        self.size = 0
        self.head = b""

    async def commit(self) -> None:
        try:
            await self._commit()
        finally:
            self._give_back()
            await asyncio.shield(self._abort_stale())

    async def _commit(self) -> None:
        data = self._cut()
        await self._hashed()
        if self._upload_id is None:
            # Smaller than a part: one PutObject, the object appears whole with its metadata.
            await asyncio.to_thread(self._hash, self._hasher, data)
            await self._store.call(
                "put_object",
                key=self.key,
                Body=data,
                ContentLength=data.getbuffer().nbytes,
                ContentType="video/mp4",
                Metadata={**self._metadata, **metadata(**{META_SHA256: self.hexdigest})},
            )
            return
        if data.getbuffer().nbytes:
            await asyncio.to_thread(self._hash, self._hasher, data)
            self._send_part(data)
        del data
        await asyncio.gather(*self._sending)
        parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
        done = await self._store.call(
            "complete_multipart_upload",
            key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._upload_id = None
        # Only the object we just completed is relabelled (not one written since).
        await self._store.call(
            "copy_object",
            key=self.key,
            CopySource={"Bucket": self._store.location.bucket, "Key": self.key},
            CopySourceIfMatch=done["ETag"],
            MetadataDirective="REPLACE",
            ContentType="video/mp4",
            Metadata={**self._metadata, **metadata(**{META_SHA256: self.hexdigest})},
        )

    async def discard(self) -> None:
        await self.keep()

    async def keep(self) -> None:
        # Nothing of an object upload survives this run: a later run starts over.
        self._part = io.BytesIO()
        self._give_back()
        if self._upload_id is not None:
            self._stale.append((self._upload_id, self._sending))
            self._upload_id, self._sending = None, []
        await asyncio.shield(self._abort_stale())

    async def _abort_stale(self) -> None:
        stale, self._stale = self._stale, []
        for upload_id, sending in stale:
            if sending:
                await asyncio.wait(sending)
            try:
                await self._store.call("abort_multipart_upload", key=self.key, UploadId=upload_id)
            except StoreFailure as exc:
                # The next run's sweep finds it; the failure that got us here matters more.
                log.warning("cannot abort the upload of %s: %s", self.key, exc)
