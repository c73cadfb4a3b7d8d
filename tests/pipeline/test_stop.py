"""Why a run stops: the levels stops reach, the reactions they start, the exit code, and
the one `stopped` event each kind worth telling gets."""

from __future__ import annotations

import itertools

import pytest
from stagefakes import Recorder

from apixo_batch.clock import FakeClock
from apixo_batch.exitcodes import ExitCode
from apixo_batch.pipeline.stop import EXIT_PRECEDENCE, Level, Stop, StopKind, Stops

BUDGET = Stop(StopKind.BUDGET, "--budget $1.00 reached")
STRANDED = Stop(StopKind.STRANDED, "tasks past --max-wait hold every concurrency slot")
FATAL = Stop(StopKind.FATAL, "the API refused a submit: 402", fatal="APIXO 402: no credits")
REFUSED = Stop(StopKind.REFUSED, "the balance does not cover the jobs")
KEY_REFUSED = Stop(StopKind.KEY_REFUSED, "the API refused a poll: 401", fatal="APIXO 401: key")
INTERRUPTED = Stop(StopKind.INTERRUPTED, "interrupted")


def _counter(stops: Stops, level: Level, calls: list[Level]) -> None:
    stops.on(level, lambda: calls.append(level))


def test_a_reaction_runs_once_when_its_level_is_first_reached() -> None:
    """Each reaction runs at the first stop reaching its level, and never again."""
    stops = Stops()
    calls: list[Level] = []
    for level in Level:
        _counter(stops, level, calls)
    stops.request(BUDGET)
    assert calls == [Level.ADMISSION]
    stops.request(STRANDED)  # the same level again: nothing new
    assert calls == [Level.ADMISSION]
    stops.request(KEY_REFUSED)  # skips SUBMITS on its way to FOLLOW: both react, in order
    assert calls == [Level.ADMISSION, Level.SUBMITS, Level.FOLLOW]
    stops.request(FATAL)  # below the level reached: nothing
    stops.request(INTERRUPTED)
    stops.request(INTERRUPTED)
    assert calls == [Level.ADMISSION, Level.SUBMITS, Level.FOLLOW, Level.ALL]


def test_a_reaction_registered_after_its_level_runs_at_once() -> None:
    """Registered once its level is reached: it runs at once; above it: it waits."""
    stops = Stops()
    stops.request(FATAL)
    calls: list[Level] = []
    _counter(stops, Level.ADMISSION, calls)
    _counter(stops, Level.SUBMITS, calls)
    assert calls == [Level.ADMISSION, Level.SUBMITS]
    _counter(stops, Level.FOLLOW, calls)
    assert calls == [Level.ADMISSION, Level.SUBMITS]
    stops.request(KEY_REFUSED)
    stops.request(INTERRUPTED)
    assert calls == [Level.ADMISSION, Level.SUBMITS, Level.FOLLOW]


def test_request_is_true_only_when_a_new_level_is_reached() -> None:
    """request() says whether the stop went further than every stop before it."""
    stops = Stops()
    answers = [stops.request(s) for s in (BUDGET, STRANDED, FATAL, REFUSED, BUDGET, INTERRUPTED)]
    assert answers == [True, False, True, False, False, True]
    assert stops.request(KEY_REFUSED) is False  # ALL is above FOLLOW
    # Every stop is kept, in the order it came, whatever the answer.
    assert [s.kind for s in stops.all] == [
        StopKind.BUDGET,
        StopKind.STRANDED,
        StopKind.FATAL,
        StopKind.REFUSED,
        StopKind.BUDGET,
        StopKind.INTERRUPTED,
        StopKind.KEY_REFUSED,
    ]


def test_reached_follows_the_highest_level() -> None:
    """reached(level) holds for every level up to the highest a stop reached."""
    stops = Stops()
    assert not any(stops.reached(level) for level in Level)
    stops.request(FATAL)
    assert [stops.reached(level) for level in Level] == [True, True, False, False]
    stops.request(BUDGET)
    assert not stops.reached(Level.FOLLOW)


@pytest.mark.parametrize("order", [(FATAL, INTERRUPTED), (INTERRUPTED, FATAL)])
def test_an_interrupt_exits_130_over_a_fatal_answer(order: tuple[Stop, Stop]) -> None:
    """Interrupted (130) outranks a fatal answer (3), whichever came first."""
    stops = Stops()
    for stop in order:
        stops.request(stop)
    assert stops.exit_code(all_done=True) is ExitCode.INTERRUPTED
    assert stops.exit_code(all_done=False) is ExitCode.INTERRUPTED
    assert stops.interrupted


