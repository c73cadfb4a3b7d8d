"""Every documented input of the four models: allowed values, limits, defaults and the page.

This is the table users read (docs/models.md is :func:`markdown` of it) and the one the
validation in :mod:`.models` is held to: tests/catalog/test_catalog_table.py tries every
limit, choice, range and mode restriction recorded here against ``validate_input``,
so the table cannot say what the code does not do. Defaults are APIXO's (the API
applies them; apixo-batch sends only what a job says).

Where APIXO's pages disagree, the newest layout wins (the pages carry no dates; the
newest is the one with the capability table, billing and latency sections), and the
``note`` says so.

    python -m apixo_batch.catalog.table > docs/models-table.md   # what the test compares
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_PAGES", "TABLE", "FieldDoc", "markdown"]

_DOCS = "https://apixo.ai/docs/models/video/"

#: each model's newest page, and the older page that lists per-field defaults
MODEL_PAGES: dict[str, tuple[str, str]] = {
    "kling-2-5-turbo-pro": (
        _DOCS + "kling-2-5-turbo-pro",
        "https://apixo.ai/docs/ru/models/video/kling-2-5-turbo-pro",
    ),
    "kling-2-1": (_DOCS + "kling-2-1", "https://apixo.ai/docs/ru/models/video/kling-2-1"),
    "kling-2-6": (
        "https://apixo.ai/ko/docs/models/video/kling-2-6",
        "https://apixo.ai/docs/zh/models/video/kling-2-6",
    ),
    "wan-2-5": (
        "https://apixo.ai/ru/docs/models/video/wan-2-5",
        "https://apixo.ai/en/docs/models/wan-2-5",
    ),
}


@dataclass(frozen=True, slots=True)
class FieldDoc:
    """One input of one model as APIXO documents it, with what the validation must do."""

    model: str
    name: str
    allowed: str
    default: str = "none"
    modes: str = "all"
    #: "new": the model's newest page; "old": the older page with per-field details
    source: str = "new"
    note: str = ""
    # -- held against the validation code --
    required: bool = False
    choices: tuple[object, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    #: (lowest, highest, step)
    number: tuple[float, float, float] | None = None
    #: the modes that take it (empty: every mode)
    only_modes: tuple[str, ...] = ()
    #: image_urls: (fewest, most) per mode
    images: tuple[tuple[str, int, int], ...] = ()

    @property
    def url(self) -> str:
        new, old = MODEL_PAGES[self.model]
        return new if self.source == "new" else old


_AR = ("16:9", "9:16", "1:1")
_K25, _K21, _K26, _WAN = "kling-2-5-turbo-pro", "kling-2-1", "kling-2-6", "wan-2-5"
_K21_MODES = (
    "standard-image-to-video",
    "pro-image-to-video",
    "master-text-to-video",
    "master-image-to-video",
)

TABLE: tuple[FieldDoc, ...] = (
    # kling-2-5-turbo-pro
    FieldDoc(_K25, "mode", "text-to-video, image-to-video", "text-to-video", required=True,
             choices=("text-to-video", "image-to-video")),
    FieldDoc(_K25, "prompt", "1-2,500 characters", required=True, min_length=1,
             max_length=2500),
    FieldDoc(_K25, "duration", "5 or 10 (seconds)", "5", required=True, choices=(5, 10)),
    FieldDoc(_K25, "image_urls", "1-2 URLs: start frame, then end frame", modes="image-to-video",
             images=(("text-to-video", 0, 0), ("image-to-video", 1, 2))),
    FieldDoc(_K25, "aspect_ratio", "16:9, 9:16, 1:1", "16:9", modes="text-to-video",
             choices=_AR, only_modes=("text-to-video",)),
    FieldDoc(_K25, "negative_prompt", "at most 2,500 characters", max_length=2500),
    FieldDoc(_K25, "cfg_scale", "0-1, step 0.1", number=(0.0, 1.0, 0.1)),
    # kling-2-1
    FieldDoc(_K21, "mode", ", ".join(_K21_MODES), "standard-image-to-video", required=True,
             choices=_K21_MODES),
    FieldDoc(_K21, "prompt", "1-5,000 characters", required=True, min_length=1,
             max_length=5000),
    FieldDoc(_K21, "duration", "5 or 10 (seconds)", "5", required=True, choices=(5, 10)),
    FieldDoc(_K21, "image_urls", "standard and master image-to-video exactly 1; pro 1-2 "
             "(start, end frame); master-text-to-video none", modes="image modes",
             images=(("standard-image-to-video", 1, 1), ("pro-image-to-video", 1, 2),
                     ("master-text-to-video", 0, 0), ("master-image-to-video", 1, 1))),
    FieldDoc(_K21, "aspect_ratio", "16:9, 9:16, 1:1", "16:9", modes="master-text-to-video",
             choices=_AR, only_modes=("master-text-to-video",),
             note="the older page calls it required for master-text-to-video and gives it "
             "a default; the newest says only that it applies there: optional here"),
    FieldDoc(_K21, "negative_prompt", "at most 500 characters", source="old", max_length=500),
    FieldDoc(_K21, "cfg_scale", "0-1, step 0.1", source="old", number=(0.0, 1.0, 0.1)),
    # kling-2-6
    FieldDoc(_K26, "mode", "text-to-video, image-to-video", required=True,
             choices=("text-to-video", "image-to-video")),
    FieldDoc(_K26, "prompt", "1-1,000 characters", required=True, min_length=1,
             max_length=1000),
    FieldDoc(_K26, "duration", "5 or 10 (seconds)", required=True, choices=(5, 10)),
    FieldDoc(_K26, "sound", "true or false (sets the price: $0.06 or $0.12 a second)",
             required=True, choices=(True, False)),
    FieldDoc(_K26, "image_urls", "1-2 URLs: start frame, then end frame", modes="image-to-video",
             images=(("text-to-video", 0, 0), ("image-to-video", 1, 2)),
             note="the older page gives no count and shows one image"),
    FieldDoc(_K26, "aspect_ratio", "16:9, 9:16, 1:1", modes="text-to-video", choices=_AR,
             only_modes=("text-to-video",)),
    FieldDoc(_K26, "negative_prompt", "text (no limit documented)",
             note="in the newest page's examples only"),
    FieldDoc(_K26, "cfg_scale", "0-1, step 0.1 (the Kling models' range)",
             number=(0.0, 1.0, 0.1),
             note="in the newest page's examples, with no range: the other Kling pages' "
             "range is applied"),
    # wan-2-5
    FieldDoc(_WAN, "mode", "text-to-video, image-to-video", "text-to-video", required=True,
             choices=("text-to-video", "image-to-video")),
    FieldDoc(_WAN, "prompt", "1-800 characters", required=True, min_length=1, max_length=800),
    FieldDoc(_WAN, "duration", "5 or 10 (seconds)", "5", required=True, choices=(5, 10),
             note="the oldest page writes it as a string; the newer ones as a number"),
    FieldDoc(_WAN, "resolution", "720p or 1080p (sets the price: $0.08 or $0.13 a second)",
             "720p", required=True, choices=("720p", "1080p"),
             note="480p belongs to the separate wan-2-5-video model"),
    FieldDoc(_WAN, "image_urls", "exactly 1 URL (the start frame)", modes="image-to-video",
             images=(("text-to-video", 0, 0), ("image-to-video", 1, 1)),
             note="the oldest page names it image_url, a single string"),
    FieldDoc(_WAN, "aspect_ratio", "16:9, 9:16, 1:1", "16:9", modes="text-to-video",
             choices=_AR, only_modes=("text-to-video",),
             note="the oldest page's default is 1:1; the newer tips say 16:9"),
    FieldDoc(_WAN, "negative_prompt", "at most 500 characters", source="old", max_length=500,
             note="the limit is on the oldest page only; no newer page contradicts it"),
    FieldDoc(_WAN, "seed", "a whole number 0 to 2,147,483,647", source="old",
             number=(0, 2**31 - 1, 1), note="no range documented: a 32-bit seed is assumed"),
    FieldDoc(_WAN, "enable_prompt_expansion", "true or false", "true", choices=(True, False)),
)  # fmt: skip


def markdown() -> str:
    """The table of docs/models.md."""
    lines = [
        "| model | input | allowed values and limits | default | modes | source |",
        "|---|---|---|---|---|---|",
    ]
    for doc in TABLE:
        allowed = doc.allowed + (" (required)" if doc.required else "")
        if doc.note:
            allowed += f"; {doc.note}"
        page = "newest page" if doc.source == "new" else "older page"
        lines.append(
            f"| `{doc.model}` | `{doc.name}` | {allowed} | {doc.default} | {doc.modes} "
            f"| [{page}]({doc.url}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
