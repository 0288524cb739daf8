"""The plumbing proof on two nodes: ESP alone crosses cilium_vxlan between router IPs; everything else
between pod CIDRs goes into the TUN, and without the TUN it is dropped, never sent."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.lab import netns
from ciphermesh.lab.pods import create_pod
from ciphermesh.lab.topology import TopologyPlan
from tests.support.netns import (
    MTUS,
    TUN,
    Capture,
    built_lab,
    pod_cidr,
    tx_packets,
    wait_operstate_up,
    wire_nodes,
)

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROUTER1, ROUTER2 = "10.0.1.1", "10.0.2.1"
IPPROTO_ESP = 50
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
# SPI 3, sequence number 1, then 64 bytes: tcpdump reports "length 72".
ESP_PACKET = struct.pack("!II", 3, 1) + bytes(range(64))


@pytest.fixture
def lab() -> Iterator[TopologyPlan]:
    with built_lab(2) as plan:
        wire_nodes(plan)
        yield plan


@contextlib.contextmanager
def socket_in(netns_name: str, kind: int, proto: int = 0, bind: str | None = None) -> Iterator[socket.socket]:
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_INET, kind, proto)
    with sock:
        sock.settimeout(3)
        if bind is not None:
            sock.bind((bind, 0))
        yield sock


def snmp(netns_name: str, field: str) -> int:
    lines = [line.split() for line in netns.run(netns_name, ["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = (line for line in lines if line[0] == "Ip:")
    return int(values[names.index(field)])


def tun_packets(tun: TunDevice, count: int, timeout: float = 3.0) -> list[tuple[str, str, int]]:
    """(src, dst, protocol) of the next `count` IPv4 packets the kernel routed into the TUN."""
    found: list[tuple[str, str, int]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and select.select([tun], [], [], max(0.0, deadline - time.monotonic()))[0]:
        packet = tun.read()
        if packet[0] >> 4 == 4:
            found.append((str(IPv4Address(packet[12:16])), str(IPv4Address(packet[16:20])), packet[9]))
    return found


def test_raw_esp_between_router_ips_crosses_cilium_vxlan(lab: TopologyPlan) -> None:
    node1, node2 = (node.netns for node in lab.nodes)
    with (
        socket_in(node2, socket.SOCK_RAW, IPPROTO_ESP, bind=ROUTER2) as receiver,
        socket_in(node1, socket.SOCK_RAW, IPPROTO_ESP, bind=ROUTER1) as sender,
        Capture(node2, "cilium_vxlan", ["esp"], 1) as on_vxlan,
        Capture(lab.underlay_netns, "br0", ["udp", "dst", "port", "8472"], 1) as on_underlay,
    ):
        sender.sendto(ESP_PACKET, (ROUTER2, 0))
        packet, (source, _) = receiver.recvfrom(65535)
        vxlan_lines, underlay_lines = on_vxlan.lines(), on_underlay.lines()
    assert source == ROUTER1
    assert packet[(packet[0] & 0x0F) * 4 :] == ESP_PACKET
    assert len(vxlan_lines) == 1
    assert vxlan_lines[0].endswith(f"IP {ROUTER1} > {ROUTER2}: ESP(spi=0x00000003,seq=0x1), length 72")
    # On the underlay tcpdump prints the VXLAN packet between node IPs (as OTV: port 8472), then the ESP.
    outer, inner = underlay_lines
    assert (
        f"IP {lab.nodes[0].ip}." in outer
        and f" > {lab.nodes[1].ip}.8472: OTV" in outer
        and "instance 2" in outer
    )
    assert inner == f"IP {ROUTER1} > {ROUTER2}: ESP(spi=0x00000003,seq=0x1), length 72"


def test_full_size_esp_fits_without_fragmentation_and_one_byte_more_is_refused(lab: TopologyPlan) -> None:
    node1, node2 = (node.netns for node in lab.nodes)
    largest = MTUS.vxlan - 20
    with (
        socket_in(node2, socket.SOCK_RAW, IPPROTO_ESP, bind=ROUTER2) as receiver,
        socket_in(node1, socket.SOCK_RAW, IPPROTO_ESP, bind=ROUTER1) as sender,
    ):
        # Without DF a raw socket would fragment a too-big packet itself; the engine must set it too.
        sender.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sender.sendto(ESP_PACKET + bytes(largest - len(ESP_PACKET)), (ROUTER2, 0))
        packet = receiver.recv(65535)
        with pytest.raises(OSError) as too_big:
            sender.sendto(bytes(largest + 1), (ROUTER2, 0))
    assert len(packet) == MTUS.vxlan
    assert too_big.value.errno == errno.EMSGSIZE
    assert snmp(node1, "FragCreates") == 0 and snmp(node2, "ReasmReqds") == 0


def test_everything_else_to_remote_pods_goes_into_the_tun(lab: TopologyPlan) -> None:
    node1 = lab.nodes[0].netns
    pod = create_pod(lab.lab, "a", node_netns=node1, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    before = tx_packets(node1, "cilium_vxlan")
    with netns.entered(node1):
        tun = TunDevice(TUN)
    # Under CI load linkwatch activated the TUN only after the UDP, ICMP and ESP had gone to its noop qdisc.
    wait_operstate_up(node1, TUN)
    with (
        tun,
        socket_in(node1, socket.SOCK_DGRAM) as udp,
        socket_in(node1, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp,
        socket_in(node1, socket.SOCK_STREAM) as health,
        socket_in(pod.netns, socket.SOCK_RAW, IPPROTO_ESP) as pod_esp,
    ):
        udp.sendto(b"probe", ("10.0.2.5", 9))
        icmp.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", (ROUTER2, 0))
        health.setblocking(False)
        assert health.connect_ex((ROUTER2, 4240)) == errno.EINPROGRESS
        # ESP that a pod sends is forwarded, not sent by this node: it is encrypted like any pod packet.
        pod_esp.sendto(ESP_PACKET, (ROUTER2, 0))
        seen = tun_packets(tun, 4)
    assert sorted(seen) == sorted(
        [
            (ROUTER1, "10.0.2.5", socket.IPPROTO_UDP),
            (ROUTER1, ROUTER2, socket.IPPROTO_ICMP),
            (ROUTER1, ROUTER2, socket.IPPROTO_TCP),
            (str(pod.ip), ROUTER2, IPPROTO_ESP),
        ]
    )
    assert tx_packets(node1, "cilium_vxlan") == before


def test_without_the_tun_traffic_is_dropped_not_sent(lab: TopologyPlan) -> None:
    node1 = lab.nodes[0].netns
    pod = create_pod(lab.lab, "a", node_netns=node1, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    netns.run(node1, ["ip", "link", "del", TUN])
    before = {dev: tx_packets(node1, dev) for dev in ("cilium_vxlan", "eth0")}
    with socket_in(node1, socket.SOCK_DGRAM) as udp:
        for destination in ("10.0.2.5", ROUTER2):
            with pytest.raises(OSError) as refused:
                udp.sendto(b"secret", (destination, 9))
            assert refused.value.errno == errno.EHOSTUNREACH
    ping = netns.run(pod.netns, ["ping", "-c", "1", "-W", "1", "10.0.2.5"], check=False)
    assert ping.returncode != 0 and "Unreachable" in ping.stdout
    assert {dev: tx_packets(node1, dev) for dev in ("cilium_vxlan", "eth0")} == before
