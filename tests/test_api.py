"""The embedding API in-process against the simulator: run_campaign and stream_campaign."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from e2e import SIM_KEY, assert_byte_exact, read_manifest, simple_jobs, write_campaign

from apixo_batch import (
    ApiKey,
    ApixoError,
    Engine,
    Event,
    JobFileError,
    RunOptions,
    RunResult,
    run_campaign,
    stream_campaign,
)
from apixo_batch.api import build_engine
from apixo_batch.defaults import DEFAULT_BASE_URL
from apixo_batch.errors import MissingApiKey
from apixo_batch.journal import JobState, Journal


def opts(sim, **fields: Any) -> RunOptions:
    """The options of a run against ``sim``: its URL, its time scale, and ``fields``."""
    return RunOptions(**{"base_url": sim.base_url, "time_scale": 0.01, **fields})


async def test_run_campaign_returns_a_run_result(simulator, tmp_path: Path) -> None:
    """run_campaign runs to the end: exit 0, counts, manifest and files byte-exact."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(4))
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert isinstance(result, RunResult)
    assert result.exit_code == 0
    assert result.counts == {"done": 4, "failed": 0, "expired": 0, "pending": 0}
    assert result.submitted == 4 and result.possibly_duplicated == 0
    assert result.requests >= 5 and not result.interrupted and result.fatal is None
    assert result.spent_usd == pytest.approx(1.2)
    assert result.manifest == (tmp_path / "out" / "manifest.jsonl").resolve()
    assert result.output_dir == (tmp_path / "out").resolve()
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)
    assert sim.stats()["submits_accepted"] == 4


async def test_run_campaign_reports_events_and_resumes(simulator, tmp_path: Path) -> None:
    """on_event sees every event; a second call finds everything done and sends no request."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(3))
    seen: list[Event] = []
    first = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, on_event=seen.append)
    assert first.exit_code == 0
    assert seen[0].kind == "started" and seen[-1].kind == "summary"
    assert len([e.job_id for e in seen if e.kind == "downloaded"]) == 3
    assert seen[-1].data["exit_code"] == 0
    before = sim.stats()["requests_total"]
    again = await run_campaign(job_file, RunOptions(base_url=sim.base_url), api_key=ApiKey(SIM_KEY))
    assert again.exit_code == 0 and again.submitted == 0 and again.requests == 0
    assert sim.stats()["requests_total"] == before


async def test_run_campaign_out_dir_overrides_the_job_file(simulator, tmp_path: Path) -> None:
    """out_dir puts files, manifest and journal in another folder."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    elsewhere = tmp_path / "elsewhere"
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, out_dir=elsewhere)
    assert result.exit_code == 0
    assert result.output_dir == elsewhere.resolve()
    assert (elsewhere / "job-0000.mp4").exists() and (elsewhere / ".apixo-batch.sqlite").exists()
    assert not (tmp_path / "out").exists()


