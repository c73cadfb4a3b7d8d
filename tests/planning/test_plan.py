"""plan: cost and time figures from the catalog, printed as text or JSON, exit 2 on a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apixo_batch.cli.entry import main
from apixo_batch.cli.plan import format_text
from apixo_batch.jobs import load_campaign
from apixo_batch.planning.forecast import task_shape
from apixo_batch.planning.kind import Kind
from apixo_batch.planning.plan import estimate_cost, make_plan

SMALL = """\
name: small
output: {dir: out}
jobs:
  - id: neon
    model: kling-2-6
    input: {mode: text-to-video, prompt: neon street, duration: 5, sound: true}
  - id: lake
    model: wan-2-5
    input: {mode: text-to-video, prompt: a lake, duration: 10, resolution: 1080p}
  - id: bottle
    model: kling-2-1
    input:
      mode: pro-image-to-video
      prompt: a bottle
      duration: 5
      image_urls: [https://example.com/bottle.jpg]
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    return path


def test_small_campaign_figures(small: Path) -> None:
    """kling-2-6 5 s with sound is $0.60, wan-2-5 10 s 1080p $1.30; kling-2-1 is unknown."""
    plan = make_plan(load_campaign(small), max_concurrent=900, rpm=9000)
    costs = {(row.model, row.tier): row.cost_usd for row in plan.rows}
    assert costs[("kling-2-6", "sound")] == pytest.approx(0.60)
    assert costs[("wan-2-5", "1080p")] == pytest.approx(1.30)
    assert costs[("kling-2-1", "pro")] is None
    assert plan.known_cost_usd == pytest.approx(1.90)
    assert (plan.unknown_cost_jobs, plan.unknown_price_models) == (1, ("kling-2-1",))
    assert (plan.jobs, plan.output_seconds) == (3, 20)
    assert estimate_cost(load_campaign(small)) == (pytest.approx(1.90), 1)


def test_job_file_prices_fill_in_unknown_ones(small: Path) -> None:
    """A prices: entry makes a model's cost known (here kling-2-1 pro at $0.10/s)."""
    small.write_text("prices: {kling-2-1: {pro: 0.1}}\n" + SMALL, encoding="utf-8")
    assert estimate_cost(load_campaign(small)) == (pytest.approx(2.40), 0)


def test_requests_per_task_are_the_forecasts(small: Path) -> None:
    """One count of requests per task in one plan: the rows', the total's and the rate
    bound's are the forecast's (kling-2-6 5 s: 1 submit + 3.5 polls on equal steps of
    its 50-70 s window, not 1 + 3 from a second rule)."""
    plan = make_plan(load_campaign(small), max_concurrent=900, rpm=60)
    kinds = [Kind("kling-2-1", 5), Kind("kling-2-6", 5), Kind("wan-2-5", 10, "1080p")]
    shapes = {kind.model: task_shape(None, kind, callback=False) for kind in kinds}
    per_task = {row.model: row.requests_per_task for row in plan.rows}
    assert per_task == {model: shape.requests for model, shape in shapes.items()}
    assert per_task["kling-2-6"] == 4.5
    assert plan.requests == pytest.approx(sum(s.requests for s in shapes.values()))
    assert plan.rate_bound_s == pytest.approx(plan.requests)  # 60 requests a minute
    groups = plan.to_dict()["groups"]
    assert {g["model"]: g["requests_per_task"] for g in groups}["kling-2-6"] == 4.5


@pytest.mark.parametrize(
    ("max_concurrent", "rpm", "bound"),
    [(900, 9000, "longest task"), (1, 9000, "concurrency"), (900, 1, "rate")],
    ids=["few-jobs", "one-at-a-time", "one-request-a-minute"],
)
def test_the_bounds_name_what_sets_the_wall_time(
    small: Path, max_concurrent: int, rpm: int, bound: str
) -> None:
    """The bounds explain the forecast: the largest names what sets it."""
    plan = make_plan(load_campaign(small), max_concurrent=max_concurrent, rpm=rpm)
    assert plan.bound == bound
    # kling-2-6 5 s: 60 s mean; wan-2-5 1080p: 80 s; kling-2-1 5 s: 75 s.
    assert plan.concurrency_bound_s == pytest.approx((60 + 80 + 75) / max_concurrent)
    assert plan.rate_bound_s == pytest.approx(plan.requests / rpm * 60)
    assert plan.longest_task_s == 90.0


def test_wall_time_is_the_forecast_of_jobs_on_their_slots(small: Path) -> None:
    """One slot: the tasks one after another (generation and the time to see each end), plus
    a second of start-up; many slots: the slowest one's; one request a minute: each task's
    requests space the submits a minute each."""
    shapes = [
        task_shape(None, Kind("kling-2-6", 5), callback=False),
        task_shape(None, Kind("wan-2-5", 10, "1080p"), callback=False),
        task_shape(None, Kind("kling-2-1", 5), callback=False),
    ]
    campaign = load_campaign(small)
    one = make_plan(campaign, max_concurrent=1, rpm=9000)
    assert one.wall_time_s == pytest.approx(sum(s.slot_s for s in shapes) + 1.0, rel=1e-3)
    many = make_plan(campaign, max_concurrent=900, rpm=9000)
    assert many.wall_time_s == pytest.approx(max(s.slot_s for s in shapes) + 1.0, rel=1e-3)
    slow = make_plan(campaign, max_concurrent=900, rpm=1)
    # Longest first: wan (80 s), kling-2-1 (75 s), kling-2-6 (60 s).
    wan, k21, k26 = shapes[1], shapes[2], shapes[0]
    last_start = (wan.requests + k21.requests) * 60.0
    assert slow.wall_time_s == pytest.approx(
        max(wan.slot_s, wan.requests * 60 + k21.slot_s, last_start + k26.slot_s) + 1.0
    )


def test_longest_first_ends_sooner_than_file_order_when_the_long_job_comes_last(
    tmp_path: Path,
) -> None:
    """Two slots, two short jobs then a long one: in file order the long one waits for a
    short one; longest first it starts at once and the short ones share the other slot."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: c\noutput: {dir: out}\njobs:\n"
        "  - {id: a, model: kling-2-5-turbo-pro, input: {mode: text-to-video, prompt: a, "
        "duration: 5}}\n"
        "  - {id: b, model: kling-2-5-turbo-pro, input: {mode: text-to-video, prompt: b, "
        "duration: 5}}\n"
        "  - {id: c, model: kling-2-1, input: {mode: master-text-to-video, prompt: c, "
        "duration: 10}}\n",
        encoding="utf-8",
    )
    campaign = load_campaign(path)
    longest = make_plan(campaign, max_concurrent=2, rpm=9000, order="longest")
    in_file = make_plan(campaign, max_concurrent=2, rpm=9000, order="file")
    short = task_shape(None, Kind("kling-2-5-turbo-pro", 5), callback=False).slot_s
    long = task_shape(None, Kind("kling-2-1", 10), callback=False).slot_s
    assert longest.wall_time_s == pytest.approx(max(long, 2 * short) + 1.0, rel=1e-3)
    assert in_file.wall_time_s == pytest.approx(short + long + 1.0, rel=1e-3)
    assert longest.to_dict()["wall_time"]["order"] == "longest"


def test_plan_command_prints_plain_text(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not on a terminal: aligned plain text, no escape codes, costs and unknowns spelled out."""
    assert main(["plan", str(small)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "$0.60" in out and "$1.30" in out and "unknown" in out
    assert "Estimated cost: ≥ $1.90 + 1 job of unknown price" in out
    assert "set by the longest single task" in out
    assert str(small.parent / "out") in out


def test_plan_command_json(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON object with the same figures."""
    assert main(["plan", str(small), "--json", "--max-concurrent", "1", "--rpm", "60"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"] == 3 and data["output_seconds"] == 20
    assert data["cost"] == {
        "known_usd": 1.9,
        "unknown_jobs": 1,
        "unknown_price_models": ["kling-2-1"],
        "complete": False,
    }
    assert data["wall_time"]["bound"] == "concurrency"
    assert data["wall_time"]["max_concurrent"] == 1
    assert {group["model"] for group in data["groups"]} == {"kling-2-6", "wan-2-5", "kling-2-1"}


def test_plan_command_invalid_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid job file: exit 2, the problems on stderr, nothing on stdout."""
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace("duration: 10", "duration: 7"), encoding="utf-8")
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "job 'lake' (bad.yaml job 2, line 7) field 'input.duration'" in captured.err


def test_format_text_rows_in_catalog_order(small: Path) -> None:
    """Rows follow the catalog: kling-2-1 before kling-2-6 before wan-2-5, then a total."""
    lines = format_text(make_plan(load_campaign(small), max_concurrent=9, rpm=90)).splitlines()
    table = [line.split()[0] for line in lines[3:7]]
    assert table == ["kling-2-1", "kling-2-6", "wan-2-5", "total"]


def test_plan_command_selects_jobs(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--only, --model and --limit narrow the plan to the jobs run would take."""

    def groups(*args: str) -> list[tuple[str, int]]:
        assert main(["plan", str(small), "--json", *args]) == 0
        data = json.loads(capsys.readouterr().out)
        return [(g["model"], g["jobs"]) for g in data["groups"]]

    assert groups("--only", "l*") == [("wan-2-5", 1)]
    assert groups("--model", "kling-2-1") == [("kling-2-1", 1)]
    assert groups("--order", "file", "--limit", "1") == [("kling-2-6", 1)]
    assert sorted(groups("--only", "neon,bottle")) == [("kling-2-1", 1), ("kling-2-6", 1)]


def test_plan_command_refuses_a_pattern_matching_nothing(
    small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming the pattern, exit 2; --fail-code alone too."""
    assert main(["plan", str(small), "--only", "neon", "--only", "zz*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"apixo-batch: --only 'zz*' matches no job of {small}"]
    assert main(["plan", str(small), "--fail-code", "NSFW"]) == 2
    assert "give --retry-failed too" in capsys.readouterr().err
