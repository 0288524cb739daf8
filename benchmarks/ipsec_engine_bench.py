"""One TCP stream (iperf3) through two userspace IPsec engines, beside plain veth, in the same run.

Builds a two-node lab (namespaces, bridge, kernel VXLAN, the engine's routing), runs iperf3 pod to pod
through the engines and node to node over the underlay without them, and prints Gbit/s and CPU seconds
per GB: the engines' own processes, and the whole machine (iperf3 and the kernel included).
Run as root: `.venv/bin/python benchmarks/ipsec_engine_bench.py [--seconds 10] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer, RemoteNode, VxlanPeer
from ciphermesh.datapath.mtu import plan_mtus
from ciphermesh.datapath.netlink.engine_routes import reconcile_engine_routing
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links, router_ip
from ciphermesh.datapath.netlink.vxlan_peers import reconcile_vxlan_peers
from ciphermesh.datapath.userspace.ipsec.runner import control_request
from ciphermesh.datapath.userspace.ipsec.state_file import write_state_file
from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.keys import KeyLine, derive_tunnel_key, generate_line
from ciphermesh.lab import netns
from ciphermesh.lab.topology import NodePlan, build, choose_subnet, host_networks, plan_topology, teardown
from ciphermesh.rtnl.ownership import ESP_TABLE

TUN = "cm_tun0"
MTUS = plan_mtus("ipsec")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BenchNode:
    plan: NodePlan
    cidr: IPv4Network
    boot_id: str

    @property
    def router(self) -> IPv4Address:
        return router_ip(self.cidr)

    @property
    def pod(self) -> IPv4Address:
        return self.cidr.network_address + 5


@dataclass(frozen=True)
class Sample:
    gbit_per_s: float
    engine_cpu_s_per_gb: float | None
    machine_cpu_s_per_gb: float


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def wire(nodes: list[BenchNode]) -> None:
    for node in nodes:
        others = [other for other in nodes if other is not node]
        spec = NodeLinks(node.plan.ip, node.cidr, MTUS)
        with netns.iproute(node.plan.netns) as ipr:
            ensure_node_links(ipr, spec)
            peers = [VxlanPeer(other.plan.ip, other.router) for other in others]
            reconcile_vxlan_peers(ipr, local_router_ip=node.router, peers=peers, table=ESP_TABLE)
        with netns.entered(node.plan.netns), TunDevice(TUN) as tun:
            tun.set_persistent(True)
        with netns.iproute(node.plan.netns) as ipr:
            reconcile_engine_routing(
                ipr,
                tun=TUN,
                local_router_ip=node.router,
                local_pod_cidrs=(node.cidr,),
                remotes=[RemoteNode(other.router, (other.cidr,)) for other in others],
                mtu=MTUS.pod,
            )
        netns.run(node.plan.netns, ["ip", "addr", "add", f"{node.pod}/32", "dev", "lo"])


def engine_state(local: BenchNode, remote: BenchNode, line: KeyLine) -> IPsecEngineState:
    peer = IPsecPeer(
        router_ip=remote.router,
        pod_cidrs=(remote.cidr,),
        out_spi=line.key_id,
        out_key=derive_tunnel_key(line, local.router, remote.router, local.boot_id, remote.boot_id),
        in_keys={
            line.key_id: derive_tunnel_key(line, remote.router, local.router, remote.boot_id, local.boot_id)
        },
    )
    return IPsecEngineState(local.router, (peer,))


@contextmanager
def engines(nodes: list[BenchNode], files: Path, batch: int, offload: bool) -> Iterator[list[int]]:
    line = generate_line(key_id=3)
    processes = []
    try:
        for node, remote in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            state_path = files / f"{node.plan.name}.json"
            control = files / f"{node.plan.name}.sock"
            write_state_file(state_path, engine_state(node, remote, line))
            argv = [
                sys.executable, "-m", "ciphermesh.datapath.userspace.ipsec.runner",
                "--state", str(state_path),
                "--tun", TUN, "--control", str(control), "--batch", str(batch),
                "--offload" if offload else "--no-offload",
            ]  # fmt: skip
            log = files / f"{node.plan.name}.log"
            with open(log, "wb") as output:
                processes.append(netns.popen(node.plan.netns, argv, stdout=output, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 10
            while not control.exists():
                if time.monotonic() > deadline or processes[-1].poll() is not None:
                    raise RuntimeError(
                        f"engine in {node.plan.netns} did not start: {log.read_text().strip()}"
                    )
                time.sleep(0.05)
        yield [process.pid for process in processes]
        for node in nodes:
            errors = control_request(files / f"{node.plan.name}.sock", "status")["errors"]
            if errors:
                print(f"  {node.plan.name} engine errors: {errors}", file=sys.stderr)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def iperf(client: str, server: str, target: IPv4Address, bind: IPv4Address, seconds: float) -> int:
    """Bytes received by the iperf3 server in one TCP stream."""
    daemon = netns.popen(server, ["iperf3", "-s", "-1", "-B", str(target)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", str(target), "-B", str(bind), "-t", str(seconds), "-J"]
        result = netns.run(client, argv, timeout=seconds + 30)
    finally:
        daemon.wait(timeout=10)
    return int(json.loads(result.stdout)["end"]["sum_received"]["bytes"])


def measure(
    client: str,
    server: str,
    *,
    target: IPv4Address,
    bind: IPv4Address,
    seconds: float,
    engine_pids: list[int],
) -> Sample:
    cpu_before = [process_cpu_seconds(pid) for pid in engine_pids]
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    received = iperf(client, server, target, bind, seconds)
    elapsed = time.monotonic() - started
    busy = machine_busy_seconds() - busy_before
    engine_cpu = sum(process_cpu_seconds(pid) for pid in engine_pids) - sum(cpu_before)
    gigabytes = received / 1e9
    return Sample(
        gbit_per_s=received * 8 / seconds / 1e9,
        engine_cpu_s_per_gb=engine_cpu / gigabytes if engine_pids else None,
        # iperf3's setup and teardown around the timed seconds are in `elapsed`, hence the busy time.
        machine_cpu_s_per_gb=busy / gigabytes if elapsed > 0 else 0.0,
    )


def report(name: str, samples: list[Sample]) -> None:
    gbit = statistics.median(sample.gbit_per_s for sample in samples)
    machine = statistics.median(sample.machine_cpu_s_per_gb for sample in samples)
    engine_values = [
        sample.engine_cpu_s_per_gb for sample in samples if sample.engine_cpu_s_per_gb is not None
    ]
    engine = f"{statistics.median(engine_values):6.2f}" if engine_values else "     -"
    runs = ", ".join(f"{sample.gbit_per_s:.2f}" for sample in samples)
    print(f"{name:<32} {gbit:8.2f} {engine:>18} {machine:18.2f}   ({runs})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; the median is shown")
    parser.add_argument(
        "--batches", default="64", help="the engine's packets per source and wakeup; each value is a path"
    )
    parser.add_argument(
        "--modes",
        default="plain,offload",
        help="engine modes to compare, in the same run: plain (no vnet_hdr), offload (GSO writes to the TUN)",
    )
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - {"plain", "offload"}
    if unknown or not modes:
        parser.error(f"--modes takes plain and/or offload, got {args.modes!r}")
    try:
        batches = [int(batch) for batch in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes integers, got {args.batches!r}")
    lab = "cmie" + secrets.token_hex(2)
    plan = plan_topology(lab, 2, choose_subnet(host_networks()))
    try:
        build(plan)
        nodes = [
            BenchNode(node, IPv4Network(f"10.0.{index}.0/24"), str(uuid.uuid4()))
            for index, node in enumerate(plan.nodes, start=1)
        ]
        wire(nodes)
        a, b = nodes
        veth: list[Sample] = []
        engine: dict[tuple[str, int], list[Sample]] = {
            (mode, batch): [] for mode in modes for batch in batches
        }
        with tempfile.TemporaryDirectory(prefix="cmie-bench-") as files:
            for _ in range(args.repeats):  # interleaved, so every path sees the same machine
                veth.append(
                    measure(
                        a.plan.netns,
                        b.plan.netns,
                        target=b.plan.ip,
                        bind=a.plan.ip,
                        seconds=args.seconds,
                        engine_pids=[],
                    )
                )
                for (mode, batch), samples in engine.items():
                    with engines(nodes, Path(files), batch, mode == "offload") as pids:
                        samples.append(
                            measure(
                                a.plan.netns,
                                b.plan.netns,
                                target=b.pod,
                                bind=a.pod,
                                seconds=args.seconds,
                                engine_pids=pids,
                            )
                        )
        print(
            f"one TCP stream, {args.seconds:g} s, median of {args.repeats}; pod MTU {MTUS.pod}; "
            f"nproc {os.cpu_count()}"
        )
        print(
            f"{'path':<32} {'Gbit/s':>8} {'engines CPU-s/GB':>18} {'machine CPU-s/GB':>18}   (runs, Gbit/s)"
        )
        report("veth + bridge, no crypto", veth)
        for (mode, batch), samples in engine.items():
            report(f"ipsec engines {mode}, batch {batch}", samples)
    finally:
        teardown(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
