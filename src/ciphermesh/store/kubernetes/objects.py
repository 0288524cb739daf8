"""How the Kubernetes backend maps its records onto API objects, as Cilium has them.

- A node is a `CiliumNode` (`cilium.io/v2`, cluster-scoped, named after the node): `spec.addresses`
  (`InternalIP` = node IP, `CiliumInternalIP` = router IP), `spec.ipam.podCIDRs`, `spec.encryption.key`
  (0 = none), `spec.bootid`, the annotation `network.cilium.io/wg-pub-key`. What Cilium has no field for
  is in annotations under `ciphermesh.io/`: `agent` (state), `errors` and `encryption` (JSON) and
  `health-endpoint`. A revision is the object's `metadata.resourceVersion`.
- A node's liveness is a `coordination.k8s.io/v1` Lease `kube-node-lease/ciphermesh-<node>` renewed by
  its agent; a node whose Lease is gone or older than its `leaseDurationSeconds` is not listed.
- The key secret is the Secret `<namespace>/<name>` (default `kube-system/cilium-ipsec-keys`), field `keys`.
- An operator is a Lease `kube-system/ciphermesh-operator-<id>` carrying its record in an annotation;
  the leader holds the Lease `kube-system/ciphermesh-operator` (leader election as client-go does it).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from typing import Any

from ciphermesh.store.base import Revision
from ciphermesh.store.errors import RecordError
from ciphermesh.store.kubernetes.client import JSONObject
from ciphermesh.store.model import KeySecret, Node

CILIUM_NODES = "/apis/cilium.io/v2/ciliumnodes"
NODES = "/api/v1/nodes"
NODE_LEASE_NAMESPACE = "kube-node-lease"
OPERATOR_NAMESPACE = "kube-system"
NODE_LEASE_PREFIX = "ciphermesh-"
OPERATOR_LEASE_PREFIX = "ciphermesh-operator-"
LEADER_LEASE = "ciphermesh-operator"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
OPERATOR_ANNOTATION = "ciphermesh.io/operator"

_OWN = "ciphermesh.io/"
_AGENT = _OWN + "agent"
_ERRORS = _OWN + "errors"
_ENCRYPTION = _OWN + "encryption"
_HEALTH = _OWN + "health-endpoint"


def leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def secrets(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets"


def revision_of(obj: JSONObject) -> Revision:
    return Revision(str(obj["metadata"]["resourceVersion"]))


def name_of(obj: JSONObject) -> str:
    return str(obj["metadata"]["name"])


# nodes


def cilium_node(node: Node, base: JSONObject | None = None) -> JSONObject:
    """`node` as a CiliumNode; fields of `base` (the stored object) that ciphermesh does not own are kept."""
    obj: JSONObject = json.loads(json.dumps(base)) if base is not None else {}
    obj["apiVersion"], obj["kind"] = "cilium.io/v2", "CiliumNode"
    metadata = obj.setdefault("metadata", {})
    metadata["name"] = node.name
    # The record is the whole truth about its annotations, as it is about every field it has.
    annotations = dict(node.annotations)
    annotations[_AGENT] = node.agent
    if node.errors:
        annotations[_ERRORS] = json.dumps(list(node.errors))
    if node.encryption:
        annotations[_ENCRYPTION] = json.dumps(dict(node.encryption), sort_keys=True)
    if node.health_endpoint is not None:
        annotations[_HEALTH] = node.health_endpoint
    metadata["annotations"] = annotations
    spec = obj.setdefault("spec", {})
    addresses = [{"type": "InternalIP", "ip": node.node_ip}]
    if node.router_ip is not None:
        addresses.append({"type": "CiliumInternalIP", "ip": node.router_ip})
    others = [
        a for a in spec.get("addresses") or [] if a.get("type") not in ("InternalIP", "CiliumInternalIP")
    ]
    spec["addresses"] = addresses + others
    spec.setdefault("ipam", {})["podCIDRs"] = list(node.pod_cidrs)
    spec.setdefault("encryption", {})["key"] = node.key_id or 0
    spec["bootid"] = node.boot_id
    return obj


def node_of(obj: JSONObject) -> Node:
    """The node a CiliumNode describes; `RecordError` naming the field if it is not a valid one."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise RecordError(f"CiliumNode {metadata.get('name')!r} has no spec object")
    annotations: dict[str, Any] = dict(metadata.get("annotations") or {})
    addresses = {a.get("type"): a.get("ip") for a in spec.get("addresses") or [] if isinstance(a, dict)}
    raw = {
        "name": metadata.get("name"),
        "nodeIP": addresses.get("InternalIP"),
        "routerIP": addresses.get("CiliumInternalIP"),
        "podCIDRs": (spec.get("ipam") or {}).get("podCIDRs") or [],
        "bootID": spec.get("bootid"),
        "keyID": (spec.get("encryption") or {}).get("key") or None,
        "annotations": {k: v for k, v in annotations.items() if not k.startswith(_OWN)},
        "healthEndpoint": annotations.get(_HEALTH),
        "agent": annotations.get(_AGENT, "starting"),
        "errors": _json_annotation(annotations, _ERRORS, list),
        "encryption": _json_annotation(annotations, _ENCRYPTION, dict),
    }
    if raw["nodeIP"] is None:
        raise RecordError(f"CiliumNode {raw['name']!r} has no InternalIP address")
    if raw["bootID"] is None:
        raise RecordError(f"CiliumNode {raw['name']!r} has no spec.bootid")
    return Node.from_dict(raw)


