"""S3Store.call with a fake client in place of aiobotocore's: what the store's failures
become (StoreFailure, one line), and that a bug is not one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from apixo_batch.location import S3Location
from apixo_batch.outputs import s3
from apixo_batch.outputs.s3 import S3Store, StoreFailure

bx = pytest.importorskip("botocore.exceptions")

WHERE = S3Location("renders", "spring/")


class FakeClient:
    """aiobotocore's client, as far as S3Store uses it: each call raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, op: str) -> Any:
        async def call(**params: Any) -> Any:
            self.calls.append((op, params))
            raise self.error

        return call


class FakeContext:
    """aiobotocore's client context: one that failed to open cannot exit (AttributeError)."""

    def __init__(self, client: FakeClient | None, opening: BaseException | None = None) -> None:
        self.client, self.opening = client, opening
        self.entered = self.exited = False

    async def __aenter__(self) -> FakeClient | None:
        if self.opening is not None:
            raise self.opening
        self.entered = True
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        if not self.entered:
            raise AttributeError("'NoneType' object has no attribute '__aexit__'")
        self.exited = True


def _store(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, opening: BaseException | None = None
) -> tuple[S3Store, FakeClient]:
    client = FakeClient(error)
    monkeypatch.setattr(s3, "_client_context", lambda parts: FakeContext(client, opening))
    return S3Store(WHERE), client


def _client_error(code: str, message: str) -> Exception:
    return bx.ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")


@pytest.mark.parametrize(
    ("error", "says", "unreachable"),
    [
        (_client_error("AccessDenied", "Access Denied"), "AccessDenied: Access Denied", False),
        (bx.NoCredentialsError(), "no AWS credentials found", False),
        (
            bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            "cannot reach the S3 endpoint",
            True,
        ),
        (bx.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), "Read timeout", False),
        (aiohttp.ServerDisconnectedError(), "ServerDisconnectedError", False),
        (ConnectionResetError(104, "Connection reset by peer"), "Connection reset", False),
        (TimeoutError(), "TimeoutError", False),
    ],
    ids=["answer", "credentials", "endpoint", "read-timeout", "aiohttp", "oserror", "timeout"],
)
async def test_a_failing_store_is_a_store_failure_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, error: Exception, says: str, unreachable: bool
) -> None:
    store, client = _store(monkeypatch, error)
    with pytest.raises(StoreFailure) as caught:
        await store.call("put_object", key="spring/a.mp4", Body=b"")
    assert str(caught.value).startswith("s3://renders/spring/a.mp4: ")
    assert says in str(caught.value) and caught.value.unreachable is unreachable
    assert caught.value.local  # our storage, not the file host
    assert client.calls == [
        ("put_object", {"Bucket": "renders", "Key": "spring/a.mp4", "Body": b""})
    ]
    assert store.requests["put_object"] == 1


@pytest.mark.parametrize(
    "bug",
    [
        TypeError("put_object() got an unexpected keyword argument 'Bodyy'"),
        KeyError("UploadId"),
        AttributeError("'NoneType' object has no attribute 'read'"),
        AssertionError("a part was sent twice"),
    ],
    ids=["type", "key", "attribute", "assertion"],
)
async def test_a_bug_in_a_store_call_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    """A programming error is not the store failing: it goes on as it is (the run then ends
    as on any bug), never dressed as a StoreFailure the lander would take for a full bucket."""
    store, _ = _store(monkeypatch, bug)
    with pytest.raises(type(bug)) as caught:
        await store.call("put_object", key="spring/a.mp4", Body=b"")
    assert caught.value is bug


@pytest.mark.parametrize(
    ("opening", "says"),
    [
        (bx.ProfileNotFound(profile="no-such-profile"), "no-such-profile"),
        (ValueError("Invalid endpoint: not a url"), "Invalid endpoint"),
    ],
    ids=["profile", "endpoint"],
)
async def test_settings_that_cannot_open_a_client_are_a_store_failure(
    monkeypatch: pytest.MonkeyPatch, opening: Exception, says: str
) -> None:
    """A profile that does not exist, an endpoint that is not a URL: the store's settings,
    told in one line (check() makes it a PathError before anything is paid)."""
    store, client = _store(monkeypatch, RuntimeError("not reached"), opening)
    with pytest.raises(StoreFailure, match=says):
        await store.call("head_bucket")
    assert client.calls == [] and store.requests["head_bucket"] == 0
    await store.close()  # nothing was opened: nothing to close, nothing raised


async def test_a_bug_while_opening_the_client_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _ = _store(monkeypatch, RuntimeError("not reached"), TypeError("bad config key"))
    with pytest.raises(TypeError, match="bad config key"):
        await store.call("head_bucket")


