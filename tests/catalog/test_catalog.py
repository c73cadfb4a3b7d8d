"""The model catalog against apixo-docs/: modes, durations, prices, clocks, input checks."""

from __future__ import annotations

from typing import Any

import pytest

from apixo_batch.catalog.models import (
    MODELS,
    RESULT_TTL_S,
    accepts,
    all_input_keys,
    get_model,
    validate_input,
)
from apixo_batch.catalog.table import TABLE

IMG = "https://example.com/start.jpg"
IMG2 = "https://example.com/end.jpg"


def _spec(name: str) -> Any:
    spec = get_model(name)
    assert spec is not None
    return spec


# --- models, modes, durations ------------------------------------------------


def test_catalog_holds_the_four_documented_models() -> None:
    """Exactly the models with a page in apixo-docs/."""
    assert set(MODELS) == {"kling-2-5-turbo-pro", "kling-2-1", "kling-2-6", "wan-2-5"}


def test_unknown_model_is_none() -> None:
    """get_model does not guess."""
    assert get_model("kling-9") is None


@pytest.mark.parametrize(
    ("model", "modes"),
    [
        ("kling-2-5-turbo-pro", {"text-to-video": (0, 0), "image-to-video": (1, 2)}),
        (
            "kling-2-1",
            {
                "standard-image-to-video": (1, 1),
                "pro-image-to-video": (1, 2),
                "master-text-to-video": (0, 0),
                "master-image-to-video": (1, 1),
            },
        ),
        ("kling-2-6", {"text-to-video": (0, 0), "image-to-video": (1, 2)}),
        ("wan-2-5", {"text-to-video": (0, 0), "image-to-video": (1, 1)}),
    ],
)
def test_modes_and_image_counts_follow_the_docs(
    model: str, modes: dict[str, tuple[int, int]]
) -> None:
    """Each model's modes, and how many image_urls each takes."""
    spec = _spec(model)
    assert {name: (m.min_images, m.max_images) for name, m in spec.modes.items()} == modes


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_takes_5_and_10_second_durations(model: str) -> None:
    """5 and 10 seconds are accepted, anything else refused, for every model."""
    base = _happy_inputs()[model][0]
    for duration in (5, 10):
        _, issues = validate_input(model, {**base, "duration": duration})
        assert issues == []
    for duration in (0, 6, 15):
        _, issues = validate_input(model, {**base, "duration": duration})
        assert [i.field for i in issues] == ["input.duration"]


@pytest.mark.parametrize(
    ("model", "most"),
    [("kling-2-6", 1000), ("kling-2-5-turbo-pro", 2500), ("kling-2-1", 5000), ("wan-2-5", 800)],
)
def test_prompt_limits(model: str, most: int) -> None:
    """The current pages' prompt lengths (docs/models.md has them all)."""
    doc = next(d for d in TABLE if d.model == model and d.name == "prompt")
    assert doc.max_length == most


def test_result_urls_live_fifteen_days() -> None:
    """Every model page says result URLs expire after 15 days."""
    assert RESULT_TTL_S == 15 * 24 * 3600


# --- prices ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inp", "per_second"),
    [
        ("kling-2-6", {"sound": False, "duration": 5}, 0.06),
        ("kling-2-6", {"sound": True, "duration": 5}, 0.12),
        ("wan-2-5", {"resolution": "720p", "duration": 5}, 0.08),
        ("wan-2-5", {"resolution": "1080p", "duration": 5}, 0.13),
    ],
)
def test_published_prices_per_second(model: str, inp: dict[str, Any], per_second: float) -> None:
    """The prices the docs publish, per output second."""
    assert _spec(model).price_per_second(inp) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("model", "inp", "cost"),
    [
        ("kling-2-6", {"sound": False, "duration": 5}, 0.30),
        ("kling-2-6", {"sound": False, "duration": 10}, 0.60),
        ("kling-2-6", {"sound": True, "duration": 5}, 0.60),
        ("kling-2-6", {"sound": True, "duration": 10}, 1.20),
        ("wan-2-5", {"resolution": "1080p", "duration": 10}, 1.30),
        ("wan-2-5", {"resolution": "720p", "duration": 5}, 0.40),
    ],
)
def test_cost_is_price_times_duration(model: str, inp: dict[str, Any], cost: float) -> None:
    """The kling-2-6 billing table's example totals, and the same rule for wan-2-5."""
    assert _spec(model).cost(inp) == pytest.approx(cost)