async def test_stream_campaign_yields_events_ending_with_summary(simulator, tmp_path: Path) -> None:
    """stream_campaign yields every event as it happens; the last one is the summary."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(3)
    job_file = write_campaign(tmp_path, jobs)
    events = [e async for e in stream_campaign(job_file, opts(sim), api_key=SIM_KEY)]
    assert events[0].kind == "started"
    assert events[-1].kind == "summary"
    assert [e for e in events if e.kind == "summary"] == [events[-1]]
    summary = events[-1].data
    assert summary["exit_code"] == 0 and summary["counts"]["done"] == 3
    for job in jobs:
        kinds = [e.kind for e in events if e.job_id == job["id"]]
        assert kinds[0] == "submitted" and kinds[-2:] == ["succeeded", "downloaded"]
    assert all(isinstance(e.at, float) for e in events)


async def test_leaving_stream_early_stops_cleanly_then_resumes(simulator, tmp_path: Path) -> None:
    """Closing the stream mid-run stops it (manifest written, journal free); a rerun finishes
    without submitting any job twice."""
    sim = await simulator(time_scale=0.01, duration_override_s=(1.0, 1.5))
    jobs = simple_jobs(20)
    job_file = write_campaign(tmp_path, jobs)
    submitted = 0
    async with contextlib.aclosing(
        stream_campaign(job_file, opts(sim, max_concurrent=5), api_key=SIM_KEY)
    ) as stream:
        async for event in stream:
            submitted += event.kind == "submitted"
            if submitted == 5:
                break
    # The run is over: the journal is free, nothing is left `submitting`.
    journal = Journal(tmp_path / "out" / ".apixo-batch.sqlite")
    try:
        rows = journal.in_states(list(JobState))
        assert not [r for r in rows if r.state == JobState.SUBMITTING]
        with_task = [r for r in rows if r.task_id]
        assert len(with_task) >= 5
    finally:
        journal.close()
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 20
    assert {e["state"] for e in manifest} == {"pending"}
    assert len(sim.tasks) == len(with_task)
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert result.exit_code == 0
    assert result.submitted == 20 - len(with_task)
    stats = sim.stats()
    assert stats["submits_accepted"] == 20 and stats["duplicate_submits"] == 0
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)


async def test_break_without_aclosing_still_stops_the_run(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain `break` (the generator closed by the event loop) also stops the run soon."""
    sim = await simulator(time_scale=0.01, duration_override_s=(1.0, 1.5))
    job_file = write_campaign(tmp_path, simple_jobs(20))
    ended = asyncio.Event()
    real_run = Engine.run

    async def run(self: Engine) -> RunResult:
        try:
            return await real_run(self)
        finally:
            ended.set()

    monkeypatch.setattr(Engine, "run", run)
    async for event in stream_campaign(job_file, opts(sim, max_concurrent=5), api_key=SIM_KEY):
        if event.kind == "submitted":
            break
    # The event loop's async-generator finalizer closes the stream shortly: the run
    # stops, lets go of its journal and leaves its manifest.
    await asyncio.wait_for(ended.wait(), timeout=30)
    Journal(tmp_path / "out" / ".apixo-batch.sqlite").close()  # its lock is free
    assert (tmp_path / "out" / "manifest.jsonl").exists()
    assert sim.stats()["submits_accepted"] <= 5  # --max-concurrent 5, tasks take >= 1 s
    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert result.exit_code == 0
    assert sim.stats()["duplicate_submits"] == 0


async def test_invalid_job_file_raises_job_file_error(simulator, tmp_path: Path) -> None:
    """An invalid job file raises JobFileError naming job and field; no request is sent."""
    sim = await simulator(time_scale=0.01)
    jobs = simple_jobs(2)
    jobs[1]["input"]["duration"] = 7
    job_file = write_campaign(tmp_path, jobs)
    with pytest.raises(JobFileError) as caught:
        await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert "job-0001" in str(caught.value) and "duration" in str(caught.value)
    assert caught.value.issues
    with pytest.raises(JobFileError):
        async for _ in stream_campaign(job_file, opts(sim), api_key=SIM_KEY):
            pass
    with pytest.raises(JobFileError):
        await run_campaign(tmp_path / "missing.yaml", opts(sim), api_key=SIM_KEY)
    assert sim.stats()["requests_total"] == 0


