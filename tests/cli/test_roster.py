"""``status``'s lines for the runners of a database's campaign (cli/roster.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from apixo_batch.cli.roster import runner_lines
from apixo_batch.journal.pg.roster import RunnerState

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


def _runner(
    i: int,
    host: str,
    left: float,
    *,
    stopped: bool = False,
    adopted_by: int | None = None,
    owned: dict[str, int] | None = None,
) -> RunnerState:
    live = left > 0 and not stopped and adopted_by is None
    return RunnerState(i, host, 100 + i, "1.0", T0, left, live, stopped, adopted_by, owned or {})


def test_lines_tell_each_runner_its_lease_and_what_it_owns() -> None:
    """One heading (live of all, hosts), then a line a runner: a live lease's time left,
    a dead one's time since and its adopter, a runner that left, one not adopted yet."""
    lines = runner_lines(
        [
            _runner(1, "alpha", 12.4, owned={"queued": 3, "submitted": 7}),
            _runner(2, "beta", -40.0, adopted_by=1),
            _runner(3, "alpha", -5.0, stopped=True),
            _runner(4, "gamma", -2.5, owned={"submitted": 2}),
        ]
    )
    assert lines == [
        "  runners     1 live of 4, on 1 host(s)",
        "    #1 alpha pid 101: lease 12 s left; owns 3 queued, 7 submitted",
        "    #2 beta pid 102: lease lost 40 s ago, adopted by #1",
        "    #3 alpha pid 103: left",
        "    #4 gamma pid 104: lease lost 2.5 s ago, not adopted yet; owns 2 submitted",
    ]


def test_no_runner_yet_is_said() -> None:
    """A campaign no runner has joined says so rather than showing nothing."""
    assert runner_lines([]) == ["  runners     none has joined yet"]
