"""The records in the store, with JSON (de)serialisation and validation.

JSON field names follow Cilium where a user may know them (`nodeIP`, `podCIDRs`, the annotation
`network.cilium.io/wg-pub-key`). Construction validates, so a record that exists is a valid one;
bad input raises `RecordError` with one line naming the field.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from ciphermesh.store.errors import RecordError

WG_PUB_KEY_ANNOTATION = "network.cilium.io/wg-pub-key"
SECRET_NAMESPACE = "kube-system"
DEFAULT_SECRET_NAME = "cilium-ipsec-keys"
IPAM_ERROR_PREFIX = "IPAM: "

AgentState = Literal["starting", "ready", "degraded", "stopping"]
AGENT_STATES: tuple[str, ...] = get_args(AgentState)

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_BOOT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_NAME = 253
_MAX_ERRORS = 64
_MAX_ERROR_LEN = 1024

JSONValue = Any


def check_name(what: str, name: object) -> str:
    """A DNS-1123 subdomain (lowercase, digits, '-', '.'), as Kubernetes object names are."""
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _DNS_SUBDOMAIN.fullmatch(name):
        raise RecordError(f"{what} {name!r} is not a valid name (lowercase letters, digits, '-', '.')")
    return name


def _ip(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} {value!r} is not an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise RecordError(f"{what} {value!r} is not an IP address") from None


def _cidr(what: str, value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise RecordError(f"{what} {value!r} is not a CIDR")
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        reason = "has host bits set" if "host bits" in str(exc) else "is not a CIDR"
        raise RecordError(f"{what} {value!r} {reason}") from None


def _wg_key(value: object) -> str:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise RecordError(f"annotation {WG_PUB_KEY_ANNOTATION} is not a base64 32-byte WireGuard key")
    return cast(str, value)


def _endpoint(value: object) -> str:
    """`IP:port` (IPv6 in brackets)."""
    if isinstance(value, str) and ":" in value:
        host, _, port = value.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if port.isdigit() and 0 < int(port) < 65536:
            try:
                address = ipaddress.ip_address(bare)
            except ValueError:
                pass
            else:
                if address.version == 4 or host.startswith("["):
                    return value
    raise RecordError(f"healthEndpoint {value!r} is not IP:port")


def _json_object(what: str, value: object) -> dict[str, JSONValue]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise RecordError(f"{what} must be an object with string keys")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise RecordError(f"{what} is not JSON-serialisable") from None
    return dict(value)


def _str_list(what: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"{what} must be a list of strings")
    return tuple(value)


def _load(what: str, data: str | bytes) -> dict[str, JSONValue]:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RecordError(f"{what} record is not JSON") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{what} record is not a JSON object")
    return raw


def _dump(obj: Mapping[str, JSONValue]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Node:
    """One node as its agent publishes it; `podCIDRs` and `IPAM: ` errors are the operator's."""

    name: str
    node_ip: str
    boot_id: str
    router_ip: str | None = None
    pod_cidrs: tuple[str, ...] = ()
    key_id: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    health_endpoint: str | None = None
    agent: AgentState = "starting"
    errors: tuple[str, ...] = ()
    encryption: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("node name", self.name)
        object.__setattr__(self, "node_ip", _ip("nodeIP", self.node_ip))
        if not isinstance(self.boot_id, str) or not _BOOT_ID.fullmatch(self.boot_id):
            raise RecordError(f"bootID {self.boot_id!r} is not 1..128 letters, digits or ._:-")
        if self.router_ip is not None:
            object.__setattr__(self, "router_ip", _ip("routerIP", self.router_ip))
        cidrs = _str_list("podCIDRs", self.pod_cidrs)
        versions = [_cidr("podCIDR", c).version for c in cidrs]
        if len(set(versions)) != len(versions):
            raise RecordError("podCIDRs may hold at most one CIDR per IP family")
        object.__setattr__(self, "pod_cidrs", tuple(str(_cidr("podCIDR", c)) for c in cidrs))
        if self.key_id is not None and (
            not isinstance(self.key_id, int) or isinstance(self.key_id, bool) or not 1 <= self.key_id <= 15
        ):
            raise RecordError(f"keyID {self.key_id!r} is not an IPsec key ID 1..15")
        annotations = _json_object("annotations", self.annotations)
        if not all(isinstance(v, str) for v in annotations.values()):
            raise RecordError("annotations must map strings to strings")
        if WG_PUB_KEY_ANNOTATION in annotations:
            _wg_key(annotations[WG_PUB_KEY_ANNOTATION])
        object.__setattr__(self, "annotations", annotations)
        if self.health_endpoint is not None:
            _endpoint(self.health_endpoint)
        if self.agent not in AGENT_STATES:
            raise RecordError(f"agent state {self.agent!r} is not one of {', '.join(AGENT_STATES)}")
        errors = _str_list("errors", self.errors)
        if len(errors) > _MAX_ERRORS or any(len(e) > _MAX_ERROR_LEN or "\n" in e for e in errors):
            raise RecordError(f"errors must be at most {_MAX_ERRORS} one-line messages")
        object.__setattr__(self, "errors", errors)
        object.__setattr__(self, "encryption", _json_object("encryption", self.encryption))

    @property
    def wg_pub_key(self) -> str | None:
        return self.annotations.get(WG_PUB_KEY_ANNOTATION)

    @property
    def ipam_error(self) -> str | None:
        """The operator's IPAM error on this node, if any."""
        return next((e for e in self.errors if e.startswith(IPAM_ERROR_PREFIX)), None)

    def with_ipam_error(self, message: str | None) -> Node:
        """This node with its IPAM error replaced (None clears it); `message` starts with 'IPAM: '."""
        if message is not None and not message.startswith(IPAM_ERROR_PREFIX):
            raise RecordError(f"an IPAM error must start with {IPAM_ERROR_PREFIX!r}")
        kept = tuple(e for e in self.errors if not e.startswith(IPAM_ERROR_PREFIX))
        return replace(self, errors=(*kept, message) if message is not None else kept)

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "name": self.name,
            "nodeIP": self.node_ip,
            "routerIP": self.router_ip,
            "podCIDRs": list(self.pod_cidrs),
            "bootID": self.boot_id,
            "keyID": self.key_id,
            "annotations": dict(self.annotations),
            "healthEndpoint": self.health_endpoint,
            "agent": self.agent,
            "errors": list(self.errors),
            "encryption": dict(self.encryption),
        }

    def to_json(self) -> str:
        return _dump(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, JSONValue]) -> Node:
        """Unknown fields are ignored so that a newer writer's records stay readable."""
        for required in ("name", "nodeIP", "bootID"):
            if required not in raw:
                raise RecordError(f"node record has no {required}")
        return cls(
            name=raw["name"],
            node_ip=raw["nodeIP"],
            boot_id=raw["bootID"],
            router_ip=raw.get("routerIP"),
            pod_cidrs=raw.get("podCIDRs") or (),
            key_id=raw.get("keyID"),
            annotations=raw.get("annotations") or {},
            health_endpoint=raw.get("healthEndpoint"),
            agent=raw.get("agent", "starting"),
            errors=raw.get("errors") or (),
            encryption=raw.get("encryption") or {},
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> Node:
        return cls.from_dict(_load("node", data))


@dataclass(frozen=True)
class KeySecret:
    """The IPsec key secret: its `keys` text exactly as the secret holds it (never in repr)."""

    keys: str = field(repr=False)
    name: str = DEFAULT_SECRET_NAME
    namespace: str = SECRET_NAMESPACE

    def __post_init__(self) -> None:
        check_name("secret name", self.name)
        check_name("secret namespace", self.namespace)
        if not isinstance(self.keys, str) or not self.keys.strip():
            raise RecordError(f"secret {self.namespace}/{self.name} has an empty keys field")

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str, namespace: str) -> KeySecret:
        """The secret as a backend holds it (etcd's value, a Secret's `data.keys`), which must be text."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise RecordError(f"secret {namespace}/{name} is not UTF-8 text") from None
        return cls(keys=text, name=name, namespace=namespace)


@dataclass(frozen=True)
class OperatorRecord:
    """A running operator, published under its lease so that `status` can tell it is alive."""

    id: str
    pid: int
    pool: tuple[str, ...]
    mask_size: int

    def __post_init__(self) -> None:
        check_name("operator id", self.id)
        object.__setattr__(self, "pool", _str_list("clusterPoolIPv4PodCIDRList", self.pool))
        for what, value in (("pid", self.pid), ("clusterPoolIPv4MaskSize", self.mask_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise RecordError(f"operator {what} {value!r} is not an integer")

    def to_json(self) -> str:
        return _dump(
            {
                "id": self.id,
                "pid": self.pid,
                "clusterPoolIPv4PodCIDRList": list(self.pool),
                "clusterPoolIPv4MaskSize": self.mask_size,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> OperatorRecord:
        raw = _load("operator", data)
        for required in ("id", "pid", "clusterPoolIPv4PodCIDRList", "clusterPoolIPv4MaskSize"):
            if required not in raw:
                raise RecordError(f"operator record has no {required}")
        return cls(
            id=raw["id"],
            pid=raw["pid"],
            pool=raw["clusterPoolIPv4PodCIDRList"],
            mask_size=raw["clusterPoolIPv4MaskSize"],
        )