def _json_annotation(annotations: dict[str, Any], key: str, kind: type) -> Any:
    if key not in annotations:
        return kind()
    try:
        value = json.loads(annotations[key])
    except (TypeError, ValueError):
        raise RecordError(f"annotation {key} is not JSON") from None
    if not isinstance(value, kind):
        raise RecordError(f"annotation {key} is not a JSON {kind.__name__}")
    return value


# leases


def micro_time(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def lease_expiry(lease: JSONObject) -> datetime.datetime | None:
    """When the Lease lapses (renewTime + leaseDurationSeconds), None if it holds no renewal."""
    spec = lease.get("spec") or {}
    renewed, duration = spec.get("renewTime"), spec.get("leaseDurationSeconds")
    if not isinstance(renewed, str) or not isinstance(duration, int):
        return None
    try:
        at = datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at + datetime.timedelta(seconds=duration)


def lease_live(lease: JSONObject | None, at: datetime.datetime | None = None) -> bool:
    expiry = lease_expiry(lease) if lease is not None else None
    return expiry is not None and expiry > (at or now())


def node_lease_name(node: str) -> str:
    return NODE_LEASE_PREFIX + node


# the key secret


def secret_object(secret: KeySecret, base: JSONObject | None = None) -> JSONObject:
    obj: JSONObject = json.loads(json.dumps(base)) if base is not None else {}
    obj["apiVersion"], obj["kind"] = "v1", "Secret"
    obj.setdefault("metadata", {}).update(name=secret.name, namespace=secret.namespace)
    obj.setdefault("type", "Opaque")
    obj["data"] = {**(obj.get("data") or {}), "keys": base64.b64encode(secret.keys.encode()).decode()}
    obj.pop("stringData", None)
    return obj


def key_secret_of(obj: JSONObject) -> KeySecret:
    metadata = obj.get("metadata") or {}
    name, namespace = str(metadata.get("name")), str(metadata.get("namespace"))
    encoded = (obj.get("data") or {}).get("keys")
    if not isinstance(encoded, str):
        raise RecordError(f"secret {namespace}/{name} has no keys field")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"secret {namespace}/{name} field keys is not base64") from None
    return KeySecret.from_bytes(data, name=name, namespace=namespace)
