"""plan's journal figures: what run would submit now, done, in flight, orphaned, renamed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from apixo_batch.cli.plan import JournalView, format_text
from apixo_batch.jobs import Campaign, load_campaign
from apixo_batch.planning.kind import Kind
from apixo_batch.planning.plan import make_plan
from apixo_batch.planning.resume import JournalJob, resume_figures
from apixo_batch.planning.selection import Again, Selection

JOBS = "\n".join(
    f"  - id: j{i}\n    model: kling-2-6\n"
    f"    input: {{mode: text-to-video, prompt: scene {i}, duration: 5, sound: false}}"
    for i in range(6)
)
PRICE = 0.06 * 5  # kling-2-6 silent, 5 s


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\noutput: {{dir: out}}\njobs:\n{JOBS}\n", encoding="utf-8")
    return load_campaign(path)


def _rows(campaign: Campaign, states: dict[str, str]) -> list[JournalJob]:
    hashes = {job.id: job.input_hash for job in campaign.iter_jobs()}
    return [
        JournalJob(jid, state, hashes.get(jid, "x"), state not in ("queued", "failed"), None)
        for jid, state in states.items()
    ]


def test_each_state_counts_where_run_puts_it(campaign: Campaign) -> None:
    rows = _rows(
        campaign,
        {"j0": "done", "j1": "submitted", "j2": "succeeded", "j3": "failed", "j4": "queued"},
    )
    r = resume_figures(campaign, rows, journal="j.sqlite", spent_usd=1.2)
    # j4 queued and j5 new are submitted; j3 failed is left without --retry-failed.
    assert (r.to_submit, r.new, r.done, r.in_flight, r.to_download, r.failed) == (2, 1, 1, 1, 1, 1)
    assert r.to_submit_usd == pytest.approx(2 * PRICE)
    assert (r.orphaned, r.pay_again) == (0, 0)
    retry = resume_figures(campaign, rows, journal="j", spent_usd=0.0, retry_failed=True)
    assert (retry.to_submit, retry.failed) == (3, 0)


def test_a_submit_never_answered_or_a_fixed_input_is_queued_again(campaign: Campaign) -> None:
    rows = [
        JournalJob("j0", "failed", "x", False, "SUBMIT_ERROR"),
        JournalJob("j1", "failed", "changed", False, "INVALID"),
        JournalJob("j2", "submitting", "x", False, None),
    ]
    assert resume_figures(campaign, rows, journal="j", spent_usd=0.0).to_submit == 6


def test_a_finished_campaign_submits_nothing(campaign: Campaign) -> None:
    rows = _rows(campaign, {f"j{i}": "done" for i in range(6)})
    r = resume_figures(campaign, rows, journal="j", spent_usd=6 * PRICE, budget=1.0)
    assert (r.to_submit, r.to_submit_usd, r.done, r.fit_budget) == (0, 0.0, 6, 0)


def test_renamed_jobs_are_new_and_orphaned_and_paid_again(campaign: Campaign) -> None:
    rows = [JournalJob(f"old{i}", "done", "h", True, None) for i in range(6)]
    rows.append(JournalJob("old-queued", "queued", "h", False, None))
    r = resume_figures(campaign, rows, journal="j", spent_usd=6 * PRICE)
    assert (r.to_submit, r.new, r.orphaned, r.orphaned_paid) == (6, 6, 7, 6)
    assert (r.pay_again, r.pay_again_usd) == (6, pytest.approx(6 * PRICE))
    text = format_text(make_plan(campaign, max_concurrent=10, rpm=60), JournalView(r))
    assert "run would pay for 6 jobs again (about $1.80)" in text
    assert "orphaned      7 in the journal, no longer in the job file (6 paid for)" in text


def test_the_budget_counts_what_was_spent_and_names_the_jobs_that_do_not_fit(
    campaign: Campaign,
) -> None:
    r = resume_figures(campaign, [], journal="j", spent_usd=1.0, budget=1.0 + 2.5 * PRICE)
    assert (r.to_submit, r.fit_budget, r.fit_budget_usd) == (6, 2, pytest.approx(2 * PRICE))
    text = format_text(make_plan(campaign, max_concurrent=10, rpm=60), JournalView(r))
    assert "--budget $1.75: 2 of the 6 jobs fit ($0.60; $1.00 spent before)" in text
    assert "4 do not fit what is left and stay pending: j2, j3, j4, j5" in text
    assert r.to_dict()["budget"] == {
        "usd": 1.75,
        "fit_jobs": 2,
        "fit_usd": 0.6,
        "unfit_jobs": 4,
        "unfit_ids": ["j2", "j3", "j4", "j5"],
    }


def test_a_job_over_the_budget_is_skipped_and_the_cheaper_ones_after_it_fit(
    tmp_path: Path,
) -> None:
    """$0.30, $0.30, $1.20 (first in the start order: the longest), $0.30 under $1.00: the
    three $0.30 jobs fit and the $1.20 one is named, as admission does it."""
    long_job = "{mode: text-to-video, prompt: long, duration: 10, sound: true}"
    jobs = [
        "  - id: a\n    model: kling-2-6\n    input: {mode: text-to-video, prompt: a, "
        "duration: 5, sound: false}",
        "  - id: b\n    model: kling-2-6\n    input: {mode: text-to-video, prompt: b, "
        "duration: 5, sound: false}",
        f"  - id: big\n    model: kling-2-6\n    input: {long_job}",
        "  - id: c\n    model: kling-2-6\n    input: {mode: text-to-video, prompt: c, "
        "duration: 5, sound: false}",
    ]
    path = tmp_path / "c.yaml"
    path.write_text("name: c\noutput: {dir: out}\njobs:\n" + "\n".join(jobs) + "\n")
    campaign = load_campaign(path)
    assert [campaign.cost(j) for j in campaign.iter_jobs()] == pytest.approx(
        [PRICE, PRICE, 1.2, PRICE]
    )
    for order in ("longest", "file"):
        r = resume_figures(campaign, [], journal="j", spent_usd=0.0, budget=1.0, order=order)
        assert (r.fit_budget, r.fit_budget_usd) == (3, pytest.approx(3 * PRICE)), order
        assert (r.unfit_budget, r.unfit_budget_ids) == (1, ("big",)), order


def test_a_journal_synced_from_this_file_is_read_alone(campaign: Campaign) -> None:
    """Same stamp: the journal's file rows are the file's jobs, priced as synced."""
    kind = Kind("kling-2-6", 5, None)
    rows = [
        JournalJob("a", "done", "h", True, None, PRICE, True, kind),
        JournalJob("b", "queued", "h", False, None, PRICE, True, kind),
        JournalJob("c", "queued", "h", False, None, None, True, kind),
        JournalJob("gone", "done", "h", True, None, PRICE, False, kind),
    ]
    r = resume_figures(campaign, rows, journal="j", spent_usd=0.0, synced=True, budget=1.0)
    assert (r.to_submit, r.to_submit_usd, r.to_submit_unknown) == (2, PRICE, 1)
    assert (r.done, r.new, r.orphaned, r.pay_again, r.fit_budget) == (1, 0, 1, 0, 1)


def test_the_rich_table_carries_the_journal_lines(campaign: Campaign) -> None:
    import io

    from apixo_batch.cli.plan import _print_rich

    r = resume_figures(campaign, [], journal="j.sqlite", spent_usd=0.0, budget=0.5)
    stream = io.StringIO()
    _print_rich(make_plan(campaign, max_concurrent=10, rpm=60), stream, JournalView(r))
    assert "Journal j.sqlite: run would now" in stream.getvalue()
    assert "--budget $0.50: 1 of the 6 jobs fit" in stream.getvalue()


def test_the_selection_and_the_limit_bound_what_run_would_submit(campaign: Campaign) -> None:
    """--only j[0-3] counts four of six new jobs; --limit 2 of them, two; no job left out
    is counted orphaned (the journal keeps it)."""
    rows = _rows(campaign, {"j0": "done"})
    only = Again(selection=Selection(only=("j[0-3]",)))
    r = resume_figures(campaign, rows, journal="j", spent_usd=0.0, again=only)
    assert (r.to_submit, r.done, r.orphaned) == (3, 1, 0)
    limited = Again(selection=Selection(limit=2))
    assert resume_figures(campaign, rows, journal="j", spent_usd=0.0, again=limited).to_submit == 2


def test_plan_counts_rerolls_expired_retries_and_skips_refused_inputs(campaign: Campaign) -> None:
    """--reroll counts done jobs, --retry-expired expired ones; --retry-failed leaves a
    refused, unchanged input out unless --fail-code names its code."""
    hashes = {job.id: job.input_hash for job in campaign.iter_jobs()}
    rows = [
        JournalJob("j0", "done", hashes["j0"], True, None),
        JournalJob("j1", "expired", hashes["j1"], True, "RESULT_EXPIRED"),
        JournalJob("j2", "failed", hashes["j2"], True, "SensitiveContentDetected"),
        JournalJob("j3", "failed", hashes["j3"], True, "Timeout"),
        *(JournalJob(f"j{i}", "done", hashes[f"j{i}"], True, None) for i in (4, 5)),
    ]

    def submit(again: Again) -> int:
        return resume_figures(campaign, rows, journal="j", spent_usd=0.0, again=again).to_submit

    assert submit(Again()) == 0
    assert submit(Again(failed=True)) == 1  # the timeout only
    assert submit(Again(failed=True, fail_codes=("SensitiveContentDetected",))) == 1
    assert submit(Again(expired=True)) == 1
    assert submit(Again(reroll=True, selection=Selection(only=("j0", "j4")))) == 2


def test_the_plan_covers_what_run_would_submit_now(campaign: Campaign) -> None:
    """The table, cost and time of the plan are the jobs left to submit (j3..j5), not the
    file's six; the file's figures are kept beside them."""
    rows = _rows(campaign, {"j0": "done", "j1": "submitted", "j2": "succeeded"})
    r = resume_figures(campaign, rows, journal="j", spent_usd=3 * PRICE)
    assert [(g.model, g.mode, g.duration, g.tier, g.count) for g in r.groups] == [
        ("kling-2-6", "text-to-video", 5, "silent", 3)
    ]
    assert r.runs == ((Kind("kling-2-6", 5, None), 3),)
    now = make_plan(campaign, max_concurrent=10, rpm=60, now=(r.groups, r.runs))
    whole = make_plan(campaign, max_concurrent=10, rpm=60)
    assert (now.jobs, now.known_cost_usd) == (3, pytest.approx(3 * PRICE))
    assert now.whole is not None and (now.whole.jobs, now.whole.known_cost_usd) == (
        6,
        pytest.approx(6 * PRICE),
    )
    assert 0 < now.requests < whole.requests
    nothing = resume_figures(
        campaign, _rows(campaign, {f"j{i}": "done" for i in range(6)}), journal="j", spent_usd=0
    )
    empty = make_plan(campaign, max_concurrent=10, rpm=60, now=(nothing.groups, nothing.runs))
    assert (empty.jobs, empty.known_cost_usd, empty.wall_time_s, empty.rows) == (0, 0, 0, ())
    text = format_text(empty, JournalView(nothing))
    assert "Nothing to submit: estimated cost $0.00" in text
    assert "0 jobs to submit now, of the 6 in" in text


def test_jobs_run_would_refuse_are_not_counted_nor_priced(campaign: Campaign) -> None:
    """``refuse`` sees the jobs to submit (id, file name) in file order; those it names are
    counted as refused, left out of the cost, the groups and the budget's reach."""
    seen: list[list[tuple[str, str]]] = []

    def refuse(candidates: Iterable[tuple[str, str]]) -> set[str]:
        seen.append(list(candidates))
        return {"j1", "j4"}

    r = resume_figures(campaign, [], journal="j", spent_usd=0.0, budget=10.0, refuse=refuse)
    assert seen == [[(f"j{i}", f"j{i}.mp4") for i in range(6)]]
    assert (r.to_submit, r.refused, r.new, r.fit_budget) == (4, 2, 6, 4)
    assert r.to_submit_usd == pytest.approx(4 * PRICE)
    assert sum(g.count for g in r.groups) == 4


