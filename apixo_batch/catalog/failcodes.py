"""Every task fail code APIXO documents, what it means, and which model pages list it.

A failed task carries a ``failCode`` and a ``failMsg``. The codes differ by page:
kling-2-6's page has its own table (``SensitiveContentDetected``,
``ImageFormatIncorrect``, ``RateLimited``, ``Timeout``...), the other model
pages list ``CONTENT_VIOLATION`` and ``INVALID_IMAGE_URL``, and the general
error-code pages add the rest. The simulator draws its failures from here and
the engine classifies the ones it receives from here, so the two cannot drift.

Each code has a :class:`FailClass`: what a person (or a rerun) can do about it.

- ``input``: the input was refused (an image that cannot be fetched, a prompt too
  long): the same input fails again; fix the job, then ``--retry-failed``.
- ``content``: the prompt, an image or the output was flagged: change the content.
- ``transient``: the provider was busy or slow: the same input may succeed with
  ``--retry-failed`` (which pays again).

A code not listed here is ``None``: nothing is assumed about it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "FAIL_CODES",
    "MODEL_FAIL_CODES",
    "FailClass",
    "FailCode",
    "ModelFailCodes",
    "classify",
    "codes_of",
    "fail_message",
]


class FailClass(enum.StrEnum):
    INPUT = "input"
    CONTENT = "content"
    TRANSIENT = "transient"


@dataclass(frozen=True, slots=True)
class FailCode:
    code: str
    fail_class: FailClass
    #: the failMsg the simulator sends (the page's wording where it gives one)
    message: str


def _codes(*codes: FailCode) -> dict[str, FailCode]:
    return {c.code: c for c in codes}


_I, _C, _T = FailClass.INPUT, FailClass.CONTENT, FailClass.TRANSIENT

#: every documented fail code, by code
FAIL_CODES: Mapping[str, FailCode] = _codes(
    # kling-2-6's page ("Task failure codes")
    FailCode(
        "SensitiveContentDetected",
        _C,
        "The input or output was flagged as sensitive. Please try again with different inputs.",
    ),
    FailCode(
        "InputOutputSensitiveContentDetected", _C, "Input or output failed provider safety checks"
    ),
    FailCode("NSFW", _C, "NSFW content was detected"),
    FailCode("ProhibitedContentDetected", _C, "Content violates provider policy"),
    FailCode("PromptLengthExceeded", _I, "Prompt exceeded the provider limit"),
    FailCode("PromptInvalid", _I, "Prompt was invalid or rejected"),
    FailCode("ImageFormatIncorrect", _I, "A reference image could not be processed"),
    FailCode("Upload error", _I, "A media upload failed or exceeded size limits"),
    FailCode("RateLimited", _T, "Provider rate limit was reached"),
    FailCode("Timeout", _T, "Provider timed out"),
    # the other model pages (kling-2-1, kling-2-5-turbo-pro, wan-2-5)
    FailCode("CONTENT_VIOLATION", _C, "Content does not meet safety guidelines"),
    FailCode("INVALID_IMAGE_URL", _I, "Cannot access provided image URL"),
    # the general error-code pages
    FailCode("SensitiveContent", _C, "Content violates policy"),
    FailCode("InputImageSensitiveContentDetected", _C, "Input image contains violation"),
    FailCode("NSFW_DETECTED", _C, "NSFW content detected"),
    FailCode("PROMPT_TOO_LONG", _I, "Prompt exceeds character limit"),
    FailCode("INVALID_PROMPT", _I, "Prompt is empty or malformed"),
    FailCode("IMAGE_TOO_LARGE", _I, "Input image exceeds size limit"),
    FailCode("UNSUPPORTED_FORMAT", _I, "Image format not supported"),
    FailCode("IMAGE_DOWNLOAD_FAILED", _I, "Failed to download reference image"),
    FailCode("PROCESSING_TIMEOUT", _T, "Generation took too long"),
    FailCode("MODEL_UNAVAILABLE", _T, "Model is temporarily offline"),
    FailCode("GENERATION_FAILED", _T, "Generic generation failure"),
)


@dataclass(frozen=True, slots=True)
class ModelFailCodes:
    """The codes one model's page lists, and which of them each kind of failure carries."""

    listed: tuple[str, ...]
    #: a prompt (or image, or output) flagged as sensitive
    content: str
    #: a reference image that cannot be fetched or read
    image: str
    #: the provider busy or slow
    transient: tuple[str, ...]


#: by model; a model absent here uses ``default``
MODEL_FAIL_CODES: Mapping[str, ModelFailCodes] = {
    "kling-2-6": ModelFailCodes(
        listed=(
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
        ),
        content="SensitiveContentDetected",
        image="ImageFormatIncorrect",
        transient=("RateLimited", "Timeout"),
    ),
    # kling-2-1, kling-2-5-turbo-pro and wan-2-5 list these two; their pages are silent
    # about a provider failure, so it carries the general page's code
    "default": ModelFailCodes(
        listed=("CONTENT_VIOLATION", "INVALID_IMAGE_URL"),
        content="CONTENT_VIOLATION",
        image="INVALID_IMAGE_URL",
        transient=("PROCESSING_TIMEOUT",),
    ),
}


def codes_of(model: str) -> ModelFailCodes:
    """The fail codes of ``model``'s page (the other pages' for a model without its own)."""
    return MODEL_FAIL_CODES.get(model, MODEL_FAIL_CODES["default"])


def classify(code: str | None) -> FailClass | None:
    """What kind of failure ``code`` is; None for a code no page documents."""
    known = FAIL_CODES.get(code or "")
    return known.fail_class if known is not None else None


def fail_message(code: str) -> str:
    """The failMsg for ``code`` (a generic one for a code no page documents)."""
    known = FAIL_CODES.get(code)
    return known.message if known is not None else "Generation failed"
