"""What `status`, `encryption status` and `encryption sa list` report, gathered from the store and agents."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Any

from ciphermesh.keys import KeyLine, KeyLineError, esp_sa_entry, parse_line
from ciphermesh.lab.cluster import agent_status, connect
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.processes import pid_alive
from ciphermesh.store.kubernetes.client import NOT_FOUND, KubeApiError
from ciphermesh.store.model import Node

UNKNOWN = "unknown"


def cluster_status(info: LabInfo) -> dict[str, Any]:
    """Every node as the store has it, with its agent's own view (None where the agent is silent)."""
    with connect(info) as store:
        try:
            records = {v.value.name: v.value for v in store.list_nodes()}
        except KubeApiError as exc:
            if exc.code != NOT_FOUND:
                raise
            # No CiliumNode resource: the chart (which brings the CRD) is not installed, as after a bare
            # `lab up --control-plane kubernetes`.
            raise LabError(f"lab {info.name}: ciphermesh is not installed on its Kubernetes API server (no "
                           "CiliumNode resource): create the key secret, then `ciphermesh install`") from None
        # A killed operator's record outlives it by its lease's TTL: only one whose process runs counts.
        operators = [op.id for op in store.list_operators() if pid_alive(op.pid)]
    nodes = []
    for name in info.nodes:
        record = records.get(name)
        live = agent_status(info, name)
        nodes.append(_node_entry(name, info.node_ips[name], record, live))
    total = len(info.nodes)
    reachable = sum(
        1 for entry in nodes
        if entry["agent"] == "ready" and entry["health"]["reachable"] == total - 1
    )
    return {
        "lab": info.name,
        "nodes": nodes,
        "operator": {"running": bool(operators), "ids": operators},
        "clusterHealth": {"reachable": reachable, "total": total},
    }


def _node_entry(name: str, node_ip: str, record: Node | None, live: dict[str, Any] | None) -> dict[str, Any]:
    encryption = dict(record.encryption) if record else {}
    errors = list(record.errors) if record else []
    if live is not None:
        errors = list(dict.fromkeys([*live.get("errors", []), *errors]))
        encryption |= {k: v for k, v in live.get("encryption", {}).items()
                       if k in ("mode", "engine", "engineReason")}
    else:
        # What a silent agent runs now is not known; the store's record says only what it last published.
        encryption["mode"] = UNKNOWN
    return {
        "name": name,
        "nodeIP": node_ip,
        "routerIP": record.router_ip if record else None,
        "podCIDRs": list(record.pod_cidrs) if record else [],
        "bootID": record.boot_id if record else None,
        "publicKey": record.wg_pub_key if record else None,
        "agent": live["agent"] if live else ("not answering" if record else "absent"),
        "encryption": {
            "mode": encryption.get("mode", UNKNOWN),
            "engine": encryption.get("engine"),
            "keyID": record.key_id if record else None,
        },
        # Beside `encryption`, whose three fields contracts.md fixes.
        "nodeEncryption": bool(encryption.get("nodeEncryption")),
        "engineReason": encryption.get("engineReason"),
        # Where its settings came from: the ConfigMap, then any CiliumNodeConfig (Kubernetes only).
        "configSources": live.get("configSources", []) if live else [],
        "health": live["health"] if live else {"reachable": 0, "probed": 0, "peers": []},
        "waiting": live.get("waiting", []) if live else [],
        "errors": errors,
        "live": live,
    }


def encryption_status(info: LabInfo) -> dict[str, Any]:
    """Per node and summed, with Cilium's notions: keys in use, highest sequence number, errors by name."""
    status = cluster_status(info)
    entries = []
    expected = 2 * (len(info.nodes) - 1)
    for node in status["nodes"]:
        if node["live"] is None:
            entries.append(_silent_entry(node))
            continue
        engine = node["live"].get("encryption", {}).get("engineStatus") or {}
        peers = engine.get("peers", [])
        entry = {
            "name": node["name"],
            "mode": node["encryption"]["mode"],
            "engine": node["encryption"]["engine"],
            "keyID": node["encryption"]["keyID"],
            "nodeEncryption": node["nodeEncryption"],
            "strictMode": (node["live"] or {}).get("encryption", {}).get("strictMode"),
            "keysInUse": engine.get("keysInUse", 0),
            "maxSeq": engine.get("maxSeq", 0),
            "errors": engine.get("errors", {}),
            "errorCount": engine.get("errorCount", 0),
            "rotationInProgress": any(len(p.get("inSPIs", [])) > 1 for p in peers),
            "peers": peers,
            "agent": node["agent"],
            "problems": node["errors"],
        }
        if entry["mode"] == "wireguard":
            entry.update(_wireguard_entry(node["publicKey"], engine))
        entries.append(entry)
    # The summary is of the nodes that answered: a silent one's numbers are unknown, not zero.
    answering = [entry for entry in entries if entry["mode"] != UNKNOWN]
    modes = {entry["mode"] for entry in answering}
    errors: dict[str, int] = {}
    for entry in answering:
        for name, count in entry["errors"].items():
            errors[name] = errors.get(name, 0) + count
    keys_in_use = {entry["keysInUse"] for entry in answering}
    mode = UNKNOWN if not modes else modes.pop() if len(modes) == 1 else "mixed"
    return {
        "nodes": entries,
        "summary": {
            "mode": mode,
            "nodes": len(entries),
            "answering": len(answering),
            "notAnswering": [entry["name"] for entry in entries if entry["mode"] == UNKNOWN],
            "nodeEncryption": _agreed(entry["nodeEncryption"] for entry in answering),
            "keysInUse": sorted(keys_in_use),
            "expectedKeyCount": expected,
            "maxSeq": max((entry["maxSeq"] for entry in answering), default=0),
            "errorCount": sum(errors.values()),
            "errors": errors,
            "rotationInProgress": mode == "ipsec" and (
                any(e["rotationInProgress"] for e in answering) or any(k != expected for k in keys_in_use)
            ),
        },
    }


