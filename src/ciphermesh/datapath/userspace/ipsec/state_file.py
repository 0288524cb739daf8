"""The engine's desired state as a JSON file (mode 0600: it holds the derived keys in the clear).

{"localRouterIP": "10.0.1.1", "peers": [{"routerIP": "10.0.2.1", "podCIDRs": ["10.0.2.0/24"],
 "outSPI": 3, "outKey": "<key line>", "inKeys": {"3": "<key line>"}}]}

Beside it, `.<name>.used` lists a digest of every SA an engine took from the file. A new engine process
starts its counters at 1, and the peer still holds its replay window for those keys, so it refuses a
state with any of them (esp.ledger's rule across processes): the writer must derive new keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer, PodCIDR
from ciphermesh.keys import KeyLine, KeyLineError, parse_line


class StateFileError(ValueError):
    """The state file is missing, unsafe or malformed; the message names the field and never a key."""


def state_to_document(state: IPsecEngineState) -> dict[str, Any]:
    """The JSON document for `state`, key material revealed: write it only where `write_state_file` does."""
    return {
        "localRouterIP": str(state.local_router_ip),
        "peers": [
            {
                "routerIP": str(peer.router_ip),
                "podCIDRs": [str(cidr) for cidr in peer.pod_cidrs],
                "sources": [str(cidr) for cidr in peer.sources],
                "outSPI": peer.out_spi,
                "outKey": peer.out_key.format(reveal=True) if peer.out_key is not None else None,
                "inKeys": {str(spi): key.format(reveal=True) for spi, key in sorted(peer.in_keys.items())},
                "standbyOutKeys": {
                    str(spi): key.format(reveal=True) for spi, key in sorted(peer.standby_out_keys.items())
                },
            }
            for peer in state.peers
        ],
    }


def state_from_document(document: object) -> IPsecEngineState:
    """Parse a state document; StateFileError names the first bad field."""
    root = _mapping(document, "state")
    local = _ipv4(root.get("localRouterIP"), "localRouterIP")
    peers_value = root.get("peers")
    if not isinstance(peers_value, list):
        raise StateFileError("peers: must be a list")
    peers = tuple(_peer(value, f"peers[{index}]") for index, value in enumerate(peers_value))
    try:
        return IPsecEngineState(local, peers)
    except ValueError as exc:
        raise StateFileError(f"state: {exc}") from None


def write_state_file(path: Path, state: IPsecEngineState) -> None:
    """Write atomically with mode 0600 (a reader never sees half a file)."""
    text = json.dumps(state_to_document(state), indent=1) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_state_file(path: Path) -> IPsecEngineState:
    """Read and parse; refuses a file that others than its owner may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateFileError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateFileError(f"{path}: mode {stat.S_IMODE(mode):04o} lets others read keys; use 0600")
        data = file.read()
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # Only the position: the message of a JSON error can quote the text, keys included.
        position = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise StateFileError(f"{path}: not valid JSON{position}") from None
    return state_from_document(document)


def used_path(state_path: Path) -> Path:
    """Where the digests of the SAs engines took from `state_path` are kept."""
    return state_path.with_name(f".{state_path.name}.used")


def sa_digests(state: IPsecEngineState) -> dict[str, str]:
    """A digest of every SA `state` asks for (direction, addresses, SPI, key), naming it without its key."""
    local = state.local_router_ip
    digests = {}
    for index, peer in enumerate(state.peers):
        for direction, keys, src, dst in (("out", peer.out_keys, local, peer.router_ip),
                                          ("in", peer.in_keys, peer.router_ip, local)):
            for spi, key in keys.items():
                text = f"{direction} {src} {dst} {spi} {key.format(reveal=True)}"
                where = f"peers[{index}] ({peer.router_ip}): {direction}bound SPI {spi}"
                digests[hashlib.blake2b(text.encode(), digest_size=16).hexdigest()] = where
    return digests


