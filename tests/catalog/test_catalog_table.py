"""The documented-inputs table (docs/models.md) against the validation code: one truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apixo_batch.catalog.models import MODELS, validate_input
from apixo_batch.catalog.table import TABLE, FieldDoc, markdown

IMG = "https://example.com/frame.jpg"
ROOT = Path(__file__).resolve().parents[2]


def _base(model: str, mode: str) -> dict[str, Any]:
    """The smallest valid input of ``model`` in ``mode``."""
    spec = MODELS[model]
    inp: dict[str, Any] = {"mode": mode, "prompt": "a lake at dawn", "duration": 5}
    if model == "kling-2-6":
        inp["sound"] = False
    if model == "wan-2-5":
        inp["resolution"] = "720p"
    inp["image_urls"] = [IMG] * spec.modes[mode].min_images
    if not inp["image_urls"]:
        del inp["image_urls"]
    assert validate_input(model, inp)[1] == [], inp
    return inp


def _mode_for(doc: FieldDoc) -> str:
    return doc.only_modes[0] if doc.only_modes else next(iter(MODELS[doc.model].modes))


def _issues(model: str, inp: dict[str, Any], name: str) -> list[str]:
    return [i.message for i in validate_input(model, inp)[1] if i.field == f"input.{name}"]


def _ids(doc: FieldDoc) -> str:
    return f"{doc.model}.{doc.name}"


def test_the_table_and_the_models_know_the_same_inputs() -> None:
    """Every input a model validates is in the table, and nothing else is."""
    documented = {(d.model, d.name) for d in TABLE}
    coded = {(m, k) for m, spec in MODELS.items() for k in spec.input_keys}
    assert documented == coded


def test_docs_models_md_holds_the_table() -> None:
    """docs/models.md shows the table (python -m apixo_batch.catalog.table prints it)."""
    assert markdown() in (ROOT / "docs" / "models.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", [d for d in TABLE if d.required], ids=_ids)
def test_a_required_input_is_required(doc: FieldDoc) -> None:
    inp = _base(doc.model, _mode_for(doc))
    inp.pop(doc.name)
    assert _issues(doc.model, inp, doc.name) == ["required"]


@pytest.mark.parametrize("doc", [d for d in TABLE if d.choices], ids=_ids)
def test_every_documented_choice_passes_and_nothing_else(doc: FieldDoc) -> None:
    for choice in doc.choices:
        mode = str(choice) if doc.name == "mode" else _mode_for(doc)
        inp = {**_base(doc.model, mode), doc.name: choice}
        assert _issues(doc.model, inp, doc.name) == [], (doc.name, choice)
    bogus = {**_base(doc.model, _mode_for(doc)), doc.name: "bogus-value"}
    assert _issues(doc.model, bogus, doc.name)


@pytest.mark.parametrize("doc", [d for d in TABLE if d.max_length], ids=_ids)
def test_text_limits_are_the_documented_ones(doc: FieldDoc) -> None:
    assert doc.max_length is not None
    base = _base(doc.model, _mode_for(doc))
    assert _issues(doc.model, {**base, doc.name: "x" * doc.max_length}, doc.name) == []
    over = _issues(doc.model, {**base, doc.name: "x" * (doc.max_length + 1)}, doc.name)
    assert over == [f"{doc.max_length + 1} characters, at most {doc.max_length} allowed"]
    if doc.min_length:
        assert _issues(doc.model, {**base, doc.name: ""}, doc.name)


@pytest.mark.parametrize("doc", [d for d in TABLE if d.number], ids=_ids)
def test_numbers_take_the_documented_range_and_step(doc: FieldDoc) -> None:
    assert doc.number is not None
    low, high, step = doc.number
    base = _base(doc.model, _mode_for(doc))
    if step == 1:  # whole numbers
        good: list[Any] = [int(low), int(high), int(low) + 7]
        bad: list[Any] = [int(low) - 1, int(high) + 1, low + 0.5]
    else:
        good = [low, high, 0.3, 0.7]  # 0.3 is 0.30000000000000004 as a float
        bad = [low - step, high + step, low + step / 2]
    for value in good:
        assert _issues(doc.model, {**base, doc.name: value}, doc.name) == [], value
    for value in bad:
        assert _issues(doc.model, {**base, doc.name: value}, doc.name), value


@pytest.mark.parametrize("doc", [d for d in TABLE if d.only_modes], ids=_ids)
def test_an_input_for_some_modes_is_refused_in_the_others(doc: FieldDoc) -> None:
    value = doc.choices[0] if doc.choices else "x"
    for mode in MODELS[doc.model].modes:
        inp = {**_base(doc.model, mode), doc.name: value}
        refused = _issues(doc.model, inp, doc.name)
        assert (mode not in doc.only_modes) == bool(refused), (mode, refused)


@pytest.mark.parametrize("doc", [d for d in TABLE if d.images], ids=_ids)
def test_image_counts_per_mode_are_the_documented_ones(doc: FieldDoc) -> None:
    assert {mode for mode, _, _ in doc.images} == set(MODELS[doc.model].modes)
    for mode, fewest, most in doc.images:
        base = _base(doc.model, mode)
        for n in range(max(fewest, 1), most + 1):
            inp = {**base, "image_urls": [IMG] * n}
            assert _issues(doc.model, inp, "image_urls") == [], (mode, n)
        assert _issues(doc.model, {**base, "image_urls": [IMG] * (most + 1)}, "image_urls")
        if fewest:
            assert _issues(doc.model, {**base, "image_urls": [IMG] * (fewest - 1)}, "image_urls")
