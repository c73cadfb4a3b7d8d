"""The output's destination: s3:// URLs parsed, the job file and --out, the journal's place,
which keys a campaign owns, the part settings. No server (tests/end_to_end/test_s3_e2e.py
has RGW)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apixo_batch.defaults import state_path
from apixo_batch.errors import JobFileError, PathError
from apixo_batch.jobs import load_campaign
from apixo_batch.location import S3Location, parse_s3
from apixo_batch.outputs.output import LocalOutput, S3Output, open_output, staging_dir
from apixo_batch.outputs.s3 import MIB, owned_by, part_settings


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://renders", "renders", ""),
        ("s3://renders/", "renders", ""),
        ("s3://renders/spring/2026", "renders", "spring/2026/"),
        ("S3://renders//spring//", "renders", "spring/"),
        ("s3://my.bucket-01/a b/c", "my.bucket-01", "a b/c/"),
    ],
)
def test_s3_urls_name_a_bucket_and_a_prefix(text: str, bucket: str, prefix: str) -> None:
    where = parse_s3(text)
    assert where == S3Location(bucket, prefix)
    assert where.key("x.mp4") == prefix + "x.mp4"
    assert where.url("x.mp4") == f"s3://{bucket}/{prefix}x.mp4"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Renders/x", "not a valid bucket name"),
        ("s3://ab/x", "not a valid bucket name"),
        ("s3://a..b/x", "not a valid bucket name"),
        ("s3://renders/a/../b", "'..' segments"),
        ("s3://renders/a?versionId=1", "cannot hold '?'"),
        ("/local/folder", "not an s3:// URL"),
    ],
)
def test_bad_s3_urls_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_s3(text)
    assert says in str(caught.value)


def _job_file(tmp_path: Path, out: str) -> Path:
    doc = {
        "name": "spring",
        "output": {"dir": out},
        "jobs": [
            {
                "id": "a",
                "model": "kling-2-6",
                "input": {"mode": "text-to-video", "prompt": "p", "duration": 5, "sound": False},
            }
        ],
    }
    path = tmp_path / "jobs" / "spring.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_the_job_file_and_out_can_name_a_bucket(tmp_path: Path) -> None:
    path = _job_file(tmp_path, "s3://renders/spring")
    campaign = load_campaign(path)
    assert campaign.output_dir == S3Location("renders", "spring/")
    # --out wins, either way round.
    assert load_campaign(path, out_dir=tmp_path / "here").output_dir == tmp_path / "here"
    local = _job_file(tmp_path / "b", "out")
    assert load_campaign(local, out_dir="s3://other/x").output_dir == S3Location("other", "x/")


def test_a_bad_bucket_is_one_line_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(JobFileError) as caught:
        load_campaign(_job_file(tmp_path, "s3://No_Such"))
    assert "output.dir" in str(caught.value) and "not a valid bucket name" in str(caught.value)
    with pytest.raises(JobFileError) as caught:
        load_campaign(_job_file(tmp_path / "x", "out"), out_dir="s3://")
    assert "--out" in str(caught.value) and "names no bucket" in str(caught.value)


def test_the_journal_of_a_run_to_a_bucket_lives_beside_the_job_file(tmp_path: Path) -> None:
    job_file = tmp_path / "jobs" / "spring.yaml"
    at = state_path(S3Location("renders", "x/"), job_file, "spring")
    assert at == tmp_path / "jobs" / ".apixo-batch" / "spring.sqlite"
    assert staging_dir(at) == tmp_path / "jobs" / ".apixo-batch" / "spring.outputs"
    # A local output keeps its journal in the output folder, as ever.
    local = state_path(tmp_path / "out", job_file, "spring")
    assert local == tmp_path / "out" / ".apixo-batch.sqlite"
    assert isinstance(open_output(tmp_path / "out", at), LocalOutput)
    assert isinstance(open_output(S3Location("renders", "x/"), at), S3Output)


def test_a_campaign_owns_its_result_keys_and_nothing_else() -> None:
    ours = owned_by(S3Location("renders", "spring/"), ["a.mp4", "clips/b.mp4"])
    assert ours("spring/a.mp4") and ours("spring/a-2.mp4") and ours("spring/A.MP4")
    assert ours("spring/clips/b-3.mp4")
    assert not ours("spring/c.mp4") and not ours("autumn/a.mp4") and not ours("a.mp4")
    assert not ours("spring/a-x.mp4")


def test_part_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIXO_BATCH_S3_PART_MIB", raising=False)
    monkeypatch.delenv("APIXO_BATCH_S3_PARTS", raising=False)
    assert part_settings() == (8 * MIB, 4)
    monkeypatch.setenv("APIXO_BATCH_S3_PART_MIB", "16")
    monkeypatch.setenv("APIXO_BATCH_S3_PARTS", "2")
    assert part_settings() == (16 * MIB, 2)
    monkeypatch.setenv("APIXO_BATCH_S3_PART_MIB", "4")  # below S3's 5 MiB
    with pytest.raises(PathError, match="APIXO_BATCH_S3_PART_MIB='4'"):
        part_settings()
