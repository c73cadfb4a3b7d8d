"""The catalog's rules for a job sent again: refused inputs, and a new take's seed."""

from __future__ import annotations

from apixo_batch.catalog.again import input_refused, take_input


def test_refused_input_codes_are_the_documented_ones() -> None:
    """Content and image refusals of every model's page, and our own 400; not transient."""
    for code in ("CONTENT_VIOLATION", "INVALID_IMAGE_URL", "SensitiveContentDetected", "NSFW",
                 "ImageFormatIncorrect", "INPUT_REJECTED"):  # fmt: skip
        assert input_refused(code), code
    for code in ("Timeout", "RateLimited", "PROCESSING_TIMEOUT", "UNKNOWN", None, "HTTP_500"):
        assert not input_refused(code), code


def test_a_new_take_gets_a_new_seed_where_the_model_takes_one() -> None:
    """wan-2-5 takes a seed: take 2 and take 3 differ, and each is stable; kling does not."""
    inp = {"prompt": "x", "seed": 7}
    assert take_input("wan-2-5", "j", inp, 1) == inp
    two, three = take_input("wan-2-5", "j", inp, 2), take_input("wan-2-5", "j", inp, 3)
    assert two["seed"] != three["seed"] != 7
    assert take_input("wan-2-5", "j", inp, 2) == two
    assert 0 <= two["seed"] < 2**31
    assert "seed" not in take_input("kling-2-6", "j", {"prompt": "x"}, 2)