@pytest.mark.parametrize(
    ("model", "inp"),
    [
        ("kling-2-5-turbo-pro", {"mode": "text-to-video", "duration": 5}),
        ("kling-2-1", {"mode": "pro-image-to-video", "duration": 10}),
        ("kling-2-1", {"mode": "master-text-to-video", "duration": 5}),
    ],
)
def test_unpublished_prices_are_unknown(model: str, inp: dict[str, Any]) -> None:
    """Kling 2.1 and 2.5 Turbo Pro have no published price: None, never an invented number."""
    spec = _spec(model)
    assert spec.price_per_second(inp) is None
    assert spec.cost(inp) is None
    assert spec.price_per_second(inp, {"kling-2-6": 0.5}) is None


def test_override_by_number_applies_to_every_variant() -> None:
    """A plain number in the price table is the model's price whatever the input."""
    spec = _spec("kling-2-1")
    overrides = {"kling-2-1": 0.07}
    for mode in spec.modes:
        assert spec.price_per_second({"mode": mode}, overrides) == pytest.approx(0.07)
    assert spec.cost({"mode": "master-text-to-video", "duration": 10}, overrides) == (
        pytest.approx(0.7)
    )


def test_override_by_variant_with_default() -> None:
    """A mapping prices variants by name, falling back to its "default" entry."""
    spec = _spec("kling-2-1")
    overrides = {"kling-2-1": {"pro": 0.09, "master": 0.2, "default": 0.05}}
    assert spec.price_per_second({"mode": "pro-image-to-video"}, overrides) == pytest.approx(0.09)
    assert spec.price_per_second({"mode": "master-image-to-video"}, overrides) == (
        pytest.approx(0.2)
    )
    assert spec.price_per_second({"mode": "standard-image-to-video"}, overrides) == (
        pytest.approx(0.05)
    )


def test_override_by_variant_without_default_falls_back_to_published() -> None:
    """A mapping that does not name the variant leaves the published price (or None)."""
    assert _spec("kling-2-6").price_per_second(
        {"sound": True}, {"kling-2-6": {"silent": 0.01}}
    ) == pytest.approx(0.12)
    assert (
        _spec("kling-2-1").price_per_second(
            {"mode": "standard-image-to-video"}, {"kling-2-1": {"pro": 0.09}}
        )
        is None
    )


def test_override_replaces_a_published_price() -> None:
    """The user's table wins over the docs (prices change; the docs may lag)."""
    spec = _spec("wan-2-5")
    assert spec.price_per_second({"resolution": "1080p"}, {"wan-2-5": 0.2}) == pytest.approx(0.2)
    assert spec.price_per_second(
        {"resolution": "720p"}, {"wan-2-5": {"720p": 0.05}}
    ) == pytest.approx(0.05)


# --- clocks ------------------------------------------------------------------

# (model, input, docs' first-poll advice, poll interval, typical min, typical max)
CLOCKS = [
    ("kling-2-5-turbo-pro", {"duration": 5}, 30, 5, 30, 45),
    ("kling-2-5-turbo-pro", {"duration": 10}, 30, 5, 45, 60),
    ("kling-2-1", {"duration": 5}, 60, 5, 60, 90),
    ("kling-2-1", {"duration": 10}, 60, 5, 90, 120),
    ("kling-2-6", {"duration": 5}, 50, 5, 50, 70),
    ("kling-2-6", {"duration": 10}, 80, 5, 80, 100),
    ("wan-2-5", {"resolution": "720p", "duration": 5}, 50, 5, 50, 70),
    ("wan-2-5", {"resolution": "1080p", "duration": 5}, 50, 5, 70, 90),
]


