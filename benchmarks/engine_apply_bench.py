"""The agent's plan-and-apply for many peers, kernel engine beside userspace engine, in one run.

For N simulated peers (CiliumNode records) one node plans its datapath as the agent does (per-tunnel key
derivation included) and its engine applies it: first apply, a re-apply of the same plan (nothing to
change), and a key rotation (every peer moves to a new SPI: plan and apply). The kernel engine runs where
the kernel has ESP (a VM here: `ciphermesh lab vm -- .venv/bin/python benchmarks/engine_apply_bench.py`).
Run as root: `.venv/bin/python benchmarks/engine_apply_bench.py [--peers 1000] [-o markdown]`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.agent.plan import plan
from ciphermesh.datapath.desired import DesiredDatapath
from ciphermesh.datapath.face import Engine, open_engine, plan_mtus, probe_kernel_esp
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links
from ciphermesh.keys import KeyLine, generate_line, next_key_id
from ciphermesh.lab import netns
from ciphermesh.store.model import Node

LOCAL_POD_CIDR = IPv4Network("10.0.0.0/24")


def _nodes(peers: int, key_id: int) -> list[Node]:
    """The local node first, then `peers` others: pod CIDRs 10.x.y.0/24, node IPs from 172.16.0.1 on."""
    nodes = []
    for index in range(peers + 1):
        high, low = divmod(index, 256)
        cidr = IPv4Network(f"10.{high}.{low}.0/24") if index else LOCAL_POD_CIDR
        nodes.append(Node(name=f"node-{index}", node_ip=str(IPv4Address("172.16.0.1") + index),
                          boot_id=str(uuid.uuid4()), router_ip=str(next(cidr.hosts())),
                          pod_cidrs=(str(cidr),), key_id=key_id, encryption={"mode": "ipsec"}))
    return nodes


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = action()
    return result, round((time.perf_counter() - began) * 1000, 1)


def _planned(nodes: list[Node], keys: dict[int, KeyLine], current: int) -> DesiredDatapath:
    return plan(nodes[0], nodes, mode="ipsec", keys=keys, current_key_id=current)


def bench_engine(kind: str, peers: int) -> dict[str, Any] | str:
    """Milliseconds of each step for one engine kind, in a namespace of its own; why not, if it cannot run."""
    name = f"ea{secrets.token_hex(2)}"
    netns.create(name)
    try:
        for argv in (["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                     ["ip", "addr", "add", "172.16.0.1/12", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"]):
            netns.run(name, argv)
        with netns.entered(name), netns.iproute(name) as ipr:
            if kind == "kernel" and not (esp := probe_kernel_esp()).available:
                return f"kernel engine skipped: {esp.reason}"
            ensure_node_links(ipr, NodeLinks(IPv4Address("172.16.0.1"), LOCAL_POD_CIDR, plan_mtus("ipsec")))
            engine: Engine = open_engine(kind, "ipsec", mtu=plan_mtus("ipsec").pod)  # type: ignore[arg-type]
            try:
                old = generate_line()
                new = generate_line(key_id=next_key_id(old.key_id))
                nodes = _nodes(peers, old.key_id)
                desired, plan_ms = _timed(lambda: _planned(nodes, {old.key_id: old}, old.key_id))
                _, apply_ms = _timed(lambda: engine.apply(desired))
                _, reapply_ms = _timed(lambda: engine.apply(desired))
                rotated = [*nodes[:1], *(replace(n, key_id=new.key_id) for n in nodes[1:])]
                keys = {old.key_id: old, new.key_id: new}
                moved, rotate_plan_ms = _timed(lambda: _planned(rotated, keys, new.key_id))
                _, rotate_apply_ms = _timed(lambda: engine.apply(moved))
                status = engine.status() or {}
            finally:
                engine.close()
    finally:
        netns.delete(name)
    return {"engine": kind, "peers": peers, "planMs": plan_ms, "applyMs": apply_ms, "reapplyMs": reapply_ms,
            "rotationPlanMs": rotate_plan_ms, "rotationApplyMs": rotate_apply_ms,
            "sasHeld": len(status.get("sas", []))}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | peers | plan ms | first apply ms | re-apply ms | rotation plan ms "
             "| rotation apply ms | SAs held after |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['peers']} | {r['planMs']} | {r['applyMs']} | {r['reapplyMs']} | "
              f"{r['rotationPlanMs']} | {r['rotationApplyMs']} | {r['sasHeld']} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("-o", "--output", choices=("json", "markdown"), default="json")
    args = parser.parse_args()
    rows = []
    for kind in ("userspace", "kernel"):
        row = bench_engine(kind, args.peers)
        if isinstance(row, str):
            print(row)
        else:
            rows.append(row)
    for row in rows:
        print(json.dumps(row))
    if args.output == "markdown":
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
