"""`ciphermesh status`, `encryption status` and `encryption sa list`: tables for people, JSON for programs."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from ciphermesh.cli.errors import CliError
from ciphermesh.config import parse_duration
from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.inspect import cluster_status, encryption_status, security_associations
from ciphermesh.lab.state import LabNameError
from ciphermesh.store.errors import StoreError

DEFAULT_LAB = "cm"
_MODE_NAMES = {"ipsec": "IPsec", "wireguard": "Wireguard", "disabled": "Disabled", "mixed": "Mixed",
               "unknown": "Unknown"}


def _lab(args: argparse.Namespace) -> LabInfo:
    try:
        return load_lab(args.lab)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None


def _gather(what: Any, info: LabInfo, *rest: Any) -> Any:
    try:
        return what(info, *rest)
    except LabError as exc:
        # A LabError names its lab already; a StoreError does not.
        raise CliError(str(exc)) from None
    except StoreError as exc:
        raise CliError(f"lab {info.name}: {exc}") from None


def _settled(status: dict[str, Any]) -> str | None:
    """None once every agent is ready, all encrypt alike and reach every peer; else what is missing."""
    nodes = status["nodes"]
    waiting = [f"{n['name']}: agent {n['agent']}" for n in nodes if n["agent"] != "ready"]
    if waiting:
        return "; ".join(waiting)
    modes = {n["encryption"]["mode"] for n in nodes}
    if len(modes) > 1:
        return "nodes disagree on the encryption mode: " + ", ".join(
            f"{n['name']} {n['encryption']['mode']}" for n in nodes)
    health = status["clusterHealth"]
    if health["reachable"] != health["total"]:
        return f"{health['reachable']}/{health['total']} nodes reach every peer"
    return None


def _wait_settled(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster's status once settled (as `cilium status --wait`), or CliError at the deadline."""
    deadline = time.monotonic() + args.wait_duration
    while True:
        try:
            status = cluster_status(_lab(args))
            missing = _settled(status)
        except (CliError, LabError, StoreError) as exc:
            status, missing = None, str(exc)
        if status is not None and missing is None:
            return status
        if time.monotonic() > deadline:
            raise CliError(f"lab {args.lab} not ready after {args.wait_duration:.0f} s: {missing}")
        time.sleep(1.0)


def _print_engine_reasons(console: Console, nodes: list[dict[str, Any]]) -> None:
    """Why each node runs its engine, one line per distinct engine and reason."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        engine, reason = node["encryption"]["engine"], node.get("engineReason")
        if engine and reason:
            reasons.setdefault((engine, reason), []).append(node["name"])
    for (engine, reason), names in reasons.items():
        console.print(f"Engine {engine} on {', '.join(names)}: {reason}", highlight=False)


def _status(args: argparse.Namespace) -> int:
    status = _wait_settled(args) if args.wait else _gather(cluster_status, _lab(args))
    for node in status["nodes"]:
        node.pop("live")
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    console = Console()
    table = Table("NODE", "NODE IP", "ROUTER IP", "POD CIDR", "AGENT", "ENCRYPTION", "KEY ID", "HEALTH",
                  box=None)
    total = len(status["nodes"])
    for node in status["nodes"]:
        enc = node["encryption"]
        mode = _MODE_NAMES.get(enc["mode"], enc["mode"])
        engine = f" ({enc['engine']})" if enc["engine"] else ""
        health = f"{node['health']['reachable'] + 1}/{total}" if node["agent"] == "ready" else "-"
        cidrs = ",".join(node["podCIDRs"]) or "-"
        table.add_row(node["name"], node["nodeIP"], node["routerIP"] or "-", cidrs, node["agent"],
                      mode + engine, str(enc["keyID"] or "-"), health)
    console.print(table)
    health = status["clusterHealth"]
    console.print(f"Operator: {'running' if status['operator']['running'] else 'not running'}")
    _print_engine_reasons(console, status["nodes"])
    console.print(f"Cluster health: {health['reachable']}/{health['total']} reachable")
    for node in status["nodes"]:
        for line in [*node["errors"], *node["waiting"]]:
            console.print(f"[yellow]{node['name']}[/]: {line}", highlight=False)
    return 0 if health["reachable"] == health["total"] else 1


def _encryption_status(args: argparse.Namespace) -> int:
    status = _gather(encryption_status, _lab(args))
    if args.node:
        status["nodes"] = [n for n in status["nodes"] if n["name"] == args.node]
        if not status["nodes"]:
            raise CliError(f"no node {args.node!r} in lab {args.lab}")
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    summary = status["summary"]
    console = Console(highlight=False)
    mode = _MODE_NAMES.get(summary["mode"], summary["mode"])
    ready = sum(1 for n in status["nodes"] if n["agent"] == "ready")
    silent = f"; not answering: {', '.join(summary['notAnswering'])}" if summary["notAnswering"] else ""
    console.print(f"Encryption: {mode} ({ready}/{summary['nodes']} nodes{silent}) "
                  f"[NodeEncryption: {summary['nodeEncryption']}]", markup=False)
    _print_strict_mode(console, status["nodes"])
    if summary["mode"] == "ipsec":
        keys = "/".join(str(k) for k in summary["keysInUse"])
        console.print(f"IPsec keys in use: {keys} on {summary['answering']}/{summary['nodes']}")
        console.print(f"IPsec highest Seq. Number: {summary['maxSeq']:#x} across all nodes")
        console.print(f"IPsec expected key count: {summary['expectedKeyCount']}")
        console.print(f"IPsec key rotation in progress: {str(summary['rotationInProgress']).lower()}")
        console.print(f"IPsec errors: {summary['errorCount']} across all nodes")
        for name, count in sorted(summary["errors"].items()):
            console.print(f"\t{name}: {count}")
    if summary["mode"] == "wireguard":
        _print_wireguard(console, status["nodes"])
        return 0
    table = Table("NODE", "MODE", "KEY ID", "KEYS IN USE", "MAX SEQ. NUMBER", "ERRORS", "ROTATING", box=None)
    for node in status["nodes"]:
        known = node["mode"] != "unknown"
        table.add_row(node["name"], _MODE_NAMES.get(node["mode"], node["mode"]), str(node["keyID"] or "-"),
                      str(node["keysInUse"]) if known else "-", f"{node['maxSeq']:#x}" if known else "-",
                      str(node["errorCount"]) if known else "-",
                      str(node["rotationInProgress"]).lower() if known else "-")
    console.print(table)
    for node in status["nodes"]:
        for problem in node["problems"]:
            console.print(f"[yellow]{node['name']}[/]: {problem}")
    return 0


def _print_strict_mode(console: Console, nodes: list[dict[str, Any]]) -> None:
    """Strict mode's CIDR and, per node, the unencrypted packets it dropped (Cilium: DROP_UNENCRYPTED)."""
    strict = {node["name"]: node["strictMode"] for node in nodes if node.get("strictMode")}
    if not strict:
        return
    cidrs = sorted({entry["cidr"] for entry in strict.values()})
    drops = ", ".join(f"{name}: {entry['unencryptedDrops']}" for name, entry in strict.items())
    console.print(f"Strict mode: {', '.join(cidrs)} on {len(strict)}/{len(nodes)} nodes; "
                  f"unencrypted traffic dropped: {drops}", soft_wrap=True)