@pytest.mark.parametrize(("model", "inp", "advice", "interval", "lo", "hi"), CLOCKS)
def test_clock_matches_the_docs(
    model: str, inp: dict[str, Any], advice: float, interval: float, lo: float, hi: float
) -> None:
    """Typical times, poll interval and a first poll between the docs' advice and typical_min."""
    # The catalog may poll longer videos later than the page's one-size advice
    # (saves requests), but never after the earliest typical finish.
    clock = _spec(model).clock(inp)
    assert (clock.typical_min, clock.typical_max) == (lo, hi)
    assert clock.interval == interval
    assert advice <= clock.first_poll <= lo


def test_kling_2_6_first_poll_per_duration() -> None:
    """kling-2-6's page gives its own first poll per duration: 50 s and 80 s."""
    spec = _spec("kling-2-6")
    assert spec.clock({"duration": 5}).first_poll == 50
    assert spec.clock({"duration": 10}).first_poll == 80


# --- validate_input: happy paths ----------------------------------------------


def _happy_inputs() -> dict[str, list[dict[str, Any]]]:
    """One valid input per mode of every model, taken from the docs' examples."""
    return {
        "kling-2-5-turbo-pro": [
            {
                "mode": "text-to-video",
                "prompt": "a cinematic drone shot over snowy mountains at sunrise",
                "duration": 10,
                "aspect_ratio": "16:9",
                "negative_prompt": "low quality, jitter",
                "cfg_scale": 0.6,
            },
            {
                "mode": "image-to-video",
                "prompt": "smooth camera transition from first to last frame",
                "duration": 5,
                "image_urls": ["https://example.com/head.jpg", "https://example.com/tail.jpg"],
                "cfg_scale": 0.4,
            },
        ],
        "kling-2-1": [
            {
                "mode": "standard-image-to-video",
                "prompt": "a cat",
                "duration": 5,
                "image_urls": [IMG],
            },
            {
                "mode": "pro-image-to-video",
                "prompt": "from start to end frame",
                "duration": 10,
                "image_urls": [IMG, IMG2],
                "negative_prompt": "blur",
                "cfg_scale": 0.5,
            },
            {"mode": "master-text-to-video", "prompt": "a lighthouse in a storm", "duration": 5},
            {
                "mode": "master-image-to-video",
                "prompt": "slow push in",
                "duration": 10,
                "image_urls": [IMG],
            },
        ],
        "kling-2-6": [
            {
                "mode": "text-to-video",
                "prompt": "a calm seaside sunrise with waves, distant birds, and soft narration",
                "duration": 5,
                "sound": True,
                "aspect_ratio": "16:9",
                "negative_prompt": "blur, low quality",
                "cfg_scale": 0.6,
            },
            {
                "mode": "image-to-video",
                "prompt": "animate this product photo with a slow camera push "
                "and subtle ambient music",
                "duration": 10,
                "sound": True,
                "image_urls": [IMG, IMG2],
                "negative_prompt": "jitter, distortion",
                "cfg_scale": 0.4,
            },
        ],
        "wan-2-5": [
            {
                "mode": "text-to-video",
                "prompt": "a serene mountain landscape with moving clouds and gentle breeze",
                "resolution": "1080p",
                "duration": 10,
                "aspect_ratio": "16:9",
                "negative_prompt": "low quality, blurry",
                "enable_prompt_expansion": True,
            },
            {
                "mode": "image-to-video",
                "prompt": "make this picture into a smooth cinematic shot "
                "with camera slowly zooming in",
                "resolution": "720p",
                "duration": 5,
                "image_urls": ["https://example.com/ref.jpg"],
                "enable_prompt_expansion": False,
                "seed": 42,
            },
        ],
    }


