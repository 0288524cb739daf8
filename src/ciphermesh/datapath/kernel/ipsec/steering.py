"""Steering into XFRM without eBPF: nftables gives each packet the mark Cilium's BPF programs would.

Cilium's BPF marks a pod's packet to a remote pod with the OUT mark of that peer's node ID and key, and
ESP from a peer with its IN mark (reference/cilium-ipsec.md §3.5); XFRM then selects policy and state by
that mark. Here two nftables maps do it: remote pod CIDR -> OUT mark at prerouting (forwarded pod traffic)
and output (the node's own), peer tunnel IP -> IN mark for ESP at prerouting. The node's own ESP, which
XFRM sends back through output, keeps the output mark its state gave it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.datapath.netlink.nft import nft, nft_json
from ciphermesh.rtnl.errors import DatapathError

TABLE = "ciphermesh_xfrm"
OUT_MAP, IN_MAP = "out_marks", "in_marks"


@dataclass(frozen=True)
class Steering:
    """The marks to set: by destination pod CIDR for outgoing packets, by ESP source for incoming ESP."""

    local_tunnel_ip: IPv4Address
    out_marks: Mapping[IPv4Network, int] = field(default_factory=dict)
    in_marks: Mapping[IPv4Address, int] = field(default_factory=dict)
    vxlan_device: str = CILIUM_VXLAN

    def __post_init__(self) -> None:
        if not isinstance(self.local_tunnel_ip, IPv4Address):
            raise ValueError(f"local tunnel IP {self.local_tunnel_ip!r} is not an IPv4 address")
        cidrs = sorted(self.out_marks, key=lambda cidr: (int(cidr.network_address), cidr.prefixlen))
        for before, after in itertools.pairwise(cidrs):
            if before.overlaps(after):
                raise ValueError(f"remote pod CIDRs {before} and {after} overlap")
        for what, marks in (("OUT", self.out_marks), ("IN", self.in_marks)):
            for key, mark in marks.items():
                if not 0 < mark <= 0xFFFFFFFF:
                    raise ValueError(f"{what} mark {mark!r} for {key} is not a 32-bit mark")
        object.__setattr__(self, "out_marks", MappingProxyType(dict(self.out_marks)))
        object.__setattr__(self, "in_marks", MappingProxyType(dict(self.in_marks)))


def _elements(marks: Mapping[IPv4Network, int] | Mapping[IPv4Address, int]) -> str:
    if not marks:
        return ""
    listed = ", ".join(f"{key} : {mark:#x}" for key, mark in sorted(marks.items(), key=lambda kv: str(kv[0])))
    return f"\t\telements = {{ {listed} }}\n"


def render_ruleset(steering: Steering) -> str:
    """One nft transaction: the table if missing, both maps flushed and refilled, the chains rewritten.

    A packet sees either the old marks or the new ones, never none: nft commits the script atomically.
    """
    chains = {
        "prerouting": ("filter hook prerouting priority mangle", [
            f"meta l4proto esp ip daddr {steering.local_tunnel_ip} meta mark set ip saddr map @{IN_MAP}",
            # A pod's own ESP is forwarded like any pod packet: encrypted, so it takes the OUT mark too.
            f"meta mark set ip daddr map @{OUT_MAP}",
        ]),
        "output": ("route hook output priority mangle", [
            f"meta l4proto != esp meta mark set ip daddr map @{OUT_MAP}",
        ]),
        # ESP leaves with its state's output-mark 0xe00, which the VXLAN device would route its UDP by: XFRM
        # would then look that up and Cilium's default-drop policy (0xe00/0xf00) block it. Cilium's BPF
        # redirects past that lookup; here the mark is cleared once the ESP is on its way to cilium_vxlan.
        "postrouting": ("filter hook postrouting priority mangle", [
            f'oifname "{steering.vxlan_device}" meta l4proto esp meta mark set 0',
        ]),
    }
    out_type = "\t\ttype ipv4_addr : mark\n\t\tflags interval\n"
    in_type = "\t\ttype ipv4_addr : mark\n"
    script = [
        f"table ip {TABLE} {{\n"
        f"\tmap {OUT_MAP} {{\n{out_type}\t}}\n"
        f"\tmap {IN_MAP} {{\n{in_type}\t}}\n"
        + "".join(f"\tchain {name} {{\n\t\ttype {hook}; policy accept;\n\t}}\n"
                  for name, (hook, _) in chains.items())
        + "}\n",
        f"flush map ip {TABLE} {OUT_MAP}\n",
        f"flush map ip {TABLE} {IN_MAP}\n",
        *(f"flush chain ip {TABLE} {name}\n" for name in chains),
        f"table ip {TABLE} {{\n"
        f"\tmap {OUT_MAP} {{\n{out_type}{_elements(steering.out_marks)}\t}}\n"
        f"\tmap {IN_MAP} {{\n{in_type}{_elements(steering.in_marks)}\t}}\n"
        + "".join(f"\tchain {name} {{\n" + "".join(f"\t\t{rule}\n" for rule in rules) + "\t}\n"
                  for name, (_, rules) in chains.items())
        + "}\n",
    ]
    return "".join(script)


def apply_steering(steering: Steering, *, netns_fd: int | None = None) -> None:
    """Install or replace the steering table in the current network namespace (or `netns_fd`'s)."""
    try:
        nft(["-f", "-"], render_ruleset(steering), netns_fd=netns_fd)
    except DatapathError as exc:
        raise DatapathError(f"cannot apply the XFRM steering marks: {exc}") from exc


def remove_steering(*, netns_fd: int | None = None) -> bool:
    """Remove the steering table from the current namespace (or `netns_fd`'s); whether there was one."""
    listed = nft_json(["list", "tables", "ip"], netns_fd=netns_fd)
    tables = (item["table"] for item in listed if "table" in item)
    if not any(table.get("name") == TABLE for table in tables):
        return False
    nft(["-f", "-"], f"add table ip {TABLE}\ndelete table ip {TABLE}\n", netns_fd=netns_fd)
    return True
