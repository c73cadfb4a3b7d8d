"""ApixoClient against mocked APIXO answers, using the exact bodies from apixo-docs/."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from apixo_batch.apixo.client import ApixoClient, parse_task_payload
from apixo_batch.apixo.limits import Priority
from apixo_batch.apixo.secret import ApiKey
from apixo_batch.errors import (
    ApiError,
    AuthError,
    Forbidden,
    InsufficientBalance,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)

# Distinctive, so a leak anywhere is caught by a plain substring check.
KEY = "sk-live-QX7distinctive-never-print-4242"
# Loopback: should the mock ever let a request through, it stays on this machine.
BASE = "http://127.0.0.1:9/api/v1"
MODEL = "kling-2-6"
SUBMIT_URL = f"{BASE}/generateTask/{MODEL}"
STATUS_URL = f"{BASE}/statusTask/{MODEL}?taskId=task_12345678"
BALANCE_URL = f"{BASE}/apikeys/current-balance"

# --- bodies copied verbatim from apixo-docs/kling-2-6.txt and wan-2-5.txt ---
SUBMIT_OK = {"code": 200, "message": "success", "data": {"taskId": "task_12345678"}}
INSUFFICIENT = {"code": 400, "message": "Insufficient credits", "data": None}
PROCESSING = {
    "code": 200,
    "message": "success",
    "data": {"taskId": "task_12345678", "state": "processing", "createTime": 1767965610929},
}
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
FAILED_KLING_26 = {
    "code": 200,
    "message": "success",
    "data": {
        "taskId": "task_12345678",
        "state": "failed",
        "failCode": "SensitiveContentDetected",
        "failMsg": "The input or output was flagged as sensitive. "
        "Please try again with different inputs.",
        "createTime": 1767965610929,
        "completeTime": 1767965652317,
    },
}
FAILED_WAN_25 = {
    "code": 200,
    "message": "success",
    "data": {
        "taskId": "task_12345678",
        "state": "failed",
        "failCode": "CONTENT_VIOLATION",
        "failMsg": "Content does not meet safety guidelines",
    },
}
BALANCE_OK = {"code": 200, "message": "success", "data": 74.87}
T2V_INPUT = {
    "mode": "text-to-video",
    "prompt": "a rainy neon street at night with reflections on the pavement "
    "and soft traffic ambience",
    "duration": 5,
    "sound": True,
    "aspect_ratio": "16:9",
}


@pytest.fixture
async def client() -> AsyncIterator[ApixoClient]:
    async with ApixoClient(ApiKey(KEY), BASE) as api:
        yield api


def _calls(mock: aioresponses, method: str, url: str) -> list[Any]:
    return list(mock.requests.get((method, URL(url)), []))


def _status_body(data: dict[str, Any]) -> dict[str, Any]:
    return {"code": 200, "message": "success", "data": data}


# --- submit ------------------------------------------------------------------


async def test_submit_returns_task_id(client: ApixoClient, mock_api: aioresponses) -> None:
    """A documented success answer yields data.taskId."""
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    assert await client.submit(MODEL, T2V_INPUT) == "task_12345678"


async def test_submit_sends_documented_body_and_bearer_header(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """The body has request_type, provider and input (no callback_url); auth is Bearer."""
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    await client.submit(MODEL, T2V_INPUT, provider="value")
    (call,) = _calls(mock_api, "POST", SUBMIT_URL)
    assert call.kwargs["json"] == {
        "request_type": "async",
        "provider": "value",
        "input": T2V_INPUT,
    }
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"


async def test_submit_sends_callback_url_in_callback_mode(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """callback_url goes in the body with request_type callback."""
    hook = "https://hooks.example.com/apixo/s3cret"
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    await client.submit(MODEL, T2V_INPUT, request_type="callback", callback_url=hook)
    (call,) = _calls(mock_api, "POST", SUBMIT_URL)
    assert call.kwargs["json"]["request_type"] == "callback"
    assert call.kwargs["json"]["callback_url"] == hook


async def test_submit_async_mode_ignores_callback_url(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """In async mode no callback_url is sent even when one is passed."""
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    await client.submit(MODEL, T2V_INPUT, callback_url="https://hooks.example.com/x")
    (call,) = _calls(mock_api, "POST", SUBMIT_URL)
    assert "callback_url" not in call.kwargs["json"]


async def test_submit_callback_mode_without_url_sends_nothing(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """Callback mode without a URL is a programming error caught before any request."""
    with pytest.raises(ValueError, match="callback_url"):
        await client.submit(MODEL, T2V_INPUT, request_type="callback")
    assert mock_api.requests == {}


async def test_submit_without_task_id_is_transport_error(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """A 200 answer lacking data.taskId is not a task: TransportError, not a silent None."""
    mock_api.post(SUBMIT_URL, payload={"code": 200, "message": "success", "data": None})
    with pytest.raises(TransportError, match="taskId"):
        await client.submit(MODEL, T2V_INPUT)


# --- status ------------------------------------------------------------------


async def test_status_processing(client: ApixoClient, mock_api: aioresponses) -> None:
    """The documented processing answer: not finished, no results, createTime kept."""
    mock_api.get(STATUS_URL, payload=PROCESSING)
    status = await client.status(MODEL, "task_12345678")
    assert status.state == "processing"
    assert not status.finished
    assert status.result_urls == ()
    assert status.create_time_ms == 1767965610929


async def test_status_pending(client: ApixoClient, mock_api: aioresponses) -> None:
    """A pending answer is read as pending and not finished."""
    mock_api.get(STATUS_URL, payload=_status_body({"taskId": "task_12345678", "state": "pending"}))
    status = await client.status(MODEL, "task_12345678")
    assert (status.state, status.finished) == ("pending", False)


async def test_status_sends_task_id_and_bearer(client: ApixoClient, mock_api: aioresponses) -> None:
    """The task id travels as the taskId query parameter, with the Bearer header."""
    mock_api.get(STATUS_URL, payload=PROCESSING)
    await client.status(MODEL, "task_12345678")
    (((method, url), calls),) = mock_api.requests.items()
    assert (method, url.path, dict(url.query)) == (
        "GET",
        f"/api/v1/statusTask/{MODEL}",
        {"taskId": "task_12345678"},
    )
    assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {KEY}"


async def test_status_quotes_a_task_id_with_reserved_characters(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """The task id is quoted into the query: it arrives whole, and cannot add parameters."""
    odd = "t/1 2?x=&y=é#z"
    body = _status_body({"taskId": odd, "state": "pending"})
    mock_api.get(URL(f"{BASE}/statusTask/{MODEL}").with_query(taskId=odd), payload=body)
    status = await client.status(MODEL, odd)
    ((_, url),) = mock_api.requests
    assert dict(url.query) == {"taskId": odd}
    assert status.task_id == odd


async def test_status_success_parses_result_json_string(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """resultJson is a JSON string; its resultUrls become result_urls, times are kept."""
    mock_api.get(STATUS_URL, payload=SUCCESS)
    status = await client.status(MODEL, "task_12345678")
    assert status.state == "success"
    assert status.finished
    assert status.result_urls == ("https://r2.apixo.ai/video.mp4",)
    assert (status.create_time_ms, status.complete_time_ms, status.cost_time_ms) == (
        1767965610929,
        1767965652317,
        41388,
    )
    assert status.fail_code is None


@pytest.mark.parametrize(
    ("body", "code", "msg"),
    [
        (
            FAILED_KLING_26,
            "SensitiveContentDetected",
            "The input or output was flagged as sensitive. Please try again with different inputs.",
        ),
        (FAILED_WAN_25, "CONTENT_VIOLATION", "Content does not meet safety guidelines"),
    ],
)
async def test_status_failed_reports_fail_code_as_given(
    client: ApixoClient, mock_api: aioresponses, body: dict[str, Any], code: str, msg: str
) -> None:
    """failCode and failMsg are passed through untouched, whatever the model's vocabulary."""
    mock_api.get(STATUS_URL, payload=body)
    status = await client.status(MODEL, "task_12345678")
    assert (status.state, status.finished) == ("failed", True)
    assert (status.fail_code, status.fail_msg) == (code, msg)
    assert status.result_urls == ()


