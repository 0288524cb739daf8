"""Plan-and-apply of 1000 peers' XFRM objects through the kernel engine's netlink layer, in a namespace.

Per peer, Cilium's v1.17 set: an OUT and an IN state (per-tunnel key, ESN, replay window 1024, marks)
and an OUT policy; plus the default drops and the catch-all IN and FWD policies. Times encoding all of
it, applying the policies (and the states, where the kernel has ESP: not on a host without it), dumping
them back, replacing them (UPDPOLICY) and deleting them. Prints one JSON object (milliseconds).
Run as root: `.venv/bin/python benchmarks/xfrm_apply_bench.py [--peers 1000] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable
from ipaddress import IPv4Address, ip_network

from ciphermesh.datapath.kernel.xfrm import requests as rq
from ciphermesh.datapath.kernel.xfrm.constants import (
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    XFRM_STATE_ESN,
)
from ciphermesh.datapath.kernel.xfrm.model import Aead, Mark, Policy, Selector, State, Template, prefix
from ciphermesh.datapath.kernel.xfrm.netlink_socket import XfrmSocket
from ciphermesh.datapath.kernel.xfrm.probe import probe_kernel_esp
from ciphermesh.keys.secret_bytes import SecretBytes
from ciphermesh.lab import netns

LOCAL = IPv4Address("10.56.0.1")
SPI = 3


def plan(peers: int) -> tuple[list[State], list[Policy]]:
    """Cilium's states and policies on one node for `peers` remote nodes (node IDs 1..peers)."""
    anywhere = Template(optional=True)
    drop = Mark(0xE00, 0xF00)
    policies = [
        Policy(Selector(), XFRM_POLICY_OUT, priority=100, action=XFRM_POLICY_BLOCK, mark=drop),
        Policy(Selector(), XFRM_POLICY_IN, templates=(anywhere,)),
        Policy(Selector(), XFRM_POLICY_FWD, priority=0xB9F, templates=(anywhere,)),
    ]
    states = []
    pods = ip_network("10.128.0.0/9").subnets(new_prefix=24)
    for node_id in range(1, peers + 1):
        remote = IPv4Address(int(LOCAL) + node_id)
        out_mark = Mark((node_id << 16) | (SPI << 12) | 0xE00, 0xFFFFFF00)
        for src, dst, mark, output in (
            (LOCAL, remote, out_mark, 0xE00),
            (remote, LOCAL, Mark((node_id << 16) | 0xD00, 0xFFFF0F00), 0xD00),
        ):
            key = Aead("rfc4106(gcm(aes))", SecretBytes(secrets.token_bytes(20)), 128)
            states.append(
                State(src, dst, SPI, reqid=1, aead=key, flags=XFRM_STATE_ESN, replay_window=1024, mark=mark,
                      output_mark=Mark(output, 0xFFFFFF00))
            )  # fmt: skip
        policies.append(
            Policy(Selector(dst=prefix(str(next(pods)))), XFRM_POLICY_OUT, mark=out_mark,
                   templates=(Template(src=LOCAL, dst=remote, spi=SPI, reqid=1),))
        )  # fmt: skip
    return states, policies


def _timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1000


def run_once(peers: int, name: str, kernel_esp: bool) -> dict[str, float]:
    timings: dict[str, float] = {}
    holder: dict[str, list[rq.Request]] = {}

    def encode() -> None:
        states, policies = plan(peers)
        holder["states"] = [rq.new_state(s) for s in states]
        holder["policies"] = [rq.new_policy(p) for p in policies]
        holder["update"] = [rq.new_policy(p, update=True) for p in policies]
        holder["delete"] = [rq.delete_policy(p.id) for p in policies]

    timings["plan_and_encode"] = _timed(encode)
    with netns.entered(name), XfrmSocket() as sock:
        changes = holder["policies"] + (holder["states"] if kernel_esp else [])
        timings["apply"] = _timed(lambda: sock.apply(changes))
        found: list[Policy] = []
        timings["dump_policies"] = _timed(lambda: found.extend(sock.policies()))
        assert len(found) == len(holder["policies"]), f"{len(found)} policies in the kernel"
        timings["update_policies"] = _timed(lambda: sock.apply(holder["update"]))
        timings["delete_policies"] = _timed(lambda: sock.apply(holder["delete"]))
        sock.apply([rq.flush_states(), rq.flush_policies()])
    timings["plan_encode_apply"] = timings["plan_and_encode"] + timings["apply"]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = f"xfb{secrets.token_hex(2)}-xfrm"
    netns.create(name)
    try:
        with netns.entered(name):
            probe = probe_kernel_esp()
        runs = [run_once(args.peers, name, probe.available) for _ in range(args.repeats)]
    finally:
        netns.delete(name)
    states, policies = plan(args.peers)
    report = {
        "peers": args.peers,
        "policies": len(policies),
        "states": len(states),
        "states_applied": probe.available,
        "kernel_esp": probe.reason,
        "median_ms": {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