async def test_missing_api_key_raises_before_any_request(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No api_key: MissingApiKey before any request, though APIXO_API_KEY holds a good
    key (the Python API reads no environment)."""
    monkeypatch.setenv("APIXO_API_KEY", SIM_KEY)
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(1))
    with pytest.raises(ApixoError, match=r"no API key was given \(api_key=\)") as caught:
        await run_campaign(job_file, opts(sim))
    assert isinstance(caught.value, MissingApiKey)
    assert sim.stats()["requests_total"] == 0


def test_build_engine_takes_its_options_and_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options given are the engine's; none given are the defaults, whatever
    APIXO_BASE_URL says (only the CLI reads it)."""
    monkeypatch.setenv("APIXO_BASE_URL", "http://127.0.0.1:9/api/v1")
    job_file = write_campaign(tmp_path, simple_jobs(1))
    options = RunOptions(base_url="http://127.0.0.1:8/api/v1", rpm=120)
    assert build_engine(job_file, options, api_key=SIM_KEY).options is options
    assert build_engine(job_file, api_key=SIM_KEY).options == RunOptions()
    assert RunOptions().base_url == DEFAULT_BASE_URL


async def test_wrong_key_is_a_result_not_an_exception(simulator, tmp_path: Path) -> None:
    """A refused key ends with exit_code 3 and a `fatal` reason that does not hold the key."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    wrong = "sk-live-EMBEDDED-WRONG-KEY-00000000"
    result = await run_campaign(job_file, opts(sim), api_key=wrong)
    assert result.exit_code == 3
    assert result.fatal and wrong not in result.fatal
    assert sim.stats()["submits_accepted"] == 0


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_concurrent", 1000, "1,000 is out of range (from 1 to 999)"),
        ("max_concurrent", 0, "0 is out of range (from 1 to 999)"),
        ("rpm", 10_000, "10,000 is out of range (from 1 to 9,999)"),
        ("rpm", 2.5, "a whole number is needed, not 2.5"),
        ("download_concurrency", 0, "0 is out of range (at least 1)"),
        ("time_scale", 0, "0 is not a finite number more than zero"),
        ("time_scale", float("nan"), "nan is not a finite number more than zero"),
        ("time_scale", float("inf"), "inf is not a finite number more than zero"),
        ("order", "random", "'random' is neither 'longest' nor 'file'"),
        ("max_wait_min", -1.0, "-1.0 is not a finite number more than zero"),
        ("stop_grace_s", -0.5, "-0.5 is not a finite number zero or more"),
        ("budget", 0.0, "0.0 is not a finite number more than zero"),
        ("mode", "fetch", "'fetch' is neither 'run' nor 'download'"),
    ],
)
async def test_run_campaign_refuses_options_the_cli_would_refuse(
    simulator, tmp_path: Path, field: str, value: object, says: str
) -> None:
    """Above the API's limits or out of range: ValueError naming the field, before any request."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    with pytest.raises(ValueError, match=rf"^RunOptions\.{field}: ") as caught:
        await run_campaign(job_file, opts(sim, **{field: value}), api_key=SIM_KEY)
    assert says in str(caught.value)
    assert sim.stats()["requests_total"] == 0
    assert not (tmp_path / "out").exists()


async def test_run_campaign_runs_at_the_caps(simulator, tmp_path: Path) -> None:
    """999 in flight and 9,999 requests a minute are the highest accepted values."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))
    result = await run_campaign(job_file, opts(sim, max_concurrent=999, rpm=9_999), api_key=SIM_KEY)
    assert result.exit_code == 0 and result.counts["done"] == 2


@pytest.mark.parametrize("trouble", ["expired", "failed"])
async def test_a_result_that_landed_before_a_later_one_went_wrong_stays_the_jobs(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trouble: str
) -> None:
    """Job x's first result lands, then its second URL expires (or its download gives
    up): x keeps the landed file journaled as its own, so a job that takes that name
    later (template `{index}.mp4`, a job inserted above x) is refused before it is
    paid instead of writing over a paid file."""
    import apixo_batch.outputs.output as engine_module
    from apixo_batch.outputs.download import DownloadError

    sim = await simulator(time_scale=0.01, results_per_task=2)
    real_download = engine_module.download_file

    async def trouble_after_the_first(session, url, dest, **kwargs):  # type: ignore[no-untyped-def]
        if not url.endswith("/0.mp4") and trouble == "failed":
            raise DownloadError(f"{url}: gave up after 8 attempts (HTTP 503)")
        got = await real_download(session, url, dest, **kwargs)
        if trouble == "expired":
            sim.expire_now(url.rsplit("/", 2)[-2])  # /files/<task id>/<n>.mp4
        return got

    monkeypatch.setattr(engine_module, "download_file", trouble_after_the_first)
    out = {"dir": "out", "filename": "{index}.mp4"}
    x = {**simple_jobs(1)[0], "id": "x"}
    job_file = write_campaign(tmp_path, [x], output=out)
    first = await run_campaign(job_file, opts(sim), api_key=SIM_KEY)
    assert first.exit_code == 1
    [entry] = read_manifest(tmp_path / "out")
    state = "expired" if trouble == "expired" else "pending"
    assert (entry["state"], entry["files"]) == (state, ["0.mp4"])
    paid = (tmp_path / "out" / "0.mp4").read_bytes()

    monkeypatch.setattr(engine_module, "download_file", real_download)
    new = {**simple_jobs(2)[1], "id": "new"}
    write_campaign(tmp_path, [new, x], output=out)
    seen: list[Event] = []
    second = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, on_event=seen.append)
    assert second.exit_code == 1
    assert (tmp_path / "out" / "0.mp4").read_bytes() == paid
    [warning] = [e for e in seen if e.kind == "warning" and e.job_id == "new"]
    assert "0.mp4 is job x's file" in warning.data["message"]
    assert sim.submits_for(new["model"], new["input"]) == 0


async def test_a_stream_left_with_a_bare_break_still_writes_the_manifest(
    simulator, tmp_path: Path
) -> None:
    """No aclosing: `break`, then the embedder's asyncio.run ends at once. The run is
    cancelled with its loop, and stops as an interrupt does: manifest written, journal free."""
    sim = await simulator(time_scale=0.01, duration_override_s=(1.0, 1.5))
    job_file = write_campaign(tmp_path, simple_jobs(10))

    async def embedder() -> None:
        async for event in stream_campaign(job_file, opts(sim, max_concurrent=3), api_key=SIM_KEY):
            if event.kind == "submitted":
                break

    # Its own loop (as a script's asyncio.run), while the simulator serves on this one.
    await asyncio.to_thread(asyncio.run, embedder())
    manifest = read_manifest(tmp_path / "out")
    assert [e["id"] for e in manifest] == [j["id"] for j in simple_jobs(10)]
    journal = Journal(tmp_path / "out" / ".apixo-batch.sqlite")  # not held any more
    journal.close()


async def test_a_bug_in_a_run_left_early_still_reaches_the_consumer(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is closed after the first event and the run, stopping, hits a bug: the
    bug comes out of the stream's close, not swallowed with the stop."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(2))

    async def broken(*args: object, **kw: object) -> None:
        raise TypeError("close_books() missing 1 required positional argument: 'refused'")

    monkeypatch.setattr("apixo_batch.pipeline.result.close_books", broken)
    with pytest.raises(TypeError, match="close_books"):
        async with contextlib.aclosing(
            stream_campaign(job_file, opts(sim), api_key=SIM_KEY)
        ) as stream:
            async for _ in stream:
                break


def test_run_options_take_a_state_path_given_as_text() -> None:
    """A journal path given as text is a path (the run used to crash on str.exists);
    something that is no path at all is refused where the options are made."""
    assert RunOptions(state_path="journal/x.sqlite").state_path == Path("journal/x.sqlite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state_path"):
        RunOptions(state_path=42)  # type: ignore[arg-type]


def test_run_options_carry_the_selection_and_what_is_sent_again() -> None:
    """only/models/limit and the retry fields make the selection and Again a run uses;
    a bad limit, a non-text pattern or fail_codes without retry_failed are refused."""
    o = RunOptions(only=("hero-*",), models=("wan-2-5",), limit=3, reroll=True)
    assert o.selection.picks("hero-1", "wan-2-5") and not o.selection.picks("x", "wan-2-5")
    assert o.selection.limit == 3 and o.again.reroll and not o.again.failed
    assert RunOptions(only="hero-*").only == ("hero-*",)  # type: ignore[arg-type]
    assert not RunOptions(mode="download", retry_failed=True).again.any
    with pytest.raises(ValueError, match=r"RunOptions\.limit"):
        RunOptions(limit=0)
    with pytest.raises(ValueError, match=r"RunOptions\.only"):
        RunOptions(only=(3,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fail_codes narrows retry_failed"):
        RunOptions(fail_codes=("NSFW",))


async def test_run_campaign_limit_submits_the_first_jobs(simulator, tmp_path: Path) -> None:
    """The Python API takes the selectors too: limit=2 submits two, the rest stay queued."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(5))
    result = await run_campaign(job_file, opts(sim, limit=2, order="file"), api_key=SIM_KEY)
    assert result.exit_code == 0
    assert result.counts == {"done": 2, "failed": 0, "expired": 0, "pending": 3}
    assert [t.input["prompt"] for t in sim.tasks.values()] == ["scene number 0", "scene number 1"]


async def test_an_on_event_callback_that_raises_does_not_abort_the_run(
    simulator, tmp_path: Path
) -> None:
    """An embedder's callback that raises on every ``downloaded`` event: the run still ends
    exit 0 with every file, the error is told once as a warning, and the events after it
    (the summary included) still reach the callback."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(4))
    seen: list[Event] = []

    def dashboard(event: Event) -> None:
        seen.append(event)
        if event.kind == "downloaded":
            raise ValueError(f"dashboard has no card for {event.job_id}")

    result = await run_campaign(job_file, opts(sim), api_key=SIM_KEY, on_event=dashboard)
    assert result.exit_code == 0
    assert result.counts == {"done": 4, "failed": 0, "expired": 0, "pending": 0}
    assert [e.kind for e in seen].count("downloaded") == 4
    told = [e for e in seen if e.kind == "warning" and "on_event callback" in e.data["message"]]
    assert len(told) == 1 and "ValueError: dashboard has no card" in told[0].data["message"]
    assert seen[-1].kind == "summary" and seen[-1].data["exit_code"] == 0
    for entry in read_manifest(tmp_path / "out"):
        assert_byte_exact(sim, tmp_path / "out", entry)
    assert sim.stats()["duplicate_submits"] == 0
