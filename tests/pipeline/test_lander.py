"""The lander alone, on a FakeClock: a fake file host in place of download_file (and one
whole run against the simulator, for what a bug in a landing does to it)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e import SIM_KEY, simple_jobs, write_campaign
from stagefakes import (
    Recorder,
    drive,
    ledger_journal,
    memory_ledger,
    new_job,
    row,
    succeeded_row,
)

from apixo_batch.api import build_engine
from apixo_batch.clock import FakeClock
from apixo_batch.errors import DownloadError, OutputTaken, ResultExpired
from apixo_batch.journal import JobState, Landed, Ledger, SqliteLedger
from apixo_batch.outputs.download import Downloaded
from apixo_batch.outputs.output import LocalOutput
from apixo_batch.pipeline.lander import Fetch, Lander
from apixo_batch.pipeline.options import RunOptions
from apixo_batch.pipeline.stop import StopKind, Stops
from apixo_batch.planning.selection import Again
from apixo_batch.retry import Backoff, Patience

#: the loop's time is virtual (looptime): FakeClock runs on it
pytestmark = pytest.mark.looptime

FAST = Backoff(base=1.0, cap=4.0, max_attempts=3, jitter=0.0)


def _urls(job_id: str, n: int = 1) -> tuple[str, ...]:
    return tuple(f"http://127.0.0.1:9/files/{job_id}/{k}.mp4" for k in range(n))


def _content(url: str) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + url.encode()


def _write(dest: Path, data: bytes) -> None:
    dest.write_bytes(data)  # a few bytes to a tmp_path: no need for a thread


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None  # a few bytes in a tmp_path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class FakeHost:
    """Stands in for ``download_file``: each URL's bytes land at ``dest`` after a second
    of fake time, unless a fault is set for it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, bool]] = []
        #: the urls fetched with ``guard`` (a file at the name may not be written over)
        self.guarded: list[str] = []
        self.faults: dict[str, Exception] = {}
        self.busy = self.peak = 0

    def fetched(self, url: str) -> int:
        return sum(1 for u, _, _ in self.calls if u == url)

    async def __call__(
        self,
        session: Any,
        url: str,
        dest: Path,
        *,
        clock: FakeClock,
        backoff: Backoff | None = None,
        chunk_size: int = 1 << 20,
        fresh: bool = False,
        guard: bool = False,
    ) -> Downloaded:
        """``download_file``'s signature (a keyword it does not know would fail here too),
        ``guard`` as it does: the same bytes are kept, other bytes are not written over."""
        self.calls.append((url, dest, fresh))
        if guard:
            self.guarded.append(url)
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        try:
            await clock.sleep(1.0)
        finally:
            self.busy -= 1
        fault = self.faults.get(url)
        if fault is not None:
            raise fault
        data = _content(url)
        digest = hashlib.sha256(data).hexdigest()
        there = _read(dest) if guard else None
        if there is not None:
            if there != data:
                raise OutputTaken(f"{dest} exists and was not written by this campaign")
            return Downloaded(dest, len(data), digest, resumed=0, found=True)
        _write(dest, data)
        return Downloaded(dest, len(data), digest, resumed=0)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr("apixo_batch.outputs.output.download_file", fake)
    return fake


def _lander(
    ledger: Ledger,
    clock: FakeClock,
    out: Path,
    workers: int = 2,
    patience_s: float = 1800.0,
    stops: Stops | None = None,
) -> tuple[Lander, Recorder]:
    events = Recorder()
    lander = Lander(
        ledger,
        None,  # type: ignore[arg-type]  # the fake host needs no session
        output=LocalOutput(out),
        clock=clock,
        emit=events.emitter(clock),
        backoff=FAST,
        workers=workers,
        patience=Patience(patience_s),
        stops=stops,
    )
    return lander, events


async def _land(lander: Lander, clock: FakeClock, fetches: list[Fetch]) -> None:
    """Send ``fetches`` as the follower would, close, and run the lander to its end."""
    tx, rx = anyio.create_memory_object_stream[Fetch](len(fetches))
    with tx:
        for f in fetches:
            tx.send_nowait(f)
    await drive(clock, lander.run(rx))


