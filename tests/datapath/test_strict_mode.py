"""The strict-mode guard: its nft script, and in real namespaces what it lets out, counts and drops.

Two namespaces, A (the node under test) and B (the wire), joined by two veth pairs: A's `eth0` (guarded)
to B's `b0` and A's `eth1` (not guarded) to B's `b1`. Packets are injected in A with a socket bound to
the device, as if routing had sent them there; tcpdump in B says what got out.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.ipsec import ESP
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap

from ciphermesh.datapath.netlink.strict_guard import (
    COUNTER,
    TABLE,
    StrictDrops,
    StrictGuard,
    apply_guard,
    read_drops,
    remove_guard,
    render_ruleset,
)
from ciphermesh.inet import internet_checksum
from ciphermesh.lab import netns
from ciphermesh.lab.plaintext_probe import (
    PlaintextProbeError,
    echo_request,
    inject_plaintext,
    send_ipv4,
)
from ciphermesh.rtnl.errors import DatapathError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
T = TypeVar("T")

CIDR = IPv4Network("10.0.0.0/8")
POD_A = IPv4Address("10.0.1.7")
POD_B = IPv4Address("10.0.2.9")
OUTSIDE = IPv4Address("192.168.50.9")
ROUTER_A = IPv4Address("10.0.1.1")  # exempt source, as Cilium exempts the router IP
NODE_B = IPv4Address("10.0.2.1")  # exempt destination, as with allowRemoteNodeIdentities
GUARD = StrictGuard(CIDR, ("eth0", "cilium_vxlan"), exempt_sources=(ROUTER_A,), exempt_destinations=(NODE_B,))
VXLAN_MAC = "02:00:00:00:02:01"


# Pure: the script and the checks on the guard's description


def test_the_script_for_a_sample_guard() -> None:
    assert render_ruleset(GUARD) == (
        "table ip ciphermesh_strict {\n"
        "\tcounter unencrypted {\n"
        "\t}\n"
        "\tchain egress {\n"
        "\t\ttype filter hook postrouting priority filter; policy accept;\n"
        "\t}\n"
        "}\n"
        "flush chain ip ciphermesh_strict egress\n"
        "table ip ciphermesh_strict {\n"
        "\tchain egress {\n"
        '\t\toifname != { "eth0", "cilium_vxlan" } accept\n'
        "\t\tip saddr != 10.0.0.0/8 accept\n"
        "\t\tip daddr != 10.0.0.0/8 accept\n"
        "\t\tip saddr { 10.0.1.1 } accept\n"
        "\t\tip daddr { 10.0.2.1 } accept\n"
        "\t\tip protocol esp accept\n"
        "\t\tudp sport 51871 accept\n"
        "\t\tudp dport 51871 accept\n"
        '\t\toifname != "cilium_vxlan" udp dport 8472 accept\n'
        '\t\tcounter name "unencrypted" drop comment "unencrypted traffic"\n'
        "\t}\n"
        "}\n"
    )


def test_the_script_follows_the_guard() -> None:
    guard = StrictGuard(
        IPv4Network("172.16.0.0/12"),
        ("ens5", "ens5", "vx0"),
        exempt_sources=(IPv4Address("172.16.0.1"), IPv4Address("172.16.0.1"), IPv4Address("172.16.0.2")),
        wireguard_port=51820,
        vxlan_port=4789,
        vxlan_device="vx0",
    )
    script = render_ruleset(guard)
    assert 'oifname != { "ens5", "vx0" } accept' in script
    assert "ip saddr != 172.16.0.0/12 accept" in script and "10.0.0.0" not in script
    assert "ip saddr { 172.16.0.1, 172.16.0.2 } accept" in script
    assert "ip daddr {" not in script
    assert "udp sport 51820 accept" in script and "51871" not in script
    assert 'oifname != "vx0" udp dport 4789 accept' in script


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cidr": IPv6Network("fd00::/64")}, "only an IPv4 network"),
        ({"devices": ()}, "no egress device"),
        ({"devices": ("eth0", 'eth"0')}, "guarded device 'eth\"0'"),
        ({"devices": ("eth*",)}, "guarded device 'eth*'"),
        ({"devices": ("eth 0",)}, "guarded device 'eth 0'"),
        ({"devices": ("",)}, "guarded device ''"),
        ({"devices": ("a-name-of-16-chr",)}, "1 to 15 letters"),
        ({"devices": ("..",)}, "guarded device '..'"),
        ({"vxlan_device": "vx\\0"}, "VXLAN device"),
        ({"exempt_sources": (IPv4Address("10.0.1.1"), "10.0.1.2")}, "only IPv4 addresses"),
        ({"wireguard_port": 0}, "WireGuard port 0"),
        ({"vxlan_port": 65536}, "VXLAN port 65536"),
    ],
)
def test_a_bad_guard_is_refused_before_nft_runs(
    changes: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # had nft been run, this would be a DatapathError
    with pytest.raises(ValueError) as refused:
        apply_guard(replace(GUARD, **changes))
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("call", [lambda: apply_guard(GUARD), read_drops, remove_guard])
def test_without_nft_the_error_names_the_package(
    call: Callable[[], object], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatapathError, match="nftables"):
        call()


@pytest.mark.parametrize("payload", [b"", b"odd", b"cmsg-even-length!", bytes(range(256)) * 4])
def test_the_echo_request_is_what_scapy_builds(payload: bytes) -> None:
    datagram = echo_request(POD_A, POD_B, payload, ident=0x1234, sequence=7)
    expected = IP(src=str(POD_A), dst=str(POD_B), id=0x1234, ttl=64) / ICMP(id=0x1234, seq=7) / Raw(payload)
    assert datagram == bytes(expected)
    assert internet_checksum(datagram[:20]) == 0 and internet_checksum(datagram[20:]) == 0


def test_send_ipv4_refuses_what_is_not_ipv4() -> None:
    with pytest.raises(ValueError, match="not an IPv4 datagram"):
        send_ipv4("unused", b"\x60" + bytes(39), device="eth0")


# Real namespaces


def host_has_our_table() -> bool:
    """Read (never change) the machine's own ruleset: the guard must only ever act where it runs."""
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return any(item.get("table", {}).get("name") == TABLE for item in json.loads(out)["nftables"])


