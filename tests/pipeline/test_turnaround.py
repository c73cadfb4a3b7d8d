"""Slot turnaround: ends known and the submits that follow them, paired first in, first out."""

from __future__ import annotations

import pytest

from apixo_batch.pipeline.turnaround import Turnaround


def test_ends_and_submits_pair_in_order_and_unfollowed_ends_do_not_count() -> None:
    t = Turnaround()
    t.left(0.5)  # a submit no end freed (slow start): nothing to pair
    t.ended(10.0)
    t.ended(11.0)
    t.left(10.2)  # takes the slot freed at 10.0
    t.left(12.0)  # ... and the one freed at 11.0
    t.ended(20.0)  # the last wave: no submit follows
    stats = t.statistics()
    assert stats.count == 2
    assert (stats.p50, stats.max) == (pytest.approx(1.0), pytest.approx(1.0))
    assert stats.p90 == pytest.approx(1.0)


def test_percentiles_over_many_samples() -> None:
    t = Turnaround()
    for i in range(100):
        t.ended(float(i))
        t.left(float(i) + i / 1000)
    stats = t.statistics()
    assert stats.count == 100
    assert stats.p50 == pytest.approx(0.050)
    assert stats.p90 == pytest.approx(0.090)
    assert stats.max == pytest.approx(0.099)


def test_no_samples_no_figures() -> None:
    stats = Turnaround().statistics()
    assert (stats.count, stats.p50, stats.p90, stats.max) == (0, None, None, None)