def _fetch(ledger: Ledger, job_id: str, *, fresh: bool = True) -> Fetch:
    r = row(ledger, job_id)
    return Fetch(r.id, r.model, r.filename, r.result_urls, fresh=fresh, landed=r.files)


async def test_results_land_and_the_job_is_journaled_done(tmp_path: Path, host: FakeHost) -> None:
    """Every result of the job on disk, under its names; `done` with files, bytes, hashes."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    urls = _urls("job-0", 2)
    await succeeded_row(ledger, clock, "job-0", urls)
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    stored = row(ledger, "job-0")
    assert stored.state is JobState.DONE
    assert stored.files == ("job-0.mp4", "job-0-2.mp4")
    assert stored.bytes == sum(len(_content(u)) for u in urls)
    assert stored.sha256 == tuple(hashlib.sha256(_content(u)).hexdigest() for u in urls)
    assert (tmp_path / "job-0-2.mp4").read_bytes() == _content(urls[1])
    assert [(u, d.name, fresh) for u, d, fresh in host.calls] == [
        (urls[0], "job-0.mp4", True),
        (urls[1], "job-0-2.mp4", True),
    ]
    [downloaded] = events.of("downloaded")
    assert (downloaded.job_id, downloaded.data["files"]) == ("job-0", list(stored.files))
    assert lander.busy == 0 and lander.retries == 0


async def test_the_same_job_from_feeder_and_follower_is_fetched_once(
    tmp_path: Path, host: FakeHost
) -> None:
    """The follower's fresh Fetch and the feeder's journal row of the same job: one download."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    for i in range(3):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    lander, events = _lander(ledger, clock, tmp_path, workers=3)
    tx, rx = anyio.create_memory_object_stream[Fetch](10)
    feeder_tx = tx.clone()

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            with tx:
                await tx.send(_fetch(ledger, "job-1"))  # the follower's, ahead of the feeder
                tg.create_task(lander.feed(feeder_tx))
                tg.create_task(lander.run(rx))
                await clock.sleep(0.5)  # every worker is busy with a download

    await drive(clock, main())
    for i in range(3):
        assert host.fetched(_urls(f"job-{i}")[0]) == 1
        assert row(ledger, f"job-{i}").state is JobState.DONE
    fresh = {u.split("/")[-2]: f for u, _, f in host.calls}
    assert fresh == {"job-0": False, "job-1": True, "job-2": False}  # job-1: the follower's
    assert events.of("warning") == []


async def test_downloads_run_on_as_many_workers_as_configured(
    tmp_path: Path, host: FakeHost
) -> None:
    """Five results of a second each on two workers: two at a time, three seconds in all."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(5)])
    for i in range(5):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    lander, _ = _lander(ledger, clock, tmp_path, workers=2)
    started = clock.monotonic()
    await _land(lander, clock, [_fetch(ledger, f"job-{i}") for i in range(5)])
    assert clock.monotonic() - started == 3.0 and host.peak == 2
    assert {row(ledger, f"job-{i}").state for i in range(5)} == {JobState.DONE}


async def test_a_name_another_job_holds_is_never_written(tmp_path: Path, host: FakeHost) -> None:
    """Job a's second result would be a-2.mp4, job a-2's name: nothing lands, one warning
    names both jobs, and job a stays `succeeded`."""
    clock = FakeClock()
    jobs = [
        dataclasses.replace(new_job(0), filename="a.mp4"),
        dataclasses.replace(new_job(1), filename="a-2.mp4"),
    ]
    ledger = await memory_ledger(clock, jobs)
    await succeeded_row(ledger, clock, "job-0", _urls("job-0", 2))
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    [warning] = events.of("warning")
    assert warning.job_id == "job-0"
    assert "job job-0" in warning.data["message"]
    assert "a-2.mp4 (job job-1's file)" in warning.data["message"]
    assert host.calls == [] and _listing(tmp_path) == []
    stored = row(ledger, "job-0")
    assert (stored.state, stored.files) == (JobState.SUCCEEDED, ())
    assert events.of("downloaded") == []


async def test_an_expired_second_result_journals_expired_keeping_the_first(
    tmp_path: Path, host: FakeHost
) -> None:
    """ResultExpired on the second URL: `expired`, the first file kept and journaled."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    urls = _urls("job-0", 2)
    await succeeded_row(ledger, clock, "job-0", urls)
    host.faults[urls[1]] = ResultExpired("the file host answered 410 for 1.mp4")
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    stored = row(ledger, "job-0")
    assert (stored.state, stored.fail_code) == (JobState.EXPIRED, "RESULT_EXPIRED")
    assert "410" in (stored.fail_msg or "")
    assert stored.files == ("job-0.mp4",)
    assert stored.sha256 == (hashlib.sha256(_content(urls[0])).hexdigest(),)
    assert stored.bytes == len(_content(urls[0]))
    assert (tmp_path / "job-0.mp4").exists() and not (tmp_path / "job-0-2.mp4").exists()
    [expired] = events.of("expired")
    assert expired.job_id == "job-0"
    assert events.of("downloaded") == [] and lander.retries == 0


