"""How the etcd backend lays out, encodes and reads its records.

Key layout (`<cluster>` is the lab's or the cluster's name, a DNS-1123 name):

    /ciphermesh/<cluster>/nodes/<node>                Node JSON (pod CIDRs included), under the agent's lease
    /ciphermesh/<cluster>/secrets/<namespace>/<name>  the key secret's `keys` text, verbatim
    /ciphermesh/<cluster>/operators/<id>              OperatorRecord JSON, under the operator's lease
    /ciphermesh/<cluster>/operator-leader             the leading operator's id, under its lease

A revision is a key's `mod_revision` as decimal text.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from ciphermesh.store.base import Expect, Precondition, Revision, Versioned
from ciphermesh.store.errors import RecordError, StoreError, StoreUnavailableError
from ciphermesh.store.etcd.messages import (
    Compare,
    EtcdError,
    EtcdUnavailableError,
    KeyValue,
    key_missing,
    mod_revision_is,
)
from ciphermesh.store.model import KeySecret, check_name

T = TypeVar("T")
log = logging.getLogger(__name__)

ROOT = "/ciphermesh"


class KeyLayout:
    """The keys of one cluster's records."""

    def __init__(self, cluster: str) -> None:
        self.root = f"{ROOT}/{check_name('cluster name', cluster)}/".encode()
        self.nodes = self.root + b"nodes/"
        self.operators = self.root + b"operators/"
        self.leader = self.root + b"operator-leader"

    def node(self, name: str) -> bytes:
        return self.nodes + check_name("node name", name).encode()

    def secret(self, name: str, namespace: str) -> bytes:
        path = f"secrets/{check_name('namespace', namespace)}/{check_name('secret', name)}"
        return self.root + path.encode()

    def operator(self, operator_id: str) -> bytes:
        return self.operators + check_name("operator id", operator_id).encode()


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """etcd's typed errors become the store's, with the same one-line message."""
    try:
        yield
    except EtcdUnavailableError as exc:
        raise StoreUnavailableError(str(exc)) from None
    except EtcdError as exc:
        raise StoreError(str(exc)) from None


def revision(mod_revision: int) -> Revision:
    return Revision(str(mod_revision))


def compare(key: bytes, expect: Precondition) -> list[Compare]:
    """The transaction comparisons that say `expect` holds for `key`."""
    if expect is Expect.ANY:
        return []
    if expect is Expect.ABSENT:
        return [key_missing(key)]
    # A token that is not one of ours can match no record: the write must fail, not go unconditional.
    return [mod_revision_is(key, int(expect) if expect.isdigit() and int(expect) > 0 else -1)]


def secret_parser(name: str, namespace: str) -> Callable[[bytes], KeySecret]:
    return functools.partial(KeySecret.from_bytes, name=name, namespace=namespace)


def parse_kv(kv: KeyValue, parse: Callable[[bytes], T]) -> T | None:
    """A record, or None (and a log line) if the stored bytes are not a valid record."""
    try:
        return parse(kv.value)
    except RecordError as exc:
        log.warning("ignoring %s: %s", kv.key.decode(errors="replace"), exc)
        return None


def versioned(kv: KeyValue, parse: Callable[[bytes], T]) -> Versioned[T] | None:
    value = parse_kv(kv, parse)
    return Versioned(value, revision(kv.mod_revision)) if value is not None else None


def versioned_all(kvs: tuple[KeyValue, ...], parse: Callable[[bytes], T]) -> list[Versioned[T]]:
    return [v for kv in kvs if (v := versioned(kv, parse)) is not None]
