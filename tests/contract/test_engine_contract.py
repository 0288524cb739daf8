"""The engine contract: what every datapath engine must do, run unchanged against every implementation.

Two nodes of a real lab topology (namespaces, bridge, VXLAN), each with its links, routes and engine
through the datapath's face (`NodeDatapath`, `open_engine`). The `engines` fixture lists the
implementations: the userspace IPsec and WireGuard engines and the kernel IPsec and WireGuard engines,
which skip where the kernel has no ESP or no WireGuard (this machine) and run in a VM (tests/vm).
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from ciphermesh.agent.plan import plan
from ciphermesh.datapath.desired import DesiredDatapath
from ciphermesh.datapath.face import (
    ENGINE_KINDS,
    EncryptedMode,
    Engine,
    EngineKind,
    NodeDatapath,
    probe_kernel_esp,
    probe_kernel_wireguard,
)
from ciphermesh.keys import KeyLine, generate_line
from ciphermesh.lab import netns
from ciphermesh.lab.topology import TopologyPlan
from ciphermesh.store.model import WG_PUB_KEY_ANNOTATION, Node
from ciphermesh.wireguard.keys import PrivateKey
from tests.support.netns import Capture, built_lab, pod_cidr
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# (engine kind, encryption mode): every implementation the contract is run against.
ENGINES: list[tuple[EngineKind, EncryptedMode]] = [
    ("userspace", "ipsec"), ("userspace", "wireguard"), ("kernel", "ipsec"), ("kernel", "wireguard"),
]
# Plaintext ICMP on the underlay, bare or inside VXLAN (outer UDP + VXLAN 8 + Ethernet 14: inner IP at 30).
PLAINTEXT_ICMP = ["icmp", "or", "(udp", "port", "8472", "and", "udp[39]", "=", "1)"]
# Status fields that count traffic or time rather than describe what the engine holds.
_MOVING = frozenset({"packetsOut", "bytesOut", "packetsIn", "bytesIn", "outSeq", "rxBytes", "txBytes",
                     "latestHandshake", "endpoint"})


@dataclass
class Pair:
    """Two nodes of one lab with one engine implementation; `records` are what the store would hold."""

    topology: TopologyPlan
    kind: EngineKind
    mode: EncryptedMode
    key: KeyLine
    records: list[Node]
    wg_keys: list[PrivateKey | None]
    iprs: list[Any] = field(default_factory=list)
    datapaths: list[NodeDatapath | None] = field(default_factory=list)

    def open(self, i: int) -> NodeDatapath:
        """A fresh NodeDatapath (links, engine) on node i; the one before must be closed."""
        node = self.topology.nodes[i]
        datapath = NodeDatapath(self.iprs[i], node_ip=node.ip, mode=self.mode, engine_kind=self.kind,
                                private_key=self.wg_keys[i])
        with netns.entered(node.netns):
            datapath.start(pod_cidr(i + 1))
        self.datapaths[i] = datapath
        return datapath

    def close(self, i: int) -> None:
        datapath = self.datapaths[i]
        self.datapaths[i] = None
        if datapath is not None:
            datapath.close()

    def engine(self, i: int) -> Engine:
        datapath = self.datapaths[i]
        assert datapath is not None and datapath.engine is not None
        return datapath.engine

    def desired(self, i: int, *, peers: bool = True) -> DesiredDatapath:
        """Node i's desired datapath as the agent plans it, with its peer or without."""
        others = [r for j, r in enumerate(self.records) if j != i] if peers else []
        keys = {self.key.key_id: self.key}
        return plan(self.records[i], [self.records[i], *others], mode=self.mode, keys=keys,
                    current_key_id=self.key.key_id)

    def apply(self, i: int, desired: DesiredDatapath) -> None:
        datapath = self.datapaths[i]
        assert datapath is not None
        datapath.apply(desired, None, None)

    def ping(self, i: int, j: int, count: int = 1) -> bool:
        """Node i's router IP pings node j's, through the engines."""
        src, dst = self.records[i].router_ip, self.records[j].router_ip
        assert src is not None and dst is not None
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst]
        return netns.run(self.topology.nodes[i].netns, argv, check=False).returncode == 0

    def wait_traffic(self) -> None:
        wait_until(lambda: self.ping(0, 1) and self.ping(1, 0), timeout=15.0)


def _record(
    name: str, node_ip: IPv4Address, cidr: IPv4Network, *, mode: str, key_id: int, wg_key: PrivateKey | None
) -> Node:
    router = str(next(cidr.hosts()))
    annotations = {WG_PUB_KEY_ANNOTATION: wg_key.public_key().to_base64()} if wg_key else {}
    return Node(name=name, node_ip=str(node_ip), boot_id=str(uuid.uuid4()), router_ip=router,
                pod_cidrs=(str(cidr),), key_id=key_id, annotations=annotations, encryption={"mode": mode})


