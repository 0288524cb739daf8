"""Cilium's rules for moving from one key to the next: key IDs that wrap 15 -> 1, what a successor must be."""

from __future__ import annotations

from ciphermesh.keys.line import MAX_KEY_ID, AeadKey, KeyLine

HALF_KEY_SPACE = 7


class KeyRotationError(ValueError):
    """A key that may not follow the current one; the message never holds key material."""


def older_key_id(a: int, b: int) -> int:
    """The older of two key IDs 1..15 that may have wrapped (15 -> 1): the SPI Cilium sends with."""
    if a == b:
        return a
    low, high = sorted((a, b))
    # IDs advance one at a time, so a gap over half the space means the lower ID is the newer one.
    return high if high - low > HALF_KEY_SPACE else low


def backwards_reason(new_id: int, current_id: int) -> str:
    """Why `new_id` may not follow `current_id`, with the wrap order and the IDs that may."""
    ahead = [(current_id + step - 1) % MAX_KEY_ID + 1 for step in range(1, HALF_KEY_SPACE + 1)]
    return (f"key ID {new_id} goes backwards from {current_id}: IDs count up to {MAX_KEY_ID} and wrap to 1, "
            f"so one more than {HALF_KEY_SPACE} ahead is behind; the next is {ahead[0]} "
            f"(any of {', '.join(map(str, ahead))})")


def _key_lengths(line: KeyLine) -> tuple[int, ...]:
    material = line.material
    if isinstance(material, AeadKey):
        return (len(material.key),)
    return (len(material.auth_key), len(material.enc_key))


def check_successor(current: KeyLine, new: KeyLine) -> bool:
    """True if `new` replaces `current`, False if it is the same key; KeyRotationError if it may not."""
    if new.key_id == current.key_id:
        if new.material != current.material:
            # Cilium 1.17 refuses this too: peers could not tell the two keys apart by SPI.
            raise KeyRotationError("changing IPsec keys requires incrementing the key id")
        return False
    if older_key_id(current.key_id, new.key_id) != current.key_id:
        raise KeyRotationError(backwards_reason(new.key_id, current.key_id))
    if _key_lengths(new) != _key_lengths(current):
        raise KeyRotationError("invalid key rotation: key length must not change")
    return True
