"""Every knob of the simulator, with defaults that behave like the real APIXO.

Durations that describe the *service* (generation times, result expiry,
callback timeout and retry delays) are given in APIXO seconds and multiplied
by ``time_scale``. Durations that describe the *network or the account*
(``rpm_window_s``, ``slow_delay_s``, ``duration_override_s``, ``outages``,
``unavailable``) are real seconds: a client's HTTP timeout and its request
bucket are not scaled either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..catalog.failcodes import FAIL_CODES
from ..catalog.models import get_model

__all__ = ["DEFAULT_API_KEY", "FORBIDDEN_ROUTES", "SimConfig"]

#: the routes ``forbidden`` may name
FORBIDDEN_ROUTES = frozenset({"submit", "status", "balance"})

DEFAULT_API_KEY = "sim-key"

#: a probability
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SimKey(BaseModel):
    """One more key the simulator serves: an account of its own (limits, balance, tasks).

    A limit left out is the main account's (``rpm_limit``, ``concurrency_limit``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    key: str = Field(min_length=1, repr=False)
    balance: float = Field(default=1000.0, ge=0.0)
    rpm_limit: int | None = Field(default=None, ge=1)
    concurrency_limit: int | None = Field(default=None, ge=1)


class SimConfig(BaseModel):
    """Settings of one simulated APIXO account and service (see ``docs/simulate.md``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- account -----------------------------------------------------------------------
    #: the one key accepted; None means $APIXO_API_KEY, else "sim-key"
    api_key: str | None = Field(default=None, repr=False)
    #: more keys, each an account of its own (a key pool's campaign); the main key's
    #: account keeps the settings below
    keys: list[SimKey] = Field(default_factory=list)
    #: starting balance in USD; each accepted submit draws down its price
    balance: float = Field(default=1000.0, ge=0.0)
    #: per-output-second price for models whose price the docs do not publish
    #: (``{"kling-2-1": 0.09}``; ``"default"`` covers every other unknown one);
    #: an entry for a model with a published price overrides it
    prices: dict[str, float] = Field(default_factory=lambda: {"default": 0.07})
    #: after this many accepted submits, every submit answers "Insufficient credits"
    insufficient_after: int | None = Field(default=None, ge=0)

    # --- time and randomness -----------------------------------------------------------
    time_scale: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    seed: int = 0
    #: generation takes uniform(lo, hi) real seconds, ignoring model clocks and time_scale
    duration_override_s: tuple[float, float] | None = None

    # --- limits (per key) --------------------------------------------------------------
    #: requests per window (every API route shares it unless ``status_rpm_limit`` is set)
    rpm_limit: int = Field(default=10_000, ge=1)
    rpm_window_s: float = Field(default=60.0, gt=0.0)
    #: "sliding": any rpm_window_s seconds; "fixed": windows aligned on multiples of it,
    #: each starting empty (a burst at a boundary may see two windows' worth)
    rpm_window: Literal["sliding", "fixed"] = "sliding"
    #: refused requests count against the window too: a client that keeps asking while
    #: refused keeps the window full
    rpm_count_refused: bool = False
    #: the Retry-After of a rate 429: "truthful" (when the window has room again),
    #: "absent", or "short" (always 1 s)
    retry_after: Literal["truthful", "absent", "short"] = "truthful"
    #: status polls get their own window of this many requests (submits and balance
    #: checks keep ``rpm_limit``); None: one window for every route
    status_rpm_limit: int | None = Field(default=None, ge=1)
    #: tasks pending or processing at once; a submit over it gets 429
    concurrency_limit: int = Field(default=1_000, ge=1)
    #: the message of that 429 (gateways may not name concurrency: "Too Many Requests")
    concurrency_message: str = "Concurrent task limit exceeded"

    # --- task outcomes -----------------------------------------------------------------
    #: a prompt containing one of these (case-insensitive) ends failed
    fail_words: list[str] = Field(default_factory=lambda: ["forbidden-word", "nsfw"])
    #: an image URL containing this ends failed with the model's image code
    #: (kling-2-6: ImageFormatIncorrect; the others: INVALID_IMAGE_URL)
    bad_image_pattern: str = "unreachable"
    #: a prompt containing a key ends failed with that failCode (any documented one,
    #: see catalog/failcodes.py), e.g. ``{"too-long": "PromptLengthExceeded"}``
    fail_codes: dict[str, str] = Field(default_factory=dict)
    #: tasks that end failed with one of their model's transient codes (kling-2-6:
    #: RateLimited or Timeout), whatever their input
    task_fail_rate: Rate = 0.0

    # --- API faults (submit, status, balance; never /_sim/*) ---------------------------
    error_rate_500: Rate = 0.0
    error_rate_502: Rate = 0.0
    error_rate_504: Rate = 0.0
    #: 503 "Service temporarily unavailable" (nothing is created)
    error_rate_503: Rate = 0.0
    #: (start, length) in real seconds from the simulator's start: meanwhile every API
    #: request answers 503 (a model or the service temporarily unavailable)
    unavailable: list[tuple[float, float]] = Field(default_factory=list)
    #: routes this key has no access to: answered 403 (after the key check).
    #: "submit", "status", "balance", or one of them with a model ("submit/kling-2-6")
    forbidden: list[str] = Field(default_factory=list)
    #: requests whose connection is reset without an answer (no task is created)
    reset_rate: Rate = 0.0
    #: submits that create the task but whose answer is lost to a reset
    submit_lost_rate: Rate = 0.0
    #: network outages: (start, length) in real seconds from the simulator's start;
    #: meanwhile every connection is refused (API, files and /_sim/* alike) and open
    #: ones are closed, as when a host or its network is gone
    outages: list[tuple[float, float]] = Field(default_factory=list)
    slow_rate: Rate = 0.0
    #: real seconds a slow answer waits before being processed
    slow_delay_s: float = Field(default=5.0, ge=0.0)

    # --- result files ------------------------------------------------------------------
    file_size: int = Field(default=256 * 1024, ge=64)
    results_per_task: int = Field(default=1, ge=1, le=16)
    #: responses that promise the full Content-Length but close after part of the body
    truncate_rate: Rate = 0.0
    #: file requests answered with a 5xx
    file_error_rate: Rate = 0.0
    #: result URLs answer 410 this long after completion (scaled)
    expiry_s: float = Field(default=15 * 24 * 3600.0, gt=0.0)

    # --- callbacks ---------------------------------------------------------------------
    callback_drop_rate: Rate = 0.0
    callback_duplicate_rate: Rate = 0.0
    #: extra wait before a callback is sent (scaled)
    callback_delay_s: float = Field(default=0.0, ge=0.0)
    #: the receiver must answer HTTP 200 within this (scaled; never below 0.2 real seconds)
    callback_timeout_s: float = Field(default=30.0, gt=0.0)
    callback_retries: int = Field(default=3, ge=0)
    #: retry k (from 1) waits the k-th delay (the last one past the list's end), scaled.
    #: The webhooks page: "up to 3 times with increasing delays", the first after 30 s;
    #: the later two are not published, doubling is our assumption
    callback_retry_delays_s: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [30.0, 60.0, 120.0], min_length=1
    )
    callback_concurrency: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        fault_sum = self.reset_rate + self.error_rate_500 + self.error_rate_502
        if fault_sum + self.error_rate_503 + self.error_rate_504 > 1.0:
            raise ValueError("reset_rate + error_rate_500/502/503/504 must not exceed 1")
        unknown = sorted(code for code in self.fail_codes.values() if code not in FAIL_CODES)
        if unknown:
            raise ValueError(
                f"fail_codes: {', '.join(unknown)} is not a documented fail code "
                "(see docs/simulate.md)"
            )
        for route in self.forbidden:
            name, _, model = route.partition("/")
            if name not in FORBIDDEN_ROUTES or (model and get_model(model) is None):
                raise ValueError(
                    f"forbidden: {route!r} is not submit, status or balance, "
                    "optionally /<model> (e.g. submit/kling-2-6)"
                )
        if self.duration_override_s is not None:
            lo, hi = self.duration_override_s
            if not 0.0 <= lo <= hi:
                raise ValueError("duration_override_s must be (lo, hi) with 0 <= lo <= hi")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SimConfig:
        """Load settings from a YAML mapping; ``overrides`` win over the file."""
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the simulator config must be a YAML mapping")
        return cls.model_validate({**raw, **overrides})

    def resolved_api_key(self) -> str:
        """The key the simulator accepts: the configured one, $APIXO_API_KEY, or sim-key."""
        if self.api_key:
            return self.api_key
        return os.environ.get("APIXO_API_KEY", "").strip() or DEFAULT_API_KEY

    def scaled(self, seconds: float) -> float:
        """Real seconds for a duration of the simulated service."""
        return seconds * self.time_scale

    def callback_retry_delay(self, retry: int) -> float:
        """Unscaled seconds before callback retry number ``retry`` (from 1)."""
        delays = self.callback_retry_delays_s
        return delays[min(retry, len(delays)) - 1]

    def forbids(self, route: str, model: str | None) -> bool:
        """Whether this key has no access to ``route`` (for ``model``, if it names one)."""
        return any(
            entry == route or (model is not None and entry == f"{route}/{model}")
            for entry in self.forbidden
        )