@pytest.mark.parametrize("stop", [FATAL, REFUSED, KEY_REFUSED])
def test_a_refusal_exits_3_even_with_every_job_done(stop: Stop) -> None:
    """A refusal forces 3 over a budget stop, even when every job is done."""
    stops = Stops()
    stops.request(BUDGET)
    stops.request(stop)
    assert stops.exit_code(all_done=True) is ExitCode.FATAL_API
    assert not stops.interrupted


@pytest.mark.parametrize("stop", [None, BUDGET, STRANDED])
def test_budget_and_stranded_leave_the_exit_code_to_the_jobs(stop: Stop | None) -> None:
    """No stop, a budget or stranded slots: 0 when every job is done, 1 otherwise."""
    stops = Stops()
    if stop is not None:
        stops.request(stop)
    assert stops.exit_code(all_done=True) is ExitCode.OK
    assert stops.exit_code(all_done=False) is ExitCode.FAILED_JOBS
    assert (ExitCode.OK, ExitCode.FAILED_JOBS) == (0, 1)


def test_reason_prefers_a_refusal_over_the_budget() -> None:
    """The budget came first, the refusal later: the refusal is the reason told."""
    stops = Stops()
    assert stops.reason is None
    stops.request(BUDGET)
    assert stops.reason == BUDGET.reason
    stops.request(FATAL)
    stops.request(KEY_REFUSED)
    assert stops.reason == FATAL.reason  # the first refusal


def test_an_interrupt_is_no_reason_to_stop_submitting() -> None:
    """An interrupt is not told as the reason; a later stranded stop is."""
    stops = Stops()
    stops.request(INTERRUPTED)
    assert stops.reason is None
    stops.request(STRANDED)
    assert stops.reason == STRANDED.reason


def test_fatal_is_the_first_api_refusal() -> None:
    """``fatal`` is the API's words of the first stop that carries them."""
    stops = Stops()
    stops.request(BUDGET)
    stops.request(REFUSED)  # a refusal of our own (pre-flight): no API words
    assert stops.fatal is None
    stops.request(FATAL)
    stops.request(KEY_REFUSED)
    assert stops.fatal == "APIXO 402: no credits"


#: The precedence the docs promise, written out on its own: the first row a stop of the
#: pair belongs to gives the code; no row: the jobs' ends decide (0 or 1).
PRECEDENCE = [
    ({StopKind.INTERRUPTED}, ExitCode.INTERRUPTED),
    ({StopKind.REFUSED, StopKind.FATAL, StopKind.KEY_REFUSED}, ExitCode.FATAL_API),
    # A runner whose lease was lost: the journal's failures that come with it are no
    # disk to fix (several runners on one PostgreSQL campaign).
    ({StopKind.FENCED}, ExitCode.TEMP_FAIL),
    ({StopKind.STORAGE}, ExitCode.IO_ERROR),
    ({StopKind.UNREACHABLE}, ExitCode.TEMP_FAIL),
]


@pytest.mark.parametrize(
    ("first", "then"),
    list(itertools.permutations(StopKind, 2)),
    ids=lambda kind: kind.label,
)
def test_two_stops_exit_with_the_code_of_the_higher_whatever_their_order(
    first: StopKind, then: StopKind
) -> None:
    """Every pair of stop kinds, in both orders: the documented precedence decides."""
    stops = Stops()
    stops.request(Stop(first, "first"))
    stops.request(Stop(then, "then"))
    wins = next((code for kinds, code in PRECEDENCE if {first, then} & kinds), None)
    assert stops.exit_code(all_done=True) is (wins or ExitCode.OK)
    assert stops.exit_code(all_done=False) is (wins or ExitCode.FAILED_JOBS)


@pytest.mark.parametrize(
    ("first", "then"),
    list(itertools.permutations(StopKind, 2)),
    ids=lambda kind: kind.label,
)
def test_the_reason_told_is_the_one_of_the_code_whatever_the_order(
    first: StopKind, then: StopKind
) -> None:
    """The summary's reason goes with the exit code: the winning stop's, an interrupt aside."""
    stops = Stops()
    stops.request(Stop(first, first.label))
    stops.request(Stop(then, then.label))
    pair = [k for k in (first, then) if k is not StopKind.INTERRUPTED]
    forced = [k for kinds, _ in PRECEDENCE for k in pair if k in kinds]
    assert stops.reason == (forced or pair)[0].label


def test_every_code_a_stop_forces_has_its_place_in_the_precedence() -> None:
    """A new kind forcing a new code cannot be left out of the precedence unnoticed."""
    forced = {kind.exit_code for kind in StopKind} - {None}
    assert forced == set(EXIT_PRECEDENCE) == {code for _, code in PRECEDENCE}
    # The fenced stop's 75 is placed by hand, before storage's 74 (Stops.exit_code).
    codes = [code for kinds, code in PRECEDENCE if StopKind.FENCED not in kinds]
    assert list(EXIT_PRECEDENCE) == codes


