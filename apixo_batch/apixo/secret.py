"""The API key, held in one object that never prints it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ApiKey", "KeySpec", "fingerprint", "parse_keys", "redact", "unique_keys"]

_MASK = "***"


class ApiKey:
    """An API key. ``str``, ``repr`` and formatting show a mask; only ``reveal`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ValueError("the API key is empty")
        self._value = value

    def reveal(self) -> str:
        """The key itself: only for the Authorization header."""
        return self._value

    def bearer(self) -> str:
        return f"Bearer {self._value}"

    def __repr__(self) -> str:
        return f"ApiKey({_MASK})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("ApiKey cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("ApiKey", self._value))


def redact(text: str, key: ApiKey | Sequence[ApiKey] | None) -> str:
    """``text`` with every occurrence of the key (or of each of the keys) masked."""
    if key is None:
        return text
    if isinstance(key, ApiKey):
        return text.replace(key.reveal(), _MASK)
    for one in key:
        text = text.replace(one.reveal(), _MASK)
    return text


def fingerprint(key: ApiKey) -> str:
    """How a key is named wherever it is shown or kept: the first 8 hex digits of its
    SHA-256 (enough to tell a team's keys apart; nothing to recover the key from)."""
    return hashlib.sha256(key.reveal().encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key of a pool, with the limits given for it (None: the run's options)."""

    key: ApiKey
    max_concurrent: int | None = None
    rpm: int | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


_LIMITS = ("max_concurrent", "rpm")


def parse_keys(text: str, source: str) -> list[KeySpec]:
    """The keys of a key file: one per line, ``#`` comments and blank lines skipped, each
    optionally followed by ``max_concurrent=N rpm=N``. Raises ValueError naming the line
    (never the key) for anything else."""
    keys: list[KeySpec] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        first, *rest = line.split()
        limits: dict[str, int] = {}
        for item in rest:
            name, sep, value = item.partition("=")
            if not sep or name not in _LIMITS:
                raise ValueError(
                    f"{source} line {number}: unknown setting {name!r} after the key "
                    "(max_concurrent=N, rpm=N)"
                )
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{source} line {number}: {name} must be a whole number >= 1")
            limits[name] = int(value)
        keys.append(KeySpec(ApiKey(first), limits.get("max_concurrent"), limits.get("rpm")))
    return keys


def unique_keys(keys: list[KeySpec]) -> list[KeySpec]:
    """``keys`` with a key given twice kept once (the first, with its limits)."""
    seen: set[ApiKey] = set()
    kept = []
    for spec in keys:
        if spec.key not in seen:
            seen.add(spec.key)
            kept.append(spec)
    return kept