@pytest.mark.parametrize(
    ("model", "inp"),
    [(model, inp) for model, inputs in _happy_inputs().items() for inp in inputs],
    ids=lambda v: v if isinstance(v, str) else v["mode"],
)
def test_documented_examples_validate(model: str, inp: dict[str, Any]) -> None:
    """Every mode of every model accepts its docs example unchanged."""
    clean, issues = validate_input(model, inp)
    assert issues == []
    assert clean == inp
    assert list(clean) == list(inp)


def test_happy_inputs_cover_every_mode() -> None:
    """The examples above exercise every mode the catalog knows."""
    for model, inputs in _happy_inputs().items():
        assert {inp["mode"] for inp in inputs} == set(_spec(model).modes)


def test_none_values_are_dropped_and_order_kept() -> None:
    """Normalized input leaves out None values and keeps the caller's key order."""
    inp = {
        "prompt": "p",
        "negative_prompt": None,
        "duration": 5,
        "mode": "text-to-video",
        "sound": False,
    }
    clean, issues = validate_input("kling-2-6", inp)
    assert issues == []
    assert list(clean) == ["prompt", "duration", "mode", "sound"]


# --- validate_input: failures name the field -----------------------------------


def _fields(model: str, inp: dict[str, Any]) -> list[str]:
    return [issue.field for issue in validate_input(model, inp)[1]]


def test_unknown_model_is_reported_on_the_model_field() -> None:
    """An unknown model names the known ones."""
    _, issues = validate_input("kling-9", {"mode": "text-to-video"})
    assert [i.field for i in issues] == ["model"]
    assert "kling-2-6" in issues[0].message


def test_kling_2_6_requires_sound() -> None:
    """sound has no default on kling-2-6: leaving it out is an error."""
    _, issues = validate_input("kling-2-6", {"mode": "text-to-video", "prompt": "p", "duration": 5})
    assert [(i.field, i.message) for i in issues] == [("input.sound", "required")]


def test_kling_2_6_prompt_over_1000_characters() -> None:
    """The message says how long the prompt is and the limit."""
    inp = {"mode": "text-to-video", "prompt": "x" * 1001, "duration": 5, "sound": False}
    _, issues = validate_input("kling-2-6", inp)
    assert [(i.field, i.message) for i in issues] == [
        ("input.prompt", "1001 characters, at most 1000 allowed")
    ]
    assert _fields("kling-2-6", {**inp, "prompt": "x" * 1000}) == []


def test_kling_2_5_prompt_limit_is_2500() -> None:
    """2500 characters pass on kling-2-5-turbo-pro; 2501 do not."""
    inp = {"mode": "text-to-video", "prompt": "x" * 2500, "duration": 5}
    assert _fields("kling-2-5-turbo-pro", inp) == []
    assert _fields("kling-2-5-turbo-pro", {**inp, "prompt": "x" * 2501}) == ["input.prompt"]


def test_empty_prompt_is_refused() -> None:
    """Every model needs at least one prompt character."""
    for model, inputs in _happy_inputs().items():
        assert _fields(model, {**inputs[0], "prompt": ""}) == ["input.prompt"]


def test_types_are_strict() -> None:
    """A string "5" is not a duration and "true" is not a boolean."""
    inp = {"mode": "text-to-video", "prompt": "p", "duration": "5", "sound": "true"}
    assert _fields("kling-2-6", inp) == ["input.duration", "input.sound"]


def test_misspelt_key_is_refused() -> None:
    """A typo such as aspect-ratio is named, not silently ignored."""
    inp = {"mode": "text-to-video", "prompt": "p", "duration": 5, "aspect-ratio": "16:9"}
    _, issues = validate_input("kling-2-5-turbo-pro", inp)
    assert [i.field for i in issues] == ["input.aspect-ratio"]
    assert "unknown key" in issues[0].message


