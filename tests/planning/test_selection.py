"""Selection and Again: which jobs a command picks, and which ended jobs run sends again."""

from __future__ import annotations

from apixo_batch.planning.selection import Again, Selection, unmatched


def test_only_takes_shell_patterns_and_model_narrows_further() -> None:
    """Any pattern may match (fnmatch, case-sensitive); --model must match too."""
    sel = Selection(only=("hero-*", "shot-0[1-3]"), models=("kling-2-6",))
    assert sel.picks("hero-a", "kling-2-6")
    assert sel.picks("shot-02", "kling-2-6")
    assert not sel.picks("shot-04", "kling-2-6")
    assert not sel.picks("Hero-a", "kling-2-6")
    assert not sel.picks("hero-a", "wan-2-5")
    assert Selection().picks("anything", "wan-2-5")
    assert Selection(limit=3).narrowed and not Selection(limit=3).filtered


def test_unmatched_names_the_patterns_no_id_matches() -> None:
    assert unmatched(["a*", "zz", "b?"], ["a1", "b2", "c"]) == ["zz"]
    assert unmatched([], ["a"]) == []


def test_failed_again_skips_refused_unchanged_inputs_unless_the_code_is_named() -> None:
    """The one rule: a refused input is retried only once changed, or when asked by code."""
    again = Again(failed=True)
    assert again.failed_again("j", "m", "CONTENT_VIOLATION", unchanged=True) == "refused"
    assert again.failed_again("j", "m", "CONTENT_VIOLATION", unchanged=False) == "retry"
    assert again.failed_again("j", "m", "Timeout", unchanged=True) == "retry"
    named = Again(failed=True, fail_codes=("CONTENT_VIOLATION",))
    assert named.failed_again("j", "m", "CONTENT_VIOLATION", unchanged=True) == "retry"
    assert named.failed_again("j", "m", "Timeout", unchanged=True) == "keep"
    assert Again().failed_again("j", "m", "Timeout", unchanged=True) == "keep"
    outside = Again(failed=True, selection=Selection(only=("k",)))
    assert outside.failed_again("j", "m", "Timeout", unchanged=True) == "keep"


def test_picks_done_only_with_reroll_and_expired_only_with_retry_expired() -> None:
    assert Again(reroll=True).picks("done", "j", "m")
    assert not Again(reroll=True).picks("expired", "j", "m")
    assert Again(expired=True).picks("expired", "j", "m")
    assert not Again(failed=True).picks("done", "j", "m")