async def test_a_store_that_fails_to_hang_up_does_not_fail_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Hangs(FakeContext):
        async def __aexit__(self, *exc: object) -> None:
            raise aiohttp.ServerDisconnectedError()

    client = FakeClient(_client_error("404", ""))
    monkeypatch.setattr(s3, "_client_context", lambda parts: Hangs(client))
    store = S3Store(WHERE)
    assert await store.head("spring/a.mp4") is None  # a 404 on HEAD: no such object
    await store.close()
    assert store._client is None


async def test_a_store_that_was_opened_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(_client_error("404", ""))
    context = FakeContext(client)
    monkeypatch.setattr(s3, "_client_context", lambda parts: context)
    store = S3Store(WHERE)
    assert await store.head("spring/a.mp4") is None
    await store.close()
    assert context.exited


async def test_cancelling_a_store_call_is_not_a_store_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _ = _store(monkeypatch, asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await store.call("head_bucket")


class AnsweringClient:
    """aiobotocore's client answering the multipart calls as S3 does; calls recorded."""

    def __init__(self, incomplete: list[dict[str, Any]]) -> None:
        self.incomplete = incomplete
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, op: str) -> Any:
        async def call(**params: Any) -> Any:
            self.calls.append((op, params))
            if op == "create_multipart_upload":
                return {"UploadId": f"up-{len(self.calls)}"}
            if op == "list_multipart_uploads":
                return {"Uploads": self.incomplete, "IsTruncated": False}
            return {}

        return call


class FakeBook:
    """The journal's book of uploads (several runners): ``gone`` are dead runners'."""

    def __init__(self, gone: set[str]) -> None:
        self.gone = gone
        self.begun: list[tuple[str, str]] = []
        self.ended: list[str] = []
        self.asked: list[list[str]] = []

    async def opened(self, upload_id: str, key: str) -> None:
        self.begun.append((upload_id, key))

    async def closed(self, upload_id: str) -> None:
        self.ended.append(upload_id)

    async def sweepable(self, found: Sequence[tuple[str, str, datetime | None]]) -> set[str]:
        self.asked.append([u for u, _, _ in found])
        return {u for u, _, _ in found if u in self.gone}


def _booked(monkeypatch: pytest.MonkeyPatch, client: AnsweringClient, book: FakeBook) -> S3Store:
    monkeypatch.setattr(s3, "_client_context", lambda parts: FakeContext(client))  # type: ignore[arg-type]
    store = S3Store(WHERE)
    store.uploads = book
    return store


async def test_uploads_begun_and_ended_are_recorded_in_the_book(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several runners: an upload is recorded with its id when S3 gives it, and forgotten
    once completed or aborted; other calls record nothing."""
    client, book = AnsweringClient([]), FakeBook(set())
    store = _booked(monkeypatch, client, book)
    got = await store.call("create_multipart_upload", key="spring/a.mp4")
    await store.call("upload_part", key="spring/a.mp4", UploadId=got["UploadId"], PartNumber=1)
    await store.call("complete_multipart_upload", key="spring/a.mp4", UploadId=got["UploadId"])
    await store.call("abort_multipart_upload", key="spring/b.mp4", UploadId="up-old")
    assert book.begun == [(got["UploadId"], "spring/a.mp4")]
    assert book.ended == [got["UploadId"], "up-old"]


async def test_the_sweep_aborts_only_what_the_book_says_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start-up sweep with several runners: of our incomplete uploads, only those the
    book says belong to dead runners are aborted; keys not ours are not even asked about.
    Without a book (a journal file, one run), every one of ours is aborted, as ever."""
    when = datetime(2026, 12, 5, tzinfo=UTC)
    incomplete = [
        {"Key": "spring/a.mp4", "UploadId": "live", "Initiated": when},
        {"Key": "spring/b-2.mp4", "UploadId": "dead", "Initiated": when},
        {"Key": "spring/c.mp4", "UploadId": "other", "Initiated": when},
    ]
    ours = s3.owned_by(WHERE, ["a.mp4", "b.mp4"])
    client, book = AnsweringClient(incomplete), FakeBook({"dead"})
    store = _booked(monkeypatch, client, book)
    assert await store.sweep(ours) == 1
    assert book.asked == [["live", "dead"]]
    aborted = [p["UploadId"] for op, p in client.calls if op == "abort_multipart_upload"]
    assert aborted == ["dead"] and book.ended == ["dead"]
    alone = AnsweringClient(incomplete)
    monkeypatch.setattr(s3, "_client_context", lambda parts: FakeContext(alone))  # type: ignore[arg-type]
    assert await S3Store(WHERE).sweep(ours) == 2
    aborted = [p["UploadId"] for op, p in alone.calls if op == "abort_multipart_upload"]
    assert aborted == ["live", "dead"]
