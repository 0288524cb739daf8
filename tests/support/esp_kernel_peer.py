"""In the VM: our userspace ESP pings the guest kernel's XFRM through Cilium's auth+enc key lines.

Run inside namespace `u` (see tests/vm/test_esp_kernel_interop.py, which makes `u`, `k` and their veth);
the kernel side is namespace `k`, programmed here with `ip` exactly as Cilium's states come out
(XFRMA_ALG_AUTH_TRUNC with truncation 0, ESN, tunnel mode). Writes its findings as JSON.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ciphermesh.esp import CbcHmacCipher, InboundSA, OutboundSA
from ciphermesh.esp.ciphers import cipher_for
from ciphermesh.esp.sa import Decapsulated
from ciphermesh.inet import ICMP_ECHO_REPLY, icmp_echo
from ciphermesh.keys import AuthEncKey, parse_line
from ciphermesh.keys.algorithms import AUTH_ALGORITHMS
from ciphermesh.lab import pace

KERNEL_OUTER, USER_OUTER = IPv4Address("10.77.0.1"), IPv4Address("10.77.0.2")
KERNEL_INNER, USER_INNER = IPv4Address("10.78.0.1"), IPv4Address("10.78.0.2")
KERNEL_NS = "k"
SPI = 3
IDENT = 0x4D43
LINES = {
    "sha256": f"3+ hmac(sha256) {'5a' * 32} cbc(aes) {'c3' * 16}",
    "sha512": f"3+ hmac(sha512) {'7e' * 64} cbc(aes) {'19' * 16}",
}
PROTO_ESP = 50


def _ip(*args: str) -> str:
    return subprocess.run(["ip", "-n", KERNEL_NS, *args], check=True, capture_output=True, text=True).stdout


def _kernel_states(line: str) -> None:
    """Both directions' states as Cilium adds them (truncation 0), and the policies that use them."""
    material = parse_line(line).material
    assert isinstance(material, AuthEncKey)
    _ip("xfrm", "state", "flush")
    _ip("xfrm", "policy", "flush")
    keys = ["auth-trunc", material.auth_algo, "0x" + material.auth_key.reveal().hex(), "0",
            "enc", material.enc_algo, "0x" + material.enc_key.reveal().hex()]
    for src, dst in ((KERNEL_OUTER, USER_OUTER), (USER_OUTER, KERNEL_OUTER)):
        _ip("xfrm", "state", "add", "src", str(src), "dst", str(dst), "proto", "esp", "spi", str(SPI),
            "reqid", "1", "mode", "tunnel", "replay-window", "1024", "flag", "esn", *keys)
    for direction, (src, dst), (outer_src, outer_dst) in (
        ("out", (KERNEL_INNER, USER_INNER), (KERNEL_OUTER, USER_OUTER)),
        ("in", (USER_INNER, KERNEL_INNER), (USER_OUTER, KERNEL_OUTER)),
    ):
        _ip("xfrm", "policy", "add", "src", f"{src}/32", "dst", f"{dst}/32", "dir", direction,
            "tmpl", "src", str(outer_src), "dst", str(outer_dst), "proto", "esp", "reqid", "1",
            "mode", "tunnel")


def _dumped_trunc(algo: str) -> list[int]:
    """The truncation `ip xfrm state` shows for each state: what the kernel made of Cilium's 0."""
    shown = _ip("xfrm", "state")
    return [int(bits) for bits in re.findall(rf"auth-trunc {re.escape(algo)} 0x[0-9a-f]+ (\d+)", shown)]


def _proto_errors() -> int:
    stat = subprocess.run(["ip", "netns", "exec", KERNEL_NS, "cat", "/proc/net/xfrm_stat"],
                          check=True, capture_output=True, text=True).stdout
    match = re.search(r"^XfrmInStateProtoError\s+(\d+)$", stat, re.MULTILINE)
    assert match, stat
    return int(match[1])