def inside(name: str, call: Callable[[], T]) -> T:
    """Run a guard function as the agent does: from a thread inside the node's namespace."""
    with netns.entered(name):
        return call()


@dataclass(frozen=True)
class Pair:
    a: str
    b: str

    def mac(self, device: str) -> str:
        return str(json.loads(netns.run(self.b, ["ip", "-j", "link", "show", device]).stdout)[0]["address"])

    def neighbour(self, dst: IPv4Address, device: str, mac: str) -> None:
        entry = [str(dst), "lladdr", mac, "dev", device, "nud", "permanent"]
        netns.run(self.a, ["ip", "neigh", "replace", *entry])

    def drops(self) -> StrictDrops | None:
        return inside(self.a, read_drops)


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = secrets.token_hex(3)
    found = Pair(f"cmsg{tag}a", f"cmsg{tag}b")
    assert not host_has_our_table()
    try:
        netns.create(found.a)
        netns.create(found.b)
        for own, peer in (("eth0", "b0"), ("eth1", "b1")):
            # Created from inside A: no link of the test ever exists in the machine's namespace.
            veth = ["type", "veth", "peer", "name", peer, "netns", found.b]
            netns.run(found.a, ["ip", "link", "add", own, *veth])
            netns.run(found.a, ["ip", "link", "set", own, "up"])
            netns.run(found.b, ["ip", "link", "set", peer, "up"])
        # No address and no route in A: the bound socket takes each destination as on-link.
        for dst in (POD_B, OUTSIDE, NODE_B):
            found.neighbour(dst, "eth0", found.mac("b0"))
        found.neighbour(POD_B, "eth1", found.mac("b1"))
        yield found
    finally:
        netns.delete(found.a)
        netns.delete(found.b)
    assert not host_has_our_table()


