"""Shared by the ESP interop tests: key lines, tunnel endpoints, inner packets, scapy SAs."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import AUTH_ALGOS, ESP, AuthAlgo, SecurityAssociation
from scapy.packet import Packet, Raw

from ciphermesh.esp.ciphers import cipher_for
from ciphermesh.esp.sa import InboundSA, OutboundSA
from ciphermesh.keys import AeadKey, KeyLine, derive_tunnel_key, parse_line
from ciphermesh.keys.algorithms import AUTH_ALGORITHMS

IPAddress = IPv4Address | IPv6Address

# Outer (tunnel) addresses: the two nodes' router IPs, as on cilium_host.
NODE_A = IPv4Address("10.0.1.1")
NODE_B = IPv4Address("10.0.2.1")
NODE_A6 = IPv6Address("fd00:10:1::1")
NODE_B6 = IPv6Address("fd00:10:2::1")
BOOT_A = "7c0e4c5a-3f1d-4e8b-9a26-1b5d8f0c2e71"
BOOT_B = "d41f9b83-6a2e-4c07-b5e8-93a0c6d7f214"

TCP_PAYLOAD = b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n"
UDP_PAYLOAD = bytes(range(256)) * 5
SCAPY_AUTH = {"hmac(sha256)": "SHA2-256-128", "hmac(sha512)": "SHA2-512-256", "hmac(sha1)": "HMAC-SHA1-96"}


def _hex(label: str, size: int) -> str:
    return hashlib.shake_256(label.encode()).hexdigest(size)


# Global keys as a secret would hold them; every shape the key parser accepts and tshark can check.
KEY_LINES: dict[str, str] = {
    "gcm128": f"3+ rfc4106(gcm(aes)) {_hex('gcm128', 20)} 128",
    "gcm256": f"3+ rfc4106(gcm(aes)) {_hex('gcm256', 36)} 128",
    "gcm192": f"5+ rfc4106(gcm(aes)) {_hex('gcm192', 28)} 128",
    "gcm128-icv12": f"3+ rfc4106(gcm(aes)) {_hex('gcm128-icv12', 20)} 96",
    "gcm128-icv8": f"3+ rfc4106(gcm(aes)) {_hex('gcm128-icv8', 20)} 64",
    # Cilium's CLI writes a 16-byte hmac(sha256) key; RFC 4868 says 32. Both have the kernel's 96-bit ICV.
    "cbc-sha256": f"3+ hmac(sha256) {_hex('sha256-auth', 16)} cbc(aes) {_hex('sha256-enc', 16)}",
    "cbc-sha256-rfc4868": f"4+ hmac(sha256) {_hex('sha256r-auth', 32)} cbc(aes) {_hex('sha256r-enc', 32)}",
    "cbc-sha512": f"3+ hmac(sha512) {_hex('sha512-auth', 32)} cbc(aes) {_hex('sha512-enc', 16)}",
    "cbc-sha1": f"15+ hmac(sha1) {_hex('sha1-auth', 20)} cbc(aes) {_hex('sha1-enc', 24)}",
}


def tunnel_key(name: str, src: IPAddress = NODE_A, dst: IPAddress = NODE_B) -> KeyLine:
    """The per-tunnel key of the SA src -> dst for the named global key (src boots BOOT_A)."""
    boots = (BOOT_A, BOOT_B) if src in (NODE_A, NODE_A6) else (BOOT_B, BOOT_A)
    return derive_tunnel_key(parse_line(KEY_LINES[name]), src, dst, *boots)


def outbound(key: KeyLine, *, esn: bool, first_seq: int = 1) -> OutboundSA:
    return OutboundSA(key.key_id, cipher_for(key.material), esn=esn, first_seq=first_seq)


def inbound(key: KeyLine, *, esn: bool) -> InboundSA:
    return InboundSA(key.key_id, cipher_for(key.material), esn=esn)


def scapy_sa(key: KeyLine, src: IPAddress, dst: IPAddress, *, esn: bool) -> SecurityAssociation:
    """A scapy tunnel-mode SA with the same key, SPI and outer addresses as ours."""
    header: Packet = IP(src=str(src), dst=str(dst)) if src.version == 4 else IPv6(src=str(src), dst=str(dst))
    m = key.material
    if isinstance(m, AeadKey):
        return SecurityAssociation(
            ESP,
            spi=key.key_id,
            crypt_algo="AES-GCM",
            crypt_key=m.key.reveal(),
            crypt_icv_size=m.icv_bits // 8,
            tunnel_header=header,
            esn_en=esn,
        )
    sa = SecurityAssociation(
        ESP,
        spi=key.key_id,
        crypt_algo="AES-CBC",
        crypt_key=m.enc_key.reveal(),
        auth_algo=SCAPY_AUTH[m.auth_algo],
        auth_key=m.auth_key.reveal(),
        tunnel_header=header,
        esn_en=esn,
    )
    sa.auth_algo = scapy_auth(m.auth_algo)
    return sa


def scapy_auth(name: str) -> AuthAlgo:
    """scapy's integrity algorithm for the kernel name, cut to the ICV the kernel (and so Cilium) uses.

    scapy 2.8 knows only RFC 4868's SHA2-256-128; the kernel's default hmac(sha256) truncation is
    96 bits, so that one is scapy's own HMAC-SHA-256 with a 12-byte ICV (scapy truncates to icv_size).
    """
    base = AUTH_ALGOS[SCAPY_AUTH[name]]
    icv_size = AUTH_ALGORITHMS[name].icv_bits // 8
    if icv_size == base.icv_size:
        return base
    return AuthAlgo(f"{base.name.rsplit('-', 1)[0]}-{icv_size * 8}", base.mac, base.digestmod, icv_size)


def inner_packets(version: int = 4, *, reverse: bool = False) -> list[Packet]:
    """Pod-to-pod packets of several protocols and sizes (so padding lengths vary), fully built.

    Forward: node A's pod to node B's pod (echo requests, a TCP segment, a large UDP datagram);
    reverse: the other way (echo replies and the same TCP/UDP payloads).
    """
    if version == 6:
        src6, dst6 = ("fd00:10:2::7", "fd00:10:1::5") if reverse else ("fd00:10:1::5", "fd00:10:2::7")
        echo = ICMPv6EchoReply if reverse else ICMPv6EchoRequest
        built: list[Packet] = [
            IPv6(src=src6, dst=dst6) / echo(id=7, seq=n, data=b"v6" * n) for n in range(1, 4)
        ]
        built.append(IPv6(src=src6, dst=dst6) / TCP(sport=40000, dport=80, flags="PA") / Raw(TCP_PAYLOAD))
        return [IPv6(bytes(p)) for p in built]
    src, dst = ("10.0.2.7", "10.0.1.5") if reverse else ("10.0.1.5", "10.0.2.7")
    packets: list[Packet] = [
        IP(src=src, dst=dst, id=n) / ICMP(type=0 if reverse else 8, id=7, seq=n) / Raw(b"ping" * n)
        for n in range(1, 4)
    ]
    packets.append(IP(src=src, dst=dst) / TCP(sport=40000, dport=80, flags="PA") / Raw(TCP_PAYLOAD))
    packets.append(IP(src=src, dst=dst) / UDP(sport=40001, dport=40002) / Raw(UDP_PAYLOAD))
    return [IP(bytes(p)) for p in packets]
