"""Store records: JSON round trips, validation with one-line errors, secrets kept out of repr."""

from __future__ import annotations

import base64
import json
import re

import pytest

from ciphermesh.store.errors import RecordError
from ciphermesh.store.model import (
    WG_PUB_KEY_ANNOTATION,
    KeySecret,
    Node,
    OperatorRecord,
)

WG_KEY = base64.b64encode(bytes(range(32))).decode()


def _node(**changes: object) -> Node:
    fields: dict[str, object] = {"name": "node-1", "node_ip": "192.168.50.11", "boot_id": "b-1"}
    fields.update(changes)
    return Node(**fields)  # type: ignore[arg-type]


def test_node_json_round_trip_uses_cilium_field_names() -> None:
    node = _node(
        router_ip="10.0.1.124",
        pod_cidrs=("10.0.1.0/24",),
        key_id=3,
        annotations={WG_PUB_KEY_ANNOTATION: WG_KEY},
        health_endpoint="10.0.1.203:4240",
        agent="ready",
        errors=("IPAM: something",),
        encryption={"mode": "ipsec", "engine": "userspace", "keyID": 3},
    )
    raw = json.loads(node.to_json())
    assert raw["nodeIP"] == "192.168.50.11"
    assert raw["podCIDRs"] == ["10.0.1.0/24"]
    assert raw["annotations"] == {"network.cilium.io/wg-pub-key": WG_KEY}
    assert raw["bootID"] == "b-1" and raw["keyID"] == 3 and raw["agent"] == "ready"
    assert Node.from_json(node.to_json()) == node
    assert node.wg_pub_key == WG_KEY


def test_node_from_json_ignores_unknown_fields_and_fills_defaults() -> None:
    node = Node.from_json('{"name": "n", "nodeIP": "::1", "bootID": "x", "future": 1}')
    assert node.pod_cidrs == () and node.agent == "starting" and node.key_id is None
    assert node.node_ip == "::1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Node_1"}, "node name 'Node_1' is not a valid name"),
        ({"name": "a/b"}, "node name 'a/b' is not a valid name"),
        ({"node_ip": "300.1.1.1"}, "nodeIP '300.1.1.1' is not an IP address"),
        ({"router_ip": "x"}, "routerIP 'x' is not an IP address"),
        ({"boot_id": ""}, "bootID '' is not"),
        ({"pod_cidrs": ("10.0.1.1/24",)}, "podCIDR '10.0.1.1/24' has host bits set"),
        ({"pod_cidrs": ("10.0.1.0/24", "10.0.2.0/24")}, "podCIDRs may hold at most one CIDR per IP family"),
        ({"key_id": 16}, "keyID 16 is not an IPsec key ID 1..15"),
        ({"key_id": True}, "keyID True is not"),
        ({"annotations": {WG_PUB_KEY_ANNOTATION: "short"}}, "annotation network.cilium.io/wg-pub-key is not"),
        ({"health_endpoint": "10.0.0.1"}, "healthEndpoint '10.0.0.1' is not IP:port"),
        ({"health_endpoint": "10.0.0.1:0"}, "healthEndpoint '10.0.0.1:0' is not IP:port"),
        ({"agent": "dancing"}, "agent state 'dancing' is not one of starting, ready, degraded, stopping"),
        ({"errors": ("two\nlines",)}, "errors must be at most 64 one-line messages"),
        ({"encryption": {"k": object()}}, "encryption is not JSON-serialisable"),
    ],
)
def test_node_validation_names_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RecordError, match="^" + re.escape(message)):
        _node(**changes)


def test_node_from_bad_json_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="node record is not JSON"):
        Node.from_json(b"\xff{")
    with pytest.raises(RecordError, match="node record has no bootID"):
        Node.from_json('{"name": "n", "nodeIP": "10.0.0.1"}')
    with pytest.raises(RecordError, match="not a JSON object"):
        Node.from_json("[]")


def test_ipam_error_is_replaced_not_accumulated() -> None:
    node = _node(errors=("agent: something else",))
    once = node.with_ipam_error("IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-1")
    twice = once.with_ipam_error("IPAM: another")
    assert twice.errors == ("agent: something else", "IPAM: another")
    assert twice.ipam_error == "IPAM: another"
    cleared = twice.with_ipam_error(None)
    assert cleared.errors == ("agent: something else",) and cleared.ipam_error is None
    with pytest.raises(RecordError, match="must start with 'IPAM: '"):
        node.with_ipam_error("pool exhausted")


def test_key_secret_keeps_text_verbatim_and_out_of_repr() -> None:
    text = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n"
    secret = KeySecret(text)
    assert secret.keys == text
    assert (secret.namespace, secret.name) == ("kube-system", "cilium-ipsec-keys")
    assert "0123456789abcdef" not in repr(secret) and "0123456789abcdef" not in str(secret)
    with pytest.raises(RecordError, match="empty keys field"):
        KeySecret("  \n")
    assert KeySecret.from_bytes(text.encode(), name="k", namespace="ns") == KeySecret(text, "k", "ns")
    with pytest.raises(RecordError, match=r"^secret ns/k is not UTF-8 text$"):
        KeySecret.from_bytes(b"\xff\xfe", name="k", namespace="ns")


def test_operator_record_round_trip() -> None:
    record = OperatorRecord("operator-1", 42, ("10.0.0.0/8",), 24)
    assert OperatorRecord.from_json(record.to_json()) == record
    with pytest.raises(RecordError, match="operator record has no pid"):
        OperatorRecord.from_json('{"id": "o"}')
    with pytest.raises(RecordError, match="operator pid '1' is not an integer"):
        OperatorRecord("o", "1", (), 24)  # type: ignore[arg-type]
