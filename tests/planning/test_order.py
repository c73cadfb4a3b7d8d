"""The start order: kinds by expected generation, the longest first, file order between equals."""

from __future__ import annotations

from apixo_batch.planning.kind import Kind
from apixo_batch.planning.order import longest_first


def test_longest_first_keeps_file_order_between_equals() -> None:
    """The longest expectation first; kinds that expect the same stay in file order."""
    expected = {"a": 60.0, "b": 90.0, "c": 60.0, "d": 30.0, "e": 90.0}
    kinds = [Kind(model, 5) for model in expected]
    ranked = longest_first(kinds, lambda kind: expected[kind.model])
    assert [kind.model for kind in ranked] == ["b", "e", "a", "c", "d"]
