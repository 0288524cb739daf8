"""Strict mode as an nftables guard in the node's namespace: unencrypted pod traffic never leaves the node.

Cilium's `encryption.strictMode` drops, on native-device egress, IPv4 packets still unencrypted whose
source and destination both lie in the strict CIDR. The guard sits under the routing: whatever the routes
say, such a packet is counted and dropped at postrouting on the guarded devices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ciphermesh.datapath.netlink.nft import nft, nft_json
from ciphermesh.rtnl.errors import DatapathError

TABLE = "ciphermesh_strict"
CHAIN = "egress"
COUNTER = "unencrypted"
# Linux allows more in a name, but quotes, backslashes, spaces and a trailing '*' (a wildcard in nft)
# would change what the rule matches; no device ciphermesh guards needs them.
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _check_device(name: object, what: str) -> None:
    if not isinstance(name, str) or not _DEVICE_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r}: use 1 to 15 letters, digits, '_', '.' or '-'")


def _check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{what} {port!r}: a UDP port is 1 to 65535")


@dataclass(frozen=True)
class StrictGuard:
    """Which packets must be encrypted (both ends in `cidr`) on which egress devices, and the exceptions."""

    cidr: IPv4Network
    devices: tuple[str, ...]
    exempt_sources: tuple[IPv4Address, ...] = ()
    exempt_destinations: tuple[IPv4Address, ...] = ()
    wireguard_port: int = 51871
    vxlan_port: int = 8472
    vxlan_device: str = "cilium_vxlan"

    def __post_init__(self) -> None:
        if not isinstance(self.cidr, IPv4Network):
            raise ValueError(f"strict-mode CIDR {self.cidr!r}: only an IPv4 network can be guarded")
        if not self.devices:
            raise ValueError("strict-mode guard: no egress device to guard")
        for device in self.devices:
            _check_device(device, "guarded device")
        _check_device(self.vxlan_device, "VXLAN device")
        for address in (*self.exempt_sources, *self.exempt_destinations):
            if not isinstance(address, IPv4Address):
                raise ValueError(f"strict-mode exemption {address!r}: only IPv4 addresses can be exempt")
        _check_port(self.wireguard_port, "WireGuard port")
        _check_port(self.vxlan_port, "VXLAN port")


@dataclass(frozen=True)
class StrictDrops:
    """What the guard has dropped as unencrypted since its table was created."""

    packets: int
    bytes: int


def _address_set(addresses: Sequence[IPv4Address]) -> str:
    return "{ " + ", ".join(str(address) for address in dict.fromkeys(addresses)) + " }"


def render_ruleset(guard: StrictGuard) -> str:
    """The nft script that creates the table if missing and replaces its rules, in one transaction."""
    devices = ", ".join(f'"{device}"' for device in dict.fromkeys(guard.devices))
    rules = [
        f"oifname != {{ {devices} }} accept",
        f"ip saddr != {guard.cidr} accept",
        f"ip daddr != {guard.cidr} accept",
    ]
    if guard.exempt_sources:
        rules.append(f"ip saddr {_address_set(guard.exempt_sources)} accept")
    if guard.exempt_destinations:
        rules.append(f"ip daddr {_address_set(guard.exempt_destinations)} accept")
    rules += [
        "ip protocol esp accept",
        f"udp sport {guard.wireguard_port} accept",
        f"udp dport {guard.wireguard_port} accept",
        # The VXLAN outer header on the underlay; its inner packet was checked leaving the VXLAN device.
        f'oifname != "{guard.vxlan_device}" udp dport {guard.vxlan_port} accept',
        f'counter name "{COUNTER}" drop comment "unencrypted traffic"',
    ]
    body = "".join(f"\t\t{rule}\n" for rule in rules)
    # Declaring an existing counter leaves its value alone, and the flush commits together with the
    # new rules: a re-apply keeps the drop count and never leaves a moment without the guard.
    return (
        f"table ip {TABLE} {{\n"
        f"\tcounter {COUNTER} {{\n"
        "\t}\n"
        f"\tchain {CHAIN} {{\n"
        "\t\ttype filter hook postrouting priority filter; policy accept;\n"
        "\t}\n"
        "}\n"
        f"flush chain ip {TABLE} {CHAIN}\n"
        f"table ip {TABLE} {{\n"
        f"\tchain {CHAIN} {{\n"
        f"{body}"
        "\t}\n"
        "}\n"
    )


def apply_guard(guard: StrictGuard) -> None:
    """Install or replace the guard in the current network namespace."""
    try:
        nft(["-f", "-"], render_ruleset(guard))
    except DatapathError as exc:
        raise DatapathError(f"cannot apply the strict-mode guard: {exc}") from exc


def _table_present() -> bool:
    tables = (item["table"] for item in nft_json(["list", "tables", "ip"]) if "table" in item)
    return any(table.get("name") == TABLE for table in tables)


def remove_guard() -> bool:
    """Remove the guard's table from the current namespace; whether there was one."""
    if not _table_present():
        return False
    # Adding first makes the delete succeed even if the table went away since the check.
    nft(["-f", "-"], f"add table ip {TABLE}\ndelete table ip {TABLE}\n")
    return True


def read_drops() -> StrictDrops | None:
    """The guard's drop counter in the current namespace, or None without the guard."""
    for item in nft_json(["list", "counters", "ip"]):
        counter = item.get("counter")
        if isinstance(counter, dict) and (counter.get("table"), counter.get("name")) == (TABLE, COUNTER):
            return StrictDrops(int(counter["packets"]), int(counter["bytes"]))
    return None