def test_a_synced_journal_groups_by_the_journaled_inputs(campaign: Campaign) -> None:
    """Synced, the rows' journaled inputs (mode, sound) give the price tier: a sound job
    is its own group at the sound price."""
    kind = Kind("kling-2-6", 5, None)
    silent = {"mode": "text-to-video", "duration": 5, "sound": False}
    sound = {**silent, "sound": True}
    rows = [
        JournalJob("a", "queued", "h", False, None, PRICE, True, kind, "a.mp4", silent),
        JournalJob("b", "queued", "h", False, None, 2 * PRICE, True, kind, "b.mp4", sound),
        JournalJob("c", "done", "h", True, None, PRICE, True, kind, "c.mp4", silent),
    ]
    r = resume_figures(campaign, rows, journal="j", spent_usd=0.0, synced=True)
    assert [(g.tier, g.count) for g in r.groups] == [("silent", 1), ("sound", 1)]
    plan = make_plan(campaign, max_concurrent=10, rpm=60, now=(r.groups, r.runs))
    assert plan.known_cost_usd == pytest.approx(3 * PRICE) == r.to_submit_usd


def test_refusals_see_take_names_and_the_limit_counts_after_them(campaign: Campaign) -> None:
    """A rerolled job is checked at its next take's name and a queued take at its own, as
    ``run`` checks them; ``--limit`` counts the jobs that start, refusals left out first
    (``run`` ends them before any submit)."""
    hashes = {job.id: job.input_hash for job in campaign.iter_jobs()}
    rows = [
        JournalJob("j0", "done", hashes["j0"], True, None),
        JournalJob("j1", "queued", hashes["j1"], False, None, take=2),
        JournalJob("j2", "done", hashes["j2"], True, None, take=2),
    ]
    seen: list[list[tuple[str, str]]] = []

    def refuse(candidates: Iterable[tuple[str, str]]) -> set[str]:
        seen.append(list(candidates))
        return {"j1"}

    again = Again(reroll=True, selection=Selection(only=("j[0-3]",), limit=2))
    r = resume_figures(campaign, rows, journal="j", spent_usd=0.0, refuse=refuse, again=again)
    assert seen == [
        [("j0", "j0-take2.mp4"), ("j1", "j1-take2.mp4"), ("j2", "j2-take3.mp4"), ("j3", "j3.mp4")]
    ]
    assert (r.refused, r.to_submit, r.new, r.new_ids) == (1, 2, 0, ())