def read_used(state_path: Path) -> frozenset[str]:
    """The digests recorded beside `state_path` (none if there is no record yet)."""
    try:
        return frozenset(used_path(state_path).read_text().split())
    except FileNotFoundError:
        return frozenset()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"{used_path(state_path)}: cannot be read: {exc}") from None


def check_fresh(state: IPsecEngineState, used: frozenset[str]) -> None:
    """StateFileError naming the first SA of `state` that an earlier engine process used."""
    for digest, where in sa_digests(state).items():
        if digest in used:
            why = "its sequence numbers are gone (the peer would drop them as replays)"
            raise StateFileError(f"{where}: an earlier engine used this key and {why}; "
                                 "derive new keys (a new boot ID)")


def record_used(state_path: Path, digests: frozenset[str]) -> None:
    """Replace the record beside `state_path` atomically (mode 0600)."""
    path = used_path(state_path)
    temporary = path.with_name(f"{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, "".join(f"{digest}\n" for digest in sorted(digests)).encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _peer(value: object, where: str) -> IPsecPeer:
    peer = _mapping(value, where)
    router = _ipv4(peer.get("routerIP"), f"{where}.routerIP")
    cidrs = _networks(peer.get("podCIDRs"), f"{where}.podCIDRs")
    sources = _networks(peer.get("sources", []), f"{where}.sources")
    out_spi = peer.get("outSPI")
    if out_spi is not None and (not isinstance(out_spi, int) or isinstance(out_spi, bool)):
        raise StateFileError(f"{where}.outSPI: must be an integer or null")
    out_key_value = peer.get("outKey")
    out_key = None if out_key_value is None else _key(out_key_value, f"{where}.outKey")
    in_keys = _keys_by_spi(peer.get("inKeys", {}), f"{where}.inKeys")
    standby = _keys_by_spi(peer.get("standbyOutKeys", {}), f"{where}.standbyOutKeys")
    try:
        return IPsecPeer(router, cidrs, out_spi, out_key, in_keys, standby, sources)
    except ValueError as exc:
        raise StateFileError(f"{where}: {exc}") from None


def _networks(value: object, where: str) -> tuple[PodCIDR, ...]:
    if not isinstance(value, list):
        raise StateFileError(f"{where}: must be a list of prefixes")
    return tuple(_network(cidr, f"{where}[{index}]") for index, cidr in enumerate(value))


def _keys_by_spi(value: object, where: str) -> dict[int, KeyLine]:
    keys: dict[int, KeyLine] = {}
    for spi_text, line in _mapping(value, where).items():
        if not isinstance(spi_text, str) or not spi_text.isdigit() or len(spi_text) > 10:
            raise StateFileError(f"{where}: every key must be an SPI in decimal")
        keys[int(spi_text)] = _key(line, f"{where}.{spi_text}")
    return keys


def _mapping(value: object, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise StateFileError(f"{where}: must be an object")
    return value


def _ipv4(value: object, where: str) -> IPv4Address:
    if not isinstance(value, str):
        raise StateFileError(f"{where}: must be an IPv4 address")
    try:
        address = ip_address(value)
    except ValueError:
        raise StateFileError(f"{where}: {value[:45]!r} is not an IP address") from None
    if not isinstance(address, IPv4Address):
        raise StateFileError(f"{where}: {address} is IPv6; the engine's outer header is IPv4 only")
    return address


def _network(value: object, where: str) -> PodCIDR:
    if not isinstance(value, str):
        raise StateFileError(f"{where}: must be a prefix such as 10.0.2.0/24")
    try:
        return ip_network(value)
    except ValueError:
        raise StateFileError(f"{where}: {value[:50]!r} is not a prefix with its host bits zero") from None


def _key(value: object, where: str) -> KeyLine:
    if not isinstance(value, str):
        raise StateFileError(f"{where}: must be a key line")
    try:
        return parse_line(value)
    except KeyLineError as exc:
        raise StateFileError(f"{where}: {exc}") from None