TOLD = [StopKind.BUDGET, StopKind.REFUSED, StopKind.FATAL, StopKind.UNREACHABLE, StopKind.STORAGE]


def _told(clock: FakeClock) -> tuple[Stops, Recorder]:
    events = Recorder()
    return Stops(events.emitter(clock)), events


@pytest.mark.parametrize("kind", TOLD, ids=lambda kind: kind.label)
def test_a_stop_worth_telling_is_told_once_as_stopped(kind: StopKind) -> None:
    """The first stop of a kind is told with its reason and kind; the same kind again is not."""
    stops, events = _told(FakeClock())
    stops.request(Stop(kind, "why"))
    stops.request(Stop(kind, "why"))
    stops.request(Stop(kind, "another wording of the same trouble"))
    told = [(e.kind, e.data) for e in events.events]
    assert told == [("stopped", {"reason": "why", "stop": kind.label})]


@pytest.mark.parametrize(
    "kind", [StopKind.STRANDED, StopKind.KEY_REFUSED, StopKind.INTERRUPTED], ids=lambda k: k.label
)
def test_stranded_key_refused_and_interrupted_are_not_told(kind: StopKind) -> None:
    """Told elsewhere (pending tasks, the summary's fatal, the signal): no stopped event."""
    stops, events = _told(FakeClock())
    stops.request(Stop(kind, "why"))
    assert events.events == [] and [s.kind for s in stops.all] == [kind]


def test_each_kind_of_trouble_is_told_even_after_another_stopped_submits() -> None:
    """A refusal, then the disk: both told, in order, though the disk reaches no new level
    (the person must fix both before the run can resume)."""
    stops, events = _told(FakeClock())
    stops.request(INTERRUPTED)
    stops.request(FATAL)
    stops.request(Stop(StopKind.STORAGE, "cannot write a.mp4: No space left on device"))
    stops.request(FATAL)
    assert [e.data["reason"] for e in events.of("stopped")] == [
        FATAL.reason,
        "cannot write a.mp4: No space left on device",
    ]


def test_a_preflight_refusal_is_told_with_the_balance() -> None:
    """The balance read before the first submit goes with its refusal, as the JSON had it."""
    stops, events = _told(FakeClock())
    stops.request(Stop(StopKind.REFUSED, "balance $1.00 cannot cover", balance_usd=1.0))
    [stopped] = events.of("stopped")
    assert list(stopped.as_dict()) == ["event", "at", "reason", "balance_usd", "stop"]
    assert stopped.data == {
        "reason": "balance $1.00 cannot cover",
        "balance_usd": 1.0,
        "stop": "refused",
    }


def test_a_stop_is_told_before_the_stages_react_to_it() -> None:
    """The reason comes first: a reaction to the level already finds the event told."""
    stops, events = _told(FakeClock())
    seen: list[int] = []
    stops.on(Level.SUBMITS, lambda: seen.append(len(events.of("stopped"))))
    stops.request(FATAL)
    assert seen == [1]


def test_stops_without_an_emitter_tell_nothing_and_still_count() -> None:
    """A Stops built without the run's emitter records and reacts as ever."""
    stops = Stops()
    assert stops.request(FATAL) is True
    assert stops.exit_code(all_done=True) is ExitCode.FATAL_API


def test_the_next_step_comes_from_the_stop_that_chose_the_code() -> None:
    """One next step, from the stop whose reason is told: a refused key's, not the
    budget's that came first; an interrupt's "resume" only when nothing else stopped."""
    from apixo_batch.errors import AuthError, Forbidden, InsufficientBalance
    from apixo_batch.pipeline.stop import BUDGET_STEP, INTERRUPTED_STEP, refusal_step

    key = refusal_step(AuthError(401, "Invalid or missing API Key"))
    assert key.startswith("fix the API key")
    assert refusal_step(InsufficientBalance(402, "no credits")).startswith("top up")
    assert "access" in refusal_step(Forbidden(403, "no access"))
    stops = Stops()
    assert stops.next_step is None
    stops.request(Stop(StopKind.BUDGET, "--budget reached", next_step=BUDGET_STEP))
    assert stops.next_step == BUDGET_STEP
    stops.request(INTERRUPTED)
    stops.request(Stop(StopKind.FATAL, "the API refused", fatal="401", next_step=key))
    assert stops.next_step == key and stops.exit_code(all_done=False) == ExitCode.INTERRUPTED
    only = Stops()
    only.request(INTERRUPTED)
    assert only.next_step == INTERRUPTED_STEP
