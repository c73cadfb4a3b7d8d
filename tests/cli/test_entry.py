"""The command line's last resort: what nothing else caught."""

from __future__ import annotations

import pytest

from apixo_batch.cli import entry as cli


def test_a_bug_inside_the_runs_task_groups_is_named_in_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug raised in a stage reaches the CLI wrapped in the stages' task groups: the one
    line names the bug itself (TypeError and its message), not "ExceptionGroup"."""

    def broken(args: object) -> int:
        bug = TypeError("unsupported operand type(s) for +=: 'int' and 'str'")
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("inner", [bug])])

    monkeypatch.setattr("apixo_batch.cli.commands.campaign_command", broken)
    monkeypatch.delenv("APIXO_BATCH_DEBUG", raising=False)
    assert cli.main(["run", "jobs/campaign.yaml"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: TypeError: unsupported operand type(s) for +=" in err
    assert "ExceptionGroup" not in err