def _silent_entry(node: dict[str, Any]) -> dict[str, Any]:
    """A node whose agent does not answer: the store's key ID, every live number unknown (null)."""
    return {
        "name": node["name"], "mode": UNKNOWN, "engine": node["encryption"]["engine"],
        "keyID": node["encryption"]["keyID"], "nodeEncryption": node["nodeEncryption"], "strictMode": None,
        "keysInUse": None, "maxSeq": None, "errors": {}, "errorCount": None, "rotationInProgress": None,
        "peers": [], "agent": node["agent"],
        "problems": [f"agent {node['agent']}: its mode and numbers are unknown", *node["errors"]],
    }


def _agreed(flags: Iterable[bool]) -> str:
    """Cilium's words for node encryption across the nodes: Enabled, Disabled, or mixed."""
    seen = set(flags)
    if seen == {True}:
        return "Enabled"
    return "Disabled" if seen <= {False} else "mixed"


def _wireguard_entry(published_key: str | None, engine: dict[str, Any]) -> dict[str, Any]:
    """Cilium's WireGuard status (interface, public key, peers), each peer's handshake and bytes."""
    # I/O failures of the engine are errors; the protocol's drops (a few unknownIndex are seen at
    # start-up, when both ends handshake at once) are reported apart.
    errors = dict(engine.get("engineDrops", {}))
    peers = [
        {"publicKey": p["publicKey"], "endpoint": p["endpoint"], "allowedIPs": p["allowedIps"],
         "latestHandshake": p["latestHandshake"], "rxBytes": p["rxBytes"], "txBytes": p["txBytes"]}
        for p in engine.get("peers", [])
    ]
    return {
        "interface": engine.get("interface"),
        "publicKey": engine.get("publicKey", published_key),
        "listenPort": engine.get("listenPort"),
        "peerCount": len(peers),
        "peers": peers,
        "drops": engine.get("drops", {}),
        "errors": errors,
        "errorCount": sum(errors.values()),
    }


@dataclass(frozen=True)
class TunnelSA:
    """One direction of one tunnel as a node's engine holds it: `shown` as the agent showed the key line,
    `key` the key itself, only when revealed."""

    node: str
    direction: str
    src: IPv4Address
    dst: IPv4Address
    spi: int
    shown: str
    key: KeyLine | None = None

    def as_dict(self, reveal: bool) -> dict[str, Any]:
        key = self.key.format(reveal=reveal) if self.key is not None else self.shown
        return {"node": self.node, "direction": self.direction, "src": str(self.src), "dst": str(self.dst),
                "spi": self.spi, "key": key}

    def wireshark(self) -> str:
        if self.key is None:
            raise ValueError(f"SA {self.spi:#010x} {self.src} -> {self.dst}: its key was not revealed")
        return esp_sa_entry(self.key, self.src, self.dst)


def security_associations(info: LabInfo, reveal: bool = False) -> list[TunnelSA]:
    """Every SA every node's engine holds, asked of each agent (keys only with `reveal`)."""
    sas: list[TunnelSA] = []
    for name in info.nodes:
        live = agent_status(info, name, reveal=reveal)
        engine = ((live or {}).get("encryption") or {}).get("engineStatus") or {}
        for entry in engine.get("sas", []):
            src, dst = ip_address(entry["src"]), ip_address(entry["dst"])
            if not isinstance(src, IPv4Address) or not isinstance(dst, IPv4Address):
                continue
            key = _revealed_key(entry["key"]) if reveal else None
            sas.append(TunnelSA(name, entry["direction"], src, dst, entry["spi"], entry["key"], key))
    return sas


def _revealed_key(text: str) -> KeyLine | None:
    try:
        return parse_line(text)
    except KeyLineError:
        return None
