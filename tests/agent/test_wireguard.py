"""WireGuard mode's pure parts: the plan's peers and blocked CIDRs, the key file, the wire verdict."""

from __future__ import annotations

import os
import stat
from collections import Counter
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from ciphermesh.agent.modes import agent_mode
from ciphermesh.agent.plan import plan
from ciphermesh.agent.wireguard_key import KEY_FILENAME, KeyFileError, load_or_create_private_key
from ciphermesh.config import load_values
from ciphermesh.datapath.desired import WIREGUARD_PORT, DesiredDatapath
from ciphermesh.lab.wire import WireReport
from ciphermesh.lab.wire_verdict import WireEvidence, WireGuardExpectation, tunnel_pairs
from ciphermesh.store.model import WG_PUB_KEY_ANNOTATION, Node
from ciphermesh.wireguard.keys import PrivateKey

KEYS = [PrivateKey(bytes([i]) * 32).public_key().to_base64() for i in (1, 2, 3, 4)]


def _node(i: int, *, key: str | None = None, mode: str | None = "wireguard") -> Node:
    return Node(
        name=f"node-{i}",
        node_ip=f"172.18.0.{i + 1}",
        boot_id=f"boot-{i}",
        router_ip=f"10.0.{i}.1",
        pod_cidrs=(f"10.0.{i}.0/24",),
        annotations={WG_PUB_KEY_ANNOTATION: key} if key else {},
        encryption={"mode": mode} if mode else {},
    )


def _wg_plan(local: Node, *peers: Node) -> DesiredDatapath:
    return plan(local, [local, *peers], mode="wireguard", keys={}, current_key_id=None)


def test_wireguard_mode_is_run() -> None:
    assert agent_mode(load_values(sets=["encryption.enabled=true,encryption.type=wireguard"])) == "wireguard"


def test_peers_get_endpoint_and_pod_cidrs_and_node_ip_as_allowed_ips() -> None:
    desired = _wg_plan(_node(1, key=KEYS[0]), _node(2, key=KEYS[1]), _node(3, key=KEYS[2]))
    peers = [(p.name, p.public_key.to_base64(), p.endpoint, p.allowed_ips) for p in desired.wireguard_peers]
    assert peers == [
        ("node-2", KEYS[1], ("172.18.0.3", WIREGUARD_PORT),
         (IPv4Network("10.0.2.0/24"), IPv4Network("172.18.0.3/32"))),
        ("node-3", KEYS[2], ("172.18.0.4", WIREGUARD_PORT),
         (IPv4Network("10.0.3.0/24"), IPv4Network("172.18.0.4/32"))),
    ]
    # Without node encryption the node IPs are allowed but not routed into cilium_wg0.
    assert desired.node_peers == ()
    assert [r.pod_cidrs for r in desired.remotes] == [(IPv4Network("10.0.2.0/24"),),
                                                      (IPv4Network("10.0.3.0/24"),)]
    assert desired.blocked == ()
    assert desired.engine is None
    assert desired.waiting == ()


def test_peer_without_usable_key_is_blocked_not_routed() -> None:
    desired = _wg_plan(
        _node(1, key=KEYS[0]),
        _node(2),  # no key yet
        _node(3, key=KEYS[0]),  # our own key
        _node(4, key=KEYS[3]),
    )
    assert [p.name for p in desired.wireguard_peers] == ["node-4"]
    assert desired.blocked == (IPv4Network("10.0.2.0/24"), IPv4Network("10.0.3.0/24"))
    assert [r.pod_cidrs[0] for r in desired.remotes] == [IPv4Network("10.0.4.0/24")]
    assert desired.waiting == (
        "node-2: has not published a WireGuard public key",
        "node-3: WireGuard public key refused: all zero or used by another node",
    )


def test_peer_in_another_mode_is_blocked_and_named() -> None:
    desired = _wg_plan(_node(1, key=KEYS[0]), _node(2, key=KEYS[1], mode="ipsec"))
    assert desired.wireguard_peers == ()
    assert desired.blocked == (IPv4Network("10.0.2.0/24"),)
    assert desired.waiting[0].startswith("node-2: runs encryption mode ipsec, this node wireguard")
    # The same check guards an IPsec node against a WireGuard peer.
    ipsec = plan(_node(2, mode="ipsec"), [_node(1, key=KEYS[0])], mode="ipsec", keys={}, current_key_id=None)
    assert ipsec.blocked == (IPv4Network("10.0.1.0/24"),) and ipsec.remotes == ()


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "nodes" / "node-1"
    key = load_or_create_private_key(state)
    path = state / KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key.reveal() and len(path.read_bytes()) == 32
    assert load_or_create_private_key(state).public_key() == key.public_key()


def test_bad_key_files_are_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILENAME
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="5 bytes"):
        load_or_create_private_key(tmp_path)
    path.write_bytes(bytes(32))
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_private_key(tmp_path)
    assert path.read_bytes() == bytes(32)


def test_wireguard_verdict_needs_every_pair_and_no_plaintext() -> None:
    pairs = tunnel_pairs(["172.18.0.2", "172.18.0.3"])
    expectation = WireGuardExpectation(pairs)
    good = WireReport(wireguard=4, wireguard_pairs=Counter({pair: 2 for pair in pairs}))
    assert expectation.problems(WireEvidence(good, ("a",), (), 0)) == []
    one_way = WireReport(wireguard=2, wireguard_pairs=Counter({pairs[0]: 2}), plaintext_count=1)
    problems = expectation.problems(WireEvidence(one_way, ("a",), ("a",), 0))
    assert problems[0].startswith("1 plaintext packet between pod addresses")
    assert problems[1] == "probe payloads readable in the capture: a"
    assert problems[2] == "no WireGuard (UDP 51871) from 172.18.0.3 to 172.18.0.2"
