"""The model catalog: what each APIXO video model accepts, how long it takes, what it costs.

Everything model-specific lives in the ``MODELS`` table at the bottom of this
module, taken from APIXO's current model pages (:mod:`.table` names the
page of every input and renders the table of docs/models.md; a test holds the two
to each other). The job loader, the simulator,
``plan``, the poll scheduler and the cost estimate all read it, so adding a
fifth model is one new :class:`ModelSpec` entry.

Input validation is a pydantic model per APIXO model (strict types, unknown
keys refused) plus per-mode rules (image count, which keys a mode takes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MODELS",
    "Clock",
    "InputIssue",
    "ModeSpec",
    "ModelSpec",
    "PriceTable",
    "all_input_keys",
    "get_model",
    "validate_input",
]

RESULT_TTL_S = 15 * 24 * 3600  # result URLs live 15 days after completion (all model pages)


@dataclass(frozen=True, slots=True)
class Clock:
    """When a task of this kind is likely done, and how to poll it (seconds, unscaled)."""

    first_poll: float
    interval: float
    typical_min: float
    typical_max: float


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """One generation mode: how many ``image_urls`` it takes and which extra keys."""

    name: str
    min_images: int = 0
    max_images: int = 0
    #: input keys this mode refuses although the model knows them (e.g. aspect_ratio on i2v)
    refuses: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InputIssue:
    """One problem with one job's input: the dotted field and the message."""

    field: str
    message: str


