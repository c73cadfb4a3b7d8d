"""The simulator's API contract: routes, bodies and shapes exactly as apixo-docs show them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from simfixture import SIM_KEY, SimulatorFactory, api_call, simulator_fixture  # noqa: F401

from apixo_batch.apixo.client import ApixoClient
from apixo_batch.apixo.secret import ApiKey
from apixo_batch.catalog.failcodes import FAIL_CODES, MODEL_FAIL_CODES
from apixo_batch.errors import AuthError, InsufficientBalance, InvalidRequest, NotFound
from apixo_batch.simulator.app import fingerprint_of
from apixo_batch.simulator.config import SimConfig, SimKey

#: the simulator runs on the loop's time, here virtual (looptime): simulated seconds
#: pass in no real time
pytestmark = pytest.mark.looptime

T2V = {
    "kling-2-5-turbo-pro": {"mode": "text-to-video", "prompt": "a drone shot", "duration": 5},
    "kling-2-1": {"mode": "master-text-to-video", "prompt": "a drone shot", "duration": 5},
    "kling-2-6": {"mode": "text-to-video", "prompt": "a drone shot", "duration": 5, "sound": True},
    "wan-2-5": {
        "mode": "text-to-video",
        "prompt": "a drone shot",
        "duration": 5,
        "resolution": "720p",
    },
}
SLOW = (30.0, 30.0)  # long enough that nothing finishes on its own during a test


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession, base: str, model: str, inp: dict[str, Any], **extra: Any
) -> tuple[int, Any, dict[str, str]]:
    body = {"request_type": "async", "input": inp, **extra}
    return await api_call(http, "POST", f"{base}/generateTask/{model}", body=body)


async def status(
    http: aiohttp.ClientSession, base: str, model: str, task_id: str
) -> tuple[int, Any, dict[str, str]]:
    return await api_call(http, "GET", f"{base}/statusTask/{model}", params={"taskId": task_id})


@pytest.mark.parametrize("model", sorted(T2V))
async def test_submit_answers_documented_shape(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, model: str
) -> None:
    """A valid submit answers 200 {code, message, data: {taskId}} for each of the four models."""
    sim = await simulator(duration_override_s=SLOW)
    code, body, headers = await submit(http, sim.base_url, model, T2V[model])
    assert code == 200
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == 200 and body["message"] == "success"
    assert set(body["data"]) == {"taskId"}
    assert body["data"]["taskId"].startswith("task_")
    assert sim.tasks[body["data"]["taskId"]].model == model


async def test_status_pending_shape(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A task just submitted is pending with exactly taskId, state and createTime."""
    sim = await simulator(duration_override_s=SLOW)
    _, sub, _ = await submit(http, sim.base_url, "kling-2-6", T2V["kling-2-6"])
    task_id = sub["data"]["taskId"]
    code, body, _ = await status(http, sim.base_url, "kling-2-6", task_id)
    assert code == 200
    assert body["code"] == 200 and body["message"] == "success"
    assert set(body["data"]) == {"taskId", "state", "createTime"}
    assert body["data"]["taskId"] == task_id
    assert body["data"]["state"] == "pending"
    assert abs(body["data"]["createTime"] - time.time() * 1000) < 5_000


