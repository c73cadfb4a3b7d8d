"""The API key, held in one object that never prints it."""

from __future__ import annotations

__all__ = ["ApiKey", "redact"]

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


def redact(text: str, key: ApiKey | None) -> str:
    """``text`` with every occurrence of the key replaced by a mask."""
    if key is None:
        return text
    return text.replace(key.reveal(), _MASK)
