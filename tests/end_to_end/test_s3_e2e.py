"""Results straight into object storage: the real CLI against the simulator and a real S3
server (Ceph's RGW, started by the ``rgw`` fixture; skipped with one line where it is not
installed, see ``conftest.py``).

What is held: objects only at final keys, byte-exact, their SHA-256 in their metadata and
in the manifest; the manifest and review page uploaded beside them; the journal a local
file beside the job file; a kill -9 mid-upload finished by the next run without a new
generation and with no incomplete upload left; a rerun of a finished campaign neither
downloads nor HEADs more than once per result; a bucket that cannot take results costs
nothing but one line; no secret in any output.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from e2e import SIM_KEY, CliResult, cli_env, finish, simple_jobs, start_with, write_campaign
from rgw import RGW, rgw_missing, start_rgw

from apixo_batch.simulator import Simulator

pytestmark = pytest.mark.e2e

botocore_session = pytest.importorskip("botocore.session")

#: small parts, so that a few MB make a multipart upload of several parts
PART_MIB = 5
BIG = 12 * (1 << 20) + 12345  # three parts, the last a short one


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RGW]:
    why = rgw_missing()
    if why is not None:
        pytest.skip(f"no S3 server: {why}")
    server = start_rgw(tmp_path_factory.mktemp("rgw"))
    try:
        yield server
    finally:
        server.stop()


class Bucket:
    """One test's bucket, inspected with plain botocore."""

    def __init__(self, server: RGW, name: str) -> None:
        self.server = server
        self.name = name
        self.s3 = botocore_session.get_session().create_client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
        self.s3.create_bucket(Bucket=name)

    def keys(self) -> list[str]:
        got = self.s3.list_objects_v2(Bucket=self.name)
        return sorted(o["Key"] for o in got.get("Contents", []))

    def incomplete(self) -> list[str]:
        got = self.s3.list_multipart_uploads(Bucket=self.name)
        return [u["Key"] for u in got.get("Uploads", [])]

    def read(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def meta(self, key: str) -> dict[str, Any]:
        return dict(self.s3.head_object(Bucket=self.name, Key=key))


@pytest.fixture
def bucket(rgw: RGW, request: pytest.FixtureRequest) -> Bucket:
    name = "t-" + request.node.name.replace("_", "-").lower()[:40].strip("-")
    return Bucket(rgw, name + f"-{os.getpid() % 1000}")


def s3_env(sim: Simulator, server: RGW, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cli_env(sim).items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=server.endpoint,
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION=server.region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        APIXO_BATCH_S3_PART_MIB=str(PART_MIB),
    )
    env.update(extra)
    return env


async def cli(env: dict[str, str], *args: str) -> CliResult:
    return await finish(await start_with(env, *args), 90.0)


def campaign(tmp_path: Path, bucket: Bucket, jobs: int, prefix: str = "spring/") -> Path:
    return write_campaign(
        tmp_path, simple_jobs(jobs), output={"dir": f"s3://{bucket.name}/{prefix}"}
    )


def assert_results_in_bucket(
    sim: Simulator, bucket: Bucket, prefix: str, manifest: list[dict[str, Any]]
) -> None:
    for entry in manifest:
        assert entry["state"] == "done", entry
        for name, url, digest in zip(
            entry["files"], entry["result_urls"], entry["sha256"], strict=True
        ):
            body = bucket.read(prefix + name)
            assert len(body) == sim.expected_size(url)
            assert digest == sim.expected_sha256(url)
            assert body == sim.expected_bytes(url)
            head = bucket.meta(prefix + name)
            assert head["Metadata"]["sha256"] == digest
            assert unquote(head["Metadata"]["apixo-job"]) == entry["id"]
            assert head["ContentType"] == "video/mp4"


def manifest_of(bucket: Bucket, prefix: str) -> list[dict[str, Any]]:
    text = bucket.read(prefix + "manifest.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


async def test_a_campaign_lands_in_the_bucket_whole_with_its_manifest_and_review(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01, file_size=BIG, results_per_task=2)
    job_file = campaign(tmp_path, bucket, 3)
    env = s3_env(sim, rgw)
    got = await cli(env, "run", str(job_file), "--time-scale", "0.01", "--json")
    assert got.code == 0, got.stderr
    names = [f"job-{i:04d}.mp4" for i in range(3)] + [f"job-{i:04d}-2.mp4" for i in range(3)]
    assert bucket.keys() == sorted(
        ["spring/" + n for n in names] + ["spring/manifest.jsonl", "spring/review.html"]
    )
    assert bucket.incomplete() == []
    manifest = manifest_of(bucket, "spring/")
    assert len(manifest) == 3
    assert_results_in_bucket(sim, bucket, "spring/", manifest)
    page = bucket.read("spring/review.html").decode()
    assert 'src="job-0000.mp4"' in page or "job-0000.mp4" in page
    assert bucket.meta("spring/review.html")["ContentType"] == "text/html"
    summary = got.summary
    assert summary["output_dir"] == f"s3://{bucket.name}/spring/"
    assert summary["manifest"] == f"s3://{bucket.name}/spring/manifest.jsonl"
    assert summary["store_requests"]["complete_multipart_upload"] == 6
    assert "head_object" not in summary["store_requests"]  # fresh results: nothing to find
    # The journal is a local file beside the job file, and nothing landed on the local disk.
    journal = tmp_path / ".apixo-batch" / "e2e.sqlite"
    assert journal.exists() and not (tmp_path / "out").exists()
    assert (tmp_path / ".apixo-batch" / "e2e.outputs" / "manifest.jsonl").exists()
    # No secret anywhere: output, journal, manifest.
    with sqlite3.connect(journal) as db:
        dump = "\n".join(db.iterdump())
    for text in (got.stdout, got.stderr, dump, json.dumps(manifest), page):
        assert rgw.secret_key not in text and SIM_KEY not in text

    # A rerun of the finished campaign: no download, no HEAD, only the manifest and page.
    served = sim.stats()["file_requests"]
    again = await cli(env, "run", str(job_file), "--time-scale", "0.01", "--json")
    assert again.code == 0, again.stderr
    assert sim.stats()["file_requests"] == served
    assert again.summary["store_requests"] == {"put_object": 2}


async def test_small_results_are_one_put_each(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)  # 256 KiB results: below one part
    jobs = simple_jobs(5)
    jobs[0]["id"] = "vidéo-ünï"  # metadata are HTTP headers: ASCII only, percent-encoded
    job_file = write_campaign(tmp_path, jobs, output={"dir": f"s3://{bucket.name}"})
    got = await cli(s3_env(sim, rgw), "run", str(job_file), "--time-scale", "0.01", "--json")
    assert got.code == 0, got.stderr
    requests = got.summary["store_requests"]
    assert requests["put_object"] == 5 + 2 and "create_multipart_upload" not in requests
    assert_results_in_bucket(sim, bucket, "", manifest_of(bucket, ""))
    # Found by its metadata after a crash: the HEAD check decodes what was encoded.
    with sqlite3.connect(tmp_path / ".apixo-batch" / "e2e.sqlite") as db:
        db.execute("UPDATE jobs SET state = 'succeeded'")
    served = sim.stats()["file_requests"]
    again = await cli(s3_env(sim, rgw), "download", str(job_file), "--time-scale", "0.01", "--json")
    assert again.code == 0, again.stderr
    assert sim.stats()["file_requests"] == served
    assert again.summary["store_requests"]["head_object"] == 5


async def test_kill9_mid_upload_is_finished_by_the_next_run_without_a_new_generation(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01, file_size=3 * BIG)
    job_file = campaign(tmp_path, bucket, 4)
    env = s3_env(sim, rgw, APIXO_BATCH_S3_PARTS="2")
    proc = await start_with(env, "run", str(job_file), "--time-scale", "0.01", "--json")
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while not bucket.incomplete():
        assert proc.returncode is None and loop.time() < end, "no upload was ever under way"
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert bucket.incomplete(), "the kill came too late to test anything"
    submits = sim.stats()["submits_accepted"]

    again = await cli(env, "run", str(job_file), "--time-scale", "0.01", "--json")
    assert again.code == 0, again.stderr
    assert sim.stats()["submits_accepted"] == submits  # no result generated twice
    assert bucket.incomplete() == []
    manifest = manifest_of(bucket, "spring/")
    assert [e["state"] for e in manifest] == ["done"] * 4
    assert_results_in_bucket(sim, bucket, "spring/", manifest)
    # What the killed run completed but could not journal is found by one HEAD, not fetched.
    requests = again.summary["store_requests"]
    assert requests.get("head_object", 0) <= 4
    assert requests["list_multipart_uploads"] == 1


async def test_a_bucket_that_refuses_results_stops_the_run_and_download_lands_them_later(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = campaign(tmp_path, bucket, 3)
    env = s3_env(sim, rgw)
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{bucket.name}/*"],
            }
        ],
    }
    bucket.s3.put_bucket_policy(Bucket=bucket.name, Policy=json.dumps(deny))
    refused = await cli(env, "run", str(job_file), "--time-scale", "0.01")
    assert refused.code == 74, refused.stderr
    assert "AccessDenied" in refused.stderr and "Traceback" not in refused.stderr
    assert bucket.keys() == [] and bucket.incomplete() == []
    submits = sim.stats()["submits_accepted"]
    assert submits >= 1

    bucket.s3.delete_bucket_policy(Bucket=bucket.name)
    got = await cli(env, "download", str(job_file), "--time-scale", "0.01", "--json")
    assert got.code in (0, 1), got.stderr  # 1: jobs the stop kept from being submitted
    assert sim.stats()["submits_accepted"] == submits  # download never submits
    manifest = manifest_of(bucket, "spring/")
    landed = [e for e in manifest if e["state"] == "done"]
    assert len(landed) == submits
    assert_results_in_bucket(sim, bucket, "spring/", landed)

    # `review` writes the page again and uploads it.
    bucket.s3.delete_object(Bucket=bucket.name, Key="spring/review.html")
    page = await cli(env, "review", str(job_file))
    assert page.code == 0, page.stderr
    assert page.stdout.strip() == f"s3://{bucket.name}/spring/review.html"
    assert "spring/review.html" in bucket.keys()


async def test_wrong_credentials_cost_one_line_and_nothing_paid(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = campaign(tmp_path, bucket, 2)
    wrong = "not-the-secret-" + rgw.secret_key[:5]
    got = await cli(
        s3_env(sim, rgw, AWS_SECRET_ACCESS_KEY=wrong), "run", str(job_file), "--time-scale", "0.01"
    )
    assert got.code == 2, got.stderr
    assert "SignatureDoesNotMatch" in got.stderr or "access denied" in got.stderr
    assert wrong not in got.stderr + got.stdout and "Traceback" not in got.stderr
    assert sim.stats()["submits_accepted"] == 0


async def test_another_output_with_the_same_journal_is_refused(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = campaign(tmp_path, bucket, 2)
    env = s3_env(sim, rgw)
    assert (await cli(env, "run", str(job_file), "--time-scale", "0.01")).code == 0
    moved = await cli(
        env, "run", str(job_file), "--out", f"s3://{bucket.name}/autumn", "--time-scale", "0.01"
    )
    assert moved.code == 2
    assert f"is for results in s3://{bucket.name}/spring/" in moved.stderr
    # With a journal of its own, the new output gets every result.
    fresh = await cli(
        env,
        "run",
        str(job_file),
        "--out",
        f"s3://{bucket.name}/autumn",
        "--state",
        str(tmp_path / "autumn.sqlite"),
        "--time-scale",
        "0.01",
    )
    assert fresh.code == 0, fresh.stderr
    assert len([k for k in bucket.keys() if k.startswith("autumn/")]) == 2 + 2


async def test_an_output_that_cannot_take_results_costs_one_line_and_nothing_paid(
    simulator: Any, rgw: RGW, tmp_path: Path
) -> None:
    sim = await simulator(time_scale=0.01)
    job_file = write_campaign(
        tmp_path, simple_jobs(2), output={"dir": "s3://no-such-bucket-here/x"}
    )

    async def refused(env: dict[str, str]) -> CliResult:
        """A run whose output cannot take results: one line, no traceback, nothing paid."""
        got = await cli(env, "run", str(job_file), "--time-scale", "0.01")
        assert "Traceback" not in got.stderr
        assert sim.stats()["submits_accepted"] == 0
        return got

    got = await refused(s3_env(sim, rgw))
    assert got.code == 2
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert any("s3://no-such-bucket-here" in line and "no such bucket" in line for line in lines)

    # A profile that does not exist: a setting, told in one line.
    profile = await refused(s3_env(sim, rgw, AWS_PROFILE="no-such-profile"))
    assert profile.code == 2, profile.stderr
    assert "no-such-profile" in profile.stderr

    # No store at the endpoint at all: also before any submit.
    down = await refused(
        s3_env(sim, rgw, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    )
    assert down.code == 74, down.stderr
    assert "cannot reach the S3 endpoint" in down.stderr


async def test_export_kept_copies_the_kept_takes_to_another_prefix_in_the_store(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path
) -> None:
    """Issue 36: an s3:// output's kept takes go to another prefix, copied inside the store,
    with export.jsonl; again after a change of mind, the one no longer kept leaves."""
    from contextlib import closing

    from apixo_batch.journal import Journal

    sim = await simulator(time_scale=0.01)
    job_file = campaign(tmp_path, bucket, 3)
    env = s3_env(sim, rgw)
    assert (await cli(env, "run", str(job_file), "--time-scale", "0.01")).code == 0
    state = tmp_path / ".apixo-batch" / "e2e.sqlite"
    with closing(Journal(state, lock=False)) as journal:
        journal.decide("job-0000", "keep", note="yes", reviewer="ana", at=1.0)
        journal.decide("job-0002", "keep", note=None, reviewer=None, at=2.0)
        journal.decide("job-0001", "reject", note=None, reviewer=None, at=3.0)
    kept = f"s3://{bucket.name}/kept/"
    got = await cli(env, "export", str(job_file), "--kept", kept)
    assert got.code == 0, got.stderr
    assert [k for k in bucket.keys() if k.startswith("kept/")] == [
        "kept/export.jsonl",
        "kept/job-0000.mp4",
        "kept/job-0002.mp4",
    ]
    assert bucket.read("kept/job-0000.mp4") == bucket.read("spring/job-0000.mp4")
    lines = [json.loads(x) for x in bucket.read("kept/export.jsonl").decode().splitlines()]
    assert [(x["id"], x["source"], x["review"]["note"]) for x in lines] == [
        ("job-0000", f"s3://{bucket.name}/spring/job-0000.mp4", "yes"),
        ("job-0002", f"s3://{bucket.name}/spring/job-0002.mp4", None),
    ]
    with closing(Journal(state, lock=False)) as journal:
        journal.decide("job-0002", "reject", note=None, reviewer=None, at=4.0)
    again = await cli(env, "export", str(job_file), "--kept", kept)
    assert again.code == 0, again.stderr
    assert [k for k in bucket.keys() if k.startswith("kept/")] == [
        "kept/export.jsonl",
        "kept/job-0000.mp4",
    ]
    local = await cli(env, "export", str(job_file), "--kept", str(tmp_path / "here"))
    assert local.code == 2 and "another s3:// prefix" in local.stderr
    for text in (got.stdout, got.stderr, again.stderr):
        assert rgw.secret_key not in text


async def test_a_runner_starting_aborts_only_dead_runners_uploads(
    simulator: Any, rgw: RGW, bucket: Bucket, tmp_path: Path, pg_url: str
) -> None:
    """Several runners on one campaign in PostgreSQL, one bucket: a runner that starts
    finds two incomplete uploads of the campaign's names, one recorded by a live runner
    (still uploading), one by a runner whose lease is long gone. Its start-up sweep aborts
    only the dead runner's; the campaign ends done, each object the manifest's bytes."""
    import psycopg

    sim = await simulator(time_scale=0.01)
    env = s3_env(sim, rgw)
    args = ("--state", pg_url, "--time-scale", "0.01", "--json", "--leave-early")
    first = await cli(env, "run", str(campaign(tmp_path, bucket, 2)), *args)
    assert first.code == 0, first.stderr
    job_file = campaign(tmp_path, bucket, 4)
    live = bucket.s3.create_multipart_upload(Bucket=bucket.name, Key="spring/job-0002.mp4")
    dead = bucket.s3.create_multipart_upload(Bucket=bucket.name, Key="spring/job-0003.mp4")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for upload, lease in ((live, "1 hour"), (dead, "-1 hour")):
            row = conn.execute(
                "INSERT INTO runners (campaign, host, pid, version, lease_until) VALUES "
                "('e2e', 'render-b', 7, 'x', clock_timestamp() + %s::interval) RETURNING id",
                (lease,),
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO uploads (upload_id, campaign, s3_key, runner) VALUES "
                "(%s, 'e2e', %s, %s)",
                (upload["UploadId"], upload["Key"], row[0]),
            )
    joined = await cli(env, "run", str(job_file), *args)
    assert joined.code == 0, joined.stderr
    requests = joined.summary["store_requests"]
    assert requests["list_multipart_uploads"] == 1
    assert requests.get("abort_multipart_upload", 0) == 1
    assert bucket.incomplete() == ["spring/job-0002.mp4"]  # the live runner's, untouched
    assert sim.stats()["submits_accepted"] == 4
    manifest = manifest_of(bucket, "spring/")
    assert [e["state"] for e in manifest] == ["done"] * 4
    assert_results_in_bucket(sim, bucket, "spring/", manifest)