async def test_status_processing_shape(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Once started a task is processing, still with only taskId, state and createTime."""
    sim = await simulator(duration_override_s=SLOW)
    _, sub, _ = await submit(http, sim.base_url, "wan-2-5", T2V["wan-2-5"])
    task = sim.tasks[sub["data"]["taskId"]]
    task.started_at = task.created_at  # skip the queueing phase
    _, body, _ = await status(http, sim.base_url, "wan-2-5", task.task_id)
    assert body["data"] == {
        "taskId": task.task_id,
        "state": "processing",
        "createTime": task.create_ms,
    }


async def test_status_success_shape(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Success adds resultJson (a JSON string of resultUrls), completeTime and costTime in ms."""
    sim = await simulator(duration_override_s=(0.05, 0.05), results_per_task=2)
    _, sub, _ = await submit(http, sim.base_url, "kling-2-5-turbo-pro", T2V["kling-2-5-turbo-pro"])
    task_id = sub["data"]["taskId"]
    sim.finish_now(task_id)
    _, body, _ = await status(http, sim.base_url, "kling-2-5-turbo-pro", task_id)
    data = body["data"]
    assert set(data) == {"taskId", "state", "resultJson", "createTime", "completeTime", "costTime"}
    assert data["state"] == "success"
    assert isinstance(data["resultJson"], str)
    result = json.loads(data["resultJson"])
    assert result == {
        "resultUrls": [f"{sim.url}/files/{task_id}/0.mp4", f"{sim.url}/files/{task_id}/1.mp4"]
    }
    assert all(isinstance(data[k], int) for k in ("createTime", "completeTime", "costTime"))
    assert data["costTime"] == data["completeTime"] - data["createTime"]
    assert 0 <= data["costTime"] < 5_000


@pytest.mark.parametrize(
    ("model", "fail_code"),
    [("kling-2-6", "SensitiveContentDetected"), ("wan-2-5", "CONTENT_VIOLATION")],
)
async def test_fail_word_ends_failed_with_documented_code(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, model: str, fail_code: str
) -> None:
    """A trigger word fails the task with the model's documented failCode and failMsg."""
    sim = await simulator(duration_override_s=SLOW, fail_words=["forbidden-word"])
    inp = {**T2V[model], "prompt": "a scene with a Forbidden-Word in it"}
    _, sub, _ = await submit(http, sim.base_url, model, inp)
    task_id = sub["data"]["taskId"]
    sim.finish_now(task_id)
    _, body, _ = await status(http, sim.base_url, model, task_id)
    data = body["data"]
    assert body["code"] == 200
    assert set(data) == {"taskId", "state", "failCode", "failMsg", "createTime", "completeTime"}
    assert data["state"] == "failed"
    assert data["failCode"] == fail_code
    expected_msg = {
        "SensitiveContentDetected": "The input or output was flagged as sensitive. "
        "Please try again with different inputs.",
        "CONTENT_VIOLATION": "Content does not meet safety guidelines",
    }[fail_code]
    assert data["failMsg"] == expected_msg


@pytest.mark.parametrize(
    ("model", "inp", "fail_code", "fail_msg"),
    [
        (
            "kling-2-5-turbo-pro",
            {"mode": "image-to-video", "prompt": "animate", "duration": 5},
            "INVALID_IMAGE_URL",
            "Cannot access provided image URL",
        ),
        (
            "kling-2-6",
            {"mode": "image-to-video", "prompt": "animate", "duration": 5, "sound": False},
            "ImageFormatIncorrect",
            "A reference image could not be processed",
        ),
    ],
)
async def test_unreachable_image_fails_with_the_models_documented_code(
    simulator: SimulatorFactory,
    http: aiohttp.ClientSession,
    model: str,
    inp: dict[str, Any],
    fail_code: str,
    fail_msg: str,
) -> None:
    """An image URL matching the bad pattern ends failed with its model page's code:
    kling-2-6's page lists ImageFormatIncorrect, the others INVALID_IMAGE_URL."""
    sim = await simulator(duration_override_s=SLOW)
    inp = {**inp, "image_urls": ["https://example.com/unreachable/start.jpg"]}
    _, sub, _ = await submit(http, sim.base_url, model, inp)
    sim.finish_now(sub["data"]["taskId"])
    _, body, _ = await status(http, sim.base_url, model, sub["data"]["taskId"])
    assert body["data"]["failCode"] == fail_code
    assert body["data"]["failMsg"] == fail_msg


@pytest.mark.parametrize("code", MODEL_FAIL_CODES["kling-2-6"].listed)
async def test_every_documented_kling_2_6_code_can_be_played(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, code: str
) -> None:
    """fail_codes maps a prompt marker to any code of kling-2-6's page, with its message."""
    sim = await simulator(duration_override_s=SLOW, fail_codes={"[fail-here]": code})
    inp = {**T2V["kling-2-6"], "prompt": "a lake [FAIL-HERE]"}
    _, sub, _ = await submit(http, sim.base_url, "kling-2-6", inp)
    sim.finish_now(sub["data"]["taskId"])
    _, body, _ = await status(http, sim.base_url, "kling-2-6", sub["data"]["taskId"])
    assert (body["data"]["state"], body["data"]["failCode"]) == ("failed", code)
    assert body["data"]["failMsg"] == FAIL_CODES[code].message


async def test_task_fail_rate_draws_the_models_transient_codes(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """task_fail_rate fails tasks with their page's transient codes (kling-2-6: RateLimited,
    Timeout; the others: the general page's PROCESSING_TIMEOUT), seeded."""
    sim = await simulator(duration_override_s=SLOW, task_fail_rate=0.5, seed=4)
    codes: dict[str, set[str | None]] = {"kling-2-6": set(), "wan-2-5": set()}
    for model, seen in codes.items():
        for _ in range(40):
            _, sub, _ = await submit(http, sim.base_url, model, T2V[model])
            task = sim.finish_now(sub["data"]["taskId"])
            seen.add(task.fail_code)
    assert codes["kling-2-6"] == {None, "RateLimited", "Timeout"}
    assert codes["wan-2-5"] == {None, "PROCESSING_TIMEOUT"}


@pytest.mark.parametrize(
    ("settings", "bad"),
    [
        ({"fail_codes": {"x": "NOT_A_CODE"}}, "NOT_A_CODE"),
        ({"forbidden": ["download"]}, "download"),
        ({"forbidden": ["submit/sora-9"]}, "submit/sora-9"),
    ],
)
def test_fail_codes_and_forbidden_routes_are_checked(settings: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        SimConfig(**settings)


async def test_forbidden_routes_answer_403_before_the_rate_limit(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A route the key has no access to answers 403 in the envelope, counts nothing against
    the rate limit, creates nothing; the same route for another model and the other routes
    still answer."""
    sim = await simulator(forbidden=["submit/kling-2-6", "balance"], rpm_limit=3)
    for _ in range(5):
        code, body, _ = await submit(http, sim.base_url, "kling-2-6", T2V["kling-2-6"])
        assert code == 403 and body["code"] == 403 and body["data"] is None
        assert body["message"] == "API key lacks permission for this route"
    code, _, _ = await api_call(http, "GET", f"{sim.base_url}/apikeys/current-balance")
    assert code == 403
    assert sim.tasks == {}
    code, sub, _ = await submit(http, sim.base_url, "wan-2-5", T2V["wan-2-5"])
    assert code == 200
    assert (await status(http, sim.base_url, "wan-2-5", sub["data"]["taskId"]))[0] == 200
    assert sim.stats()["faults"] == {"403": 6}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v2/generateTask/kling-2-6"), ("POST", "/api/nothing"), ("GET", "/api")],
)
async def test_unknown_api_paths_answer_the_json_envelope(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    """Any /api/... path no route knows answers 404 as JSON {code, message, data}."""
    sim = await simulator()
    code, body, headers = await api_call(http, method, sim.url + path)
    assert (code, body) == (404, {"code": 404, "message": "Not Found", "data": None})
    assert headers["Content-Type"].startswith("application/json")


async def test_task_moves_through_states_on_its_own(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Without help a task goes pending → success within its drawn duration."""
    sim = await simulator(duration_override_s=(0.1, 0.1))
    _, sub, _ = await submit(http, sim.base_url, "kling-2-6", T2V["kling-2-6"])
    task_id = sub["data"]["taskId"]
    _, first, _ = await status(http, sim.base_url, "kling-2-6", task_id)
    assert first["data"]["state"] in ("pending", "processing")
    await asyncio.sleep(0.15)
    _, last, _ = await status(http, sim.base_url, "kling-2-6", task_id)
    assert last["data"]["state"] == "success"
    assert 90 <= last["data"]["costTime"] <= 1_000
    assert sim.stats()["concurrent_tasks"] == 0


@pytest.mark.parametrize(
    ("model", "change", "lo", "hi"),
    [
        ("kling-2-5-turbo-pro", {"duration": 5}, 30, 45),
        ("kling-2-5-turbo-pro", {"duration": 10}, 45, 60),
        ("kling-2-1", {"duration": 5}, 60, 90),
        ("kling-2-1", {"duration": 10}, 90, 120),
        ("kling-2-6", {"duration": 5}, 50, 70),
        ("kling-2-6", {"duration": 10}, 80, 100),
        ("wan-2-5", {"resolution": "720p"}, 50, 70),
        ("wan-2-5", {"resolution": "1080p"}, 70, 90),
    ],
)
async def test_durations_follow_documented_typical_times(
    simulator: SimulatorFactory,
    http: aiohttp.ClientSession,
    model: str,
    change: dict[str, Any],
    lo: float,
    hi: float,
) -> None:
    """Generation time is drawn from the docs' typical range, multiplied by time_scale."""
    sim = await simulator(time_scale=0.01)
    for _ in range(20):
        code, _, _ = await submit(http, sim.base_url, model, {**T2V[model], **change})
        assert code == 200
    durations = [(t.ends_at - t.created_at) / 0.01 for t in sim.tasks.values()]
    assert all(lo - 1e-6 <= d <= hi + 1e-6 for d in durations), durations
    assert max(durations) - min(durations) > 1  # drawn, not constant
    assert all(t.created_at < t.started_at < t.ends_at for t in sim.tasks.values())


async def test_missing_or_wrong_key_answers_401(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """No key, a wrong key or a non-Bearer scheme answer the documented 401 body."""
    sim = await simulator()
    url = f"{sim.base_url}/apikeys/current-balance"
    expected = {"code": 401, "message": "Invalid or missing API Key", "data": None}
    for key in (None, "wrong-key", ""):
        code, body, _ = await api_call(http, "GET", url, key=key)
        assert (code, body) == (401, expected)
    async with http.get(url, headers={"Authorization": f"Basic {SIM_KEY}"}) as resp:
        assert resp.status == 401
    code, body, _ = await submit(http, sim.base_url, "kling-2-6", T2V["kling-2-6"])
    assert code == 200  # the right key still works
    assert sim.stats()["requests"]["GET /apikeys/current-balance"] == {"401": 4}


async def test_key_comes_from_environment_when_not_configured(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_key=None accepts $APIXO_API_KEY, and sim-key when that is unset."""
    monkeypatch.setenv("APIXO_API_KEY", "env-key-123")
    sim = await simulator(api_key=None)
    url = f"{sim.base_url}/apikeys/current-balance"
    assert (await api_call(http, "GET", url, key="env-key-123"))[0] == 200
    assert (await api_call(http, "GET", url, key="sim-key"))[0] == 401
    monkeypatch.delenv("APIXO_API_KEY")
    sim2 = await simulator(api_key=None)
    url2 = f"{sim2.base_url}/apikeys/current-balance"
    assert (await api_call(http, "GET", url2, key="sim-key"))[0] == 200


async def test_unknown_model_answers_404(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Submit and status for a model APIXO does not have answer 404 in the error shape."""
    sim = await simulator()
    code, body, _ = await submit(http, sim.base_url, "sora-9", T2V["kling-2-6"])
    assert code == 404
    assert body["code"] == 404 and body["data"] is None and "sora-9" in body["message"]
    code, body, _ = await status(http, sim.base_url, "sora-9", "task_1")
    assert (code, body["code"]) == (404, 404)
    code, body, _ = await api_call(http, "GET", f"{sim.base_url}/noSuchRoute")
    assert (code, body) == (404, {"code": 404, "message": "Not Found", "data": None})


async def test_unknown_task_answers_404(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """An unknown taskId, or one asked under another model, answers 404 task not found."""
    sim = await simulator(duration_override_s=SLOW)
    expected = {"code": 404, "message": "task not found", "data": None}
    assert (await status(http, sim.base_url, "kling-2-6", "task_nope"))[:2] == (404, expected)
    _, sub, _ = await submit(http, sim.base_url, "kling-2-6", T2V["kling-2-6"])
    wrong_model = await status(http, sim.base_url, "wan-2-5", sub["data"]["taskId"])
    assert wrong_model[:2] == (404, expected)
    code, body, _ = await api_call(http, "GET", f"{sim.base_url}/statusTask/kling-2-6")
    assert (code, body) == (400, {"code": 400, "message": "taskId is required", "data": None})


@pytest.mark.parametrize(
    ("model", "inp", "needle"),
    [
        ("kling-2-6", {"mode": "text-to-video", "prompt": "x", "duration": 5}, "input.sound"),
        ("kling-2-6", {**T2V["kling-2-6"], "duration": 7}, "input.duration"),
        ("kling-2-6", {**T2V["kling-2-6"], "prompt": "x" * 1001}, "input.prompt"),
        ("wan-2-5", {**T2V["wan-2-5"], "resolution": "4k"}, "input.resolution"),
        ("kling-2-1", {**T2V["kling-2-1"], "aspect-ratio": "16:9"}, "input.aspect-ratio"),
        (
            "kling-2-1",
            {"mode": "standard-image-to-video", "prompt": "x", "duration": 5},
            "input.image_urls",
        ),
    ],
)
async def test_invalid_input_answers_400_with_catalog_reason(
    simulator: SimulatorFactory,
    http: aiohttp.ClientSession,
    model: str,
    inp: dict[str, Any],
    needle: str,
) -> None:
    """Input the catalog refuses answers 400 {code: 400, message: <field: reason>, data: null}."""
    sim = await simulator()
    code, body, _ = await submit(http, sim.base_url, model, inp)
    assert code == 400
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == 400 and body["data"] is None
    assert needle in body["message"]
    assert sim.stats()["tasks_created"] == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"request_type": "callback", "input": T2V["kling-2-6"]}, "callback_url"),
        ({"request_type": "push", "input": T2V["kling-2-6"]}, "request_type"),
        ({"provider": "cheapest", "input": T2V["kling-2-6"]}, "provider"),
        ({"input": T2V["kling-2-6"], "model": "kling-2-6"}, "model"),
        ({"request_type": "async"}, "input"),
        ([1, 2], "object"),
    ],
)
async def test_invalid_envelope_answers_400(
    simulator: SimulatorFactory, http: aiohttp.ClientSession, body: Any, needle: str
) -> None:
    """A submit body outside the documented envelope answers 400 and creates nothing."""
    sim = await simulator()
    url = f"{sim.base_url}/generateTask/kling-2-6"
    code, answer, _ = await api_call(http, "POST", url, body=body)
    assert (code, answer["code"]) == (400, 400)
    assert needle in answer["message"]
    assert sim.tasks == {}


async def test_non_json_body_answers_400(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A body that is not JSON answers 400 in the error shape."""
    sim = await simulator()
    headers = {"Authorization": f"Bearer {SIM_KEY}", "Content-Type": "application/json"}
    async with http.post(
        f"{sim.base_url}/generateTask/kling-2-6", data=b"{not json", headers=headers
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == 400


async def test_balance_shape_and_drawdown_by_catalog_price(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """Balance answers {code, message, data: USD}; each accepted submit draws its price."""
    sim = await simulator(duration_override_s=SLOW, balance=100.0, prices={"kling-2-1": 0.09})
    url = f"{sim.base_url}/apikeys/current-balance"
    assert (await api_call(http, "GET", url))[:2] == (
        200,
        {"code": 200, "message": "success", "data": 100.0},
    )
    await submit(http, sim.base_url, "kling-2-6", {**T2V["kling-2-6"], "sound": True})  # 0.60
    await submit(http, sim.base_url, "kling-2-6", {**T2V["kling-2-6"], "sound": False})  # 0.30
    await submit(http, sim.base_url, "wan-2-5", {**T2V["wan-2-5"], "resolution": "1080p"})  # 0.65
    await submit(http, sim.base_url, "kling-2-1", {**T2V["kling-2-1"], "duration": 10})  # 0.90
    await submit(http, sim.base_url, "kling-2-5-turbo-pro", T2V["kling-2-5-turbo-pro"])  # 0.35
    await submit(http, sim.base_url, "kling-2-6", {**T2V["kling-2-6"], "duration": 99})  # 400
    _, body, _ = await api_call(http, "GET", url)
    assert body["data"] == pytest.approx(100.0 - 0.60 - 0.30 - 0.65 - 0.90 - 0.35)
    assert sim.stats()["spent"] == pytest.approx(2.80)


async def test_empty_balance_answers_402(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """A submit the balance cannot pay answers 402 and charges nothing."""
    sim = await simulator(duration_override_s=SLOW, balance=1.0)
    inp = {**T2V["kling-2-6"], "sound": True}  # 0.60 each
    assert (await submit(http, sim.base_url, "kling-2-6", inp))[0] == 200
    code, body, _ = await submit(http, sim.base_url, "kling-2-6", inp)
    assert code == 402
    assert body == {"code": 402, "message": "Insufficient balance", "data": None}
    assert sim.balance == pytest.approx(0.4)
    assert len(sim.tasks) == 1


async def test_insufficient_credits_after_n_submits(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """After N accepted submits every submit answers the documented Insufficient credits body."""
    sim = await simulator(duration_override_s=SLOW, insufficient_after=2)
    codes = [(await submit(http, sim.base_url, "wan-2-5", T2V["wan-2-5"]))[:2] for _ in range(4)]
    assert [c for c, _ in codes] == [200, 200, 400, 400]
    assert codes[2][1] == {"code": 400, "message": "Insufficient credits", "data": None}
    assert sim.stats()["submits_accepted"] == 2


async def test_real_client_round_trip(simulator: SimulatorFactory) -> None:
    """The project's own ApixoClient submits, polls, reads the balance and maps errors."""
    sim = await simulator(duration_override_s=SLOW, insufficient_after=1)
    async with ApixoClient(ApiKey(SIM_KEY), sim.base_url) as client:
        task_id = await client.submit("kling-2-6", T2V["kling-2-6"])
        assert (await client.status("kling-2-6", task_id)).state == "pending"
        sim.finish_now(task_id)
        done = await client.status("kling-2-6", task_id)
        assert done.state == "success" and done.result_urls
        assert done.cost_time_ms is not None
        assert await client.balance() == pytest.approx(1000.0 - 0.60)
        with pytest.raises(InsufficientBalance):
            await client.submit("kling-2-6", T2V["kling-2-6"])
        with pytest.raises(NotFound):
            await client.status("kling-2-6", "task_missing")
        with pytest.raises(InvalidRequest):
            await client.submit("wan-2-5", {"mode": "text-to-video"})
    async with ApixoClient(ApiKey("not-the-key"), sim.base_url) as bad:
        with pytest.raises(AuthError):
            await bad.balance()


async def test_callback_url_kept_only_in_callback_mode(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """The task record keeps request_type, and a callback_url only in callback mode."""
    sim = await simulator(duration_override_s=SLOW)
    _, a, _ = await submit(
        http, sim.base_url, "kling-2-6", T2V["kling-2-6"], callback_url="http://127.0.0.1:9/x"
    )
    _, b, _ = await submit(
        http,
        sim.base_url,
        "kling-2-6",
        T2V["kling-2-6"],
        request_type="callback",
        callback_url="http://127.0.0.1:9/x",
        provider="official",
    )
    async_task, callback_task = sim.tasks[a["data"]["taskId"]], sim.tasks[b["data"]["taskId"]]
    assert (async_task.request_type, async_task.callback_url) == ("async", None)
    assert callback_task.request_type == "callback"
    assert callback_task.callback_url == "http://127.0.0.1:9/x"
    assert callback_task.provider == "official"
    assert callback_task.input == T2V["kling-2-6"]


async def test_a_source_tag_as_apixos_own_client_sends_it_is_accepted_and_counted(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """@apixo/mcp-server sends an optional top-level `source` string: accepted and counted
    per tag; not a string, refused; any other unknown top-level field still refused."""
    sim = await simulator(duration_override_s=SLOW)
    inp = T2V["kling-2-6"]
    code, _, _ = await submit(http, sim.base_url, "kling-2-6", inp, source="claude-desktop")
    assert code == 200
    assert (await submit(http, sim.base_url, "kling-2-6", inp))[0] == 200
    code, body, _ = await submit(http, sim.base_url, "kling-2-6", inp, source=7)
    assert code == 400 and body["message"] == "source must be a string"
    code, body, _ = await submit(http, sim.base_url, "kling-2-6", inp, sorce="typo")
    assert code == 400 and body["message"] == "Unknown field(s): sorce"
    assert sim.stats()["sources"] == {"claude-desktop": 1, "": 1}


async def test_a_timer_that_fires_a_moment_early_still_ends_its_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop's timers are whole milliseconds and may fire just before their time: the task
    due then ends at that settle, not whenever some other request next comes (its callback
    would leave seconds late, and its slot stay taken)."""
    from apixo_batch.simulator import SimConfig
    from apixo_batch.simulator import tasks as sim_tasks

    ended: list[str] = []
    book = sim_tasks.TaskBook(
        SimConfig(duration_override_s=(1.0, 1.0)), lambda t: ended.append(t.task_id)
    )
    task = book.create(model="kling-2-6", inp=T2V["kling-2-6"], request_type="callback",
                       callback_url="http://127.0.0.1:9/hook", provider="auto",
                       origin="http://127.0.0.1:9", cost=0.3)  # fmt: skip
    monkeypatch.setattr(sim_tasks, "loop_time", lambda: task.ends_at - 0.001)
    book.settle()
    assert ended == [task.task_id] and book.running == 0
    book.close()


# --- several keys: each an account of its own ---------------------------------------------

SECOND = "sim-second-key"


async def test_each_key_has_its_own_slots_balance_and_tasks(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """The second key's slot limit and balance are its own; a task answers only to the key
    that created it (another key gets "task not found", as for an unknown task)."""
    sim = await simulator(
        duration_override_s=SLOW,
        concurrency_limit=5,
        keys=[SimKey(key=SECOND, concurrency_limit=1, balance=2.0)],
    )
    base, model = sim.base_url, "kling-2-6"
    url = f"{base}/generateTask/{model}"
    body = {"request_type": "async", "input": T2V[model]}
    code, first, _ = await api_call(http, "POST", url, key=SECOND, body=body)
    assert code == 200
    code, again, _ = await api_call(http, "POST", url, key=SECOND, body=body)
    assert code == 429 and again["message"] == "Concurrent task limit exceeded"
    code, _, _ = await submit(http, base, model, T2V[model])  # the main key: its own slots
    assert code == 200
    task_id = first["data"]["taskId"]
    status_url = f"{base}/statusTask/{model}"
    code, mine, _ = await api_call(http, "GET", status_url, key=SECOND, params={"taskId": task_id})
    assert code == 200 and mine["data"]["taskId"] == task_id
    code, other, _ = await status(http, base, model, task_id)
    assert code == 404 and other["message"] == "task not found"
    code, balance, _ = await api_call(http, "GET", f"{base}/apikeys/current-balance", key=SECOND)
    assert balance["data"] == pytest.approx(2.0 - sim.tasks[task_id].cost)
    keys = sim.stats()["keys"]
    assert keys[fingerprint_of(SECOND)]["submits"] == 1
    assert keys[fingerprint_of(SECOND)]["rate_limited"] == 1


async def test_a_key_revoked_over_http_refuses_submits_and_may_keep_reading(
    simulator: SimulatorFactory, http: aiohttp.ClientSession
) -> None:
    """POST /_sim/revoke/FINGERPRINT: the key's submits answer 401, its own task still
    reads; with ?reads=0 every request of it answers 401. An unknown key: 404."""
    sim = await simulator(duration_override_s=SLOW, keys=[SimKey(key=SECOND)])
    base, model = sim.base_url, "kling-2-6"
    url = f"{base}/generateTask/{model}"
    body = {"request_type": "async", "input": T2V[model]}
    _, made, _ = await api_call(http, "POST", url, key=SECOND, body=body)
    task_id = made["data"]["taskId"]
    admin = f"{sim.url}/_sim/revoke/{fingerprint_of(SECOND)}"
    async with http.post(admin) as resp:
        assert resp.status == 200
    code, _, _ = await api_call(http, "POST", url, key=SECOND, body=body)
    assert code == 401
    params = {"taskId": task_id}
    code, _, _ = await api_call(
        http, "GET", f"{base}/statusTask/{model}", key=SECOND, params=params
    )
    assert code == 200
    async with http.post(admin, params={"reads": "0"}) as resp:
        assert resp.status == 200
    code, _, _ = await api_call(
        http, "GET", f"{base}/statusTask/{model}", key=SECOND, params=params
    )
    assert code == 401
    code, _, _ = await submit(http, base, model, T2V[model])  # the main key goes on
    assert code == 200
    async with http.post(f"{sim.url}/_sim/revoke/00000000") as resp:
        assert resp.status == 404