#: user-supplied price overrides: model -> per-second price, or model -> {variant: price}
PriceTable = Mapping[str, float | Mapping[str, float]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything apixo-batch knows about one model."""

    name: str
    input_model: type[BaseModel]
    modes: Mapping[str, ModeSpec]
    clock: Callable[[Mapping[str, Any]], Clock]
    #: which price applies to an input ("sound", "1080p", "pro", ...)
    price_variant: Callable[[Mapping[str, Any]], str]
    #: published prices per output second by variant; missing means unknown
    prices: Mapping[str, float] = field(default_factory=dict)

    @property
    def input_keys(self) -> frozenset[str]:
        return frozenset(self.input_model.model_fields)

    def price_per_second(
        self, inp: Mapping[str, Any], overrides: PriceTable | None = None
    ) -> float | None:
        """The price of one output second for this input, or None when nobody knows it."""
        variant = self.price_variant(inp)
        override = (overrides or {}).get(self.name)
        if isinstance(override, int | float):
            return float(override)
        if isinstance(override, Mapping):
            if variant in override:
                return float(override[variant])
            if "default" in override:
                return float(override["default"])
        return self.prices.get(variant)

    def cost(self, inp: Mapping[str, Any], overrides: PriceTable | None = None) -> float | None:
        """Estimated cost in USD of one task with this input, or None when unknown."""
        per_s = self.price_per_second(inp, overrides)
        if per_s is None:
            return None
        return per_s * float(inp.get("duration", 5))


# ---------------------------------------------------------------------------
# Input schemas. Strict: a YAML "5" is not a duration, an "aspect-ratio" typo is refused.

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def _tenths(value: float) -> float:
    # "0-1, step 0.1": 0.35 is refused, 0.3 (0.30000000000000004 as a float) is not.
    if abs(value * 10 - round(value * 10)) > 1e-9:
        raise ValueError("must be a multiple of 0.1 (0, 0.1, ... 1)")
    return value


Prompt = Annotated[str, Field(min_length=1)]
Duration = Literal[5, 10]
Cfg = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_tenths)]
ImageUrl = Annotated[str, Field(min_length=1, pattern=r"^https?://\S+$")]
AspectRatio = Literal["16:9", "9:16", "1:1"]


class Kling25TurboProInput(BaseModel):
    model_config = _STRICT
    mode: Literal["text-to-video", "image-to-video"]
    prompt: Annotated[str, Field(min_length=1, max_length=2500)]
    duration: Duration
    aspect_ratio: AspectRatio | None = None
    image_urls: list[ImageUrl] | None = None
    negative_prompt: Annotated[str, Field(max_length=2500)] | None = None
    cfg_scale: Cfg | None = None


class Kling21Input(BaseModel):
    model_config = _STRICT
    mode: Literal[
        "standard-image-to-video",
        "pro-image-to-video",
        "master-text-to-video",
        "master-image-to-video",
    ]
    prompt: Annotated[str, Field(min_length=1, max_length=5000)]
    duration: Duration
    #: master-text-to-video only (the other modes take the image's)
    aspect_ratio: AspectRatio | None = None
    image_urls: list[ImageUrl] | None = None
    negative_prompt: Annotated[str, Field(max_length=500)] | None = None
    cfg_scale: Cfg | None = None


class Kling26Input(BaseModel):
    model_config = _STRICT
    mode: Literal["text-to-video", "image-to-video"]
    prompt: Annotated[str, Field(min_length=1, max_length=1000)]
    duration: Duration
    sound: bool
    aspect_ratio: AspectRatio | None = None
    image_urls: list[ImageUrl] | None = None
    negative_prompt: str | None = None
    cfg_scale: Cfg | None = None


class Wan25Input(BaseModel):
    model_config = _STRICT
    mode: Literal["text-to-video", "image-to-video"]
    prompt: Annotated[str, Field(min_length=1, max_length=800)]
    duration: Duration
    resolution: Literal["720p", "1080p"]
    aspect_ratio: AspectRatio | None = None
    image_urls: list[ImageUrl] | None = None
    negative_prompt: Annotated[str, Field(max_length=500)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    enable_prompt_expansion: bool | None = None


def _by_duration(
    five: tuple[float, float], ten: tuple[float, float], first: tuple[float, float], interval: float
) -> Callable[[Mapping[str, Any]], Clock]:
    def clock(inp: Mapping[str, Any]) -> Clock:
        lo, hi = ten if inp.get("duration") == 10 else five
        first_poll = first[1] if inp.get("duration") == 10 else first[0]
        return Clock(first_poll=first_poll, interval=interval, typical_min=lo, typical_max=hi)

    return clock


def _wan_clock(inp: Mapping[str, Any]) -> Clock:
    if inp.get("resolution") == "1080p":
        return Clock(first_poll=70.0, interval=5.0, typical_min=70.0, typical_max=90.0)
    return Clock(first_poll=50.0, interval=5.0, typical_min=50.0, typical_max=70.0)


_NO_ASPECT = frozenset({"aspect_ratio"})  # image modes: the image sets the shape

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="kling-2-5-turbo-pro",
            input_model=Kling25TurboProInput,
            modes={
                "text-to-video": ModeSpec("text-to-video"),
                "image-to-video": ModeSpec("image-to-video", 1, 2, refuses=_NO_ASPECT),
            },
            # Docs: 5 s video ~30-45 s, 10 s ~45-60 s; wait 30 s then poll every 5 s.
            clock=_by_duration((30, 45), (45, 60), (30, 45), 5.0),
            price_variant=lambda inp: "default",
            prices={},  # not published in the docs: the user's price table fills it in
        ),
        ModelSpec(
            name="kling-2-1",
            input_model=Kling21Input,
            modes={
                "standard-image-to-video": ModeSpec(
                    "standard-image-to-video", 1, 1, refuses=_NO_ASPECT
                ),
                "pro-image-to-video": ModeSpec("pro-image-to-video", 1, 2, refuses=_NO_ASPECT),
                "master-text-to-video": ModeSpec("master-text-to-video"),
                "master-image-to-video": ModeSpec(
                    "master-image-to-video", 1, 1, refuses=_NO_ASPECT
                ),
            },
            # Docs: 5 s ~60-90 s, 10 s ~90-120 s; wait 60 s then poll every 5 s.
            clock=_by_duration((60, 90), (90, 120), (60, 90), 5.0),
            price_variant=lambda inp: str(inp.get("mode", "")).split("-", 1)[0],
            prices={},  # not published in the docs
        ),
        ModelSpec(
            name="kling-2-6",
            input_model=Kling26Input,
            modes={
                "text-to-video": ModeSpec("text-to-video"),
                # "Aspect ratios 1:1, 9:16, 16:9 for text-to-video": the image sets it otherwise.
                "image-to-video": ModeSpec("image-to-video", 1, 2, refuses=_NO_ASPECT),
            },
            # Docs: 5 s 50-70 s (first poll 50 s), 10 s 80-100 s (first poll 80 s), every 5-10 s.
            clock=_by_duration((50, 70), (80, 100), (50, 80), 5.0),
            price_variant=lambda inp: "sound" if inp.get("sound") else "silent",
            prices={"silent": 0.06, "sound": 0.12},
        ),
        ModelSpec(
            name="wan-2-5",
            input_model=Wan25Input,
            modes={
                "text-to-video": ModeSpec("text-to-video"),
                "image-to-video": ModeSpec("image-to-video", 1, 1, refuses=_NO_ASPECT),
            },
            # Docs: 720p ~50-70 s, 1080p ~70-90 s; wait 50 s then poll every 5 s.
            clock=_wan_clock,
            price_variant=lambda inp: str(inp.get("resolution", "720p")),
            prices={"720p": 0.08, "1080p": 0.13},
        ),
    )
}


def get_model(name: str) -> ModelSpec | None:
    """The catalog entry for ``name``, or None for a model APIXO-batch does not know."""
    return MODELS.get(name)


def all_input_keys() -> frozenset[str]:
    """Every input key some model accepts (a key outside this set is a typo)."""
    keys: set[str] = set()
    for spec in MODELS.values():
        keys |= spec.input_keys
    return frozenset(keys)


def accepts(spec: ModelSpec, mode: str | None, key: str) -> bool:
    """Whether ``key`` is a valid input key for this model and mode."""
    if key not in spec.input_keys:
        return False
    mode_spec = spec.modes.get(mode or "")
    return not (mode_spec and key in mode_spec.refuses)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (not an input of this model)"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"got {err.get('input')!r}, expected {expected}"
    if kind == "string_too_long":
        limit = err.get("ctx", {}).get("max_length")
        return f"{len(str(err.get('input', '')))} characters, at most {limit} allowed"
    return str(err.get("msg", "invalid"))


def validate_input(model: str, inp: Mapping[str, Any]) -> tuple[dict[str, Any], list[InputIssue]]:
    """Check one job's input against its model.

    Returns the normalized input (None values dropped, key order kept) and every
    problem found; the input is only usable when the list is empty. Field names
    are reported as ``input.<key>``.
    """
    spec = MODELS.get(model)
    if spec is None:
        known = ", ".join(sorted(MODELS))
        return dict(inp), [InputIssue("model", f"unknown model {model!r} (known: {known})")]
    issues: list[InputIssue] = []
    try:
        parsed = spec.input_model.model_validate(dict(inp))
    except ValidationError as exc:
        for err in exc.errors():
            issues.append(InputIssue("input." + _loc(tuple(err["loc"])), _message(err)))
        return dict(inp), issues

    clean = parsed.model_dump(exclude_none=True)
    ordered = {k: clean[k] for k in inp if k in clean}
    mode = spec.modes[str(ordered["mode"])]
    images = ordered.get("image_urls") or []
    if len(images) < mode.min_images or len(images) > mode.max_images:
        if mode.max_images == 0:
            want = "no image_urls"
        elif mode.min_images == mode.max_images:
            want = f"exactly {mode.min_images} image_urls"
        else:
            want = f"{mode.min_images} to {mode.max_images} image_urls"
        issues.append(
            InputIssue("input.image_urls", f"mode {mode.name} takes {want}, got {len(images)}")
        )
    for key in sorted(mode.refuses & ordered.keys()):
        issues.append(InputIssue(f"input.{key}", f"not accepted in mode {mode.name}"))
    return ordered, issues
