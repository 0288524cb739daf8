"""The keys an agent holds: the secret's current key plus the ones it replaced, for their grace period.

Pure: the secret's text and the time come in as arguments. A secret that breaks a rule (bad line, same
key ID with other material, an ID that goes backwards, a key of another length) is refused and the last
good key stays in use, so traffic keeps flowing while the status says what is wrong.
"""

from __future__ import annotations

from ciphermesh.keys import KeyLine, KeyLineError, parse_secret
from ciphermesh.keys.rotation import KeyRotationError, check_successor


class KeyRing:
    """The current key and the previous ones still accepted, by key ID."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.current: KeyLine | None = None
        self.error: str | None = None
        self._previous: dict[int, tuple[KeyLine, float]] = {}

    @property
    def current_id(self) -> int | None:
        return None if self.current is None else self.current.key_id

    @property
    def keys(self) -> dict[int, KeyLine]:
        """Every key to accept traffic with: the previous ones first, so the current one wins an ID clash."""
        held = {key_id: line for key_id, (line, _) in self._previous.items()}
        if self.current is not None:
            held[self.current.key_id] = self.current
        return held

    @property
    def rotating(self) -> bool:
        return bool(self._previous)

    def update(self, secret_text: str | None, now: float) -> bool:
        """Take the secret as it is now; True if the current key changed."""
        if secret_text is None:
            if self.current is None:
                self.error = "no key secret in the store yet"
                return False
            # The store hands over no secret that is empty or not UTF-8 either: as for a deleted one,
            # keep the key and say so, or the node would look healthy with a broken secret.
            return self._refuse("the secret is missing from the store, empty or not UTF-8 text")
        try:
            line = parse_secret(secret_text)
        except KeyLineError as exc:
            return self._refuse(str(exc))
        current = self.current
        if current is None:
            self.current, self.error = line, None
            return True
        try:
            replaces = check_successor(current, line)
        except KeyRotationError as exc:
            return self._refuse(str(exc))
        if not replaces:
            self.error = None
            return False
        self._previous[current.key_id] = (current, now)
        self._previous.pop(line.key_id, None)
        self.current, self.error = line, None
        return True

    def _refuse(self, reason: str) -> bool:
        kept = "no key" if self.current is None else f"key ID {self.current.key_id}"
        self.error = f"key secret refused, keeping {kept}: {reason}"
        return False

    def expire(self, now: float) -> list[int]:
        """Drop previous keys whose grace period has passed; returns their IDs."""
        gone = [key_id for key_id, (_, since) in self._previous.items() if now - since >= self.grace_seconds]
        for key_id in gone:
            del self._previous[key_id]
        return gone

    def next_expiry(self) -> float | None:
        """When the next previous key's grace period ends (a time as given to `update`), if any."""
        return min((since + self.grace_seconds for _, since in self._previous.values()), default=None)