class PcapCapture:
    """tcpdump writing IPv4 packets of a namespace's interface to a file, ready before anything is sent."""

    def __init__(self, netns_name: str, path: Path, iface: str = "any") -> None:
        self.path = path
        argv = ["tcpdump", "-n", "-U", "-i", iface, "-w", str(path), "ip"]
        self.process = netns.popen(netns_name, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        said = b""
        while b"listening on" not in said:
            line = self.process.stderr.readline()
            if not line:
                self.stop()
                raise AssertionError(f"tcpdump did not start: {said!r}")
            said += line

    def wait_for(self, tokens: set[bytes], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(token in self._written() for token in tokens) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _written(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""

    def packets(self) -> list[Packet]:
        self.stop()
        return list(rdpcap(str(self.path))) if self._written() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.communicate(timeout=10)


def token(name: str) -> bytes:
    return f"cmsg:{name}:{secrets.token_hex(4)}".encode()


Send = Callable[[bytes], None]


def icmp(pair: Pair, src: IPv4Address, dst: IPv4Address, device: str = "eth0") -> Send:
    return lambda payload: inject_plaintext(pair.a, src=src, dst=dst, device=device, payload=payload)


def crafted(pair: Pair, layers: Packet, device: str = "eth0") -> Send:
    return lambda payload: send_ipv4(pair.a, bytes(layers / Raw(payload)), device=device)


def ip(src: IPv4Address = POD_A, dst: IPv4Address = POD_B, **fields: Any) -> Packet:
    return IP(src=str(src), dst=str(dst), **fields)


def arrivals(
    pair: Pair, tmp_path: Path, sends: dict[str, Send], expected: set[str]
) -> tuple[set[str], list[Packet]]:
    """Send each packet (its payload a fresh token) and say which B saw; waits for `expected` and a marker."""
    tokens = {name: token(name) for name in sends}
    marker = token("marker")
    capture = PcapCapture(pair.b, tmp_path / f"{secrets.token_hex(4)}.pcap")
    try:
        for name, send in sends.items():
            send(tokens[name])
        # Out of the strict CIDR, so it passes the guard: once it and the expected ones are in, all are.
        inject_plaintext(pair.a, src=OUTSIDE, dst=POD_B, device="eth0", payload=marker)
        capture.wait_for({marker, *(tokens[name] for name in expected)})
        packets = capture.packets()
    finally:
        capture.stop()
    data = b"".join(bytes(packet) for packet in packets)
    assert marker in data, "the marker never arrived: the wire itself does not work"
    return {name for name, value in tokens.items() if value in data}, packets


@needs_root
@pytest.mark.netns
def test_plaintext_arrives_without_the_guard_and_is_dropped_and_counted_with_it(
    pair: Pair, tmp_path: Path
) -> None:
    sends = {f"plain{i}": icmp(pair, POD_A, POD_B) for i in range(3)}
    seen, packets = arrivals(pair, tmp_path, sends, expected=set(sends))
    assert seen == set(sends)
    # What came out is the probe's packet as the kernel got it: both checksums right.
    received = next(p[IP] for p in packets if p.haslayer(ICMP) and b"cmsg:plain0" in bytes(p[ICMP]))
    assert (received.src, received.dst, received[ICMP].type) == (str(POD_A), str(POD_B), 8)
    wire = bytes(received)
    assert internet_checksum(wire[:20]) == 0 and internet_checksum(wire[20:]) == 0
    assert pair.drops() is None

    inside(pair.a, lambda: apply_guard(GUARD))
    assert pair.drops() == StrictDrops(0, 0)
    seen, _ = arrivals(pair, tmp_path, sends, expected=set())
    assert seen == set()
    drops = pair.drops()
    assert drops is not None and drops.packets == 3
    assert drops.bytes == 3 * len(echo_request(POD_A, POD_B, token("plain0")))


@needs_root
@pytest.mark.netns
def test_encrypted_and_out_of_scope_packets_pass_the_rest_is_dropped(pair: Pair, tmp_path: Path) -> None:
    inside(pair.a, lambda: apply_guard(GUARD))
    passing = {
        "esp": crafted(pair, ip() / ESP(spi=0x101, seq=1)),
        "wireguard-sport": crafted(pair, ip() / UDP(sport=51871, dport=40000)),
        "wireguard-dport": crafted(pair, ip() / UDP(sport=40000, dport=51871)),
        "vxlan-on-eth0": crafted(pair, ip() / UDP(sport=40000, dport=8472)),
        "src-outside": icmp(pair, OUTSIDE, POD_B),
        "dst-outside": icmp(pair, POD_A, OUTSIDE),
        "exempt-source": icmp(pair, ROUTER_A, POD_B),
        "exempt-destination": icmp(pair, POD_A, NODE_B),
        "unguarded-device": icmp(pair, POD_A, POD_B, device="eth1"),
    }
    dropped = {
        "icmp": icmp(pair, POD_A, POD_B),
        "udp-other-port": crafted(pair, ip() / UDP(sport=40000, dport=51870)),
        "udp-vxlan-sport-only": crafted(pair, ip() / UDP(sport=8472, dport=40000)),
        "tcp": crafted(pair, ip() / TCP(sport=40000, dport=4240, flags="S")),
        "other-pod-pair": icmp(pair, IPv4Address("10.200.0.1"), IPv4Address("10.0.2.9")),
    }
    seen, _ = arrivals(pair, tmp_path, {**passing, **dropped}, expected=set(passing))
    assert seen == set(passing)
    drops = pair.drops()
    assert drops is not None and drops.packets == len(dropped) and drops.bytes > 0


@needs_root
@pytest.mark.netns
def test_vxlan_outer_header_passes_while_its_inner_packet_is_checked(pair: Pair, tmp_path: Path) -> None:
    # Node IPs inside the strict CIDR (overlapping node and pod CIDRs): only the VXLAN exemption lets
    # the outer packet through.
    node_a, node_b = "10.1.0.1", "10.1.0.2"
    netns.run(pair.a, ["ip", "addr", "add", f"{node_a}/24", "dev", "eth0"])
    netns.run(pair.b, ["ip", "addr", "add", f"{node_b}/24", "dev", "b0"])
    pair.neighbour(IPv4Address(node_b), "eth0", pair.mac("b0"))
    vxlan = ["type", "vxlan", "id", "2", "dstport", "8472", "dev", "eth0", "local", node_a, "remote", node_b]
    netns.run(pair.a, ["ip", "link", "add", "cilium_vxlan", *vxlan])
    netns.run(pair.a, ["ip", "link", "set", "cilium_vxlan", "up"])
    pair.neighbour(NODE_B, "cilium_vxlan", VXLAN_MAC)
    pair.neighbour(POD_B, "cilium_vxlan", VXLAN_MAC)
    sends = {
        "esp": crafted(pair, ip(ROUTER_A, NODE_B) / ESP(spi=0x202, seq=1), device="cilium_vxlan"),
        "plain": icmp(pair, POD_A, POD_B, device="cilium_vxlan"),
        "udp-8472-inner": crafted(pair, ip() / UDP(sport=40000, dport=8472), device="cilium_vxlan"),
    }
    # Not exempt here: the ESP packet passes only because it is ESP.
    inside(pair.a, lambda: apply_guard(replace(GUARD, exempt_sources=(), exempt_destinations=())))
    seen, packets = arrivals(pair, tmp_path, sends, expected={"esp"})
    assert seen == {"esp"}
    outer = next(p[IP] for p in packets if p.haslayer(UDP) and b"cmsg:esp" in bytes(p))
    assert (outer.src, outer.dst, outer[UDP].dport) == (node_a, node_b, 8472)
    drops = pair.drops()
    assert drops is not None and drops.packets == 2


@needs_root
@pytest.mark.netns
def test_reapplying_keeps_the_count_and_a_new_cidr_replaces_the_old(pair: Pair, tmp_path: Path) -> None:
    inside(pair.a, lambda: apply_guard(GUARD))
    arrivals(pair, tmp_path, {"a": icmp(pair, POD_A, POD_B), "b": icmp(pair, POD_A, POD_B)}, expected=set())
    first = pair.drops()
    assert first is not None and first.packets == 2
    inside(pair.a, lambda: apply_guard(GUARD))
    assert pair.drops() == first
    ruleset = json.loads(netns.run(pair.a, ["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
    kinds = [next(iter(item)) for item in ruleset if "metainfo" not in item]
    assert kinds.count("table") == 1 and kinds.count("chain") == 1 and kinds.count("counter") == 1
    rendered_rules = render_ruleset(GUARD).split("flush chain")[1].splitlines()
    rules = [line for line in rendered_rules if line.startswith("\t\t")]
    assert kinds.count("rule") == len(rules)

    other = replace(GUARD, cidr=IPv4Network("172.16.0.0/12"), exempt_sources=(), exempt_destinations=())
    inside(pair.a, lambda: apply_guard(other))
    assert pair.drops() == first
    pod_c, pod_d = IPv4Address("172.16.1.7"), IPv4Address("172.16.2.9")
    pair.neighbour(pod_d, "eth0", pair.mac("b0"))
    sends = {"old-cidr": icmp(pair, POD_A, POD_B), "new-cidr": icmp(pair, pod_c, pod_d)}
    seen, _ = arrivals(pair, tmp_path, sends, expected={"old-cidr"})
    assert seen == {"old-cidr"}
    after = pair.drops()
    assert after is not None and after.packets == 3


@needs_root
@pytest.mark.netns
def test_remove_is_idempotent_and_lets_plaintext_out_again(pair: Pair, tmp_path: Path) -> None:
    assert inside(pair.a, remove_guard) is False
    inside(pair.a, lambda: apply_guard(GUARD))
    # The guard is in A only: not in B, not in the machine's namespace (checked by the fixture too).
    assert TABLE in netns.run(pair.a, ["nft", "list", "tables"]).stdout
    assert netns.run(pair.b, ["nft", "list", "tables"]).stdout.strip() == ""
    assert inside(pair.b, read_drops) is None
    assert inside(pair.a, remove_guard) is True
    assert inside(pair.a, remove_guard) is False
    assert pair.drops() is None
    assert netns.run(pair.a, ["nft", "list", "ruleset"]).stdout.strip() == ""
    seen, _ = arrivals(pair, tmp_path, {"plain": icmp(pair, POD_A, POD_B)}, expected={"plain"})
    assert seen == {"plain"}


@needs_root
@pytest.mark.netns
def test_a_refused_apply_is_one_line_and_changes_nothing(pair: Pair) -> None:
    foreign = f"table ip {TABLE} {{\n\tchain egress {{\n\t\ttype filter hook output priority 0;\n\t}}\n}}\n"
    netns.run(pair.a, ["nft", "-f", "-"], input=foreign)
    before = netns.run(pair.a, ["nft", "list", "ruleset"]).stdout
    with pytest.raises(DatapathError) as refused:
        inside(pair.a, lambda: apply_guard(GUARD))
    message = str(refused.value)
    assert message.startswith("cannot apply the strict-mode guard: nft -f -: ") and "\n" not in message
    assert "Operation not supported" in message
    assert netns.run(pair.a, ["nft", "list", "ruleset"]).stdout == before
    assert COUNTER not in before


@needs_root
@pytest.mark.netns
def test_the_bound_socket_goes_out_its_device_whatever_the_routes_say(pair: Pair, tmp_path: Path) -> None:
    for route in (["10.0.2.0/24", "dev", "eth1"], ["unreachable", "10.0.2.0/24"]):
        netns.run(pair.a, ["ip", "route", "replace", *route])
        capture = PcapCapture(pair.b, tmp_path / "b0.pcap", iface="b0")
        try:
            payload = token("via-eth0")
            inject_plaintext(pair.a, src=POD_A, dst=POD_B, device="eth0", payload=payload)
            capture.wait_for({payload})
            assert payload in b"".join(bytes(p) for p in capture.packets()), route
        finally:
            capture.stop()


@needs_root
@pytest.mark.netns
def test_injecting_out_a_missing_device_is_a_clear_error(pair: Pair) -> None:
    with pytest.raises(PlaintextProbeError) as refused:
        inject_plaintext(pair.a, src=POD_A, dst=POD_B, device="nope0", payload=b"x")
    assert str(refused.value) == f"cannot bind to device nope0 in {pair.a}: No such device"
