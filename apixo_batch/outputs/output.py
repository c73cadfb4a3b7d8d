"""The output of a run, whatever it is: results landed there, the manifest and the review
page published there. The lander and the supervisor see only :class:`Output`.

:class:`LocalOutput` is the output folder (results through ``.part`` files).
:class:`S3Output` streams results into objects and uploads the manifest and the
review page from a local folder beside the journal (:func:`staging_dir`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from ..clock import Clock
from ..errors import PathError
from ..location import Destination, S3Location
from ..retry import Backoff
from .download import download_file, download_to

# Light: the s3 extra (aiobotocore) is imported only when a client is first opened.
from .s3 import META_JOB, META_TASK, S3Store, metadata, owned_by
from .upload import ObjectUpload

__all__ = [
    "Incoming",
    "LandedFile",
    "LocalOutput",
    "Output",
    "S3Output",
    "open_output",
    "staging_dir",
]


@dataclass(frozen=True, slots=True)
class LandedFile:
    bytes: int
    sha256: str
    #: found whole at its final name by an earlier run: nothing was downloaded
    found: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    """One result file on its way: where it comes from, its name, whose it is, and how
    it is fetched (``fresh``: produced in this run, nothing of an earlier run to find)."""

    session: aiohttp.ClientSession
    url: str
    name: str
    job_id: str
    task_id: str | None
    fresh: bool
    clock: Clock
    backoff: Backoff
    #: a file at the name is not one the journal recorded as this job's: replace it only
    #: by the same bytes (a landing a crash kept from the journal), never by others
    guard: bool = False


class Output(Protocol):
    """Where results land; ``local_dir`` is where the manifest and review page are written."""

    @property
    def local_dir(self) -> Path: ...

    def shown(self, name: str = "") -> str:
        """A file's place as users read it (a path, an ``s3://`` URL)."""

    async def check(self) -> None:
        """Before anything is paid: the output can take results (else one line)."""

    async def prepare(self, owners: Mapping[str, tuple[str, ...]]) -> None:
        """Before the first result lands; ``owners`` is the journal's file registry."""

    async def land(self, result: Incoming) -> LandedFile:
        """Bring one result to its name, whole and verified."""

    async def publish(self, name: str, content_type: str) -> Path | str:
        """``local_dir / name`` is written: make it appear in the output; where it is now
        (its path, or its ``s3://`` URL)."""

    def requests(self) -> dict[str, int]:
        """Requests made to the output's store, by call (none for a folder)."""

    async def close(self) -> None: ...


class LocalOutput:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def local_dir(self) -> Path:
        return self.folder

    def shown(self, name: str = "") -> str:
        return str(self.folder / name) if name else str(self.folder)

    async def check(self) -> None:
        return None

    async def prepare(self, owners: Mapping[str, tuple[str, ...]]) -> None:
        return None

    async def land(self, result: Incoming) -> LandedFile:
        r = result
        got = await download_file(
            r.session,
            r.url,
            self.folder / r.name,
            clock=r.clock,
            backoff=r.backoff,
            fresh=r.fresh,
            guard=r.guard,
        )
        # Not `found` even when the same bytes were there: they were downloaded to know it.
        return LandedFile(got.bytes, got.sha256)

    async def publish(self, name: str, content_type: str) -> Path | str:
        return self.folder / name

    def requests(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None


class S3Output:
    def __init__(self, location: S3Location, staging: Path) -> None:
        if importlib.util.find_spec("aiobotocore") is None:
            raise PathError(
                f"{location}: s3:// output needs the s3 extra: pip install 'apixo-batch[s3]'"
            )
        self.location = location
        self.store = S3Store(location)
        self._staging = staging

    @property
    def local_dir(self) -> Path:
        return self._staging

    def shown(self, name: str = "") -> str:
        return self.location.url(name)

    async def check(self) -> None:
        await self.store.check()

    async def prepare(self, owners: Mapping[str, tuple[str, ...]]) -> None:
        await self.store.sweep(owned_by(self.location, owners))

    async def land(self, result: Incoming) -> LandedFile:
        r, job_id, task_id = result, result.job_id, result.task_id
        key = self.location.key(r.name)
        if not r.fresh:
            # An earlier run may have completed it before it could journal it: one HEAD.
            info = await self.store.head(key)
            if (
                info is not None
                and info.sha256
                and info.job == job_id
                and (task_id is None or info.task == task_id)
            ):
                return LandedFile(info.size, info.sha256, found=True)
        tags = {META_JOB: job_id} if task_id is None else {META_JOB: job_id, META_TASK: task_id}
        upload = ObjectUpload(self.store, key, metadata(**tags))
        await upload.open()
        try:
            got = await download_to(r.session, r.url, upload, clock=r.clock, backoff=r.backoff)
        except BaseException:
            await upload.keep()  # what it holds goes back, even if the download never began
            raise
        return LandedFile(got.bytes, got.sha256)

    async def publish(self, name: str, content_type: str) -> Path | str:
        return await self.store.put_file(name, self._staging / name, content_type)

    def requests(self) -> dict[str, int]:
        return dict(self.store.requests)

    async def close(self) -> None:
        await self.store.close()


def staging_dir(state_path: Path) -> Path:
    """Where a run to object storage writes its manifest and review page before uploading
    them: a folder beside the journal, named after it."""
    return state_path.with_name(state_path.stem + ".outputs")


def open_output(where: Destination, state_path: Path) -> Output:
    if isinstance(where, S3Location):
        return S3Output(where, staging_dir(state_path))
    return LocalOutput(where)
