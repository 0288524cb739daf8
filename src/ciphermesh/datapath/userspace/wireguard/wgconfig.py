"""The WireGuard configuration file as `wg setconf` reads it, plus wg-quick's Address and MTU.

[Interface] PrivateKey, ListenPort, FwMark, Address, MTU; [Peer] PublicKey, PresharedKey, Endpoint,
AllowedIPs, PersistentKeepalive. Keys are case-insensitive, `#` starts a comment, AllowedIPs and
Address may repeat and hold comma-separated lists.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import TypeVar

from ciphermesh.wireguard.keys import InvalidKeyError, PresharedKey, PrivateKey, PublicKey
from ciphermesh.wireguard.peer import Endpoint, PeerConfig

Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface
K = TypeVar("K")

_WG_QUICK_ONLY = {"dns", "table", "preup", "postup", "predown", "postdown", "saveconfig"}


class WgConfigError(ValueError):
    """A configuration problem, as one line that names the file line and never contains a key."""


@dataclass(frozen=True, slots=True)
class PeerSection:
    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: tuple[str, int] | None = None  # host as written (name or address) and port
    allowed_ips: tuple[Network, ...] = ()
    persistent_keepalive: int = 0


@dataclass(frozen=True, slots=True)
class WgConfig:
    private_key: PrivateKey
    listen_port: int | None = None
    fwmark: int = 0
    addresses: tuple[Interface, ...] = ()
    mtu: int | None = None
    peers: tuple[PeerSection, ...] = field(default=())


def load(path: Path) -> WgConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise WgConfigError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise WgConfigError(f"{path}: not a text file") from exc
    return parse(text)


def parse(text: str) -> WgConfig:
    interface: dict[str, tuple[int, str]] | None = None
    addresses: list[tuple[int, str]] = []
    peers: list[tuple[dict[str, tuple[int, str]], list[tuple[int, str]]]] = []
    current: dict[str, tuple[int, str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section == "interface":
                if interface is not None:
                    raise WgConfigError(f"line {number}: a second [Interface] section")
                interface = current = {}
            elif section == "peer":
                current = {}
                peers.append((current, []))
            else:
                raise WgConfigError(f"line {number}: unknown section [{line[1:-1].strip()}]")
            continue
        if current is None:
            raise WgConfigError(f"line {number}: a setting outside [Interface] or [Peer]")
        key, sep, value = line.partition("=")
        # Only a plain word is echoed back: anything else might be a key pasted without its "=".
        if not sep or not key.strip().isalpha():
            raise WgConfigError(f"line {number}: expected Key = Value")
        name, value = key.strip().lower(), value.strip()
        if name == "allowedips" and current is not interface:
            peers[-1][1].append((number, value))
        elif name == "address" and current is interface:
            addresses.append((number, value))
        elif name in current:
            raise WgConfigError(f"line {number}: {key.strip()} is set twice")
        else:
            current[name] = (number, value)
    if interface is None:
        raise WgConfigError("no [Interface] section")
    config = _interface(interface, addresses)
    parsed = tuple(_peer(settings, allowed) for settings, allowed in peers)
    seen: set[PublicKey] = set()
    for peer in parsed:
        if peer.public_key in seen:
            raise WgConfigError(f"peer {peer.public_key.to_base64()} appears twice")
        seen.add(peer.public_key)
    return replace(config, peers=parsed)


def _interface(settings: dict[str, tuple[int, str]], addresses: list[tuple[int, str]]) -> WgConfig:
    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark = 0
    mtu: int | None = None
    for name, (number, value) in settings.items():
        if name == "privatekey":
            private_key = _key(PrivateKey.from_base64, value, number)
        elif name == "listenport":
            listen_port = _int(value, number, "ListenPort", 0, 65535)
        elif name == "fwmark":
            fwmark = 0 if value.lower() == "off" else _int(value, number, "FwMark", 0, 0xFFFFFFFF)
        elif name == "mtu":
            mtu = _int(value, number, "MTU", 576, 65535)
        elif name in _WG_QUICK_ONLY:
            raise WgConfigError(f"line {number}: {name} is a wg-quick setting this engine does not support")
        else:
            raise WgConfigError(f"line {number}: unknown [Interface] setting {name!r}")
    if private_key is None:
        raise WgConfigError("[Interface] has no PrivateKey")
    parsed_addresses: list[Interface] = []
    for number, value in addresses:
        for item in _list(value):
            try:
                parsed_addresses.append(ip_interface(item))
            except ValueError as exc:
                raise WgConfigError(f"line {number}: {item!r} is not an address/prefix") from exc
    return WgConfig(private_key, listen_port, fwmark, tuple(parsed_addresses), mtu)


def _peer(settings: dict[str, tuple[int, str]], allowed: list[tuple[int, str]]) -> PeerSection:
    public_key: PublicKey | None = None
    psk: PresharedKey | None = None
    endpoint: tuple[str, int] | None = None
    keepalive = 0
    for name, (number, value) in settings.items():
        if name == "publickey":
            public_key = _key(PublicKey.from_base64, value, number)
        elif name == "presharedkey":
            psk = _key(PresharedKey.from_base64, value, number)
        elif name == "endpoint":
            endpoint = parse_endpoint(value, number)
        elif name == "persistentkeepalive":
            keepalive = 0 if value.lower() == "off" else _int(value, number, "PersistentKeepalive", 0, 65535)
        else:
            raise WgConfigError(f"line {number}: unknown [Peer] setting {name!r}")
    if public_key is None:
        raise WgConfigError("a [Peer] section has no PublicKey")
    networks: list[Network] = []
    for number, value in allowed:
        for item in _list(value):
            try:
                networks.append(ip_network(item, strict=False))
            except ValueError as exc:
                raise WgConfigError(f"line {number}: {item!r} is not a prefix") from exc
    return PeerSection(public_key, psk, endpoint, tuple(networks), keepalive)


def parse_endpoint(value: str, number: int = 0) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port` as wg(8) writes endpoints."""
    where = f"line {number}: " if number else ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise WgConfigError(f"{where}endpoint {value!r} must be [address]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise WgConfigError(f"{where}endpoint {value!r} must be host:port ([address]:port for IPv6)")
    port = _int(port_text, number, "endpoint port", 1, 65535)
    return host, port


def resolve_endpoint(host: str, port: int) -> Endpoint:
    """The socket address for an endpoint; names are resolved once, IPv4 preferred as wg(8) does."""
    try:
        address = ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise WgConfigError(f"cannot resolve endpoint host {host!r}: {exc.strerror}") from exc
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        address = ip_address(str(infos[0][4][0]))
    if address.version == 4:
        return (str(address), port)
    return (str(address), port, 0, 0)


def peer_config(section: PeerSection) -> PeerConfig:
    endpoint = resolve_endpoint(*section.endpoint) if section.endpoint is not None else None
    return PeerConfig(
        section.public_key, section.preshared_key, endpoint, section.allowed_ips, section.persistent_keepalive
    )


def _key(make: Callable[[str], K], value: str, number: int) -> K:
    try:
        return make(value)
    except InvalidKeyError as exc:
        raise WgConfigError(f"line {number}: {exc}") from exc


def _int(value: str, number: int, what: str, low: int, high: int) -> int:
    where = f"line {number}: " if number else ""
    try:
        parsed = int(value, 0)
    except ValueError as exc:
        raise WgConfigError(f"{where}{what} {value!r} is not a number") from exc
    if not low <= parsed <= high:
        raise WgConfigError(f"{where}{what} must be {low}..{high}, got {parsed}")
    return parsed


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
