"""The ESP demo: per-tunnel keys for two nodes, ICMP echoes in ESP tunnel mode, verified by tshark.

Run as `python -m ciphermesh.demo --out DIR`; exits non-zero unless tshark verifies every frame.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from ciphermesh import inet
from ciphermesh.esp.ciphers import cipher_for
from ciphermesh.esp.packet import wrap_ipv4
from ciphermesh.esp.sa import OutboundSA
from ciphermesh.keys import (
    KeyLine,
    KeyLineError,
    derive_tunnel_key,
    describe_line,
    esp_sa_entry,
    generate_line,
    parse_secret,
)
from ciphermesh.pcap import build_pcap
from ciphermesh.tshark import EspFrame, TsharkError, decrypt_esp

PCAP_NAME = "esp-demo.pcap"
SA_FILE_NAME = "esp_sa.txt"
MAX_PINGS = 1000
INNER_FIELDS = ("icmp.type", "icmp.seq")
_ICMP_ID = 0x4D43


@dataclass(frozen=True)
class Node:
    """One side of the tunnel: its name, router (outer) IP, a pod IP behind it and its boot ID."""

    name: str
    router_ip: IPv4Address
    pod_ip: IPv4Address
    boot_id: str


@dataclass(frozen=True)
class Verification:
    """tshark's verdict on a demo capture: every frame must carry ESP whose ICV verified."""

    frames: tuple[EspFrame, ...]
    expected_frames: int

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per problem; empty when tshark verified every expected frame."""
        problems = [
            f"frame {f.number}: ICV not verified (esp.icv_good={f.first('esp.icv_good')}, "
            f"esp.icv_bad={f.first('esp.icv_bad')})"
            for f in self.frames
            if not f.icv_good
        ]
        problems += [
            f"frame {f.number}: no inner ICMP after decryption ({':'.join(f.protocols)})"
            for f in self.frames
            if f.icv_good and "icmp" not in f.protocols
        ]
        if len(self.frames) != self.expected_frames:
            problems.append(f"tshark read {len(self.frames)} frames, expected {self.expected_frames}")
        return tuple(problems)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_capture(pcap: Path, sa_entries: Sequence[str], expected_frames: int) -> Verification:
    """Have tshark decrypt `pcap` with `sa_entries` and judge every frame."""
    frames = decrypt_esp(pcap, sa_entries, extra_fields=INNER_FIELDS)
    return Verification(tuple(frames), expected_frames)


def icmp_echo(src: IPv4Address, dst: IPv4Address, seq: int, *, reply: bool, payload: bytes) -> bytes:
    """An IPv4 ICMP echo request or reply with valid checksums."""
    return inet.icmp_echo(
        src, dst, payload, ident=_ICMP_ID, seq=seq, ip_id=seq, reply=reply, dont_fragment=True
    )


def tunnel_keys(line: KeyLine, a: Node, b: Node) -> tuple[KeyLine, KeyLine]:
    """The per-tunnel keys of the SA a->b and of the SA b->a."""
    return (
        derive_tunnel_key(line, a.router_ip, b.router_ip, a.boot_id, b.boot_id),
        derive_tunnel_key(line, b.router_ip, a.router_ip, b.boot_id, a.boot_id),
    )


def build_capture(keys: tuple[KeyLine, KeyLine], a: Node, b: Node, pings: int, start_ns: int) -> bytes:
    """The demo pcap: echo requests a->b and replies b->a, each in ESP tunnel mode under its SA's key."""
    a_to_b, b_to_a = keys
    # tshark 4.0 has no ESN support, so this capture is made with ESN off (the agents use ESN on).
    out_a = OutboundSA(a_to_b.key_id, cipher_for(a_to_b.material), esn=False)
    out_b = OutboundSA(b_to_a.key_id, cipher_for(b_to_a.material), esn=False)
    packets = []
    for seq in range(1, pings + 1):
        payload = f"ciphermesh demo ping {seq}".encode()
        request = icmp_echo(a.pod_ip, b.pod_ip, seq, reply=False, payload=payload)
        reply = icmp_echo(b.pod_ip, a.pod_ip, seq, reply=True, payload=payload)
        packets.append(
            (start_ns + seq * 1_000_000_000, wrap_ipv4(a.router_ip, b.router_ip, out_a.encapsulate(request)))
        )
        packets.append(
            (
                start_ns + seq * 1_000_000_000 + 250_000,
                wrap_ipv4(b.router_ip, a.router_ip, out_b.encapsulate(reply)),
            )
        )
    return build_pcap(packets)


def sa_entries(keys: tuple[KeyLine, KeyLine], a: Node, b: Node) -> list[str]:
    """The tshark `uat:esp_sa` records of both SAs."""
    return [esp_sa_entry(keys[0], a.router_ip, b.router_ip), esp_sa_entry(keys[1], b.router_ip, a.router_ip)]


def fingerprint(line: KeyLine) -> str:
    """A short SHA-256 fingerprint of a line's key material: tells keys apart without showing them."""
    return "sha256:" + hashlib.sha256(line.format(reveal=True).encode()).hexdigest()[:12]


