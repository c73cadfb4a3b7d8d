"""S3-compatible object storage through aiobotocore: results streamed into multipart uploads.

Why aiobotocore (the ``s3`` extra) rather than obstore: it runs on aiohttp like the
rest of the engine, and it gives the upload id, so a transfer that fails is
aborted by id and every upload this campaign left behind can be found and
aborted; obstore's streamed multipart hides the id. Endpoint, region and
credentials come from the standard AWS environment, files and profiles
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``...): any S3-compatible store works. No
secret is ever part of a message: errors name the bucket, the key and S3's code.

An object appears under its final key only whole: a result smaller than one part
is one PutObject, a larger one is a multipart upload that only
CompleteMultipartUpload makes visible, after the size and the MP4 header were
checked. The SHA-256, known only once the last byte went by, is then set on the
object by a copy onto itself (metadata only: the data is not sent again).
Memory is bounded by the part size times the parts in flight, shared by every
transfer of the run: a transfer holds one part's buffer while it fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DownloadError, IntegrityError, PathError, StorageError
from ..partfile import HEAD, ftyp_problem
from .location import S3Location

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["ObjectInfo", "ObjectUpload", "S3Store", "StoreFailure", "part_settings"]

log = logging.getLogger(__name__)

MIB = 1 << 20
#: S3's smallest part (all but the last); 8 MiB is what the AWS CLI uses
MIN_PART_MIB, PART_MIB, PARTS_IN_FLIGHT = 5, 8, 4
#: user metadata (``x-amz-meta-*``) each result carries
META_SHA256, META_JOB, META_TASK = "sha256", "apixo-job", "apixo-task"
#: where a result name ends in its index (``x-2.mp4``): the job's name is ``x.mp4``
_INDEXED = re.compile(r"^(?P<stem>.+)-\d+(?P<ext>\.[^./]+)?$")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def part_settings() -> tuple[int, int]:
    """(part size in bytes, parts in flight): 8 MiB × 4 unless ``APIXO_BATCH_S3_PART_MIB`` /
    ``APIXO_BATCH_S3_PARTS`` say otherwise (a bad value is one line naming the variable)."""

    def read(name: str, default: int, low: int) -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise PathError(f"{name}={text!r}: a whole number of at least {low} is needed")
        return value

    return read("APIXO_BATCH_S3_PART_MIB", PART_MIB, MIN_PART_MIB) * MIB, read(
        "APIXO_BATCH_S3_PARTS", PARTS_IN_FLIGHT, 1
    )


class StoreFailure(DownloadError):
    """The object store refused or failed a request: a failure of our storage (``local``),
    and ``unreachable`` when no connection could be made (worth waiting through)."""

    def __init__(self, message: str, *, unreachable: bool = False, code: str = "") -> None:
        super().__init__(message, unreachable=unreachable, local=True)
        self.code = code


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    sha256: str | None
    job: str | None
    task: str | None


class S3Store:
    """One client for the run, opened at its first request; counts its requests by call."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.part_size, parts = part_settings()
        #: buffers of one part each, shared by every transfer
        self.pool = asyncio.Semaphore(parts)
        #: transfers under way: each has a part filling and one on the wire at least, or
        #: the store would see fewer parts at once than memory allows
        self.transfers = asyncio.Semaphore(max(1, parts // 2))
        self._parts = parts
        self._client: Any = None
        self._context: Any = None
        self._opening: asyncio.Lock | None = None
        self.requests: Counter[str] = Counter()

    # -- the client -----------------------------------------------------------
    async def _open(self) -> Any:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                self._context = _client_context(self._parts)
                self._client = await self._context.__aenter__()
        return self._client

    async def close(self) -> None:
        context, self._context, self._client = self._context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                await context.__aexit__(None, None, None)

    async def call(self, op: str, *, key: str | None = None, **params: Any) -> Any:
        """One S3 call (``op`` as aiobotocore names it) on our bucket; failures are
        :class:`StoreFailure` naming the bucket, the key and S3's code."""
        client = await self._open()
        self.requests[op] += 1
        if key is not None:
            params["Key"] = key
        try:
            return await getattr(client, op)(Bucket=self.location.bucket, **params)
        except Exception as exc:
            raise _failure(exc, self.location, key) from None

    # -- what the run asks ------------------------------------------------------
    async def check(self) -> None:
        """The bucket answers and these credentials may use it; else one line: PathError when
        it is missing or refused (nothing to wait for), StorageError when unreachable."""
        try:
            await self.call("head_bucket")
        except StoreFailure as exc:
            if exc.unreachable:
                raise StorageError(str(exc)) from None
            if exc.code in _NOT_FOUND:
                raise PathError(f"s3://{self.location.bucket}: no such bucket") from None
            raise PathError(str(exc)) from None

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            got = await self.call("head_object", key=key)
        except StoreFailure as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        meta = {k.lower(): v for k, v in (got.get("Metadata") or {}).items()}
        return ObjectInfo(
            int(got.get("ContentLength", -1)),
            meta.get(META_SHA256),
            meta.get(META_JOB),
            meta.get(META_TASK),
        )

    async def sweep(self, ours: Callable[[str], bool]) -> int:
        """Abort the incomplete multipart uploads under our prefix whose key is ours (left by
        a run that was killed mid-upload); how many. A store that refuses to list them
        is told in the log, not raised: its lifecycle rules are then what cleans up."""
        aborted = 0
        marker: dict[str, str] = {}
        while True:
            try:
                page = await self.call(
                    "list_multipart_uploads", Prefix=self.location.prefix, **marker
                )
            except StoreFailure as exc:
                log.warning("cannot list incomplete uploads: %s", exc)
                return aborted
            for upload in page.get("Uploads") or ():
                key = upload.get("Key", "")
                if ours(key):
                    with contextlib.suppress(StoreFailure):
                        await self.call(
                            "abort_multipart_upload", key=key, UploadId=upload["UploadId"]
                        )
                        aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            marker = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    async def put_file(self, name: str, path: Path, content_type: str) -> str:
        """Upload a small local file (the manifest, the review page) to ``name``; its URL."""
        body = await asyncio.to_thread(path.read_bytes)
        await self.call(
            "put_object", key=self.location.key(name), Body=body, ContentType=content_type
        )
        return self.location.url(name)

    def upload(self, key: str, metadata: dict[str, str]) -> ObjectUpload:
        return ObjectUpload(self, key, metadata)


def owned_by(location: S3Location, names: Iterable[str]) -> Callable[[str], bool]:
    """Whether a key under ``location`` is one of ``names`` (casefolded file names, as the
    journal's registry holds them) or one of their ``-N`` results."""
    held = frozenset(names)
    prefix = location.prefix

    def ours(key: str) -> bool:
        if not key.startswith(prefix):
            return False
        name = key[len(prefix) :].casefold()
        if name in held:
            return True
        indexed = _INDEXED.match(name)
        return indexed is not None and (indexed["stem"] + (indexed["ext"] or "")) in held

    return ours


class ObjectUpload:
    """One result on its way into an object: a :class:`~apixo_batch.download.Sink`.

    Parts are hashed in order as they fill and sent in the background, each
    holding one buffer of the store's pool until S3 has it. :meth:`open` takes the
    first buffer before the download starts, so a transfer waiting for memory
    holds no connection open.
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
        self._held = False  # one buffer of the pool is ours (the one filling)
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
        await self._take_buffer()

    async def _take_buffer(self) -> None:
        if not self._held:
            await self._store.pool.acquire()
            self._held = True

    def _give_buffer(self) -> None:
        if self._held:
            self._held = False
            self._store.pool.release()

    def add(self, piece: bytes, where: Callable[[], str]) -> bool:
        if len(self.head) < HEAD:
            self.head += piece[: HEAD - len(self.head)]
            problem = ftyp_problem(self.head, None) if len(self.head) == HEAD else None
            if problem:
                raise IntegrityError(f"{where()}: {problem}")
        self._part.write(piece)
        self.size += len(piece)
        return self._part.tell() >= self._store.part_size

    def _take(self) -> io.BytesIO:
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
        data = self._take()
        # Hashed in a thread while the next part fills (in order: one hash at a time).
        await self._hashed()
        self._hashing = asyncio.ensure_future(asyncio.to_thread(self._hash, self._hasher, data))
        number, self._next = self._next, self._next + 1
        # The filled buffer goes with its part; the next one is taken from the pool.
        self._held = False
        self._sending.append(asyncio.ensure_future(self._send(number, data)))
        await self._take_buffer()

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
        try:
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
        finally:
            self._store.pool.release()

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
            self._give_buffer()
            await asyncio.shield(self._abort_stale())

    async def _commit(self) -> None:
        data = self._take()
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
                Metadata={**self._metadata, META_SHA256: self.hexdigest},
            )
            return
        if data.getbuffer().nbytes:
            await asyncio.to_thread(self._hash, self._hasher, data)
            number, self._next = self._next, self._next + 1
            self._held = False  # the buffer goes with the last part
            self._sending.append(asyncio.ensure_future(self._send(number, data)))
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
            Metadata={**self._metadata, META_SHA256: self.hexdigest},
        )

    async def discard(self) -> None:
        await self.keep()

    async def keep(self) -> None:
        # Nothing of an object upload survives this run: a later run starts over.
        self._part = io.BytesIO()
        self._give_buffer()
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


def _client_context(parts: int) -> Any:
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
    except ImportError:
        raise PathError("s3:// output needs the s3 extra: pip install 'apixo-batch[s3]'") from None
    settings: dict[str, Any] = {
        "max_pool_connections": parts + 8,
        "connect_timeout": 10,
        "read_timeout": 60,
        # Plain http to a local store would otherwise hash every body for the signature;
        # over https botocore signs no body anyway.
        "s3": {"payload_signing_enabled": False},
    }
    # botocore's newer default checksums are refused by many S3-compatible stores (Ceph
    # before Squid, older MinIO): only where S3 requires them, unless the user said.
    for name in ("request_checksum_calculation", "response_checksum_validation"):
        if not os.environ.get(f"AWS_{name.upper()}"):
            settings[name] = "when_required"
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        # A store of one's own answers on one host name: virtual-host buckets would not resolve.
        settings["s3"]["addressing_style"] = "path"
    return get_session().create_client("s3", config=AioConfig(**settings))


def _failure(exc: Exception, location: S3Location, key: str | None) -> StoreFailure:
    where = location.url(key[len(location.prefix) :]) if key else f"s3://{location.bucket}"
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - the client could not exist without it
        return StoreFailure(f"{where}: {type(exc).__name__}")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or str(
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        )
        message = _meaning(code) or error.get("Message")
        return StoreFailure(f"{where}: {code}{': ' + message if message else ''}", code=code)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StoreFailure(
            f"{where}: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or ~/.aws/credentials)"
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return StoreFailure(f"{where}: cannot reach the S3 endpoint ({exc})", unreachable=True)
    if isinstance(exc, bx.BotoCoreError):
        return StoreFailure(f"{where}: {exc}")
    return StoreFailure(f"{where}: {type(exc).__name__}: {exc}")


def _meaning(code: str) -> str:
    return {
        "403": "access denied (check the credentials and the bucket's policy)",
        "404": "not found",
        "400": "bad request (check the region and endpoint)",
    }.get(code, "")
