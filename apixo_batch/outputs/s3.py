"""S3-compatible object storage through aiobotocore: results streamed into multipart uploads.

Why aiobotocore (the ``s3`` extra) rather than obstore: it runs on aiohttp like the
rest of the engine, and it gives the upload id, so a transfer that fails is
aborted by id and every upload this campaign left behind can be found and
aborted; obstore's streamed multipart hides the id. Endpoint, region and
credentials come from the standard AWS environment, files and profiles
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``...): any S3-compatible store works. No
secret is ever part of a message: errors name the bucket, the key and S3's code.

The transfer itself (parts, hashing, completion) is :mod:`.upload`. Memory is bounded
by the part size times the part buffers (``APIXO_BATCH_S3_PARTS``), one budget shared
by every transfer of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import aiohttp

from ..errors import DownloadError, PathError, StorageError
from ..location import S3Location
from .budget import ByteBudget

__all__ = [
    "META_JOB",
    "META_SHA256",
    "META_TASK",
    "ObjectInfo",
    "S3Store",
    "StoreFailure",
    "UploadBook",
]

log = logging.getLogger(__name__)

MIB = 1 << 20
#: S3's smallest part (all but the last); 8 MiB is what the AWS CLI uses
MIN_PART_MIB, PART_MIB, PARTS_IN_FLIGHT = 5, 8, 4
#: user metadata (``x-amz-meta-*``) each result carries
META_SHA256, META_JOB, META_TASK = "sha256", "apixo-job", "apixo-task"
#: where a result name ends in its index (``x-2.mp4``): the job's name is ``x.mp4``
_INDEXED = re.compile(r"^(?P<stem>.+)-\d+(?P<ext>\.[^./]+)?$")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def metadata(**values: str) -> dict[str, str]:
    """User metadata as S3 carries it: HTTP headers, so ASCII only (a job id may be
    ``vidéo-1``) and no spaces kept at the ends: values are percent-encoded."""
    return {k: quote(v, safe="") for k, v in values.items()}


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


class UploadBook(Protocol):
    """Where the multipart uploads of several runners of one campaign are recorded, each
    with its runner (``journal/pg/outputs.PgUploads``): the start-up sweep then aborts
    only uploads of runners that are gone, not the live uploads of the others."""

    async def opened(self, upload_id: str, key: str) -> None: ...

    async def closed(self, upload_id: str) -> None: ...

    async def sweepable(self, found: Sequence[tuple[str, str, datetime | None]]) -> set[str]:
        """Of ``found`` ((UploadId, key, Initiated)), the uploads to abort."""
        ...


#: calls that begin or end a multipart upload (what an :class:`UploadBook` records)
_OPENS, _CLOSES = "create_multipart_upload", ("complete_multipart_upload", "abort_multipart_upload")


class S3Store:
    """One client for the run, opened at its first request; counts its requests by call."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.part_size, parts = part_settings()
        #: memory for parts, shared by every transfer: a part is reserved before it fills
        self.budget = ByteBudget(self.part_size * parts)
        #: large transfers under way: each has a part filling and one on the wire at
        #: least, or the store would see fewer parts at once than memory allows
        self.large = asyncio.Semaphore(max(1, parts // 2))
        #: the last result's size was large: the next transfer takes its place up front
        self.large_seen = False
        self._parts = parts
        self._client: Any = None
        self._context: Any = None
        self._opening: asyncio.Lock | None = None
        self.requests: Counter[str] = Counter()
        #: several runners: their uploads recorded, and swept only when theirs is gone
        self.uploads: UploadBook | None = None

    # -- the client -----------------------------------------------------------
    async def _open(self) -> Any:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                context = _client_context(self._parts)
                self._client = await context.__aenter__()
                # Kept once entered: aiobotocore's context cannot exit one that failed to open.
                self._context = context
        return self._client

    async def close(self) -> None:
        context, self._context, self._client = self._context, None, None
        if context is not None:
            # The run's outcome is decided: a store that fails to hang up changes nothing.
            with contextlib.suppress(*_store_errors()):
                await context.__aexit__(None, None, None)

    async def call(self, op: str, *, key: str | None = None, **params: Any) -> Any:
        """One S3 call (``op`` as aiobotocore names it) on our bucket; failures of the store
        (its answers, the way there, its settings) are :class:`StoreFailure` naming the
        bucket, the key and S3's code. Anything else is a bug and goes on as it is."""
        if key is not None:
            params["Key"] = key
        try:
            client = await self._open()
        except _store_errors(opening=True) as exc:
            # A profile that does not exist, an endpoint that is not a URL: the store's
            # settings, told in one line, not a bug.
            raise _failure(exc, self.location, key) from None
        self.requests[op] += 1
        try:
            got = await getattr(client, op)(Bucket=self.location.bucket, **params)
        except _store_errors() as exc:
            raise _failure(exc, self.location, key) from None
        if self.uploads is not None and (op == _OPENS or op in _CLOSES):
            await self._record(op, key or "", params.get("UploadId") or got.get("UploadId"))
        return got

    async def _record(self, op: str, key: str, upload_id: str | None) -> None:
        """The upload in the book of uploads. The journal failing to record it is told in
        the log only: an unrecorded upload is swept once every runner live at its start
        is gone, and the journal's failure is the run's own concern."""
        assert self.uploads is not None
        if not upload_id:
            return
        try:
            if op == _OPENS:
                await self.uploads.opened(upload_id, key)
            else:
                await self.uploads.closed(upload_id)
        except StorageError as exc:
            log.warning("cannot record the upload of %s: %s", key, exc)

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
        meta = {k.lower(): unquote(v) for k, v in (got.get("Metadata") or {}).items()}
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
            found = [
                (str(u["UploadId"]), str(u.get("Key", "")), u.get("Initiated"))
                for u in page.get("Uploads") or ()
                if ours(u.get("Key", ""))
            ]
            if found and self.uploads is not None:
                # Several runners: the others' uploads are live, not leftovers.
                try:
                    gone = await self.uploads.sweepable(found)
                except StorageError as exc:
                    log.warning("cannot tell whose incomplete uploads these are: %s", exc)
                    return aborted
                found = [f for f in found if f[0] in gone]
            for upload_id, key, _ in found:
                with contextlib.suppress(StoreFailure):
                    await self.call("abort_multipart_upload", key=key, UploadId=upload_id)
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


def _client_context(parts: int) -> Any:
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
    except ImportError:
        raise PathError("s3:// output needs the s3 extra: pip install 'apixo-batch[s3]'") from None
    settings: dict[str, Any] = {
        # Small results are many at once (up to the download workers), large ones a few.
        "max_pool_connections": max(32, parts + 8),
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


def _store_errors(*, opening: bool = False) -> tuple[type[Exception], ...]:
    """What a failing store raises: its answers (botocore's ClientError), botocore's own
    errors (credentials, profile, endpoint, timeouts), and the connection's (aiohttp,
    OSError and so TimeoutError); ``opening`` a client, also botocore's ValueError for an
    endpoint that is not a URL. Read when a call fails: botocore loads with the client."""
    found: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError)
    if opening:
        found += (ValueError,)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - no client could exist without botocore
        return found
    return (ClientError, BotoCoreError, *found)


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
    if isinstance(exc, bx.BotoCoreError | ValueError):
        return StoreFailure(f"{where}: {exc}")
    return StoreFailure(f"{where}: {type(exc).__name__}: {exc}")


def _meaning(code: str) -> str:
    return {
        "403": "access denied (check the credentials and the bucket's policy)",
        "404": "not found",
        "400": "bad request (check the region and endpoint)",
    }.get(code, "")
