"""The IPsec key secret in the store: show it, set a new line, rotate; every write is compare-and-swap."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ciphermesh.keys import (
    KeyLine,
    KeyLineError,
    KeyRotationError,
    backwards_reason,
    check_successor,
    older_key_id,
    parse_secret,
    successor_line,
)
from ciphermesh.store.base import Revision, Versioned
from ciphermesh.store.model import KeySecret
from ciphermesh.store.store import Store


class NoKeySecretError(LookupError):
    """The store holds no key secret of that name."""


@dataclass(frozen=True)
class SetKey:
    """What `set_key` did: the line asked for, and whether the store changed (False: it held that key)."""

    line: KeyLine
    changed: bool


@dataclass(frozen=True)
class CurrentKey:
    """The secret as stored, its parsed (last) line, and the revision to write over."""

    text: str
    line: KeyLine
    revision: Revision


def current_key(store: Store, secret_name: str) -> CurrentKey:
    """The stored secret; NoKeySecretError if absent, KeyLineError if it does not parse."""
    stored: Versioned[KeySecret] | None = store.get_key_secret(name=secret_name)
    if stored is None:
        raise NoKeySecretError(f"no secret kube-system/{secret_name} in the store")
    return CurrentKey(stored.value.keys, parse_secret(stored.value.keys), stored.revision)


def set_key(store: Store, secret_name: str, line_text: str) -> SetKey:
    """Store `line_text` if it is valid and may follow the current key; otherwise raise and change nothing.

    When the stored secret is absent or broken (as `kubectl edit` can leave it), the new line is checked
    against the key IDs the nodes publish instead, and written over whatever is there.
    """
    new = parse_secret(line_text)
    stored = store.get_key_secret(name=secret_name)
    try:
        current = None if stored is None else parse_secret(stored.value.keys)
    except KeyLineError:
        current = None
    if current is not None and stored is not None:
        changed = check_successor(current, new)
        if changed:
            store.put_key_secret(line_text.strip(), name=secret_name, expect=stored.revision)
        return SetKey(new, changed)
    for versioned in store.list_nodes():
        node, in_use = versioned.value.name, versioned.value.key_id
        if in_use is None:
            continue
        if new.key_id == in_use:
            raise KeyRotationError(f"key ID {in_use} is in use by {node}; a new key needs a new key ID")
        if older_key_id(in_use, new.key_id) != in_use:
            raise KeyRotationError(f"{backwards_reason(new.key_id, in_use)} ({in_use} is used by {node})")
    store.put_key_secret(line_text.strip(), name=secret_name)
    return SetKey(new, True)


def rotate_key(
    store: Store, secret_name: str, randbytes: Callable[[int], bytes] = secrets.token_bytes
) -> KeyLine:
    """Write the successor of the current key (next ID, fresh key of the same algorithm and size)."""
    current = current_key(store, secret_name)
    new = successor_line(current.line, randbytes)
    store.put_key_secret(new.format(reveal=True), name=secret_name, expect=current.revision)
    return new