def _send_echo(sock: socket.socket, outbound: OutboundSA, seq: int) -> tuple[bytes, bytes]:
    """The echo request sent (inner datagram) and its ICMP payload."""
    payload = f"ciphermesh esp {seq}".encode()
    inner = icmp_echo(USER_INNER, KERNEL_INNER, payload, ident=IDENT, seq=seq, ip_id=seq)
    sock.sendto(outbound.encapsulate(inner), (str(KERNEL_OUTER), 0))
    return inner, payload


def _kernel_esp(sock: socket.socket, timeout: float) -> bytes | None:
    """The next ESP payload the kernel side sends us, or None by `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            packet, (source, _) = sock.recvfrom(65535)
        except TimeoutError:
            return None
        if source == str(KERNEL_OUTER):
            return packet[(packet[0] & 0x0F) * 4:]
    return None


def _echo_reply(inner: bytes, seq: int, payload: bytes) -> bool:
    icmp = inner[(inner[0] & 0x0F) * 4:]
    return (inner[9] == 1 and inner[12:16] == KERNEL_INNER.packed and icmp[0] == ICMP_ECHO_REPLY
            and int.from_bytes(icmp[4:6]) == IDENT and int.from_bytes(icmp[6:8]) == seq
            and icmp[8:] == payload)


def _case(sock: socket.socket, name: str) -> dict[str, Any]:
    line = LINES[name]
    material = parse_line(line).material
    assert isinstance(material, AuthEncKey)
    _kernel_states(line)
    result: dict[str, Any] = {"table_icv_bits": AUTH_ALGORITHMS[material.auth_algo].icv_bits,
                              "dumped_trunc": _dumped_trunc(material.auth_algo)}
    outbound, inbound = OutboundSA(SPI, cipher_for(material)), InboundSA(SPI, cipher_for(material))
    wait = pace.scaled(10)
    request, payload = _send_echo(sock, outbound, 1)
    esp = _kernel_esp(sock, wait)
    result["kernel_replied"] = esp is not None
    if esp is not None:
        opened = inbound.decapsulate(esp)
        result["we_opened"] = str(opened) if not isinstance(opened, Decapsulated) else "ok"
        result["echo_reply"] = isinstance(opened, Decapsulated) and _echo_reply(opened.inner, 1, payload)
        # SPI+seq, a 16-byte IV and the reply (as long as our request) with its 2-byte trailer padded
        # to whole blocks, as the kernel pads: the rest of the kernel's packet is its ICV.
        ciphertext = -(-(len(request) + 2) // 16) * 16
        result["kernel_icv_bytes"] = len(esp) - 8 - 16 - ciphertext
    # RFC 4868's full 128-bit ICV (or any other length than the kernel's): the kernel must refuse it.
    hash_name = AUTH_ALGORITHMS[material.auth_algo].hash_name
    wrong_icv = 16 if name == "sha256" else 24
    wrong = OutboundSA(SPI, CbcHmacCipher(material.enc_key.reveal(), material.auth_key.reveal(), hash_name,
                                          wrong_icv), first_seq=100)
    before = _proto_errors()
    _send_echo(sock, wrong, 100)
    deadline = time.monotonic() + wait
    while _proto_errors() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    result["wrong_icv_proto_errors"] = _proto_errors() - before
    # The kernel counted the drop, so any reply would be here already: a short look suffices.
    result["wrong_icv_replied"] = _kernel_esp(sock, 0.5) is not None
    result["kernel_state"] = _ip("-s", "xfrm", "state")
    return result


def main(results: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_ESP) as sock:
        found = {name: _case(sock, name) for name in LINES}
    # Keys are fixed test values, but the dump still shows them: keep them out of the results.
    for case in found.values():
        case["kernel_state"] = re.sub(r"0x[0-9a-f]{32,}", "0x<key>", case["kernel_state"])
    (results / "esp-kernel.json").write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