def run(args: argparse.Namespace) -> int:
    """The demo's steps, printed as a user should see them; 0 only if tshark verified every frame."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    line = _key_line(args.key_file)
    a = Node("node-1", IPv4Address("10.0.1.1"), IPv4Address("10.0.1.5"), args.boot_id_a or str(uuid.uuid4()))
    b = Node("node-2", IPv4Address("10.0.2.1"), IPv4Address("10.0.2.7"), args.boot_id_b or str(uuid.uuid4()))

    print("1. Key line (as in the cilium-ipsec-keys secret)")
    print(f"   {line.format()}")
    print(f"   valid: {describe_line(line)}")
    print("2. Nodes (outer addresses are the router IPs, as on cilium_host)")
    for node in (a, b):
        print(f"   {node.name}  router {node.router_ip}  pod {node.pod_ip}  boot ID {node.boot_id}")
    print("3. Per-tunnel keys, one per direction (Cilium's derivation from the key, both IPs, both boot IDs)")
    try:
        keys = tunnel_keys(line, a, b)
    except KeyLineError as exc:
        return _fail(str(exc))
    for (src, dst), key in zip(((a, b), (b, a)), keys, strict=True):
        print(f"   {src.router_ip} -> {dst.router_ip}  SPI {key.key_id}  key {fingerprint(key)}")
    entries = sa_entries(keys, a, b)
    if args.esp_sa_file is not None:
        given = [e for e in args.esp_sa_file.read_text(encoding="utf-8").splitlines() if e.strip()]
        if given != entries:
            return _fail(f"the esp_sa records in {args.esp_sa_file} differ from the keys derived here")
        print(f"   the records in {args.esp_sa_file} match these keys")

    pcap_path, sa_path = out / PCAP_NAME, out / SA_FILE_NAME
    pcap_path.write_bytes(build_capture(keys, a, b, args.pings, time.time_ns()))
    _write_private(sa_path, "".join(entry + "\n" for entry in entries))
    frames = 2 * args.pings
    print(
        f"4. ESP tunnel mode: {args.pings} ICMP echo requests {a.pod_ip} -> {b.pod_ip} and their replies "
        "(ESN off: tshark 4.0 cannot check ESN)"
    )
    print(f"   wrote {pcap_path} ({frames} frames) and {sa_path} (2 SAs with key material, mode 0600)")

    print(f"5. tshark decrypts and checks every frame with the records in {sa_path}")
    try:
        verification = verify_capture(pcap_path, entries, frames)
    except TsharkError as exc:
        return _fail(str(exc))
    print("   frame  outer                 SPI  seq  icv_good  inner")
    for frame in verification.frames:
        addresses = frame.fields.get("ip.src", ()), frame.fields.get("ip.dst", ())
        outer = f"{_nth(addresses[0], 0)} -> {_nth(addresses[1], 0)}"
        inner = f"{_nth(addresses[0], 1)} -> {_nth(addresses[1], 1)}"
        kind = {str(inet.ICMP_ECHO_REQUEST): "echo request", str(inet.ICMP_ECHO_REPLY): "echo reply"}.get(
            frame.first("icmp.type") or "", "?"
        )
        print(
            f"   {frame.number:<5}  {outer:<20}  {frame.spi or '-':<3}  {frame.sequence or '-':<3}  "
            f"{int(frame.icv_good):<8}  ICMP {kind} {inner} seq {frame.first('icmp.seq') or '-'}"
        )
    if not verification.ok:
        return _fail("tshark did not verify every frame: " + "; ".join(verification.failures))
    print(f"OK: tshark verified the ICV of all {frames} frames and decrypted the ICMP inside")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ciphermesh.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="where to write the capture and the tshark esp_sa records",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="the secret's text (key lines, the last wins); default: a new random key",
    )
    parser.add_argument("--boot-id-a", metavar="ID", help="boot ID of node-1 (default: random)")
    parser.add_argument("--boot-id-b", metavar="ID", help="boot ID of node-2 (default: random)")
    parser.add_argument(
        "--esp-sa-file",
        type=Path,
        metavar="FILE",
        help="esp_sa records derived elsewhere (e.g. `ciphermesh encryption key derive "
        "-o wireshark`), which must equal the ones derived here",
    )
    parser.add_argument("--pings", type=int, default=3, metavar="N", help="echo requests (default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.pings <= MAX_PINGS:
        parser.error(f"--pings must be 1..{MAX_PINGS}")
    try:
        return run(args)
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror}")
    except KeyLineError as exc:
        return _fail(f"invalid key: {exc}")


def _key_line(key_file: Path | None) -> KeyLine:
    if key_file is None:
        return generate_line()
    return parse_secret(key_file.read_text(encoding="utf-8"))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        # The mode given to open() applies only to a new file; an existing one is tightened here.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _nth(values: tuple[str, ...], index: int) -> str:
    return values[index] if len(values) > index else "?"


def _fail(message: str) -> int:
    print(f"FAILED: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
