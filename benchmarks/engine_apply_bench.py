"""The agent's plan-and-apply for many peers, kernel engines beside userspace engines, in one run.

For N simulated peers (CiliumNode records) one node plans its datapath as the agent does (per-tunnel key
derivation included) and its engine applies it: first apply, a re-apply of the same plan (nothing to
change), and for IPsec a key rotation (every peer moves to a new SPI: plan and apply; WireGuard has no
rotation). Kernel engines run where the kernel has ESP or WireGuard (a VM here: `ciphermesh lab vm --
.venv/bin/python benchmarks/engine_apply_bench.py`). Run as root:
`.venv/bin/python benchmarks/engine_apply_bench.py [--peers 1000] [--mode ipsec|wireguard] [-o markdown]`.
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
from ciphermesh.datapath.face import (
    EncryptedMode,
    Engine,
    open_engine,
    plan_mtus,
    probe_kernel_esp,
    probe_kernel_wireguard,
)
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links
from ciphermesh.keys import KeyLine, generate_line, next_key_id
from ciphermesh.lab import netns
from ciphermesh.store.model import WG_PUB_KEY_ANNOTATION, Node
from ciphermesh.wireguard.keys import PrivateKey

LOCAL_POD_CIDR = IPv4Network("10.0.0.0/24")


def _nodes(peers: int, key_id: int, mode: EncryptedMode) -> tuple[list[Node], PrivateKey]:
    """The local node first, then `peers` others: pod CIDRs 10.x.y.0/24, node IPs from 172.16.0.1 on."""
    nodes = []
    count = peers + 1 if mode == "wireguard" else 1
    wg_keys = [PrivateKey.generate(secrets.token_bytes) for _ in range(count)]
    for index in range(peers + 1):
        high, low = divmod(index, 256)
        cidr = IPv4Network(f"10.{high}.{low}.0/24") if index else LOCAL_POD_CIDR
        annotations = ({WG_PUB_KEY_ANNOTATION: wg_keys[index].public_key().to_base64()}
                       if mode == "wireguard" else {})
        nodes.append(Node(name=f"node-{index}", node_ip=str(IPv4Address("172.16.0.1") + index),
                          boot_id=str(uuid.uuid4()), router_ip=str(next(cidr.hosts())),
                          pod_cidrs=(str(cidr),), key_id=key_id, annotations=annotations,
                          encryption={"mode": mode}))
    return nodes, wg_keys[0]


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = action()
    return result, round((time.perf_counter() - began) * 1000, 1)


def _planned(nodes: list[Node], mode: EncryptedMode, keys: dict[int, KeyLine], current: int
             ) -> DesiredDatapath:
    return plan(nodes[0], nodes, mode=mode, keys=keys, current_key_id=current)


def bench_engine(kind: str, mode: EncryptedMode, peers: int) -> dict[str, Any] | str:
    """Milliseconds of each step for one engine, in a namespace of its own; why not, if it cannot run."""
    name = f"ea{secrets.token_hex(2)}"
    netns.create(name)
    try:
        for argv in (["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                     ["ip", "addr", "add", "172.16.0.1/12", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"]):
            netns.run(name, argv)
        with netns.entered(name), netns.iproute(name) as ipr:
            probe = probe_kernel_esp if mode == "ipsec" else probe_kernel_wireguard
            if kind == "kernel" and not (found := probe()).available:
                return f"kernel {mode} engine skipped: {found.reason}"
            ensure_node_links(ipr, NodeLinks(IPv4Address("172.16.0.1"), LOCAL_POD_CIDR, plan_mtus(mode)))
            old = generate_line()
            new = generate_line(key_id=next_key_id(old.key_id))
            nodes, private_key = _nodes(peers, old.key_id, mode)
            engine: Engine = open_engine(kind, mode, mtu=plan_mtus(mode).pod,  # type: ignore[arg-type]
                                         private_key=private_key)
            try:
                desired, plan_ms = _timed(lambda: _planned(nodes, mode, {old.key_id: old}, old.key_id))
                _, apply_ms = _timed(lambda: engine.apply(desired))
                _, reapply_ms = _timed(lambda: engine.apply(desired))
                rotate_plan_ms = rotate_apply_ms = None
                if mode == "ipsec":
                    rotated = [*nodes[:1], *(replace(n, key_id=new.key_id) for n in nodes[1:])]
                    keys = {old.key_id: old, new.key_id: new}
                    moved, rotate_plan_ms = _timed(lambda: _planned(rotated, mode, keys, new.key_id))
                    _, rotate_apply_ms = _timed(lambda: engine.apply(moved))
                status = engine.status() or {}
            finally:
                engine.close()
    finally:
        netns.delete(name)
    return {"engine": kind, "mode": mode, "peers": peers, "planMs": plan_ms, "applyMs": apply_ms,
            "reapplyMs": reapply_ms, "rotationPlanMs": rotate_plan_ms, "rotationApplyMs": rotate_apply_ms,
            "held": len(status.get("sas" if mode == "ipsec" else "peers", []))}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | mode | peers | plan ms | first apply ms | re-apply ms | rotation plan ms "
             "| rotation apply ms | SAs or peers held after |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k in (
        "engine", "mode", "peers", "planMs", "applyMs", "reapplyMs", "rotationPlanMs", "rotationApplyMs",
        "held")) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--mode", choices=("ipsec", "wireguard"), action="append",
                        help="repeatable; both modes by default")
    parser.add_argument("-o", "--output", choices=("json", "markdown"), default="json")
    args = parser.parse_args()
    rows = []
    for mode in args.mode or ("ipsec", "wireguard"):
        for kind in ("userspace", "kernel"):
            row = bench_engine(kind, mode, args.peers)
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