async def test_a_download_error_leaves_the_job_succeeded_with_what_landed(
    tmp_path: Path, host: FakeHost
) -> None:
    """DownloadError on the second URL: still `succeeded`, the first file journaled, and a
    "retried" event for `download`."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    urls = _urls("job-0", 2)
    await succeeded_row(ledger, clock, "job-0", urls)
    host.faults[urls[1]] = DownloadError("gave up after 6 attempts (HTTP 503)")
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    stored = row(ledger, "job-0")
    assert stored.state is JobState.SUCCEEDED and stored.result_urls == urls
    assert stored.files == ("job-0.mp4",)
    assert stored.sha256 == (hashlib.sha256(_content(urls[0])).hexdigest(),)
    [retried] = events.of("retried")
    assert (retried.job_id, retried.data["call"]) == ("job-0", "download")
    assert "gave up" in retried.data["error"]
    assert lander.retries == 1 and events.of("downloaded") == []


async def test_a_download_error_on_the_first_result_journals_no_files(
    tmp_path: Path, host: FakeHost
) -> None:
    """Nothing landed: the job stays `succeeded` as it was, left for `download`."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    urls = _urls("job-0", 2)
    await succeeded_row(ledger, clock, "job-0", urls)
    host.faults[urls[0]] = DownloadError("host down")
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    stored = row(ledger, "job-0")
    assert (stored.state, stored.files) == (JobState.SUCCEEDED, ())
    assert host.fetched(urls[1]) == 0  # the second is not tried after the first failed
    assert len(events.of("retried")) == 1


async def test_one_results_trouble_does_not_stop_the_others(tmp_path: Path, host: FakeHost) -> None:
    """The file host failing one job's result: that job is left for `download`; the other
    jobs still land."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    for i in range(3):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    host.faults[_urls("job-1")[0]] = DownloadError("gave up after 6 attempts (HTTP 503)")
    lander, events = _lander(ledger, clock, tmp_path, workers=1)
    await _land(lander, clock, [_fetch(ledger, f"job-{i}") for i in range(3)])
    assert [row(ledger, f"job-{i}").state for i in range(3)] == [
        JobState.DONE,
        JobState.SUCCEEDED,
        JobState.DONE,
    ]
    [retried] = events.of("retried")
    assert retried.job_id == "job-1" and "gave up" in retried.data["error"]


async def test_a_bug_in_a_landing_ends_the_lander_instead_of_a_warning_per_job(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A programming error while landing (a TypeError here) is raised out of the lander,
    where it ends the run once; no job gets a "download failed" warning for it, and no
    other landing goes on as if nothing had happened."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(20)])
    for i in range(20):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))

    def broken(self: Landed, file: str, sha256: str, size: int) -> None:
        raise TypeError("unsupported operand type(s) for +=: 'int' and 'str'")

    monkeypatch.setattr(Landed, "add", broken)
    lander, events = _lander(ledger, clock, tmp_path, workers=2)
    with pytest.raises(ExceptionGroup) as caught:
        await _land(lander, clock, [_fetch(ledger, f"job-{i}") for i in range(20)])
    assert caught.group_contains(TypeError, match="unsupported operand")
    assert events.of("warning") == [] and events.of("downloaded") == []
    assert len(host.calls) <= 2  # the workers' first results, then the end
    assert {row(ledger, f"job-{i}").state for i in range(20)} == {JobState.SUCCEEDED}


async def test_the_lander_returns_when_both_senders_have_closed(
    tmp_path: Path, host: FakeHost
) -> None:
    """One sender closed: the lander still lands what the other sends; both closed: it ends."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(2)])
    for i in range(2):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    lander, _ = _lander(ledger, clock, tmp_path)
    follower_tx, rx = anyio.create_memory_object_stream[Fetch](10)
    feeder_tx = follower_tx.clone()

    async def main() -> None:
        running = asyncio.ensure_future(lander.run(rx))
        with follower_tx:
            feeder_tx.send_nowait(_fetch(ledger, "job-0", fresh=False))
            feeder_tx.close()
            await clock.sleep(5.0)
            assert not running.done()  # the follower's side is still open
            assert row(ledger, "job-0").state is JobState.DONE
            await follower_tx.send(_fetch(ledger, "job-1"))
            await clock.sleep(5.0)
            assert row(ledger, "job-1").state is JobState.DONE
            assert not running.done()
        await clock.sleep(0.1)
        assert running.done()
        await running

    await drive(clock, main())


