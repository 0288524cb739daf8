"""The agent runs only modes it can carry out; anything else is refused, never run in plaintext."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.agent.modes import (
    UnsupportedModeError,
    agent_mode,
    node_encryption,
    strict_cidr,
    strict_guard,
)
from ciphermesh.cli.main import main
from ciphermesh.config import Values, load_values
from ciphermesh.datapath.netlink.strict_guard import render_ruleset
from tests.support.lab import UP_ETCD


def test_modes() -> None:
    assert agent_mode(load_values()) == "disabled"
    assert agent_mode(load_values(sets=["encryption.type=wireguard"])) == "disabled"
    assert agent_mode(load_values(sets=["encryption.enabled=true"])) == "ipsec"
    assert agent_mode(load_values(sets=["encryption.enabled=true,encryption.type=wireguard"])) == "wireguard"
    # Values built past the schema's checks: a type the agent has no datapath for is refused.
    with pytest.raises(UnsupportedModeError, match="refusing to start"):
        agent_mode(Values({"encryption.enabled": True, "encryption.type": "geneve"}))


def test_lab_up_refuses_unknown_type_before_building(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*UP_ETCD, "--name", "cmrefuse", "--set", "encryption.enabled=true,encryption.type=geneve"]
    assert main(argv) != 0
    assert "encryption.type" in capsys.readouterr().err
    assert main(["lab", "pod", "list", "--name", "cmrefuse"]) == 1
    assert "no lab named" in capsys.readouterr().err


def test_node_encryption_takes_an_encryption_mode() -> None:
    assert node_encryption(load_values(sets=["encryption.enabled=true,encryption.nodeEncryption=true"]))
    # As Cilium: node encryption only has an effect with encryption on.
    assert not node_encryption(load_values(sets=["encryption.nodeEncryption=true"]))
    assert not node_encryption(load_values(sets=["encryption.enabled=true"]))


def test_strict_mode_cidr_given_or_the_pool() -> None:
    assert strict_cidr(load_values()) is None
    on = "encryption.strictMode.enabled=true"
    assert strict_cidr(load_values(sets=[on])) == IPv4Network("10.0.0.0/8")
    given = load_values(sets=[on, "encryption.strictMode.cidr=10.0.0.0/16"])
    assert strict_cidr(given) == IPv4Network("10.0.0.0/16")
    two_pools = load_values(sets=[on, "ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/16,10.1.0.0/16}"])
    with pytest.raises(UnsupportedModeError, match=r"set encryption\.strictMode\.cidr"):
        agent_mode(two_pools)


def test_strict_mode_without_encryption_is_refused() -> None:
    with pytest.raises(UnsupportedModeError, match="would drop all pod traffic between nodes"):
        agent_mode(load_values(sets=["encryption.strictMode.enabled=true"]))


def test_lab_up_refuses_an_unusable_strict_mode(capsys: pytest.CaptureFixture[str]) -> None:
    pools = "ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/16,10.1.0.0/16}"
    strict = "encryption.enabled=true,encryption.strictMode.enabled=true"
    assert main([*UP_ETCD, "--name", "cmrefuse", "--set", strict, "--set", pools]) == 1
    assert "strict mode guards one CIDR" in capsys.readouterr().err
    assert main(["lab", "pod", "list", "--name", "cmrefuse"]) == 1


def test_strict_guard_exempts_the_node_ip_and_with_allow_remote_node_identities_the_peers() -> None:
    node, peers = IPv4Address("172.18.0.2"), [IPv4Address("172.18.0.4"), IPv4Address("172.18.0.3")]
    assert strict_guard(load_values(), node, peers) is None
    on = "encryption.strictMode.enabled=true"
    guard = strict_guard(load_values(sets=[on, "encryption.strictMode.cidr=10.0.0.0/16"]), node, peers)
    assert guard is not None
    assert (guard.cidr, guard.devices) == (IPv4Network("10.0.0.0/16"), ("eth0", "cilium_vxlan"))
    assert guard.exempt_sources == (node,) and guard.exempt_destinations == ()
    allowing = load_values(sets=[on, "encryption.strictMode.allowRemoteNodeIdentities=true"])
    guard = strict_guard(allowing, node, peers)
    assert guard is not None and guard.exempt_destinations == tuple(sorted(peers))
    # The rendered ruleset lets traffic to the peers' node IPs through, and only that.
    assert "ip daddr { 172.18.0.3, 172.18.0.4 } accept" in render_ruleset(guard)
