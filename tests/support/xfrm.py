"""XFRM test helpers: a throwaway namespace, what `ip xfrm` sends (strace) and shows (parsed to Policy)."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface

from ciphermesh.datapath.kernel.xfrm.constants import (
    XFRM_MODE_BEET,
    XFRM_MODE_TRANSPORT,
    XFRM_MODE_TUNNEL,
    XFRM_POLICY_ALLOW,
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)
from ciphermesh.datapath.kernel.xfrm.messages import NLMSG_HEADER
from ciphermesh.datapath.kernel.xfrm.model import Mark, Policy, Selector, Template
from ciphermesh.lab import netns
from tests.support.names import unique_lab

DIRS = {"in": XFRM_POLICY_IN, "out": XFRM_POLICY_OUT, "fwd": XFRM_POLICY_FWD}
ACTIONS = {"allow": XFRM_POLICY_ALLOW, "block": XFRM_POLICY_BLOCK}
MODES = {"transport": XFRM_MODE_TRANSPORT, "tunnel": XFRM_MODE_TUNNEL, "beet": XFRM_MODE_BEET}


@contextlib.contextmanager
def xfrm_netns() -> Iterator[str]:
    """A fresh network namespace for one test, deleted whatever happens."""
    name = f"{unique_lab('xf')}-xfrm"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


@dataclass(frozen=True)
class Sent:
    """One netlink message `ip` sent: its header fields and payload."""

    type: int
    flags: int
    payload: bytes

    def with_header(self, seq: int = 0, pid: int = 0) -> bytes:
        return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(self.payload), self.type, self.flags, seq, pid) + (
            self.payload
        )


_MESSAGE = re.compile(
    r"\{nlmsg_len=(?P<len>\d+), nlmsg_type=(?P<type>0x[0-9a-f]+|\d+), "
    r"nlmsg_flags=(?P<flags>0x[0-9a-f]+|\d+), "
    r'nlmsg_seq=\d+, nlmsg_pid=\d+\}(?:, "(?P<payload>(?:\\x[0-9a-f]{2})*)")?'
)
XFRM_TYPES = range(0x10, 0x30)


def strace_ip(name: str, args: Sequence[str]) -> tuple[list[Sent], subprocess.CompletedProcess[str]]:
    """Run `ip -n <name> <args>` under strace; the XFRM messages it sent, and how it ended."""
    result = subprocess.run(
        ["strace", "-f", "-X", "raw", "-e", "trace=sendmsg,sendto", "-xx", "-s", "65536", "-o", "/dev/stderr",
         "ip", "-n", name, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    sent = []
    for match in _MESSAGE.finditer(result.stderr):
        payload = bytes.fromhex((match["payload"] or "").replace("\\x", ""))
        assert int(match["len"]) == 16 + len(payload), f"strace cut a message short: {match[0][:80]}"
        if int(match["type"], 0) in XFRM_TYPES:
            sent.append(Sent(int(match["type"], 0), int(match["flags"], 0), payload))
    return sent, result


def ip_xfrm(name: str, *args: str) -> str:
    return netns.run(name, ["ip", "-s", "xfrm", *args]).stdout


def _protocol(token: str) -> int:
    return int(token) if token.isdigit() else socket.getprotobyname(token)


def _selector(words: list[str]) -> Selector:
    values = dict(zip(words[::2], words[1::2], strict=False))
    ports = {key: int(values[key]) for key in ("sport", "dport") if key in values}
    return Selector(
        src=ip_interface(values["src"]),
        dst=ip_interface(values["dst"]),
        proto=_protocol(values["proto"]) if "proto" in values else 0,
        sport=ports.get("sport", 0),
        sport_mask=0xFFFF if "sport" in ports else 0,
        dport=ports.get("dport", 0),
        dport_mask=0xFFFF if "dport" in ports else 0,
        user=int(values.get("uid", "0")),
    )


def _template(lines: list[str]) -> Template:
    words = " ".join(lines).split()[1:]
    values = dict(zip(words[::2], words[1::2], strict=False))
    return Template(
        src=ip_address(values["src"]),
        dst=ip_address(values["dst"]),
        proto=_protocol(values["proto"]),
        spi=int(values["spi"].split("(")[0], 16),
        reqid=int(values["reqid"].split("(")[0]),
        mode=MODES[values["mode"]],
        optional=values["level"] == "use",
        ealgos=int(values["enc-mask"], 16),
        aalgos=int(values["auth-mask"], 16),
        calgos=int(values["comp-mask"], 16),
    )


def parse_policies(text: str) -> list[Policy]:
    """`ip -s xfrm policy show` as Policy values, read from the text alone."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append([])
        if line.strip():
            blocks[-1].append(line)
    return [_policy(block) for block in blocks]


def _policy(block: list[str]) -> Policy:
    selector = _selector(block[0].split())
    words = block[1].split()
    values = dict(zip(words[::2], words[1::2], strict=False))
    mark = None
    templates = []
    for number, line in enumerate(block):
        if line.strip().startswith("mark "):
            value, mask = line.split()[1].split("/")
            mark = Mark(int(value, 16), int(mask, 16))
        if line.strip().startswith("tmpl "):
            templates.append(_template(block[number : number + 4]))
    return Policy(
        selector=selector,
        dir=DIRS[values["dir"]],
        priority=int(values["priority"]),
        action=ACTIONS[values["action"]],
        mark=mark,
        templates=tuple(templates),
        index=int(values["index"]),
        flags=int(block[1].rsplit("(", 1)[1].rstrip(")"), 16),
    )
