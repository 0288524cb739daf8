"""Key material that stays redacted until a caller explicitly asks for the bytes."""

from __future__ import annotations

import hmac
from typing import NoReturn, final


@final
class SecretBytes:
    """Immutable key bytes whose repr, str and format never show the value; `reveal()` does."""

    __slots__ = ("_value",)
    _value: bytes

    def __init__(self, value: bytes) -> None:
        object.__setattr__(self, "_value", bytes(value))

    def reveal(self) -> bytes:
        """Return the key bytes; call only where the bytes are needed or the user asked to see them."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        # Constant time, so comparing a guessed key against a real one leaks no prefix length.
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((SecretBytes, self._value))

    def __repr__(self) -> str:
        return f"<redacted {len(self._value)} bytes>"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        # Any format spec (e.g. "x") must still not reveal the value.
        return repr(self)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SecretBytes is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("SecretBytes is immutable")

    # Immutable, so copies may share it; dataclasses.asdict() deep-copies every field.
    def __copy__(self) -> SecretBytes:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> SecretBytes:
        return self
