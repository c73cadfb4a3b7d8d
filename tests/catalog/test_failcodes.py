"""The fail-code catalog: every documented code, its class, and each model page's codes."""

from __future__ import annotations

import pytest

from apixo_batch.catalog.failcodes import (
    FAIL_CODES,
    MODEL_FAIL_CODES,
    FailClass,
    classify,
    codes_of,
    fail_message,
)
from apixo_batch.catalog.models import MODELS

#: kling-2-6's page, "Task failure codes", in its order
KLING_26_PAGE = (
    "SensitiveContentDetected",
    "InputOutputSensitiveContentDetected",
    "NSFW",
    "ProhibitedContentDetected",
    "PromptLengthExceeded",
    "PromptInvalid",
    "ImageFormatIncorrect",
    "Upload error",
    "RateLimited",
    "Timeout",
)


def test_kling_2_6_lists_its_pages_codes_and_the_others_theirs() -> None:
    assert codes_of("kling-2-6").listed == KLING_26_PAGE
    for model in set(MODELS) - {"kling-2-6"}:
        assert codes_of(model).listed == ("CONTENT_VIOLATION", "INVALID_IMAGE_URL")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_models_roles_are_codes_it_can_carry_of_the_right_class(model: str) -> None:
    codes = codes_of(model)
    assert classify(codes.content) is FailClass.CONTENT
    assert classify(codes.image) is FailClass.INPUT
    assert codes.transient and all(classify(c) is FailClass.TRANSIENT for c in codes.transient)
    assert {codes.content, codes.image} <= set(codes.listed)


@pytest.mark.parametrize(
    ("code", "fail_class"),
    [
        ("SensitiveContentDetected", FailClass.CONTENT),
        ("CONTENT_VIOLATION", FailClass.CONTENT),
        ("NSFW", FailClass.CONTENT),
        ("ImageFormatIncorrect", FailClass.INPUT),
        ("INVALID_IMAGE_URL", FailClass.INPUT),
        ("PromptLengthExceeded", FailClass.INPUT),
        ("RateLimited", FailClass.TRANSIENT),
        ("Timeout", FailClass.TRANSIENT),
        ("PROCESSING_TIMEOUT", FailClass.TRANSIENT),
        ("MODEL_UNAVAILABLE", FailClass.TRANSIENT),
    ],
)
def test_codes_are_classified_as_their_pages_advise(code: str, fail_class: FailClass) -> None:
    """ "Retry later" codes are transient, "fix the image/prompt" input, policy content."""
    assert classify(code) is fail_class


def test_every_listed_code_is_in_the_catalog_once() -> None:
    for codes in MODEL_FAIL_CODES.values():
        assert set(codes.listed) <= set(FAIL_CODES)
        assert len(set(codes.listed)) == len(codes.listed)
    assert all(code == entry.code for code, entry in FAIL_CODES.items())


def test_unknown_codes_are_not_guessed() -> None:
    assert classify("SOMETHING_NEW") is None and classify(None) is None and classify("") is None
    assert fail_message("SOMETHING_NEW") == "Generation failed"
    assert fail_message("INVALID_IMAGE_URL") == "Cannot access provided image URL"