@pytest.fixture(params=ENGINES, ids=[f"{kind}-{mode}" for kind, mode in ENGINES])
def engines(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Two nodes, each with its links and a started engine of one implementation, nothing applied yet."""
    kind, mode = request.param
    probe = probe_kernel_esp if mode == "ipsec" else probe_kernel_wireguard
    if kind == "kernel" and not (found := probe()).available:
        pytest.skip(f"this kernel cannot run the kernel engine ({found.reason}): tests/vm runs it in a VM")
    with built_lab(2) as topology, contextlib.ExitStack() as stack:
        key = generate_line()
        wireguard = mode == "wireguard"
        wg_keys = [PrivateKey.generate(secrets.token_bytes) if wireguard else None for _ in range(2)]
        records = [
            _record(f"node-{i + 1}", node.ip, pod_cidr(i + 1), mode=mode, key_id=key.key_id,
                    wg_key=wg_keys[i])
            for i, node in enumerate(topology.nodes)
        ]
        pair = Pair(topology, kind, mode, key, records, wg_keys)
        pair.iprs = [stack.enter_context(netns.iproute(node.netns)) for node in topology.nodes]
        pair.datapaths = [None, None]
        stack.callback(lambda: [pair.close(i) for i in range(2)])
        for i in range(2):
            pair.open(i)
        yield pair


def _view(status: dict[str, Any] | None) -> Any:
    """What an engine holds, as its status shows it: peers and SAs, without counters and timestamps."""
    assert status is not None
    peers = sorted(repr({k: v for k, v in p.items() if k not in _MOVING}) for p in status["peers"])
    sas = sorted(repr(sa) for sa in status["sas"])
    return peers, sas


def _link_exists(pair: Pair, i: int, name: str) -> bool:
    out = netns.run(pair.topology.nodes[i].netns, ["ip", "-o", "link", "show"]).stdout
    return any(line.split(":")[1].strip().split("@")[0] == name for line in out.splitlines())


def test_traffic_flows_once_both_apply(engines: Pair) -> None:
    assert not engines.ping(0, 1), "nothing applied yet, yet the ping went through"
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()


def test_apply_is_idempotent(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    before = engines.engine(0).status(reveal=True)
    engines.apply(0, engines.desired(0))
    after = engines.engine(0).status(reveal=True)
    assert _view(after) == _view(before)
    assert before is not None and after is not None
    # Nothing was rebuilt: the counters carry on rather than start again.
    assert after["counters"]["txBytes"] >= before["counters"]["txBytes"] > 0
    assert engines.ping(0, 1, count=3)


def test_converges_from_another_state(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i, peers=False))
    assert not engines.ping(0, 1)
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    converged = [_view(engines.engine(i).status(reveal=True)) for i in range(2)]
    # The same desired state applied to fresh engines on both nodes.
    for i in range(2):
        engines.close(i)
        engines.open(i)
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    assert [_view(engines.engine(i).status(reveal=True)) for i in range(2)] == converged


def test_a_removed_peer_gets_no_more_traffic(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    # The engine alone forgets the peer: routes still send its traffic into the engine's device.
    engines.engine(0).apply(engines.desired(0, peers=False))
    node = engines.topology.nodes[0]
    with Capture(node.netns, "eth0", PLAINTEXT_ICMP, count=1) as capture:
        assert not engines.ping(0, 1, count=5)
        capture.stop()
        assert capture.lines(timeout=1.0) == [], "plaintext ICMP on the underlay"


def test_a_peer_that_returns_finds_its_tunnel_where_it_was(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    assert engines.ping(0, 1, count=3)
    before = _out_seq(engines, 0)
    # Its lease lapsed and it came back with the same boot ID, so the same per-tunnel keys.
    engines.apply(0, engines.desired(0, peers=False))
    engines.apply(0, engines.desired(0))
    if engines.mode == "ipsec":
        # From 1 again under a used key, (key, IV) pairs would repeat and the peer's replay window drop
        # them; where it was, the first packet goes through. (WireGuard handshakes again for new keys.)
        assert _out_seq(engines, 0) >= before > 0
        assert engines.ping(0, 1) and engines.ping(1, 0)
    engines.wait_traffic()
    assert engines.ping(0, 1, count=3) and engines.ping(1, 0, count=3)


def _out_seq(pair: Pair, i: int) -> int:
    """The sequence number of node i's active outbound SA toward its one peer (0 where none is kept)."""
    status = pair.engine(i).status()
    assert status is not None
    return max((peer.get("outSeq") or 0 for peer in status["peers"]), default=0)


def test_status_reports_kind_and_counters(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    engine = engines.engine(0)
    assert engine.kind == engines.kind and engine.kind in ENGINE_KINDS
    status = engine.status()
    assert status is not None and status["engine"] == engine.kind
    assert status["counters"]["txBytes"] > 0 and status["counters"]["rxBytes"] > 0
    assert len(status["peers"]) == 1
    # An IPsec engine counts its SAs' distinct keys as Cilium does (`encryption status` sums them): the
    # per-tunnel key of each direction. WireGuard holds sessions, not keys to count.
    assert status.get("keysInUse") == (2 if engines.mode == "ipsec" else None)
    # Keys are in the status only when asked for.
    revealed = engine.status(reveal=True)
    assert revealed is not None
    for plain, shown in zip(status["sas"], revealed["sas"], strict=True):
        assert "<redacted>" in plain["key"] and "<redacted>" not in shown["key"]
        assert {**plain, "key": None} == {**shown, "key": None}


def test_close_removes_the_device_or_leaves_the_kernel_encrypting(engines: Pair) -> None:
    for i in range(2):
        engines.apply(i, engines.desired(i))
    engines.wait_traffic()
    device = engines.engine(0).device
    if engines.kind == "kernel":
        # Kernel SAs and cilium_wg0 outlive the agent (Cilium's behaviour): traffic keeps flowing without it.
        engines.close(0)
        assert device is None or _link_exists(engines, 0, device)
        assert engines.ping(0, 1) and engines.ping(1, 0)
        return
    assert device is not None and _link_exists(engines, 0, device)
    engines.close(0)
    wait_until(lambda: not _link_exists(engines, 0, device), timeout=5.0)

