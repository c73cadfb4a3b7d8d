"""Notifier: which events make a message, what it says, that it never says the key, and
that a delivery that fails or hangs costs one warning and no wait past the grace."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiohttp import web

from apixo_batch.apixo.secret import ApiKey
from apixo_batch.errors import ApixoError
from apixo_batch.events import Stopped, Submitted, Warned
from apixo_batch.pipeline import RunResult
from apixo_batch.telemetry.notify import (
    MAX_MESSAGES,
    Message,
    Notifier,
    apprise_sender,
    parse_notify_on,
)

KEY = "sk-live-secret-4242"


class Sent:
    """A sender that records (url, message) and answers ``ok``."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.got: list[tuple[str, Message]] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, message: Message) -> bool:
        with self.lock:
            self.got.append((url, message))
        return self.ok


def notifier(
    send: Any, on: tuple[str, ...] = ("end", "stop"), urls: tuple[str, ...] = ("json://a",)
) -> tuple[Notifier, list[str]]:
    warnings: list[str] = []
    n = Notifier(
        list(urls), campaign="night", on=on, key=ApiKey(KEY), warn=warnings.append, send=send
    )
    return n, warnings


def summary(code: int = 1, **fields: Any) -> Any:
    result = RunResult(
        code,  # type: ignore[arg-type]
        counts={"done": 8, "failed": 2, "expired": 0, "pending": 1},
        spent_usd=2.4,
        unknown_price_jobs=1,
        wall_s=754.0,
        planned_wall_s=600.0,
        fail_codes={"CONTENT_FLAGGED": ["a", "b"]},
        review="/out/review.html",
        **fields,
    )
    return result.summary()


def test_the_end_message_is_one_line_with_everything_a_morning_needs() -> None:
    send = Sent()
    n, warnings = notifier(send)
    n(summary(1, stop_reason=f"the API refused a submit: key {KEY} is revoked"))
    n.close()
    [(url, message)] = send.got
    assert url == "json://a"
    assert (
        message.title == "apixo-batch night: exit 1, some jobs failed, expired or are left pending"
    )
    body = message.body
    assert "8 done, 2 failed, 1 pending" in body
    assert "spent $2.40 + 1 job(s) of unknown price" in body
    assert "took 12 min 34 s (forecast 10 min)" in body
    assert "failed by code: CONTENT_FLAGGED 2" in body
    assert "review: /out/review.html" in body
    assert "stopped: the API refused a submit" in body
    assert KEY not in body and KEY not in message.title
    assert "\n" not in body
    assert message.level == "warning"
    assert warnings == []


def test_stops_outages_and_recoveries_are_sent_only_when_chosen() -> None:
    send = Sent()
    n, _ = notifier(send, on=("stop", "stall", "recover"))
    n(Submitted("a", task_id="t", model="m"))
    n(Warned(message="unknown prices under --budget"))  # not about an outage: no message
    n(Stopped(reason="--budget $5.00 reached", stop="budget"))
    n(Warned(message="API unreachable: no answer", about="outage"))
    n(Warned(message="API answering again after 2 min", about="recovered"))
    n(summary(0))  # "end" not chosen
    n.close()
    titles = [m.title for _, m in send.got]
    assert titles == [
        "apixo-batch night: stopped submitting (budget)",
        "apixo-batch night: stalled, API unreachable",
        "apixo-batch night: recovered",
    ]


def test_the_default_is_end_and_stop_only() -> None:
    send = Sent()
    n, _ = notifier(send, on=parse_notify_on("end,stop"))
    n(Warned(message="API unreachable", about="outage"))
    n(Stopped(reason=f"the API refused a submit: APIXO 401 for {KEY}", stop="refused"))
    n(summary(3))
    n.close()
    assert [m.event for _, m in send.got] == ["stop", "end"]
    assert all(KEY not in m.body and KEY not in m.title for _, m in send.got)
    assert send.got[0][1].level == "failure"


def test_every_url_gets_every_message_and_a_refusal_is_one_warning() -> None:
    send = Sent(ok=False)
    n, warnings = notifier(send, urls=("json://a", "slack://T/B/C"))
    n(summary(0))
    n.close()
    assert sorted(url for url, _ in send.got) == ["json://a", "slack://T/B/C"]
    assert len(warnings) == 2
    assert any("notify URL 2 (slack://…)" in w for w in warnings)
    assert all("T/B/C" not in w for w in warnings)  # a URL's token is never repeated
    assert n.failed == 2


def test_a_sender_that_raises_costs_a_warning() -> None:
    def broken(url: str, message: Message) -> bool:
        raise RuntimeError("plugin bug")

    n, warnings = notifier(broken)
    n(summary(0))
    n.close()
    assert len(warnings) == 1 and "RuntimeError" in warnings[0]


def test_a_delivery_still_hanging_at_the_end_is_given_up_with_a_warning() -> None:
    release = threading.Event()

    def hangs(url: str, message: Message) -> bool:
        release.wait()
        return True

    n, warnings = notifier(hangs)
    n(summary(0))
    n.close(grace=0.0)  # the grace is spent: close returns without waiting for it
    assert len(warnings) == 1 and "had no answer within 0 s: given up" in warnings[0]
    release.set()


def test_a_flapping_api_cannot_flood_the_channel_but_the_end_still_goes() -> None:
    send = Sent()
    n, warnings = notifier(send, on=("stall", "end"))
    for _ in range(MAX_MESSAGES + 5):
        n(Warned(message="API unreachable", about="outage"))
    n(summary(0))
    n.close()
    assert len(send.got) == MAX_MESSAGES + 1
    assert send.got[-1][1].event == "end"
    assert len(warnings) == 1 and "later ones are not sent" in warnings[0]


@pytest.mark.parametrize("text", ["", "end,never", "fin"])
def test_notify_on_refuses_unknown_events(text: str) -> None:
    with pytest.raises(ValueError, match="--notify-on"):
        parse_notify_on(text)


def test_notify_on_keeps_order_and_drops_repeats() -> None:
    assert parse_notify_on(" stall, end ,stall") == ("stall", "end")


def test_a_url_apprise_cannot_read_is_named_by_place_not_text() -> None:
    with pytest.raises(ApixoError, match=r"notify URL 2 \(nope://…\)") as caught:
        apprise_sender(["json://127.0.0.1:1/x", "nope://secret-token@host"])
    assert "secret-token" not in str(caught.value)


async def test_apprise_posts_the_message_to_a_json_webhook() -> None:
    """The real sender: Apprise's json:// to an aiohttp receiver on 127.0.0.1."""
    posts: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        send = apprise_sender([f"json://127.0.0.1:{port}/hook"])
        n, warnings = notifier(send, urls=(f"json://127.0.0.1:{port}/hook",))
        n(summary(0, fatal=f"key {KEY}"))
        await asyncio.to_thread(n.close)
    finally:
        await runner.cleanup()
    assert warnings == []
    [payload] = posts
    assert payload["title"] == "apixo-batch night: exit 0, every job done"
    assert "8 done" in payload["message"]
    assert payload["type"] == "success"
    assert KEY not in str(payload)
