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