@pytest.mark.parametrize(
    "result_json",
    [
        "not json at all",
        '{"resultUrls": ',
        '{"urls": ["https://r2.apixo.ai/video.mp4"]}',
        '{"resultUrls": []}',
        "null",
        "[]",
    ],
)
async def test_status_success_with_unreadable_result_json_is_transport_error(
    client: ApixoClient, mock_api: aioresponses, result_json: str
) -> None:
    """A success whose resultJson cannot give URLs is a TransportError naming the task."""
    data = dict(SUCCESS["data"], resultJson=result_json)  # type: ignore[arg-type]
    mock_api.get(STATUS_URL, payload=_status_body(data))
    with pytest.raises(TransportError, match="task_12345678"):
        await client.status(MODEL, "task_12345678")


async def test_status_success_with_string_result_urls_is_transport_error(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """resultUrls must be a list of strings; a bare string is not split into characters."""
    data = dict(
        SUCCESS["data"],  # type: ignore[arg-type]
        resultJson=json.dumps({"resultUrls": "https://r2.apixo.ai/video.mp4"}),
    )
    mock_api.get(STATUS_URL, payload=_status_body(data))
    with pytest.raises(TransportError):
        await client.status(MODEL, "task_12345678")


async def test_status_with_unknown_state_is_transport_error(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """A state outside pending/processing/success/failed is not guessed at."""
    mock_api.get(STATUS_URL, payload=_status_body({"taskId": "task_12345678", "state": "done"}))
    with pytest.raises(TransportError, match="state"):
        await client.status(MODEL, "task_12345678")


async def test_status_follows_a_task_to_success(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """Successive polls see processing, then success (answers built by a mock callback)."""
    answers = [PROCESSING, SUCCESS]

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        return CallbackResult(payload=answers.pop(0))

    mock_api.get(STATUS_URL, callback=answer, repeat=True)
    states = [(await client.status(MODEL, "task_12345678")).state for _ in range(2)]
    assert states == ["processing", "success"]


def test_parse_task_payload_reads_a_callback_body() -> None:
    """A callback body has the status shape and parses the same way."""
    status = parse_task_payload(SUCCESS, endpoint="callback")
    assert status.result_urls == ("https://r2.apixo.ai/video.mp4",)


def test_parse_task_payload_raises_on_error_code() -> None:
    """A non-200 code in a payload is an API error, not a task state."""
    with pytest.raises(InsufficientBalance):
        parse_task_payload(INSUFFICIENT)


# --- balance -----------------------------------------------------------------


async def test_balance_returns_dollars(client: ApixoClient, mock_api: aioresponses) -> None:
    """The documented balance answer gives the remaining US dollars."""
    mock_api.get(BALANCE_URL, payload=BALANCE_OK)
    assert await client.balance() == pytest.approx(74.87)
    (call,) = _calls(mock_api, "GET", BALANCE_URL)
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("data", [None, "lots", True, {"usd": 1}])
async def test_balance_without_a_number_is_transport_error(
    client: ApixoClient, mock_api: aioresponses, data: object
) -> None:
    """A balance answer whose data is not a number is refused, never read as 0 or 1."""
    mock_api.get(BALANCE_URL, payload={"code": 200, "message": "success", "data": data})
    with pytest.raises(TransportError, match="balance"):
        await client.balance()


# --- error shapes ------------------------------------------------------------


async def test_http_400_with_body_is_invalid_request(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """HTTP 400 with a JSON body: InvalidRequest carrying the API's message."""
    body = {"code": 400, "message": "Invalid parameters: duration", "data": None}
    mock_api.post(SUBMIT_URL, status=400, payload=body)
    with pytest.raises(InvalidRequest) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.status == 400
    assert info.value.api_message == "Invalid parameters: duration"
    assert info.value.endpoint == "submit"
    assert not info.value.retryable and not info.value.fatal


@pytest.mark.parametrize("http_status", [200, 400])
async def test_insufficient_credits_body_is_insufficient_balance(
    client: ApixoClient, mock_api: aioresponses, http_status: int
) -> None:
    """The documented {"code": 400, "message": "Insufficient credits"} is about money: fatal."""
    mock_api.post(SUBMIT_URL, status=http_status, payload=INSUFFICIENT)
    with pytest.raises(InsufficientBalance) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.fatal
    assert info.value.api_message == "Insufficient credits"


@pytest.mark.parametrize(
    ("status", "leaf", "fatal", "retryable"),
    [
        (401, AuthError, True, False),
        (402, InsufficientBalance, True, False),
        (403, Forbidden, True, False),
        (404, NotFound, False, False),
        (500, ServerError, False, True),
        (502, ServerError, False, True),
        (503, ServerError, False, True),
        (504, ServerError, False, True),
    ],
)
@pytest.mark.parametrize("where", ["http", "json"])
async def test_error_code_maps_to_its_leaf(
    client: ApixoClient,
    mock_api: aioresponses,
    status: int,
    leaf: type[ApiError],
    fatal: bool,
    retryable: bool,
    where: str,
) -> None:
    """An error code in the HTTP status or only in the JSON code maps to the same leaf."""
    body = {"code": status, "message": "nope", "data": None}
    mock_api.get(STATUS_URL, status=status if where == "http" else 200, payload=body)
    with pytest.raises(leaf) as info:
        await client.status(MODEL, "task_12345678")
    assert type(info.value) is leaf
    assert info.value.status == status
    assert (info.value.fatal, info.value.retryable) == (fatal, retryable)


@pytest.mark.parametrize("http_status", [429, 200])
async def test_rate_limited_carries_retry_after(
    client: ApixoClient, mock_api: aioresponses, http_status: int
) -> None:
    """429 with Retry-After: RateLimited, retryable, with the server's delay in seconds;
    the same when the 429 is only in the JSON code of an HTTP 200."""
    body = {"code": 429, "message": "Rate limit exceeded", "data": None}
    mock_api.post(SUBMIT_URL, status=http_status, payload=body, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.retry_after == 7.0
    assert info.value.retryable and not info.value.fatal


async def test_rate_limited_honours_a_retry_after_date(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """Retry-After as an HTTP-date: the seconds from now until then."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    body = {"code": 429, "message": "Rate limit exceeded", "data": None}
    mock_api.post(SUBMIT_URL, status=429, payload=body, headers={"Retry-After": when})
    with pytest.raises(RateLimited) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.retry_after is not None and 25.0 < info.value.retry_after <= 30.0


@pytest.mark.parametrize("header", [None, "soon"])
async def test_rate_limited_without_usable_retry_after(
    client: ApixoClient, mock_api: aioresponses, header: str | None
) -> None:
    """A missing or unreadable Retry-After leaves retry_after None (backoff decides)."""
    headers = {"Retry-After": header} if header else None
    mock_api.post(SUBMIT_URL, status=429, body="", headers=headers)
    with pytest.raises(RateLimited) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.retry_after is None


async def test_rate_limited_with_infinite_retry_after_is_ignored(
    client: ApixoClient, mock_api: aioresponses
) -> None:
    """A non-finite Retry-After is unusable and leaves retry_after None."""
    mock_api.post(SUBMIT_URL, status=429, body="", headers={"Retry-After": "inf"})
    with pytest.raises(RateLimited) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("message", "fatal"),
    [
        ("Forbidden: this API key has no access to this route", True),
        ("API key lacks permission", True),
        ("Content violates policy", False),
        ("Prompt flagged as sensitive", False),
    ],
)
async def test_a_403_is_fatal_unless_it_refuses_the_content(
    client: ApixoClient, mock_api: aioresponses, message: str, fatal: bool
) -> None:
    """kling-2-6's page: 403 is "key or route cannot access the model, or content was
    rejected". No access stops the run; refused content is the job's own failure."""
    mock_api.post(SUBMIT_URL, status=403, payload={"code": 403, "message": message, "data": None})
    with pytest.raises(Forbidden) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.fatal is fatal
    assert info.value.content_rejected is not fatal
    assert not info.value.retryable


@pytest.mark.parametrize("header", ["12", None])
async def test_a_503_is_retryable_and_keeps_its_retry_after(
    client: ApixoClient, mock_api: aioresponses, header: str | None
) -> None:
    """503 Service Unavailable: a ServerError like 502, retryable; its Retry-After is kept
    for the backoff (never coming back before it says)."""
    body = {"code": 503, "message": "Service temporarily unavailable", "data": None}
    headers = {"Retry-After": header} if header else None
    mock_api.post(SUBMIT_URL, status=503, payload=body, headers=headers)
    with pytest.raises(ServerError) as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.status == 503 and info.value.retryable and not info.value.fatal
    assert info.value.retry_after == (12.0 if header else None)


@pytest.mark.parametrize(
    ("status", "leaf"),
    [
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (403, Forbidden),
        (401, AuthError),
    ],
)
async def test_html_error_page_maps_by_http_status(
    client: ApixoClient, mock_api: aioresponses, status: int, leaf: type[ApiError]
) -> None:
    """A proxy's HTML error page is read by its HTTP status, not as bad JSON."""
    page = f"<html><head><title>{status}</title></head><body>Bad Gateway</body></html>"
    mock_api.get(STATUS_URL, status=status, body=page, content_type="text/html")
    with pytest.raises(leaf) as info:
        await client.status(MODEL, "task_12345678")
    assert info.value.status == status


@pytest.mark.parametrize(("status", "leaf"), [(500, ServerError), (401, AuthError)])
async def test_empty_error_body_maps_by_http_status(
    client: ApixoClient, mock_api: aioresponses, status: int, leaf: type[ApiError]
) -> None:
    """An error status with an empty body still maps, with a message naming the status."""
    mock_api.get(STATUS_URL, status=status, body="")
    with pytest.raises(leaf, match=f"HTTP {status}"):
        await client.status(MODEL, "task_12345678")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html>maintenance</html>", "text/html"),
        ("", "application/json"),
        ('["not", "an", "object"]', "application/json"),
    ],
)
async def test_non_json_object_200_is_transport_error(
    client: ApixoClient, mock_api: aioresponses, body: str, content_type: str
) -> None:
    """HTTP 200 that is not a JSON object is a retryable TransportError."""
    mock_api.get(STATUS_URL, status=200, body=body, content_type=content_type)
    with pytest.raises(TransportError) as info:
        await client.status(MODEL, "task_12345678")
    assert info.value.retryable


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("Connection reset by peer"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
    ],
)
async def test_connection_trouble_is_transport_error(
    client: ApixoClient, mock_api: aioresponses, exc: Exception
) -> None:
    """Resets, disconnects and timeouts all become one retryable TransportError."""
    mock_api.post(SUBMIT_URL, exception=exc)
    with pytest.raises(TransportError, match="submit") as info:
        await client.submit(MODEL, T2V_INPUT)
    assert info.value.retryable


# --- the key never leaks ------------------------------------------------------


@pytest.mark.parametrize(
    "arrange",
    [
        pytest.param(
            {"status": 401, "payload": {"code": 401, "message": f"invalid key {KEY}"}},
            id="json-401-echoes-key",
        ),
        pytest.param(
            {"status": 200, "payload": {"code": 403, "message": f"{KEY} has no access"}},
            id="json-code-403-echoes-key",
        ),
        pytest.param(
            {"status": 502, "body": f"<html>upstream said Bearer {KEY}</html>"},
            id="html-502-echoes-key",
        ),
        pytest.param(
            {"exception": aiohttp.ClientConnectionError(f"reset while sending Bearer {KEY}")},
            id="transport-error-echoes-key",
        ),
    ],
)
async def test_key_never_appears_in_errors(
    client: ApixoClient, mock_api: aioresponses, arrange: dict[str, Any]
) -> None:
    """Even when an answer echoes the key, the raised error does not carry it."""
    mock_api.get(STATUS_URL, **arrange)
    with pytest.raises((ApiError, TransportError)) as info:
        await client.status(MODEL, "task_12345678")
    exc = info.value
    assert KEY not in str(exc)
    assert KEY not in repr(exc)
    assert all(KEY not in str(arg) for arg in exc.args)
    assert KEY not in str(getattr(exc, "api_message", ""))


def test_client_repr_hides_key() -> None:
    """repr(client) shows the base URL and a masked key."""
    api = ApixoClient(ApiKey(KEY), BASE)
    assert KEY not in repr(api)
    assert KEY not in str(api)
    assert BASE in repr(api)


# --- the request bucket, inside the client --------------------------------------------


async def test_every_call_passes_the_clients_one_bucket(mock_api: aioresponses) -> None:
    """Submit, status and balance each take one grant of the bucket the client was given,
    in priority order when they queue; request counts are read from it."""
    from apixo_batch.apixo.limits import RequestBucket
    from apixo_batch.clock import FakeClock

    bucket = RequestBucket(600, FakeClock(), burst=5)
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    mock_api.get(STATUS_URL, payload=_status_body({"taskId": "task_12345678", "state": "pending"}))
    mock_api.get(BALANCE_URL, payload=BALANCE_OK)
    async with ApixoClient(ApiKey(KEY), BASE, bucket=bucket) as api:
        await api.submit(MODEL, T2V_INPUT)
        await api.status(MODEL, "task_12345678")
        await api.balance()
    assert bucket.statistics().granted == bucket.statistics().sent == 3


async def test_a_429_slows_the_bucket_before_it_is_raised(mock_api: aioresponses) -> None:
    """The client tells its bucket about a 429: a pause for Retry-After, as given (the
    server's own time), and one decrease of the rate for the episode."""
    from apixo_batch.apixo.limits import RequestBucket
    from apixo_batch.clock import FakeClock

    bucket = RequestBucket(600, FakeClock(), time_scale=0.5)
    body = {"code": 429, "message": "Rate limit exceeded", "data": None}
    mock_api.get(BALANCE_URL, status=429, payload=body, headers={"Retry-After": "8"})
    async with ApixoClient(ApiKey(KEY), BASE, bucket=bucket) as api:
        with pytest.raises(RateLimited):
            await api.balance()
    stats = bucket.statistics()
    assert stats.rate_limited == 1 and stats.paused_for == pytest.approx(8.0)
    assert stats.episodes == 1


async def test_a_grant_handed_back_unused_sends_nothing(mock_api: aioresponses) -> None:
    """A submit's grant taken, then handed back (the run stopped meanwhile): nothing is
    sent, and the grant, spent on the bucket, is not counted as a request."""
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    async with ApixoClient(ApiKey(KEY), BASE) as api:
        grant = await api.grant(Priority.SUBMIT)
        api.unused(grant)
    assert _calls(mock_api, "POST", SUBMIT_URL) == []
    assert (api.bucket.statistics().granted, api.bucket.statistics().sent) == (1, 0)


async def test_a_submit_spends_the_grant_it_was_given(mock_api: aioresponses) -> None:
    """A submit given a grant takes no second one from the bucket."""
    mock_api.post(SUBMIT_URL, payload=SUBMIT_OK)
    async with ApixoClient(ApiKey(KEY), BASE) as api:
        grant = await api.grant(Priority.SUBMIT)
        await api.submit(MODEL, T2V_INPUT, grant=grant)
    assert len(_calls(mock_api, "POST", SUBMIT_URL)) == 1
    assert (api.bucket.statistics().granted, api.bucket.statistics().sent) == (1, 1)


@pytest.mark.parametrize(
    ("message", "slots"),
    [("Concurrent task limit exceeded", True), ("Rate limit exceeded", False)],
)
async def test_a_submit_429_for_the_slots_leaves_the_request_rate_alone(
    mock_api: aioresponses, message: str, slots: bool
) -> None:
    """A 429 that says concurrency is the account's slot limit: the bucket is not slowed."""
    from apixo_batch.apixo.limits import RequestBucket
    from apixo_batch.clock import FakeClock

    bucket = RequestBucket(600, FakeClock())
    body = {"code": 429, "message": message, "data": None}
    mock_api.post(SUBMIT_URL, status=429, payload=body)
    async with ApixoClient(ApiKey(KEY), BASE, bucket=bucket) as api:
        with pytest.raises(RateLimited) as info:
            await api.submit(MODEL, T2V_INPUT)
    assert info.value.slots is slots
    assert bucket.statistics().episodes == (0 if slots else 1)


async def test_a_refused_connection_says_nothing_was_sent() -> None:
    """Connection refused (nothing listens on the port): TransportError with sent=False."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ApixoClient(ApiKey(KEY), f"http://127.0.0.1:{port}/api/v1") as api:
        with pytest.raises(TransportError) as info:
            await api.submit(MODEL, T2V_INPUT)
    assert info.value.sent is False
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("retry_after", "window_full", "slots"),
    [(None, False, True), ("5", False, False), (None, True, False)],
)
async def test_a_bare_submit_429_while_requests_run_fast_is_the_slots_unless_a_window_says_no(
    mock_api: aioresponses,
    monkeypatch: pytest.MonkeyPatch,
    retry_after: str | None,
    window_full: bool,
    slots: bool,
) -> None:
    """A bare "Too Many Requests" on a submit while requests use most of their rate: with
    no Retry-After and no window the engine knows of full, the slots (issue 31: read as
    the rate's, it slowed every request of a run with no rate limit near); with a
    Retry-After, or while the learned window is full, the rate."""
    from apixo_batch.apixo.limits import RequestBucket
    from apixo_batch.clock import FakeClock

    clock = FakeClock()
    bucket = RequestBucket(600, clock)
    now = clock.monotonic()
    for i in range(100):  # a burst in the last second
        bucket.accepted(now - 1.0 + i / 100.0, "submit")
    monkeypatch.setattr(bucket, "utilization", lambda window_s=10: 0.9)
    if window_full:  # 100 per 10 s learned from a refusal (no pause: the test does not wait)
        bucket.account.answered(now - 0.005, False, "submit")
        fit = bucket.account.refit(now, retry_after=9.0, refused_at=now - 0.005)
        assert fit is not None and fit.window_s == 10.0
    body = {"code": 429, "message": "Too Many Requests", "data": None}
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    mock_api.post(SUBMIT_URL, status=429, payload=body, headers=headers)
    episodes = bucket.statistics().episodes
    async with ApixoClient(ApiKey(KEY), BASE, bucket=bucket) as api:
        with pytest.raises(RateLimited) as info:
            await api.submit(MODEL, T2V_INPUT)
    assert info.value.slots is slots
    assert bucket.statistics().episodes == episodes + (0 if slots else 1)
