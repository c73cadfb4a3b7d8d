"""The progress line and the CLI's help: what a person reads while a run goes on."""

from __future__ import annotations

import pytest

from apixo_batch.cli import entry as cli
from apixo_batch.cli.progress import Tally, status_line


def test_the_progress_rate_is_the_last_minutes_count_not_an_average_since_the_start() -> None:
    """A run 30 s old that sent 305 requests under a 600 rpm limit (its first burst
    included) shows what the account counts: the requests of the last minute, not 610."""
    line = status_line(Tally(), {"requests": 305, "requests_last_minute": 305, "rpm_limit": 600})
    assert "305/600 rpm" in line


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["status", "--help"], ["one JSON object", "no effect on status", "48 h"]),
        (["run", "--help"], ["(default 30)", "(default 1.0)", "--order"]),
        (["simulate", "--help"], ["(default 127.0.0.1)", "(default 8787)"]),
        (["plan", "--help"], ["the campaign's job file (YAML)", "--order"]),
    ],
)
def test_help_says_what_the_readme_says(
    argv: list[str], wanted: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    for words in wanted:
        assert words in text, (words, text)


def test_an_error_nothing_caught_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug is told in one line (the key never in it), exit 70; the traceback only when
    APIXO_BATCH_DEBUG asks for it."""
    monkeypatch.setenv("APIXO_API_KEY", "sk-secret-test-key-123")

    def broken(args: object) -> int:
        raise RuntimeError("boom near sk-secret-test-key-123")

    monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", broken)
    monkeypatch.delenv("APIXO_BATCH_DEBUG", raising=False)
    assert cli.main(["status", "jobs/campaign.yaml"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: boom" in err
    assert "sk-secret-test-key-123" not in err and "Traceback" not in err
    monkeypatch.setenv("APIXO_BATCH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["status", "jobs/campaign.yaml"])


def test_the_tally_counts_each_model_from_the_events() -> None:
    """`started` sets the rows from the journal; each later event moves one job along:
    a failed submit leaves `queued`, a failed task leaves `in flight`."""
    from apixo_batch.events import (
        Downloaded,
        Expired,
        Failed,
        Retried,
        Started,
        Submitted,
        Succeeded,
        Throttled,
        Warned,
    )

    tally = Tally()
    per_model = {"a": {"queued": 3, "submitting": 1, "submitted": 1, "done": 2}, "b": {"queued": 2}}
    zero = dict.fromkeys(["spent_usd", "jobs", "queued", "in_flight", "to_download", "done"], 0)
    tally(
        Started(
            per_model=per_model,
            **zero,
            estimated_cost_usd=0.0,
            unknown_price_jobs=0,
            planned_wall_s=None,
        )
    )
    for event in [
        Submitted("x", task_id="t1", model="a"),
        Submitted("y", task_id="t2", model="b"),
        Succeeded("x", task_id="t1", model="a", via="poll", urls=1),
        Downloaded("x", model="a", files=["x.mp4"], bytes=1),
        Failed("z", model="b", fail_code="E", fail_msg="no"),
        Failed("y", task_id="t2", model="b", fail_code="E", fail_msg="no"),
        Expired("w", model="a", message="gone"),
        Retried("x", call="status", error="e"),
        Throttled("x", retry_after=None),
        Warned(message="careful"),
    ]:
        tally(event)
    a, b = tally.rows["a"], tally.rows["b"]
    assert (a.queued, a.in_flight, a.downloading, a.done, a.expired) == (3, 1, 0, 3, 1)
    assert (b.queued, b.in_flight, b.failed) == (0, 0, 2)
    assert (tally.retries, tally.rate_limited, tally.done_this_run) == (1, 1, 1)
    assert tally.warnings == ["careful"]
