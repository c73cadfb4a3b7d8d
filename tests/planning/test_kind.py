"""The kind of a task: a model and what drives its clock, with the key learned times use."""

from __future__ import annotations

from apixo_batch.catalog.models import MODELS
from apixo_batch.planning.kind import Kind


def test_the_key_keeps_the_journaled_form() -> None:
    """Learned completions are journaled under this key: an absent input is an empty field."""
    assert Kind("kling-2-6", 5).key == "kling-2-6:5:"
    assert Kind("wan-2-5", 10, "1080p").key == "wan-2-5:10:1080p"
    assert Kind("veo3").key == "veo3::"


def test_a_kind_is_what_drives_the_clock_and_nothing_else() -> None:
    """Inputs the clock does not read (prompt, mode, sound) make no new kind."""
    one = Kind.of("kling-2-6", {"mode": "text-to-video", "prompt": "a", "duration": 5})
    other = Kind.of("kling-2-6", {"mode": "image-to-video", "prompt": "b", "duration": 5})
    assert one == other and hash(one) == hash(other)
    assert one.drives == {"duration": 5}
    wan = Kind.of("wan-2-5", {"duration": 10, "resolution": "1080p"})
    assert wan.clock() == MODELS["wan-2-5"].clock({"duration": 10, "resolution": "1080p"})


def test_an_unknown_model_has_no_clock() -> None:
    """A model the catalog does not know (a journal from a newer version) has no clock."""
    assert Kind("no-such-model", 5).clock() is None
