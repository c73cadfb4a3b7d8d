"""``review --serve`` without a browser: the server's guards (token, Host, same origin, a
JSON body), decisions that survive a restart, the cursor a page polls, the files it serves.
The browser tests (test_live_browser.py) drive the page itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_review import campaign_journal

from apixo_batch.journal import JobState, Journal
from apixo_batch.reports.live import ReviewServer


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ReviewServer, aiohttp.ClientSession]]:
    campaign_journal(tmp_path).close()
    (tmp_path / "done.mp4").write_bytes(b"\0" * 64)
    server = ReviewServer(tmp_path / "j.sqlite", tmp_path, name="n", job_file="c.yaml",
                          reviewer="ana")  # fmt: skip
    await server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
            yield server, session
    finally:
        await server.close()


def _auth(server: ReviewServer, **more: str) -> dict[str, str]:
    return {"X-Review-Token": server.token, **more}


async def _decide(
    session: aiohttp.ClientSession, headers: dict[str, str], body: Any
) -> tuple[int, Any]:
    async with session.post("/api/decide", json=body, headers=headers) as res:
        return res.status, await res.json()


async def test_every_request_for_data_needs_the_token(served: Any) -> None:
    server, session = served
    for headers in ({}, {"X-Review-Token": "guess"}):
        async with session.get("/api/jobs", headers=headers) as res:
            assert res.status == 403
            assert "token" in (await res.json())["error"]
        status, _ = await _decide(session, headers, {"id": "done", "decision": "keep"})
        assert status == 403
    async with session.get("/files/done.mp4") as res:
        assert res.status == 403
    with closing(Journal(server.state, lock=False)) as journal:
        assert journal.decisions() == {}
    assert server.url.startswith(f"http://127.0.0.1:{server.port}/#token=")


async def test_a_write_from_another_origin_or_site_or_not_json_is_refused(served: Any) -> None:
    server, session = served
    body = {"id": "done", "decision": "keep"}
    for extra in (
        {"Origin": "http://evil.test"},
        {"Origin": f"http://127.0.0.1:{server.port + 1}"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        status, said = await _decide(session, _auth(server, **extra), body)
        assert status == 403, extra
        assert "refused" in said["error"]
    async with session.post(
        "/api/decide", data="id=done", headers=_auth(server, **{"Content-Type": "text/plain"})
    ) as res:
        assert res.status == 403
    # A rebound DNS name pointing at 127.0.0.1 is not this server's address.
    async with session.get("/", headers={"Host": f"evil.test:{server.port}"}) as res:
        assert res.status == 403
    with closing(Journal(server.state, lock=False)) as journal:
        assert journal.decisions() == {}
    same = _auth(
        server, Origin=f"http://127.0.0.1:{server.port}", **{"Sec-Fetch-Site": "same-origin"}
    )
    status, said = await _decide(session, same, body)
    assert status == 200 and said["review"]["decision"] == "keep"


async def test_decisions_survive_a_restart_and_come_with_the_next_poll(
    served: Any, tmp_path: Path
) -> None:
    server, session = served
    async with session.get("/api/jobs?limit=2", headers=_auth(server)) as res:
        first = await res.json()
    assert [j["id"] for j in first["jobs"]] == ["done", "free"] and not first["complete"]
    assert first["seq"] == 0 and first["meta"]["live"]["reviewer"] == "ana"
    status, made = await _decide(
        session, _auth(server), {"id": "done", "decision": "reject", "note": "<b>too dark</b>"}
    )
    assert status == 200
    assert made["review"]["note"] == "<b>too dark</b>" and made["review"]["reviewer"] == "ana"
    status, said = await _decide(session, _auth(server), {"id": "ghost", "decision": "keep"})
    assert status == 404 and "ghost" in said["error"]

    # The run moves a job meanwhile, on a connection of its own.
    with closing(Journal(server.state, lock=False)) as run:
        run.transition("never", JobState.SUBMITTING, first["cursor"] + 5, attempts=1)
    query = f"/api/changes?since={first['cursor']}&seq={first['seq']}"
    async with session.get(query, headers=_auth(server)) as res:
        changed = await res.json()
    # What changed, and what was stamped within the overlap before the cursor (resent: a
    # page replaces a job by its id).
    assert "never" in {j["id"] for j in changed["jobs"]}
    assert changed["decisions"] == [{"id": "done", "review": made["review"]}]
    assert changed["seq"] > first["seq"] and changed["cursor"] > first["cursor"]

    again = ReviewServer(server.state, tmp_path, name="n", job_file="c.yaml")
    await again.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{again.port}") as other:
            async with other.get("/api/jobs", headers=_auth(again)) as res:
                jobs = {j["id"]: j for j in (await res.json())["jobs"]}
    finally:
        await again.close()
    assert jobs["done"]["review"]["decision"] == "reject"
    assert jobs["free"]["review"] is None


async def test_only_the_output_folders_visible_files_are_served(served: Any) -> None:
    server, session = served
    t = server.token
    async with session.get(f"/files/done.mp4?t={t}") as res:
        assert res.status == 200 and len(await res.read()) == 64
    (server.out_dir / ".hidden.mp4").write_text("x")
    (server.out_dir / "notes.txt").write_text("x")
    for path in ("j.sqlite", "j.sqlite-wal", ".hidden.mp4", "notes.txt", "..%2Fetc%2Fpasswd",
                 "nothing.mp4"):  # fmt: skip
        async with session.get(f"/files/{path}?t={t}") as res:
            assert res.status == 404, path


async def test_the_page_runs_only_its_own_script(served: Any) -> None:
    server, session = served
    async with session.get("/") as res:
        page = await res.text()
        csp = res.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page and "default-src 'none'" in csp
    assert server.token not in page