async def test_the_feeder_sends_every_succeeded_job_in_file_order(tmp_path: Path) -> None:
    """The feeder pages through `succeeded` jobs (gone from the file or not), then closes."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(4)])
    for i in (3, 0, 2):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    ledger_journal(ledger).sync([new_job(i) for i in range(3)], clock.wall())  # job-3 gone
    assert not row(ledger, "job-3").in_file
    lander, _ = _lander(ledger, clock, tmp_path)
    tx, rx = anyio.create_memory_object_stream[Fetch](10)
    await drive(clock, lander.feed(tx))
    with rx:
        got = [f async for f in rx]  # ends: the feeder closed its side
    assert [f.id for f in got] == ["job-0", "job-2", "job-3"]
    assert all(not f.fresh for f in got)
    assert got[0].result_urls == _urls("job-0")


class _Outage:
    """The file host refuses connections for the first ``n`` attempts of every URL."""

    def __init__(self, host: FakeHost, n: int) -> None:
        self.host, self.n = host, n
        self.seen: dict[str, int] = {}

    async def __call__(self, session: Any, url: str, dest: Path, **kw: Any) -> Downloaded:
        self.seen[url] = self.seen.get(url, 0) + 1
        if self.seen[url] <= self.n:
            await kw["clock"].sleep(1.0)
            raise DownloadError(f"{url}: gave up (ClientConnectorError)", unreachable=True)
        return await self.host(session, url, dest, **kw)


@pytest.mark.parametrize(("patience", "landed"), [(600.0, True), (5.0, False)])
async def test_a_host_that_cannot_be_reached_is_tried_again_in_the_run(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch, patience: float, landed: bool
) -> None:
    """Connections refused (an outage): the result is tried again, resuming, within the
    run's patience, and lands; past it, it is left `succeeded` for `download`."""
    outage = _Outage(host, n=4)
    monkeypatch.setattr("apixo_batch.outputs.output.download_file", outage)
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0"))
    lander, events = _lander(ledger, clock, tmp_path, workers=1, patience_s=patience)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    state = row(ledger, "job-0").state
    assert state is (JobState.DONE if landed else JobState.SUCCEEDED)
    if landed:
        assert outage.seen[_urls("job-0")[0]] == 5
        assert host.calls[-1][2] is False  # resumed, not started over
    else:
        assert events.of("retried") and outage.seen[_urls("job-0")[0]] < 5


