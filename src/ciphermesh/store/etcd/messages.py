"""The etcd v3 JSON gateway's data, as the client hands it out: errors, key-values, leases, watch events,
and the compare/operation parts of a transaction."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal


class EtcdError(Exception):
    """Any failure talking to etcd; the message is one line fit for a user."""


class EtcdUnavailableError(EtcdError):
    """etcd cannot be reached or cannot serve now (down, restarting, no leader); retrying may help."""


class EtcdRequestError(EtcdError):
    """etcd rejected a request (bad argument, too large, ...); retrying the same request will not help."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class LeaseNotFoundError(EtcdError):
    """The lease expired or was revoked."""


class WatchCompactedError(EtcdError):
    """The revision a watch had to resume from was compacted away; re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd compacted the history up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


CompareTarget = Literal["MOD", "CREATE", "VERSION", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_COMPARE_FIELD = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version", "LEASE": "lease"}


@dataclass(frozen=True)
class Compare:
    key: bytes
    target: CompareTarget
    value: int | bytes
    result: CompareResult = "EQUAL"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": b64(self.key), "target": self.target, "result": self.result}
        if self.target == "VALUE":
            if not isinstance(self.value, bytes):
                raise TypeError("a VALUE comparison needs bytes")
            out["value"] = b64(self.value)
        else:
            out[_COMPARE_FIELD[self.target]] = str(int(self.value))
        return out


def mod_revision_is(key: bytes, revision: int) -> Compare:
    """The key was last modified at `revision` (0: the key does not exist)."""
    return Compare(key, "MOD", revision)


def create_revision_is(key: bytes, revision: int) -> Compare:
    """The key was created at `revision`; with 0, the key does not exist."""
    return Compare(key, "CREATE", revision)


def key_missing(key: bytes) -> Compare:
    return create_revision_is(key, 0)


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": range_body(self.key, self.range_end)}


@dataclass(frozen=True)
class Get:
    key: bytes
    range_end: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {"request_range": range_body(self.key, self.range_end)}


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]
    """The key-values of each `Get` in the branch that ran, in order."""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes a range cover every key starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def range_body(key: bytes, range_end: bytes | None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return body
