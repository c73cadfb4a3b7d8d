"""The callback receiver: token, limits, shapes, handler outcomes; the simulator end to end."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from simfixture import SIM_KEY, SimulatorFactory

from apixo_batch.apixo.client import ApixoClient, TaskStatus
from apixo_batch.apixo.receiver import (
    CallbackReceiver,
    HandlerResult,
    ReceiverStats,
    callback_url_with_token,
    mask_token,
    new_token,
    parse_listen,
)
from apixo_batch.apixo.secret import ApiKey

# Distinctive, so a leak anywhere is caught by a plain substring check.
TOKEN = "tok_Zq9distinctive-never-log-7731"
SECRET_PART = TOKEN[4:]  # what a mask must never show

SUCCESS = {
    "code": 200,
    "message": "success",
    "data": {
        "taskId": "task_12345678",
        "state": "success",
        "resultJson": '{"resultUrls":["https://r2.apixo.ai/video.mp4"]}',
        "createTime": 1767965610929,
        "completeTime": 1767965652317,
        "costTime": 41388,
    },
}


def payload(task_id: str = "task_12345678", **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(SUCCESS))
    body["data"]["taskId"] = task_id
    body["data"].update(data)
    return body


@dataclass
class Engine:
    """A stand-in for the engine's callback handler: records, answers from a script."""

    answer: HandlerResult = "accepted"
    #: awaited before answering, when set
    gate: asyncio.Event | None = None
    seen: list[TaskStatus] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, status: TaskStatus) -> HandlerResult:
        self.seen.append(status)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        self.arrived.set()
        return self.answer


StartReceiver = Callable[..., Awaitable[CallbackReceiver]]


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with DEBUG logging; no record may carry the token."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert SECRET_PART not in text, f"token leaked in log: {record.name}"


@pytest.fixture
async def start_receiver() -> AsyncIterator[StartReceiver]:
    """Factory of receivers on 127.0.0.1, port 0; all stopped after the test."""
    receivers: list[CallbackReceiver] = []

    async def start(handler: Engine, **kwargs: Any) -> CallbackReceiver:
        receiver = CallbackReceiver("127.0.0.1", 0, TOKEN, handler, **kwargs)
        await receiver.start()
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        await receiver.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def hook(receiver: CallbackReceiver, path: str | None = None) -> str:
    return f"http://127.0.0.1:{receiver.port}" + (path if path is not None else f"/hook/{TOKEN}")


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, *, data: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with http.post(url, **kwargs) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


# --- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public", "expected"),
    [
        ("https://h/apixo", f"https://h/apixo/{TOKEN}"),
        ("https://h/apixo/", f"https://h/apixo/{TOKEN}"),
        ("https://h", f"https://h/{TOKEN}"),
        ("https://h/", f"https://h/{TOKEN}"),
        ("http://h:8080/a/b?x=1&y=2", f"http://h:8080/a/b/{TOKEN}?x=1&y=2"),
        ("https://h/apixo/?x=1", f"https://h/apixo/{TOKEN}?x=1"),
    ],
)
def test_callback_url_with_token_appends_last_segment(public: str, expected: str) -> None:
    """The token becomes the last path segment; the query string stays after the path."""
    assert callback_url_with_token(public, TOKEN) == expected


@pytest.mark.parametrize("public", ["ftp://h/x", "h/apixo", "https:///nohost", ""])
def test_callback_url_with_token_refuses_non_http(public: str) -> None:
    """Only http(s) URLs with a host are usable callback URLs."""
    with pytest.raises(ValueError, match="--callback-url"):
        callback_url_with_token(public, TOKEN)


@pytest.mark.parametrize(
    "token", ["", "short", "has/slash-in-it-0123456789", "sp ace-0123456789xyz"]
)
def test_weak_or_unsafe_tokens_are_refused(token: str) -> None:
    """A token must be URL-safe and long enough; the message does not repeat it."""
    with pytest.raises(ValueError, match="new_token") as info:
        callback_url_with_token("https://h/apixo", token)
    assert token == "" or token not in str(info.value)