@pytest.mark.usefixtures("inline_run_journal")
async def test_a_bug_in_a_landing_reaches_the_caller_of_a_run_not_exit_1(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole run whose landing has a bug: run_campaign raises it (the CLI then tells it
    in one line, exit 70) instead of returning exit 1 after a warning per result."""
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(tmp_path, simple_jobs(6))

    async def broken(*args: Any, **kw: Any) -> Downloaded:
        raise TypeError("download_file() got an unexpected keyword argument 'fresh'")

    monkeypatch.setattr("apixo_batch.outputs.output.download_file", broken)
    events = Recorder()
    clock = FakeClock(wall_start=time.time())  # the simulator's wall time
    run = build_engine(
        job_file,
        RunOptions(base_url=sim.base_url, time_scale=0.01),
        api_key=SIM_KEY,
        on_event=events,
        clock=clock,
    ).run()
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(run, timeout=30)
    assert caught.group_contains(TypeError, match="unexpected keyword", depth=None)
    assert not [e for e in events.of("warning") if "download" in e.data.get("message", "")]


async def test_an_outage_exactly_as_long_as_the_patience_is_waited_through(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lander ends its patience where the breaker and the follower do, strictly past
    it: refused at 1, 6 and 11 s (10 s of outage, a 10 s patience), it lands at 16 s."""
    outage = _Outage(host, n=3)
    monkeypatch.setattr("apixo_batch.outputs.output.download_file", outage)
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0"))
    lander, _ = _lander(ledger, clock, tmp_path, workers=1, patience_s=10.0)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    assert row(ledger, "job-0").state is JobState.DONE
    assert outage.seen[_urls("job-0")[0]] == 4


async def test_a_journal_that_refuses_a_landing_is_the_storage_stop_not_a_crash(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's disk fills while results land: the lander asks for the storage stop
    (exit 74, submits on the wire still answered) instead of raising through the run's
    task group, and lands nothing more, so what follows stays `succeeded` for download."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    for i in range(3):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))

    def full(self: Ledger, job_id: str, landed: Any) -> asyncio.Future[None]:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(sqlite3.OperationalError("database or disk is full"))
        return failed

    monkeypatch.setattr(SqliteLedger, "record_done", full)
    stops = Stops()
    lander, _ = _lander(ledger, clock, tmp_path, workers=1, stops=stops)
    await _land(lander, clock, [_fetch(ledger, f"job-{i}") for i in range(3)])
    assert [s.kind for s in stops.all] == [StopKind.STORAGE]
    assert "journal" in stops.all[0].reason or "full" in stops.all[0].reason
    assert {row(ledger, f"job-{i}").state for i in range(3)} == {JobState.SUCCEEDED}
    assert len(host.calls) == 1  # nothing more is fetched once nothing can be journaled


async def test_a_file_no_job_wrote_is_not_written_over_by_a_fresh_result(
    tmp_path: Path, host: FakeHost
) -> None:
    """The last guard: a result that succeeded in this run finds a file at its name that
    no job landed (a hand-made cut put there after the submit): nothing is written over,
    the job stays `succeeded` (its URLs journaled for `download`), one warning."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0), new_job(1)])
    for i in range(2):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    (tmp_path / "job-0.mp4").write_bytes(b"my cut")
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0"), _fetch(ledger, "job-1")])
    assert (tmp_path / "job-0.mp4").read_bytes() == b"my cut"
    assert host.fetched(_urls("job-0")[0]) == 0
    [warning] = events.of("warning")
    assert warning.job_id == "job-0"
    assert str(tmp_path / "job-0.mp4") in warning.data["message"]
    assert row(ledger, "job-0").state is JobState.SUCCEEDED
    assert row(ledger, "job-1").state is JobState.DONE


async def test_after_a_crash_a_file_the_journal_did_not_record_is_kept_unless_identical(
    tmp_path: Path, host: FakeHost
) -> None:
    """Results an earlier run left `succeeded` (a crash between a rename and its journaling):
    at a name the journal never recorded as the job's, the same bytes are the job's own
    file (kept, journaled done); other bytes are someone's file (not written over, the job
    stays `succeeded`, one warning). A name the journal recorded as the job's is fetched
    over as before."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(3)])
    for i in range(3):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}", 2 if i == 2 else 1))
    (tmp_path / "job-0.mp4").write_bytes(_content(_urls("job-0")[0]))  # renamed, not journaled
    (tmp_path / "job-1.mp4").write_bytes(b"a hand-made cut")
    # job-2's first file was journaled by an earlier landing; its second was not.
    first, second = _urls("job-2", 2)
    earlier = Landed()
    earlier.add("job-2.mp4", hashlib.sha256(_content(first)).hexdigest(), len(_content(first)))
    recorded = ledger.record_partial("job-2", earlier)
    assert recorded is not None
    await recorded
    (tmp_path / "job-2.mp4").write_bytes(b"stale bytes of its own name")
    (tmp_path / "job-2-2.mp4").write_bytes(b"someone's file")
    lander, events = _lander(ledger, clock, tmp_path)
    fed = [_fetch(ledger, f"job-{i}", fresh=False) for i in range(3)]
    await _land(lander, clock, fed)

    assert row(ledger, "job-0").state is JobState.DONE
    assert (tmp_path / "job-0.mp4").read_bytes() == _content(_urls("job-0")[0])
    assert (tmp_path / "job-1.mp4").read_bytes() == b"a hand-made cut"
    assert row(ledger, "job-1").state is JobState.SUCCEEDED
    assert (tmp_path / "job-2-2.mp4").read_bytes() == b"someone's file"
    stored = row(ledger, "job-2")
    assert (stored.state, stored.files) == (JobState.SUCCEEDED, ("job-2.mp4",))
    assert (tmp_path / "job-2.mp4").read_bytes() == _content(first)  # its own name: fetched
    assert first not in host.guarded and second in host.guarded
    warned = {w.job_id: w.data["message"] for w in events.of("warning")}
    assert set(warned) == {"job-1", "job-2"}
    assert str(tmp_path / "job-1.mp4") in warned["job-1"] and "download" in warned["job-1"]
    assert str(tmp_path / "job-2-2.mp4") in warned["job-2"]


