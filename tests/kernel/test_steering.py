"""The kernel engine's steering: nftables gives forwarded and local packets to remote pods their OUT mark
and ESP from a peer its IN mark, as the kernel itself counts them on a real packet path."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.datapath.kernel.ipsec.marks import in_mark, out_mark
from ciphermesh.datapath.kernel.ipsec.steering import Steering, apply_steering, remove_steering
from ciphermesh.lab import netns
from tests.support.names import unique_lab

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TUNNEL_IP, PEER_TUNNEL_IP = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1")
PEER_CIDR, OTHER_CIDR = IPv4Network("10.0.2.0/24"), IPv4Network("10.0.3.0/24")
STEERING = Steering(TUNNEL_IP, {PEER_CIDR: out_mark(1, 3).value, OTHER_CIDR: out_mark(2, 3).value},
                    {PEER_TUNNEL_IP: in_mark(1).value})
# Where the marks are read back: counters by mark, after the steering's mangle chains.
PROBE = f"""table ip probe {{
    chain forward {{ type filter hook forward priority filter; policy accept;
        meta mark {out_mark(1, 3).value:#x} counter
    }}
    chain postrouting {{ type filter hook postrouting priority filter; policy accept;
        meta mark {out_mark(2, 3).value:#x} udp dport 9 counter
    }}
    chain input {{ type filter hook input priority filter; policy accept;
        meta l4proto esp meta mark {in_mark(1).value:#x} counter
        meta l4proto esp meta mark 0 counter
    }}
}}
"""


@pytest.fixture
def node() -> Iterator[tuple[str, str]]:
    """A node namespace with a link to a pod namespace (address 10.0.1.5, and the peer's 10.0.2.1)."""
    name = unique_lab("st")
    node_ns, pod_ns = f"{name}-node", f"{name}-pod"
    netns.create(node_ns)
    netns.create(pod_ns)
    try:
        for argv in (
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pod_ns],
            # Where routed packets leave: the pod namespace drops them, it does not forward.
            ["ip", "link", "add", "out0", "type", "veth", "peer", "name", "out1", "netns", pod_ns],
            ["ip", "addr", "add", f"{TUNNEL_IP}/32", "dev", "lo"],
            ["ip", "addr", "add", "10.0.1.254/24", "dev", "eth0"],
            ["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "out0", "up"],
            ["ip", "route", "add", "10.0.0.0/8", "dev", "out0"],
        ):
            netns.run(node_ns, argv)
        for argv in (
            ["ip", "addr", "add", "10.0.1.5/24", "dev", "eth0"],
            ["ip", "addr", "add", f"{PEER_TUNNEL_IP}/32", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"], ["ip", "route", "add", "default", "via", "10.0.1.254"],
        ):
            netns.run(pod_ns, argv)
        netns.write_sysctls(node_ns, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                                      "net.ipv4.conf.eth0.rp_filter": "0"})
        netns.run(node_ns, ["nft", "-f", "-"], input=PROBE)
        yield node_ns, pod_ns
    finally:
        netns.delete(pod_ns)
        netns.delete(node_ns)


def _counters(node_ns: str) -> list[int]:
    listing = netns.run(node_ns, ["nft", "list", "table", "ip", "probe"]).stdout
    return [int(line.split("packets ")[1].split()[0]) for line in listing.splitlines() if "packets " in line]


@contextlib.contextmanager
def _sock(ns: str, kind: int, proto: int = 0, bind: str | None = None) -> Iterator[socket.socket]:
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, kind, proto)
    with sock:
        if bind is not None:
            sock.bind((bind, 0))
        yield sock


def _send_all(node_ns: str, pod_ns: str) -> None:
    with _sock(pod_ns, socket.SOCK_DGRAM) as pod_udp:
        pod_udp.sendto(b"forwarded", ("10.0.2.5", 9))
    with _sock(node_ns, socket.SOCK_DGRAM) as node_udp:
        node_udp.sendto(b"local", ("10.0.3.7", 9))
    with _sock(pod_ns, socket.SOCK_RAW, 50, bind=str(PEER_TUNNEL_IP)) as peer_esp:
        peer_esp.sendto(bytes(16), (str(TUNNEL_IP), 0))
    with _sock(pod_ns, socket.SOCK_RAW, 50, bind="10.0.1.5") as stranger_esp:
        stranger_esp.sendto(bytes(16), (str(TUNNEL_IP), 0))


def test_packets_get_the_marks_cilium_s_datapath_gives_them(node: tuple[str, str]) -> None:
    node_ns, pod_ns = node
    _send_all(node_ns, pod_ns)
    assert _counters(node_ns) == [0, 0, 0, 2]  # without steering nothing is marked
    with netns.entered(node_ns):
        apply_steering(STEERING)
    _send_all(node_ns, pod_ns)
    # forwarded to the peer's pod; sent by the node to the other peer's pod; ESP from the peer; ESP from a
    # source that is no peer stays unmarked, so no IN state can match it.
    assert _counters(node_ns) == [1, 1, 1, 3]


def test_a_reapply_replaces_the_marks_and_remove_leaves_none(node: tuple[str, str]) -> None:
    node_ns, pod_ns = node
    with netns.entered(node_ns):
        apply_steering(STEERING)
        apply_steering(Steering(TUNNEL_IP, {OTHER_CIDR: out_mark(2, 3).value}))
    _send_all(node_ns, pod_ns)
    assert _counters(node_ns) == [0, 1, 0, 2]
    with netns.entered(node_ns):
        assert remove_steering() is True
        assert remove_steering() is False
    assert "ciphermesh_xfrm" not in netns.run(node_ns, ["nft", "list", "tables"]).stdout


def test_overlapping_cidrs_and_bad_marks_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Steering(TUNNEL_IP, {IPv4Network("10.0.2.0/23"): 0xE00, PEER_CIDR: 0xE00})
    with pytest.raises(ValueError, match="32-bit"):
        Steering(TUNNEL_IP, in_marks={PEER_TUNNEL_IP: 0})