def test_new_token_is_unguessable_and_usable() -> None:
    """Fresh tokens differ, are long and URL-safe."""
    a, b = new_token(), new_token()
    assert a != b
    assert len(a) >= 43
    assert callback_url_with_token("https://h/x", a).endswith("/" + a)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TOKEN, "tok_…"),
        (f"https://h/apixo/{TOKEN}", "https://h/apixo/tok_…"),
        (f"https://h/apixo/{TOKEN}?x=1", "https://h/apixo/tok_…?x=1"),
        ("https://h/apixo/other", "https://h/apixo/other"),
    ],
)
def test_mask_token(text: str, expected: str) -> None:
    """Only the token's first 4 characters are ever shown."""
    assert mask_token(text, TOKEN) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8788", ("127.0.0.1", 8788)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:8788", ("localhost", 8788)),
        ("[::1]:8788", ("::1", 8788)),
        ("[::]:9000", ("::", 9000)),
        (" 127.0.0.1:0 ", ("127.0.0.1", 0)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, with IPv6 in brackets."""
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value", [":8788", "8788", "127.0.0.1", "127.0.0.1:", "h:http", "h:70000", "::1:8788", "[x]:1"]
)
def test_parse_listen_errors_name_the_option(value: str) -> None:
    """A missing host, port, brackets or a bad number is an error naming --listen."""
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(value)


# --- the server ------------------------------------------------------------------------


async def test_valid_callback_is_handed_on(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A well-formed callback on the tokened path reaches the handler, parsed, and gets 200."""
    engine = Engine()
    receiver = await start_receiver(engine)
    status, body = await post(http, hook(receiver), payload())
    assert (status, body) == (200, {"code": 200, "message": "success"})
    [seen] = engine.seen
    assert seen.task_id == "task_12345678"
    assert seen.state == "success"
    assert seen.result_urls == ("https://r2.apixo.ai/video.mp4",)
    assert seen.cost_time_ms == 41388
    stats = receiver.statistics()
    assert (stats.received, stats.accepted) == (1, 1)


async def test_any_prefix_is_accepted(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """Only the last path segment counts: proxies may add or strip prefixes."""
    engine = Engine()
    receiver = await start_receiver(engine)
    for path in (f"/{TOKEN}", f"/a/b/c/{TOKEN}", f"/hook/{TOKEN}/", f"/hook/{TOKEN}?x=1"):
        assert (await post(http, hook(receiver, path), payload()))[0] == 200, path
    assert len(engine.seen) == 4


@pytest.mark.parametrize(
    "path",
    [
        "/hook/wrong-token-0123456789abc",
        "/hook",
        "/",
        f"/hook/{TOKEN}x",
        f"/hook/x{TOKEN}",
        f"/hook/{TOKEN[:-1]}",
        f"/hook/{TOKEN}/extra",
        f"/hook/{TOKEN.upper()}",
    ],
)
async def test_wrong_or_missing_token_is_403(
    start_receiver: StartReceiver, http: aiohttp.ClientSession, path: str
) -> None:
    """Anything but the exact token as last segment: 403, nothing handed on, no echo."""
    engine = Engine()
    receiver = await start_receiver(engine)
    async with http.post(hook(receiver, path), json=payload()) as resp:
        raw = await resp.text()
        assert resp.status == 403
    assert TOKEN[:8] not in raw
    assert json.loads(raw)["code"] == 403
    assert engine.seen == []
    assert receiver.statistics().rejected_token == 1


async def test_other_methods(start_receiver: StartReceiver, http: aiohttp.ClientSession) -> None:
    """GET on the tokened path is 405; on any other path 403; nothing handed on."""
    engine = Engine()
    receiver = await start_receiver(engine)
    async with http.get(hook(receiver)) as resp:
        assert resp.status == 405
    async with http.get(hook(receiver, "/hook/nope")) as resp:
        assert resp.status == 403
    assert engine.seen == []


async def test_unknown_task_is_404(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """The handler does not know the task: 404."""
    receiver = await start_receiver(Engine(answer="unknown"))
    status, body = await post(http, hook(receiver), payload())
    assert status == 404 and body["code"] == 404
    assert receiver.statistics().unknown_task == 1


async def test_duplicates_are_harmless(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """The same callback twice: 200 both times; the handler decides it is a duplicate."""
    engine = Engine()
    receiver = await start_receiver(engine)
    assert (await post(http, hook(receiver), payload()))[0] == 200
    engine.answer = "duplicate"
    assert (await post(http, hook(receiver), payload()))[0] == 200
    stats = receiver.statistics()
    assert (stats.accepted, stats.duplicates) == (1, 1)


async def test_oversize_body_with_content_length_is_413(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A Content-Length over the limit: 413 without handing anything on."""
    engine = Engine()
    receiver = await start_receiver(engine, max_body=1024)
    big = payload(padding="x" * 2000)
    status, _ = await post(http, hook(receiver), big)
    assert status == 413
    assert engine.seen == []
    assert receiver.statistics().too_large == 1


async def test_oversize_chunked_body_is_413(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A chunked body (no Content-Length) is cut off once it passes the limit."""
    engine = Engine()
    receiver = await start_receiver(engine, max_body=1024)
    raw = json.dumps(payload(padding="x" * 4000)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 500):
            yield raw[i : i + 500]

    status, _ = await post(http, hook(receiver), data=chunks())
    assert status == 413
    assert engine.seen == []


async def test_chunked_body_under_limit_is_fine(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A chunked body within the limit is read whole and handed on."""
    engine = Engine()
    receiver = await start_receiver(engine, max_body=4096)
    raw = json.dumps(payload()).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 50):
            yield raw[i : i + 50]

    assert (await post(http, hook(receiver), data=chunks()))[0] == 200
    assert len(engine.seen) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b"[" * 5000 + b"]" * 5000,
        json.dumps({"code": 200, "message": "success"}).encode(),
        json.dumps({"code": 200, "data": {"taskId": "t", "state": "weird"}}).encode(),
        json.dumps(payload(resultJson="not json")).encode(),
        json.dumps(payload(resultJson='{"resultUrls": []}')).encode(),
        json.dumps({"code": 500, "message": "upstream trouble", "data": None}).encode(),
    ],
    ids=[
        "truncated",
        "empty",
        "binary",
        "array",
        "deep",
        "no-data",
        "bad-state",
        "bad-result",
        "no-urls",
        "code-500",
    ],
)
async def test_malformed_or_wrong_shape_is_400(
    start_receiver: StartReceiver, http: aiohttp.ClientSession, raw: bytes
) -> None:
    """Not JSON, not the documented shape, or an error code: 400, nothing handed on."""
    engine = Engine()
    receiver = await start_receiver(engine)
    status, body = await post(http, hook(receiver), data=raw)
    assert status == 400 and body["code"] == 400
    assert engine.seen == []
    assert receiver.statistics().malformed == 1


async def test_non_final_states_are_handed_on(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A processing callback reaches the handler too: it decides what that means."""
    engine = Engine()
    receiver = await start_receiver(engine)
    body = {"code": 200, "message": "success", "data": {"taskId": "t1", "state": "processing"}}
    assert (await post(http, hook(receiver), body))[0] == 200
    assert engine.seen[0].state == "processing"


async def test_failed_task_is_handed_on(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A failed task is a result: fail code and message reach the handler as given."""
    engine = Engine()
    receiver = await start_receiver(engine)
    body = {
        "code": 200,
        "message": "success",
        "data": {"taskId": "t2", "state": "failed", "failCode": "NSFW", "failMsg": "rejected"},
    }
    assert (await post(http, hook(receiver), body))[0] == 200
    assert (engine.seen[0].fail_code, engine.seen[0].fail_msg) == ("NSFW", "rejected")


async def test_slow_handler_is_503_and_keeps_running(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A handler past the timeout: 503 (APIXO retries); it runs on, and the retry gets 200."""
    gate = asyncio.Event()
    engine = Engine(gate=gate)
    receiver = await start_receiver(engine, handler_timeout=0.05)
    status, body = await post(http, hook(receiver), payload())
    assert status == 503 and body["code"] == 503
    assert receiver.statistics().timed_out == 1
    gate.set()
    await asyncio.wait_for(engine.arrived.wait(), 5)  # the first handler ran to its end
    engine.answer = "duplicate"
    assert (await post(http, hook(receiver), payload()))[0] == 200


async def test_stop_cancels_a_handler_still_running(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A handler that outlived its 503 is cancelled by stop(), which then returns."""
    engine = Engine(gate=asyncio.Event())
    receiver = await start_receiver(engine, handler_timeout=0.05)
    assert (await post(http, hook(receiver), payload()))[0] == 503
    await asyncio.wait_for(receiver.stop(), 5)
    assert not engine.arrived.is_set()


async def test_handler_error_is_500(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """A handler that raises: 500 (APIXO retries), counted, logged without the token."""

    async def broken(status: TaskStatus) -> HandlerResult:
        raise RuntimeError("journal on fire")

    receiver = CallbackReceiver("127.0.0.1", 0, TOKEN, broken)
    async with receiver:
        assert (await post(http, hook(receiver), payload()))[0] == 500
        assert receiver.statistics().handler_errors == 1


async def test_slow_handler_does_not_block_others(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """While one handler waits, another callback is served; the second releases the first."""
    release = asyncio.Event()

    async def handler(status: TaskStatus) -> HandlerResult:
        if status.task_id == "slow":
            first_started.set()
            await release.wait()
        else:
            release.set()
        return "accepted"

    first_started = asyncio.Event()
    receiver = CallbackReceiver("127.0.0.1", 0, TOKEN, handler)
    async with receiver:
        slow = asyncio.create_task(post(http, hook(receiver), payload("slow")))
        await asyncio.wait_for(first_started.wait(), 5)
        fast = await asyncio.wait_for(post(http, hook(receiver), payload("fast")), 5)
        assert fast[0] == 200
        assert (await asyncio.wait_for(slow, 5))[0] == 200


async def test_statistics_count_every_request_once(
    start_receiver: StartReceiver, http: aiohttp.ClientSession
) -> None:
    """received is the sum of the outcomes."""
    engine = Engine()
    receiver = await start_receiver(engine, max_body=2048)
    await post(http, hook(receiver), payload())
    await post(http, hook(receiver, "/nope"), payload())
    await post(http, hook(receiver), data=b"{")
    await post(http, hook(receiver), payload(padding="x" * 4096))
    stats = receiver.statistics()
    assert stats == ReceiverStats(
        received=4, accepted=1, rejected_token=1, malformed=1, too_large=1
    )


async def test_token_not_in_repr(start_receiver: StartReceiver) -> None:
    """repr shows the host, the port and a masked token only."""
    receiver = await start_receiver(Engine())
    text = repr(receiver)
    assert SECRET_PART not in text
    assert "tok_…" in text and str(receiver.port) in text


async def test_port_before_start_and_bind_error() -> None:
    """port needs a started receiver; a taken port is a clear OSError."""
    receiver = CallbackReceiver("127.0.0.1", 0, TOKEN, Engine())
    with pytest.raises(RuntimeError):
        _ = receiver.port
    async with receiver:
        taken = CallbackReceiver("127.0.0.1", receiver.port, TOKEN, Engine())
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            await taken.start()
        await taken.stop()


# --- end to end with the simulator -----------------------------------------------------


async def test_simulator_callback_reaches_the_handler(
    simulator: SimulatorFactory, start_receiver: StartReceiver
) -> None:
    """The simulator delivers a real callback to the tokened URL; the handler gets the result."""
    sim = await simulator(duration_override_s=(0.05, 0.1))
    engine = Engine()
    receiver = await start_receiver(engine)
    url = callback_url_with_token(f"http://127.0.0.1:{receiver.port}/hook", TOKEN)
    inp = {"mode": "text-to-video", "prompt": "a lake", "duration": 5, "sound": False}
    async with ApixoClient(ApiKey(SIM_KEY), sim.base_url) as client:
        task_id = await client.submit("kling-2-6", inp, request_type="callback", callback_url=url)
    await asyncio.wait_for(engine.arrived.wait(), 10)
    await asyncio.wait_for(sim.drain_callbacks(), 10)  # the 200 answer reached the simulator
    [seen] = engine.seen
    assert seen.task_id == task_id
    assert seen.state == "success"
    assert seen.result_urls and all(u.startswith("http") for u in seen.result_urls)
    assert receiver.statistics().accepted == 1
    stats = sim.stats()
    assert (stats["callbacks_delivered"], stats["callbacks_failed"]) == (1, 0)