async def test_after_a_crash_a_rerolled_take_is_guarded_at_its_own_name(
    tmp_path: Path, host: FakeHost
) -> None:
    """A take 2 left `succeeded` by a crash is fed at job-N-take2.mp4: a file there the
    journal never recorded is kept unless it holds the take's very bytes; the first take's
    file is neither fetched nor touched."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(i) for i in range(2)])
    for i in range(2):
        await succeeded_row(ledger, clock, f"job-{i}", _urls(f"job-{i}"))
    first = _lander(ledger, clock, tmp_path)[0]
    await _land(first, clock, [_fetch(ledger, f"job-{i}") for i in range(2)])
    await ledger.reconcile([new_job(i) for i in range(2)], again=Again(reroll=True))
    takes = {f"job-{i}": _urls(f"job-{i}-take2") for i in range(2)}
    for job_id, urls in takes.items():
        await succeeded_row(ledger, clock, job_id, urls)
    # job-0's take was renamed into place, not journaled
    (tmp_path / "job-0-take2.mp4").write_bytes(_content(takes["job-0"][0]))
    (tmp_path / "job-1-take2.mp4").write_bytes(b"a hand-made cut")
    host.calls.clear()
    host.guarded.clear()
    lander, events = _lander(ledger, clock, tmp_path)
    tx, rx = anyio.create_memory_object_stream[Fetch](10)
    await drive(clock, lander.feed(tx))
    with rx:
        fed = [f async for f in rx]
    assert [(f.id, f.filename) for f in fed] == [
        ("job-0", "job-0-take2.mp4"),
        ("job-1", "job-1-take2.mp4"),
    ]
    await _land(lander, clock, fed)

    taken = row(ledger, "job-0")
    assert (taken.state, taken.files, taken.earlier_files) == (
        JobState.DONE, ("job-0-take2.mp4",), ("job-0.mp4",),
    )  # fmt: skip
    assert row(ledger, "job-1").state is JobState.SUCCEEDED
    assert (tmp_path / "job-1-take2.mp4").read_bytes() == b"a hand-made cut"
    assert (tmp_path / "job-1.mp4").read_bytes() == _content(_urls("job-1")[0])
    assert sorted(d.name for _, d, _ in host.calls) == ["job-0-take2.mp4", "job-1-take2.mp4"]
    assert set(host.guarded) == {takes["job-0"][0], takes["job-1"][0]}
    assert [w.job_id for w in events.of("warning")] == ["job-1"]


class _Names:
    """The shared reservations of several runners (a NameBook): ``held`` names another
    runner's job holds; every request is recorded."""

    def __init__(self, held: dict[str, str]) -> None:
        self.held = held
        self.asked: list[tuple[str, list[str]]] = []

    async def reserve(self, job_id: str, names: Iterable[str]) -> list[tuple[str, str]]:
        wanted = list(names)
        self.asked.append((job_id, wanted))
        return [(n, self.held[n.casefold()]) for n in wanted if n.casefold() in self.held]


