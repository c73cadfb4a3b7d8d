"""The job file loader: invalid files are refused naming job and field; valid ones load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from apixo_batch.catalog.models import MODELS
from apixo_batch.errors import JobFileError
from apixo_batch.jobs import Campaign, Job, input_hash, load_campaign

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
name: t
defaults:
  model: kling-2-6
  input: {duration: 5, sound: true}
jobs:
"""


def _write(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "campaign.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Campaign:
    return load_campaign(_write(tmp_path, text, files))


def _job(job_id: str, inp: str, extra: str = "") -> str:
    return f"  - id: {job_id}\n{extra}    input: {inp}\n"


def _error(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> str:
    with pytest.raises(JobFileError) as info:
        _load(tmp_path, text, files)
    return str(info.value)


T2V = "{mode: text-to-video, prompt: hello}"
CSV_HEAD = "id,mode,prompt,duration\n"

# (yaml, extra files, where the problem is, the field): every row a distinct mistake.
INVALID = {
    "yaml-syntax-error": (
        HEAD + "  - id: a\n    input: {mode: text-to-video, prompt: x}}\n" + _job("b", T2V),
        {},
        "campaign.yaml line 7",
        "",
    ),
    "unknown-model": (HEAD + _job("a", T2V, "    model: kling-9\n"), {}, "job 'a'", "model"),
    "mode-not-of-model": (
        HEAD + _job("a", T2V, "    model: kling-2-1\n"),
        {},
        "job 'a'",
        "input.mode",
    ),
    "duration-7": (
        HEAD + _job("a", "{mode: text-to-video, prompt: x, duration: 7}"),
        {},
        "job 'a'",
        "input.duration",
    ),
    "kling-2-6-without-sound": (
        HEAD + _job("a", "{mode: text-to-video, prompt: x, sound: null}"),
        {},
        "job 'a'",
        "input.sound",
    ),
    "prompt-1001-chars": (
        HEAD + _job("a", "{mode: text-to-video, prompt: " + "p" * 1001 + "}"),
        {},
        "job 'a'",
        "input.prompt",
    ),
    "three-images": (
        HEAD
        + _job(
            "a",
            "{mode: image-to-video, prompt: x, image_urls: "
            "[https://e.com/1.jpg, https://e.com/2.jpg, https://e.com/3.jpg]}",
        ),
        {},
        "job 'a'",
        "input.image_urls",
    ),
    "two-images-kling-2-1-standard": (
        HEAD
        + _job(
            "a",
            "{mode: standard-image-to-video, prompt: x, "
            "image_urls: [https://e.com/1.jpg, https://e.com/2.jpg]}",
            "    model: kling-2-1\n",
        ),
        {},
        "job 'a'",
        "input.image_urls",
    ),
    "two-images-wan-i2v": (
        HEAD
        + _job(
            "a",
            "{mode: image-to-video, prompt: x, resolution: 720p, "
            "image_urls: [https://e.com/1.jpg, https://e.com/2.jpg]}",
            "    model: wan-2-5\n",
        ),
        {},
        "job 'a'",
        "input.image_urls",
    ),
    "duplicate-id": (HEAD + _job("a", T2V) + _job("a", T2V), {}, "job 'a'", "id"),
    "id-escapes": (HEAD + _job("../escape", T2V), {}, "campaign.yaml job 1", "id"),
    "id-with-slash": (HEAD + _job("a/b", T2V), {}, "campaign.yaml job 1", "id"),
    "id-empty": (HEAD + _job('""', T2V), {}, "campaign.yaml job 1", "id"),
    "id-101-chars": (HEAD + _job("i" * 101, T2V), {}, "campaign.yaml job 1", "id"),
    "id-control-char": (HEAD + _job('"bell\\aid"', T2V), {}, "campaign.yaml job 1", "id"),
    "id-not-a-string": (HEAD + _job("42", T2V), {}, "campaign.yaml job 1", "id"),
    "unknown-input-key": (
        HEAD + _job("a", '{mode: text-to-video, prompt: x, aspect-ratio: "16:9"}'),
        {},
        "job 'a'",
        "input.aspect-ratio",
    ),
    "unknown-job-key": (HEAD + _job("a", T2V, "    promt: x\n"), {}, "job 'a'", "promt"),
    "unknown-top-level-key": (
        "output_dir: out\n" + HEAD + _job("a", T2V),
        {},
        "campaign",
        "output_dir",
    ),
    "csv-bad-duration": (
        HEAD + "jobs_file: prompts.csv\n".replace("jobs_file", "jobs_file"),
        {"prompts.csv": CSV_HEAD + "ok,text-to-video,fine,5\nbad,text-to-video,hi,abc\n"},
        "prompts.csv row 3",
        "input.duration",
    ),
    "csv-missing-id-column": (
        "defaults: {model: kling-2-6}\njobs_file: prompts.csv\n",
        {"prompts.csv": "mode,prompt\ntext-to-video,hi\n"},
        "prompts.csv row 1",
        "id",
    ),
    "csv-unknown-column": (
        "defaults: {model: kling-2-6}\njobs_file: prompts.csv\n",
        {"prompts.csv": "id,mode,prompt,aspect-ratio\na,text-to-video,hi,16:9\n"},
        "prompts.csv row 1",
        "aspect-ratio",
    ),
    "csv-unknown-model": (
        "defaults: {model: kling-2-6}\njobs_file: prompts.csv\n",
        {"prompts.csv": "id,model,mode,prompt\na,kling-3,text-to-video,hi\n"},
        "prompts.csv row 2",
        "model",
    ),
    "jsonl-bad-json": (
        "defaults: {model: kling-2-6}\njobs_file: rows.jsonl\n",
        {"rows.jsonl": '{"id": "a", "input": {}}\n{"id": "b", "input": \n'},
        "rows.jsonl line 2",
        "",
    ),
    "jsonl-bad-field": (
        "defaults: {model: kling-2-6}\njobs_file: rows.jsonl\n",
        {
            "rows.jsonl": json.dumps(
                {"id": "j", "input": {"mode": "text-to-video", "prompt": "x", "duration": 7}}
            )
            + "\n"
        },
        "rows.jsonl line 1",
        "input.duration",
    ),
    "cfg-scale-1.5": (
        HEAD + _job("a", "{mode: text-to-video, prompt: x, cfg_scale: 1.5}"),
        {},
        "job 'a'",
        "input.cfg_scale",
    ),
    "wan-resolution-4k": (
        HEAD
        + _job("a", "{mode: text-to-video, prompt: x, resolution: 4k}", "    model: wan-2-5\n"),
        {},
        "job 'a'",
        "input.resolution",
    ),
    "i2v-aspect-ratio-in-job": (
        HEAD
        + _job(
            "a",
            '{mode: image-to-video, prompt: x, aspect_ratio: "16:9", '
            "image_urls: [https://e.com/1.jpg]}",
        ),
        {},
        "job 'a'",
        "input.aspect_ratio",
    ),
    "t2v-with-image-urls": (
        HEAD + _job("a", "{mode: text-to-video, prompt: x, image_urls: [https://e.com/1.jpg]}"),
        {},
        "job 'a'",
        "input.image_urls",
    ),
    "bad-provider": (HEAD + _job("a", T2V, "    provider: cheap\n"), {}, "job 'a'", "provider"),
    "prompt-missing": (HEAD + _job("a", "{mode: text-to-video}"), {}, "job 'a'", "input.prompt"),
    "jobs-file-not-found": (
        "defaults: {model: kling-2-6}\njobs_file: nowhere.csv\n",
        {},
        "campaign.yaml",
        "jobs_file",
    ),
    "filename-template-slash": (
        "output: {filename: 'sub/{id}.mp4'}\n" + HEAD + _job("a", T2V),
        {},
        "campaign.yaml",
        "output.filename",
    ),
    "filename-template-unknown-field": (
        "output: {filename: '{name}.mp4'}\n" + HEAD + _job("a", T2V),
        {},
        "campaign.yaml",
        "output.filename",
    ),
    "same-rendered-filename": (
        "output: {filename: '{model}.mp4'}\n" + HEAD + _job("a", T2V) + _job("b", T2V),
        {},
        "job 'b'",
        "output.filename",
    ),
    "negative-price": (
        "prices: {kling-2-1: {pro: -0.1}}\n" + HEAD + _job("a", T2V),
        {},
        "campaign.yaml",
        "prices.kling-2-1.pro",
    ),
    "price-unknown-model": (
        "prices: {kling-3: 0.1}\n" + HEAD + _job("a", T2V),
        {},
        "campaign.yaml",
        "prices.kling-3",
    ),
    "price-unknown-variant": (
        "prices: {wan-2-5: {4k: 0.2}}\n" + HEAD + _job("a", T2V),
        {},
        "campaign.yaml",
        "prices.wan-2-5.4k",
    ),
    "typo-in-defaults-input": (
        "defaults:\n  model: kling-2-6\n  input: {aspect-ratio: '16:9'}\njobs:\n" + _job("a", T2V),
        {},
        "campaign.yaml",
        "defaults.input.aspect-ratio",
    ),
    "sound-yes-string": (
        HEAD + _job("a", '{mode: text-to-video, prompt: x, sound: "yes"}'),
        {},
        "job 'a'",
        "input.sound",
    ),
    "aspect-ratio-unquoted": (
        HEAD + _job("a", "{mode: text-to-video, prompt: x, aspect_ratio: 16:9}"),
        {},
        "job 'a'",
        "input.aspect_ratio",
    ),
    "matrix-unknown-key": (
        HEAD + _job("a", T2V, "    matrix: {durations: [5, 10]}\n"),
        {},
        "job 'a'",
        "matrix.durations",
    ),
    "duplicate-yaml-key": (
        HEAD + "  - id: a\n    input: {mode: text-to-video, prompt: x, prompt: y}\n",
        {},
        "campaign.yaml line 7",
        "jobs[0].input.prompt",
    ),
    "no-model-anywhere": (
        "jobs:\n" + _job("a", T2V),
        {},
        "job 'a'",
        "model",
    ),
}


@pytest.mark.parametrize(("text", "files", "where", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_job_file_names_job_and_field(
    tmp_path: Path, text: str, files: dict[str, str], where: str, field: str
) -> None:
    """Each invalid file raises JobFileError with a line naming the job (or row/line) and field."""
    message = _error(tmp_path, text, files)
    wanted = f"field '{field}'" if field else ""
    lines = message.splitlines()[1:]
    assert any(where in line and wanted in line for line in lines), message


def test_invalid_cases_are_distinct() -> None:
    """The invalid-file table holds at least 25 distinct files."""
    assert len({(text, json.dumps(files)) for text, files, _, _ in INVALID.values()}) >= 25


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error says which line (and column) to look at."""
    message = _error(tmp_path, "name: t\njobs:\n  - id: a\n   bad: [\n")
    assert "YAML syntax error" in message
    assert "line " in message and "column " in message


def test_all_errors_in_a_file_are_reported(tmp_path: Path) -> None:
    """Several mistakes in one file are all listed, not just the first."""
    text = (
        "colour: red\n"
        + HEAD
        + _job("a", "{mode: text-to-video, prompt: x, duration: 7}")
        + _job("b", "{mode: text-to-video, prompt: x, cfg_scale: 2}")
        + _job("c/d", T2V)
        + _job("e", T2V, "    model: kling-9\n")
        + _job("a", T2V)
    )
    message = _error(tmp_path, text)
    assert message.splitlines()[0].endswith("6 problems found")
    for fragment in (
        "field 'colour'",
        "job 'a' (campaign.yaml job 1, line 7) field 'input.duration'",
        "job 'b' (campaign.yaml job 2, line 9) field 'input.cfg_scale'",
        "campaign.yaml job 3, line 11 field 'id'",
        "job 'e' (campaign.yaml job 4, line 13) field 'model'",
        "job 'a' (campaign.yaml job 5, line 16) field 'id': duplicate id",
    ):
        assert fragment in message, message


def test_many_errors_are_capped(tmp_path: Path) -> None:
    """Hundreds of bad rows list the first 200 and count the rest."""
    rows = "".join(f"r{i},text-to-video,x,7\n" for i in range(300))
    message = _error(
        tmp_path,
        "defaults: {model: kling-2-6, input: {sound: false}}\njobs_file: p.csv\n",
        {"p.csv": CSV_HEAD + rows},
    )
    assert message.splitlines()[0] == "campaign.yaml: 300 problems found (first 200 shown)"
    assert message.splitlines()[-1] == "  ... and 100 more"
    assert len(message.splitlines()) == 202


def test_value_from_defaults_is_blamed_on_defaults(tmp_path: Path) -> None:
    """A bad default value is reported on the job and says it came from defaults."""
    text = "defaults:\n  model: kling-2-6\n  input: {sound: true, duration: 7}\njobs:\n"
    message = _error(tmp_path, text + _job("a", T2V))
    assert (
        "field 'input.duration': got 7, expected 5 or 10 (the value comes from defaults" in message
    )


def test_unquoted_aspect_ratio_gets_a_hint(tmp_path: Path) -> None:
    """YAML reads 16:9 as 969; the message says to quote it."""
    message = _error(
        tmp_path, HEAD + _job("a", "{mode: text-to-video, prompt: x, aspect_ratio: 16:9}")
    )
    assert "got 969" in message and 'write "16:9" in quotes' in message


# ---------------------------------------------------------------------------
# Valid files


def _jobs(campaign: Campaign) -> list[Job]:
    return list(campaign.iter_jobs())


def test_defaults_merge_key_by_key(tmp_path: Path) -> None:
    """Job input is merged over defaults.input key by key; the job's values win."""
    text = """\
    defaults:
      model: kling-2-6
      provider: value
      input: {duration: 5, sound: true, negative_prompt: blur, cfg_scale: 0.5}
    jobs:
      - id: a
        input: {mode: text-to-video, prompt: x, duration: 10}
    """
    (job,) = _jobs(_load(tmp_path, text))
    assert job.provider == "value"
    assert dict(job.input) == {
        "mode": "text-to-video",
        "prompt": "x",
        "duration": 10,
        "sound": True,
        "negative_prompt": "blur",
        "cfg_scale": 0.5,
    }


def test_null_removes_a_default_key(tmp_path: Path) -> None:
    """A job sets a default input key to null to leave it out."""
    text = HEAD.replace("sound: true", "sound: true, negative_prompt: blur") + _job(
        "a", "{mode: text-to-video, prompt: x, negative_prompt: null}"
    )
    (job,) = _jobs(_load(tmp_path, text))
    assert "negative_prompt" not in job.input


@pytest.mark.parametrize(
    ("model", "inp", "kept"),
    [
        # APIXO's current kling-2-1 page: aspect ratios "for master-text-to-video only"
        ("kling-2-1", "{mode: master-text-to-video, prompt: x}", True),
        (
            "kling-2-1",
            "{mode: standard-image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}",
            False,
        ),
        (
            "kling-2-6",
            "{mode: image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}",
            False,
        ),
        ("wan-2-5", "{mode: image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}", False),
        ("kling-2-6", "{mode: text-to-video, prompt: x}", True),
        # ... and kling-2-5-turbo-pro's: "16:9, 9:16, 1:1 for text-to-video"
        (
            "kling-2-5-turbo-pro",
            "{mode: image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}",
            False,
        ),
    ],
    ids=[
        "kling-2-1-master-t2v",
        "kling-2-1-i2v",
        "kling-2-6-i2v",
        "wan-i2v",
        "kling-2-6-t2v",
        "kling-2-5-i2v",
    ],
)
def test_default_key_the_model_does_not_take_is_dropped(
    tmp_path: Path, model: str, inp: str, kept: bool
) -> None:
    """A default aspect_ratio is left out where the model or mode does not take it."""
    text = 'defaults:\n  input: {duration: 5, aspect_ratio: "9:16"}\njobs:\n'
    text += f"  - id: a\n    model: {model}\n    input: {inp}\n"
    if model == "kling-2-6":
        text = text.replace("prompt: x", "prompt: x, sound: true")
    if model == "wan-2-5":
        text = text.replace("prompt: x", "prompt: x, resolution: 720p")
    (job,) = _jobs(_load(tmp_path, text))
    assert ("aspect_ratio" in job.input) is kept


def test_csv_rows_convert_to_model_types(tmp_path: Path) -> None:
    """CSV cells become ints, bools, floats and lists; empty cells fall back to defaults."""
    csv_text = (
        "id,model,provider,mode,prompt,duration,sound,cfg_scale,seed,resolution,image_urls\n"
        'k,kling-2-6,,image-to-video, a prompt ,10,TRUE,0.5,,,"[""https://e.com/1.jpg""]"\n'
        "w,wan-2-5,official,text-to-video,p,,,,123,1080p,\n"
        "p,kling-2-1,,pro-image-to-video,p,5,,1,,,https://e.com/1.jpg | https://e.com/2.jpg\n"
    )
    text = "defaults: {model: kling-2-6, input: {duration: 5}}\njobs_file: rows.csv\n"
    k, w, p = _jobs(_load(tmp_path, text, {"rows.csv": csv_text}))
    assert dict(k.input) == {
        "mode": "image-to-video",
        "prompt": " a prompt ",
        "duration": 10,
        "sound": True,
        "cfg_scale": 0.5,
        "image_urls": ["https://e.com/1.jpg"],
    }
    assert (w.model, w.provider) == ("wan-2-5", "official")
    assert dict(w.input) == {
        "mode": "text-to-video",
        "prompt": "p",
        "seed": 123,
        "resolution": "1080p",
        "duration": 5,
    }
    assert p.input["image_urls"] == ["https://e.com/1.jpg", "https://e.com/2.jpg"]
    assert p.input["cfg_scale"] == 1.0 and isinstance(p.input["cfg_scale"], float)
    assert [job.source for job in (k, w, p)] == [
        "rows.csv row 2",
        "rows.csv row 3",
        "rows.csv row 4",
    ]


def test_jsonl_rows_are_jobs(tmp_path: Path) -> None:
    """Each JSONL line is one job shaped like a YAML job, merged over defaults."""
    lines = [
        {"id": "a", "input": {"mode": "text-to-video", "prompt": "x"}},
        {
            "id": "b",
            "model": "wan-2-5",
            "input": {"mode": "text-to-video", "prompt": "y", "resolution": "720p"},
        },
    ]
    body = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    text = HEAD.replace("jobs:\n", "jobs_file: rows.jsonl\n")
    a, b = _jobs(_load(tmp_path, text, {"rows.jsonl": body}))
    assert (a.model, a.input["sound"], a.source) == ("kling-2-6", True, "rows.jsonl line 1")
    assert (b.model, b.input["resolution"], "sound" in b.input) == ("wan-2-5", "720p", False)


def test_listed_jobs_come_before_file_rows(tmp_path: Path) -> None:
    """jobs and jobs_file together: listed jobs first, then rows, indexes in that order."""
    text = HEAD.replace("jobs:\n", "jobs_file: rows.csv\njobs:\n") + _job("listed", T2V)
    campaign = _load(
        tmp_path, text, {"rows.csv": "id,mode,prompt\nr1,text-to-video,x\nr2,text-to-video,y\n"}
    )
    jobs = _jobs(campaign)
    assert [(job.id, job.index) for job in jobs] == [("listed", 0), ("r1", 1), ("r2", 2)]
    assert campaign.job_count == 3


def test_matrix_expands_with_suffixed_ids(tmp_path: Path) -> None:
    """A job's matrix expands into the cartesian product, ids suffixed by the values."""
    text = HEAD + _job(
        "drone", T2V, '    matrix: {duration: [5, 10], aspect_ratio: ["16:9", "9:16"]}\n'
    )
    jobs = _jobs(_load(tmp_path, text))
    assert [job.id for job in jobs] == [
        "drone-5-16x9",
        "drone-5-9x16",
        "drone-10-16x9",
        "drone-10-9x16",
    ]
    assert [(job.input["duration"], job.input["aspect_ratio"]) for job in jobs] == [
        (5, "16:9"),
        (5, "9:16"),
        (10, "16:9"),
        (10, "9:16"),
    ]


def test_matrix_suffix_for_booleans_and_long_text(tmp_path: Path) -> None:
    """Booleans give key / no-key, long strings their first characters, file-name safe."""
    text = HEAD + _job(
        "a",
        T2V,
        "    matrix: {sound: [true, false], prompt: ['A dog/cat: running fast in the park', b]}\n",
    )
    ids = [job.id for job in _jobs(_load(tmp_path, text))]
    assert ids == [
        "a-sound-A-dog-cat-running-fast-i",
        "a-sound-b",
        "a-no-sound-A-dog-cat-running-fast-i",
        "a-no-sound-b",
    ]


def test_top_level_matrix_skips_keys_a_model_does_not_take(tmp_path: Path) -> None:
    """A top-level matrix applies to every job, except keys its model or mode does not take."""
    text = 'matrix: {aspect_ratio: ["16:9", "1:1"]}\n' + HEAD + _job("t", T2V)
    img = "{mode: standard-image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}"
    text += _job("k", img, "    model: kling-2-1\n")
    assert [job.id for job in _jobs(_load(tmp_path, text))] == ["t-16x9", "t-1x1", "k"]


def test_matrix_ids_collide_like_any_other(tmp_path: Path) -> None:
    """An expanded id equal to a listed id is a duplicate."""
    text = HEAD + _job("a", T2V, "    matrix: {duration: [5, 10]}\n") + _job("a-10", T2V)
    assert "job 'a-10' (campaign.yaml job 2, line 9) field 'id': duplicate id" in _error(
        tmp_path, text
    )


def test_filename_template_renders_index_and_model(tmp_path: Path) -> None:
    """{index} is the 0-based position after expansion and takes a format spec."""
    text = "output: {filename: '{index:05d}-{model}-{id}.mp4'}\n" + HEAD
    text += _job("a", T2V, "    matrix: {duration: [5, 10]}\n") + _job("b", T2V)
    names = [job.filename for job in _jobs(_load(tmp_path, text))]
    assert names == ["00000-kling-2-6-a-5.mp4", "00001-kling-2-6-a-10.mp4", "00002-kling-2-6-b.mp4"]


def test_input_hash_is_stable_and_tracks_input(tmp_path: Path) -> None:
    """The hash is the sha256 of canonical JSON; it changes when the input does."""
    (first,) = _jobs(_load(tmp_path, HEAD + _job("a", T2V)))
    (again,) = _jobs(_load(tmp_path, HEAD + _job("a", T2V)))
    (changed,) = _jobs(_load(tmp_path, HEAD + _job("a", "{mode: text-to-video, prompt: hello!}")))
    assert first.input_hash == again.input_hash == input_hash("kling-2-6", "auto", first.input)
    assert changed.input_hash != first.input_hash
    assert len(first.input_hash) == 64


def test_iter_jobs_rereads_the_rows_file(tmp_path: Path) -> None:
    """iter_jobs streams the jobs_file again on every call, in file order."""
    text = HEAD.replace("jobs:\n", "jobs_file: rows.csv\n")
    campaign = _load(
        tmp_path, text, {"rows.csv": "id,mode,prompt\nr1,text-to-video,x\nr2,text-to-video,y\n"}
    )
    assert [job.input["prompt"] for job in campaign.iter_jobs()] == ["x", "y"]
    (tmp_path / "rows.csv").write_text("id,mode,prompt\nr1,text-to-video,x2\nr2,text-to-video,y\n")
    assert [job.input["prompt"] for job in campaign.iter_jobs()] == ["x2", "y"]


def test_iter_jobs_raises_when_the_rows_file_went_bad(tmp_path: Path) -> None:
    """A jobs_file edited into an invalid one after loading stops iter_jobs with JobFileError."""
    text = HEAD.replace("jobs:\n", "jobs_file: rows.csv\n")
    campaign = _load(tmp_path, text, {"rows.csv": "id,mode,prompt\nr1,text-to-video,x\n"})
    (tmp_path / "rows.csv").write_text("id,mode,prompt,duration\nr1,text-to-video,x,7\n")
    with pytest.raises(JobFileError, match=r"rows\.csv row 2"):
        list(campaign.iter_jobs())


def test_output_dir_is_relative_to_the_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """output.dir resolves against the job file's folder; out_dir against the working directory."""
    sub = tmp_path / "jobs"
    sub.mkdir()
    path = _write(sub, "output: {dir: ../renders}\n" + HEAD + _job("a", T2V))
    assert load_campaign(path).output_dir == tmp_path / "renders"
    monkeypatch.chdir(tmp_path)
    assert load_campaign(path, out_dir="elsewhere").output_dir == tmp_path / "elsewhere"
    default = _write(sub, HEAD + _job("a", T2V))
    assert load_campaign(default).output_dir == sub / "out" / "t"


def test_prices_are_parsed(tmp_path: Path) -> None:
    """prices: a number per model, or a number per variant with a default."""
    text = "prices: {kling-2-5-turbo-pro: 0.07, kling-2-1: {pro: 0.1, default: 0.05}}\n"
    campaign = _load(tmp_path, text + HEAD + _job("a", T2V))
    assert campaign.prices == {
        "kling-2-5-turbo-pro": 0.07,
        "kling-2-1": {"pro": 0.1, "default": 0.05},
    }


def test_example_campaign_covers_every_model_and_mode() -> None:
    """jobs/campaign.yaml loads cleanly and uses every mode of every model."""
    campaign = load_campaign(REPO / "jobs" / "campaign.yaml")
    used = {(job.model, job.input["mode"]) for job in campaign.iter_jobs()}
    assert used == {(name, mode) for name, spec in MODELS.items() for mode in spec.modes}
    assert campaign.job_count == 12
    assert campaign.output_dir == REPO / "out" / "campaign"


def test_example_large_campaign_loads() -> None:
    """jobs/large.yaml and its generated CSV load cleanly."""
    campaign = load_campaign(REPO / "jobs" / "large.yaml")
    assert campaign.job_count == 3_000
    assert sum(group.count for group in campaign.groups) == 3_000


def test_job_opts_out_of_top_level_matrix_with_null(tmp_path: Path) -> None:
    """A job setting a top-level matrix key to null in its input is not expanded on it."""
    text = "matrix: {cfg_scale: [0.2, 0.8]}\n" + HEAD + _job("a", T2V)
    text += _job("b", "{mode: text-to-video, prompt: x, cfg_scale: null}")
    assert [job.id for job in _jobs(_load(tmp_path, text))] == ["a-0.2", "a-0.8", "b"]


def test_file_names_differing_only_in_case_collide(tmp_path: Path) -> None:
    """Ids 'Clip' and 'clip' would share one file on macOS and Windows: refused."""
    message = _error(tmp_path, HEAD + _job("Clip", T2V) + _job("clip", T2V))
    assert "job 'clip' (campaign.yaml job 2, line 8) field 'output.filename'" in message


def test_a_jsonl_line_missing_its_brace_names_the_column_where_it_ends(tmp_path: Path) -> None:
    """The parser's column is on the line itself (not column 1 of the line after it)."""
    line = '{"id": "a", "input": {"mode": "text-to-video", "prompt": "x"}'
    body = '{"id": "z", "input": {"mode": "text-to-video", "prompt": "y"}}\n' + line + "\n"
    text = HEAD.replace("jobs:\n", "jobs_file: rows.jsonl\n")
    with pytest.raises(JobFileError) as info:
        _load(tmp_path, text, {"rows.jsonl": body})
    assert f"line 2: invalid JSON: Expecting ',' delimiter (column {len(line) + 1})" in str(
        info.value
    )


def test_x_keys_at_the_top_hold_anchors_and_are_ignored(tmp_path: Path) -> None:
    """As in Compose files: an `x-` key is the file's own, e.g. the anchor jobs merge from."""
    text = (
        "name: anchors\n"
        "x-common: &common {mode: text-to-video, duration: 10, sound: false}\n"
        "x-note: anything at all\n"
        "defaults: {model: kling-2-6}\n"
        "jobs:\n"
        "  - {id: a, input: {<<: *common, prompt: one}}\n"
    )
    [job] = _jobs(_load(tmp_path, text))
    assert (job.input["duration"], job.input["sound"], job.input["prompt"]) == (10, False, "one")
    with pytest.raises(JobFileError) as info:
        _load(tmp_path, text.replace("x-note", "y-note"))
    assert "y-note" in str(info.value) and "unknown top-level key" in str(info.value)


def test_settings_only_and_a_stamp_that_follows_the_jobs_file(tmp_path: Path) -> None:
    """check_jobs=False reads the settings, not the jobs (a bad row is not seen); the
    stamp changes when the jobs_file does, and only then."""
    text = "name: t\ndefaults: {model: kling-2-6}\njobs_file: prompts.csv\n"
    rows = CSV_HEAD + "ok,text-to-video,fine,5\nbad,text-to-video,hi,abc\n"
    path = _write(tmp_path, text, {"prompts.csv": rows})
    settings = load_campaign(path, check_jobs=False)
    assert (settings.name, settings.job_count) == ("t", 0)
    assert settings.stamp == load_campaign(path, check_jobs=False).stamp
    (tmp_path / "prompts.csv").write_text(rows + "more,text-to-video,x,5\n", encoding="utf-8")
    assert load_campaign(path, check_jobs=False).stamp != settings.stamp
    with pytest.raises(JobFileError):
        load_campaign(path)


def test_iter_ids_names_the_jobs_as_iter_jobs_does(tmp_path: Path) -> None:
    """The fast id pass of `status` gives the ids the validating pass gives, in order:
    listed jobs, CSV and JSONL rows, a top-level matrix the model or mode rules keys out
    of, a job's own matrix, a key set to null, models from a column and from defaults."""
    text = 'matrix: {aspect_ratio: ["16:9", "1:1"]}\n' + HEAD.replace(
        "jobs:\n", "jobs_file: rows.csv\njobs:\n"
    )
    text += _job("t", T2V, "    matrix: {duration: [5, 10]}\n")
    text += _job("n", "{mode: text-to-video, prompt: x, aspect_ratio: null}")
    text += _job(
        "k",
        "{mode: standard-image-to-video, prompt: x, image_urls: [https://e.com/a.jpg]}",
        "    model: kling-2-1\n",
    )
    rows = (
        "id,model,mode,prompt,image_urls,resolution\n"
        "r1,,text-to-video,a,,\n"
        "r2,kling-2-1,standard-image-to-video,b,https://e.com/a.jpg,\n"
        "\n"
        "r3,wan-2-5,text-to-video,c,,720p\n"
    )
    campaign = _load(tmp_path, text, {"rows.csv": rows})
    want = [job.id for job in _jobs(campaign)]
    assert want[:4] == ["t-16x9-5", "t-16x9-10", "t-1x1-5", "t-1x1-10"]
    assert list(campaign.iter_ids()) == want
    # Without a matrix, a CSV's ids are read on their own (one job per row, as written).
    plain = _load(tmp_path, text.split("\n", 1)[1], {"rows.csv": rows})
    assert list(plain.iter_ids()) == [job.id for job in _jobs(plain)]
    assert [i for i in plain.iter_ids() if i.startswith("r")] == ["r1", "r2", "r3"]

    jsonl = "".join(
        json.dumps(line) + "\n"
        for line in (
            {"id": "j1", "input": {"mode": "text-to-video", "prompt": "x"}},
            {
                "id": "j2",
                "input": {"mode": "text-to-video", "prompt": "y"},
                "matrix": {"duration": [5, 10]},
            },
        )
    )
    text = HEAD.replace("jobs:\n", "jobs_file: rows.jsonl\n")
    campaign = _load(tmp_path, text, {"rows.jsonl": jsonl})
    assert (
        list(campaign.iter_ids()) == [job.id for job in _jobs(campaign)] == ["j1", "j2-5", "j2-10"]
    )


def test_iter_ids_checks_the_ids_and_the_file_not_the_inputs(tmp_path: Path) -> None:
    """Ids, models and the file's shape are checked (a duplicate, a bad id, an unknown
    model, a short row are JobFileError naming the row); a bad input value is not (that
    is `plan`'s and `run`'s to report)."""
    text = HEAD.replace("jobs:\n", "jobs_file: rows.csv\n")
    good = "id,mode,prompt,duration\nr1,text-to-video,a,5\nr2,text-to-video,b,5\n"
    campaign = _load(tmp_path, text, {"rows.csv": good})
    for rows, problem in (
        (good + "r1,text-to-video,c,5\n", "job 'r1' field 'id': duplicate id"),
        (good + "a/b,text-to-video,c,5\n", "rows.csv row 4 field 'id'"),
        (good + "r3,text-to-video,c\n", "rows.csv row 4: 3 cells, the header has 4"),
        ("mode,prompt\ntext-to-video,a\n", "rows.csv row 1 field 'id': no id column"),
    ):
        (tmp_path / "rows.csv").write_text(rows, encoding="utf-8")
        with pytest.raises(JobFileError) as info:
            list(campaign.iter_ids())
        assert problem in str(info.value), (rows, str(info.value))
    text = "defaults: {input: {duration: 5, sound: true}}\njobs_file: rows.csv\n"
    campaign = _load(
        tmp_path, text, {"rows.csv": "id,model,mode,prompt\nr1,kling-2-6,text-to-video,a\n"}
    )
    (tmp_path / "rows.csv").write_text("id,model,mode,prompt\nr1,veo-9,text-to-video,a\n")
    with pytest.raises(JobFileError) as info:
        list(campaign.iter_ids())
    assert "job 'r1' (rows.csv row 2) field 'model': unknown model 'veo-9'" in str(info.value)
    (tmp_path / "rows.csv").write_text(
        "id,model,mode,prompt\nr1,kling-2-6,text-to-video,a\nr2,kling-2-6,text-to-video,\n"
    )
    assert list(campaign.iter_ids()) == ["r1", "r2"]  # r2's missing prompt: not read here


# -- notify: ---------------------------------------------------------------------------


def test_notify_takes_one_url_or_a_list_and_expands_env_only_when_asked(tmp_path: Path) -> None:
    one = _load(tmp_path, "notify: json://h/${HOOK}\n" + HEAD + _job("a", T2V))
    assert one.notify == ("json://h/${HOOK}",)
    listed = _load(tmp_path, "notify: [json://a, 'slack://${T}/${B}/x']\n" + HEAD + _job("a", T2V))
    assert listed.notify_urls({"T": "tok", "B": "chan"}) == ["json://a", "slack://tok/chan/x"]
    assert _load(tmp_path, HEAD + _job("a", T2V)).notify == ()


def test_notify_names_the_entry_whose_variable_is_unset(tmp_path: Path) -> None:
    campaign = _load(
        tmp_path, "notify: [json://a, 'json://${GONE}', 'x://${E}']\n" + HEAD + _job("a", T2V)
    )
    with pytest.raises(JobFileError) as info:
        campaign.notify_urls({"E": ""})
    text = str(info.value)
    assert "notify[1]" in text and "${GONE} is not set" in text
    assert "notify[2]" in text and "${E} is not set" in text


@pytest.mark.parametrize(
    ("value", "field", "says"),
    [
        ("{a: 1}", "notify", "must be a URL or a list of URLs"),
        ("[json://a, 3]", "notify[1]", "must be a non-empty URL"),
        ("['json://${OPEN']", "notify[0]", "a ${ is not closed"),
    ],
)
def test_a_bad_notify_is_refused_naming_its_field(
    tmp_path: Path, value: str, field: str, says: str
) -> None:
    text = _error(tmp_path, f"notify: {value}\n" + HEAD + _job("a", T2V))
    assert field in text and says in text