def test_key_of_another_model_is_refused() -> None:
    """cfg_scale is a Kling input, not a Wan one; resolution is Wan's only."""
    wan = _happy_inputs()["wan-2-5"][0]
    assert _fields("wan-2-5", {**wan, "cfg_scale": 0.5}) == ["input.cfg_scale"]
    kling = _happy_inputs()["kling-2-6"][0]
    assert _fields("kling-2-6", {**kling, "resolution": "720p"}) == ["input.resolution"]


@pytest.mark.parametrize(
    ("model", "mode", "images", "message"),
    [
        ("kling-2-6", "image-to-video", [], "1 to 2 image_urls, got 0"),
        ("kling-2-6", "image-to-video", [IMG, IMG2, IMG], "1 to 2 image_urls, got 3"),
        ("kling-2-6", "text-to-video", [IMG], "no image_urls, got 1"),
        ("wan-2-5", "image-to-video", [IMG, IMG2], "exactly 1 image_urls, got 2"),
        ("kling-2-1", "standard-image-to-video", [], "exactly 1 image_urls, got 0"),
        ("kling-2-1", "pro-image-to-video", [IMG, IMG2, IMG], "1 to 2 image_urls, got 3"),
    ],
)
def test_image_count_per_mode(model: str, mode: str, images: list[str], message: str) -> None:
    """Each mode's image count is enforced, with a message saying what it takes."""
    inp: dict[str, Any] = {
        "mode": mode,
        "prompt": "p",
        "duration": 5,
        "sound": True,
        "resolution": "720p",
        "image_urls": images,
    }
    spec = _spec(model)
    inp = {k: v for k, v in inp.items() if k in spec.input_keys}
    _, issues = validate_input(model, inp)
    assert [i.field for i in issues] == ["input.image_urls"]
    assert issues[0].message.endswith(message)


def test_image_url_must_be_http() -> None:
    """Each image URL is checked and named by its index."""
    inp = {
        "mode": "image-to-video",
        "prompt": "p",
        "duration": 5,
        "sound": True,
        "image_urls": [IMG, "ftp://example.com/x.jpg"],
    }
    assert _fields("kling-2-6", inp) == ["input.image_urls[1]"]


@pytest.mark.parametrize("model", ["kling-2-6", "wan-2-5"])
def test_aspect_ratio_refused_on_image_to_video(model: str) -> None:
    """The image sets the frame: aspect_ratio is refused in image-to-video where documented."""
    inp = {**_happy_inputs()[model][1], "aspect_ratio": "16:9"}
    _, issues = validate_input(model, inp)
    assert [(i.field, i.message) for i in issues] == [
        ("input.aspect_ratio", "not accepted in mode image-to-video")
    ]


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("kling-2-6", "aspect_ratio", "4:3"),
        ("kling-2-6", "cfg_scale", 1.5),
        ("kling-2-5-turbo-pro", "cfg_scale", -0.1),
        ("wan-2-5", "resolution", "4k"),
        ("wan-2-5", "seed", -1),
        ("kling-2-1", "mode", "text-to-video"),
    ],
)
def test_out_of_range_values_name_their_field(model: str, field: str, value: object) -> None:
    """A value outside the documented set or range is reported on its own field."""
    inp = {**_happy_inputs()[model][0], field: value}
    assert _fields(model, inp) == [f"input.{field}"]


def test_accepts_and_all_input_keys() -> None:
    """accepts() knows per-mode refusals; all_input_keys() is the union of every model's keys."""
    kling = _spec("kling-2-6")
    assert accepts(kling, "text-to-video", "aspect_ratio")
    assert not accepts(kling, "image-to-video", "aspect_ratio")
    assert not accepts(kling, "text-to-video", "resolution")
    keys = all_input_keys()
    assert {"prompt", "duration", "sound", "resolution", "seed", "cfg_scale"} <= keys
    assert "aspect-ratio" not in keys