def _print_wireguard(console: Console, nodes: list[dict[str, Any]]) -> None:
    """Per node what `cilium-dbg encrypt status` shows for WireGuard, then each peer as `wg show` does."""
    now = time.time()
    for node in nodes:
        if node["mode"] != "wireguard":
            continue
        console.print(f"{node['name']}: Interface: {node['interface'] or '-'}")
        console.print(f"\tPublic key: {node['publicKey'] or '-'}")
        console.print(f"\tNumber of peers: {node['peerCount']}")
        console.print(f"\tErrors: {node['errorCount']}")
        drops = ", ".join(f"{name}: {count}" for name, count in sorted(node["drops"].items()))
        console.print(f"\tDrops: {drops or 0}")
    # As `wg show` prints peers, a line each field: public keys and allowed IPs never fit a table's column.
    for node in nodes:
        for peer in node["peers"]:
            handshake = peer["latestHandshake"]
            ago = f"{max(0, int(now - handshake))} s ago" if handshake else "never"
            console.print(f"{node['name']} peer: {peer['publicKey']}")
            console.print(f"\tendpoint: {peer['endpoint'] or '-'}")
            console.print(f"\tallowed ips: {', '.join(peer['allowedIPs']) or '(none)'}")
            console.print(f"\tlatest handshake: {ago}")
            console.print(f"\ttransfer: {peer['rxBytes']} B received, {peer['txBytes']} B sent")
    for node in nodes:
        for problem in node["problems"]:
            console.print(f"[yellow]{node['name']}[/]: {problem}")


def _sa_list(args: argparse.Namespace) -> int:
    info = _lab(args)
    if args.output == "wireshark" and not args.reveal:
        raise CliError("-o wireshark prints key material: add --reveal to confirm")
    sas = _gather(security_associations, info, args.reveal)
    if args.output == "json":
        print(json.dumps({"sas": [sa.as_dict(args.reveal) for sa in sas]}, indent=2))
    elif args.output == "wireshark":
        # Each direction is installed on both of its nodes; tshark needs it once.
        for entry in dict.fromkeys(sa.wireshark() for sa in sas):
            print(f"-o 'uat:esp_sa:{entry}'")
    else:
        table = Table("NODE", "DIR", "SRC", "DST", "SPI", "KEY", box=None)
        for sa in sas:
            table.add_row(sa.node, sa.direction, str(sa.src), str(sa.dst), f"{sa.spi:#010x}",
                          sa.as_dict(args.reveal)["key"])
        Console().print(table)
    return 0


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="nodes, agents, operator, encryption and cluster health")
    _lab_option(status)
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.add_argument("--wait", action="store_true",
                        help="return once every agent is ready, encrypting alike and reaching every peer")
    status.add_argument("--wait-duration", type=_duration, default=300.0, metavar="DURATION",
                        help="how long --wait waits (default 5m)")
    status.set_defaults(func=_status)


def register_encryption(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`encryption status` and `encryption sa list`, added beside `encryption key`."""
    status = commands.add_parser("status", help="per node and summed: keys in use, sequence numbers, errors")
    _lab_option(status)
    status.add_argument("--node", help="only this node")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=_encryption_status)
    sa = commands.add_parser("sa", help="security associations")
    sa_sub = sa.add_subparsers(dest="sa_command", metavar="SUBCOMMAND", required=True)
    listing = sa_sub.add_parser("list", help="every tunnel's SAs; -o wireshark --reveal for tshark")
    _lab_option(listing)
    listing.add_argument("-o", "--output", choices=("table", "json", "wireshark"), default="table")
    listing.add_argument("--reveal", action="store_true", help="show key material")
    listing.set_defaults(func=_sa_list)