async def test_names_are_reserved_where_other_runners_see_them_before_landing(
    tmp_path: Path, host: FakeHost
) -> None:
    """With several runners, each result's names are reserved in the shared journal
    before anything lands (the job's own name first): a free one lands as ever."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0", 2))
    lander, events = _lander(ledger, clock, tmp_path)
    lander.names = names = _Names({})
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    first = row(ledger, "job-0").filename
    assert names.asked == [("job-0", [first, first.replace(".mp4", "-2.mp4")])]
    assert row(ledger, "job-0").state is JobState.DONE
    assert len(events.of("downloaded")) == 1


async def test_a_name_another_runner_landed_is_never_written(
    tmp_path: Path, host: FakeHost
) -> None:
    """A name that another runner's job holds (it landed it after this runner read the
    names): nothing lands, one warning names the holder, the job stays `succeeded`."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [dataclasses.replace(new_job(0), filename="a.mp4")])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0", 2))
    lander, events = _lander(ledger, clock, tmp_path)
    lander.names = _Names({"a-2.mp4": "job-9"})
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    [warning] = events.of("warning")
    assert "a-2.mp4 (job job-9's file)" in warning.data["message"]
    assert host.calls == [] and _listing(tmp_path) == []
    assert row(ledger, "job-0").state is JobState.SUCCEEDED


async def test_a_task_of_one_result_reserves_nothing(tmp_path: Path, host: FakeHost) -> None:
    """A task of one result lands on its job's own name, which the journal's row holds
    for every runner: no reservation is asked for (no statement per job)."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0", 1))
    lander, _events = _lander(ledger, clock, tmp_path)
    lander.names = names = _Names({})
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    assert names.asked == []
    assert row(ledger, "job-0").state is JobState.DONE


class _Lease:
    """A runner's lease as the lander reads it: not live until ``live_at`` (fake time),
    or lost for good (taken over)."""

    lease_s = 3.0
    grace_s = 2.5

    def __init__(self, clock: FakeClock, *, live_at: float | None) -> None:
        self._clock = clock
        self._live_at = live_at
        self.lost = live_at is None

    def fenced(self) -> bool:
        return self._live_at is None or self._clock.monotonic() < self._live_at

    def past_term(self) -> bool:
        return self.lost


def _as_runner(ledger: Ledger, lease: _Lease, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(ledger), "runner", property(lambda _self: lease))


async def test_a_runner_whose_lease_was_taken_over_lands_nothing(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several runners: a runner adopted while it stalled (or whose task id came too late
    to be the job's) has a success it followed; the row is its adopter's, who lands it.
    This runner writes nothing (landed first, its file, another task's bytes when its
    id came too late, would stand in the way of the adopter's, or replace its object in
    a bucket) and journals nothing."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0"))
    _as_runner(ledger, _Lease(clock, live_at=None), monkeypatch)
    lander, events = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    assert host.calls == [] and not events.of("downloaded")
    assert _listing(tmp_path) == []
    assert row(ledger, "job-0").state is JobState.SUCCEEDED


async def test_a_runner_lands_once_its_lease_is_live_again(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several runners: while the lease is not live (a renewal late, the database away)
    a landing waits; once renewed, the result lands as usual."""
    clock = FakeClock()
    ledger = await memory_ledger(clock, [new_job(0)])
    await succeeded_row(ledger, clock, "job-0", _urls("job-0"))
    live_at = clock.monotonic() + 2.0
    _as_runner(ledger, _Lease(clock, live_at=live_at), monkeypatch)
    lander, _ = _lander(ledger, clock, tmp_path)
    await _land(lander, clock, [_fetch(ledger, "job-0")])
    assert row(ledger, "job-0").state is JobState.DONE and len(host.calls) == 1
    assert clock.monotonic() >= live_at + 1.0  # the download began once live
