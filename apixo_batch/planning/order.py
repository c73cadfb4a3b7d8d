"""The order queued jobs start in (``--order``), defined once.

``longest`` starts the kinds whose generation is expected to take longest first, in
file order within a kind and between kinds that expect the same: the few long tasks
then overlap the many short ones instead of ending the run alone. ``file`` keeps the
job file's order. Admission reads the journal in this order
(:func:`~apixo_batch.pipeline.admission.queued_in_start_order`), the forecast that
``plan`` prints and ``run`` plans with assumes it
(:func:`~.forecast.shapes_in_start_order`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .kind import Kind

__all__ = ["longest_first"]


def longest_first(kinds: Iterable[Kind], expected_s: Callable[[Kind], float]) -> list[Kind]:
    """``kinds`` (in the file order of their first job), the longest ``expected_s`` first;
    the sort is stable, so kinds that expect the same keep their file order."""
    return sorted(kinds, key=lambda kind: -expected_s(kind))
