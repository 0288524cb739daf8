"""The userspace IPsec engine between two lab nodes: namespaces, kernel VXLAN, tcpdump on the underlay."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.netlink.links import router_ip
from ciphermesh.datapath.userspace.ipsec.runner import control_request
from ciphermesh.datapath.userspace.ipsec.state_file import write_state_file
from ciphermesh.esp import OutboundSA, cipher_for
from ciphermesh.keys import KeyLine, derive_tunnel_key, generate_line
from ciphermesh.lab import netns
from ciphermesh.lab.topology import BRIDGE, TopologyPlan
from ciphermesh.lab.wire import WireReport, analyse_capture
from tests.support.netns import TUN, built_lab, pod_cidr, wire_nodes
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

POD_HOST = 5  # pod address = pod CIDR + 5, on the node's lo


@dataclass
class Node:
    """One lab node with its engine process."""

    netns: str
    cidr: IPv4Network
    boot_id: str
    files: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def router(self) -> IPv4Address:
        return router_ip(self.cidr)

    @property
    def pod(self) -> IPv4Address:
        return self.cidr.network_address + POD_HOST

    @property
    def state_path(self) -> Path:
        return self.files / "state.json"

    @property
    def control(self) -> Path:
        return self.files / "control.sock"

    @property
    def log(self) -> Path:
        return self.files / "engine.log"


@dataclass
class Pair:
    """Two wired nodes, each running an engine on the persistent TUN, and the key lines in force."""

    plan: TopologyPlan
    a: Node
    b: Node
    lines: dict[int, KeyLine] = field(default_factory=dict)

    def state(self, local: Node, inbound: tuple[int, ...], out: int) -> IPsecEngineState:
        remote = self.b if local is self.a else self.a
        peer = IPsecPeer(
            router_ip=remote.router,
            pod_cidrs=(remote.cidr,),
            out_spi=out,
            out_key=self.key(out, local, remote),
            in_keys={spi: self.key(spi, remote, local) for spi in inbound},
        )
        return IPsecEngineState(local.router, (peer,))

    def key(self, spi: int, src: Node, dst: Node) -> KeyLine:
        return derive_tunnel_key(self.lines[spi], src.router, dst.router, src.boot_id, dst.boot_id)

    def start(self, node: Node, state: IPsecEngineState, *options: str) -> None:
        write_state_file(node.state_path, state)
        argv = [
            sys.executable, "-m", "ciphermesh.datapath.userspace.ipsec.runner",
            "--state", str(node.state_path), "--tun", TUN, "--control", str(node.control), *options,
        ]  # fmt: skip
        with open(node.log, "ab") as log:
            node.process = netns.popen(node.netns, argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not node.control.exists():
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"engine in {node.netns} did not start: {node.log.read_text()}")
            time.sleep(0.05)

    def apply(self, node: Node, state: IPsecEngineState) -> None:
        write_state_file(node.state_path, state)
        assert control_request(node.control, "reload") == {"ok": True}

    def status(self, node: Node) -> dict[str, Any]:
        return control_request(node.control, "status")

    def stop(self, node: Node) -> None:
        process = node.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        node.process = None


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    lab = "cmie" + secrets.token_hex(2)
    with built_lab(2, lab) as plan:
        wire_nodes(plan, TUN)
        nodes = []
        for index, node_plan in enumerate(plan.nodes, start=1):
            files = tmp_path / node_plan.name
            files.mkdir(mode=0o700)
            node = Node(node_plan.netns, pod_cidr(index), str(uuid.uuid4()), files)
            netns.run(node.netns, ["ip", "addr", "add", f"{node.pod}/32", "dev", "lo"])
            nodes.append(node)
        pair = Pair(plan, nodes[0], nodes[1], {3: generate_line(key_id=3)})
        try:
            pair.start(pair.a, pair.state(pair.a, (3,), 3))
            pair.start(pair.b, pair.state(pair.b, (3,), 3))
            yield pair
        finally:
            for node in nodes:
                pair.stop(node)


class PcapCapture:
    """tcpdump -w on the underlay bridge (both nodes' traffic), ready before the block sends anything."""

    def __init__(self, plan: TopologyPlan, path: Path) -> None:
        self.path = path
        argv = [
            "tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-B", "16384",
            "-i", BRIDGE, "-w", str(path),
        ]  # fmt: skip
        self.process = netns.popen(plan.underlay_netns, argv, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        line = self.process.stderr.readline().decode()
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(f"tcpdump did not start: {line!r}")

    def stop(self) -> bytes:
        if self.process.poll() is None:
            time.sleep(0.2)  # let the last frames reach the file
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=5)
        return self.path.read_bytes()

    def report(self, pair: Pair) -> WireReport:
        return analyse_capture(self.stop(), (pair.a.cidr, pair.b.cidr))


def socket_in(node: Node, kind: int, proto: int = 0) -> socket.socket:
    with netns.entered(node.netns):
        return socket.socket(socket.AF_INET, kind, proto)


def ping(
    source: Node,
    target: IPv4Address,
    *,
    from_address: IPv4Address | None = None,
    count: int = 3,
    check: bool = True,
) -> str:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1", str(target)]
    if from_address is not None:
        argv[1:1] = ["-I", str(from_address)]
    return netns.run(source.netns, argv, check=check).stdout


def tcp_transfer(sender: Node, receiver: Node, data: bytes) -> bytes:
    """Send `data` from sender's pod to receiver's pod over TCP; what the receiver got."""
    server = socket_in(receiver, socket.SOCK_STREAM)
    client = socket_in(sender, socket.SOCK_STREAM)
    received = bytearray()
    with server, client:
        server.bind((str(receiver.pod), 0))
        server.listen(1)
        server.settimeout(20)

        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(20)
                while chunk := connection.recv(65536):
                    received.extend(chunk)

        thread = threading.Thread(target=serve)
        thread.start()
        client.settimeout(20)
        client.bind((str(sender.pod), 0))
        client.connect(server.getsockname())
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        thread.join(30)
    return bytes(received)


def decrypt(pair: Pair, frame_ip: IP, spi: int) -> IP:
    """Decrypt one captured ESP packet with the key derived for its direction (scapy as the oracle)."""
    src = pair.a if frame_ip.src == str(pair.a.router) else pair.b
    dst = pair.b if src is pair.a else pair.a
    material = pair.key(spi, src, dst).material
    sa = SecurityAssociation(
        ESP,
        spi=spi,
        crypt_algo="AES-GCM",
        crypt_key=material.key.reveal(),  # type: ignore[union-attr]
        tunnel_header=IP(src=frame_ip.src, dst=frame_ip.dst),
        esn_en=True,
    )
    return sa.decrypt(frame_ip.copy())


def esp_frames(pcap: Path) -> list[IP]:
    """The IPv4 ESP packets inside the VXLAN frames of a capture, in order."""
    return [frame[VXLAN][IP] for frame in rdpcap(str(pcap)) if frame.haslayer(VXLAN) and frame.haslayer(ESP)]


def test_ping_and_tcp_cross_as_esp_and_nothing_in_plaintext(pair: Pair, tmp_path: Path) -> None:
    capture = PcapCapture(pair.plan, tmp_path / "underlay.pcap")
    try:
        assert "3 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod)
        assert "3 received" in ping(pair.b, pair.a.router)  # the health probe: router IP to router IP
        data = secrets.token_bytes(4 << 20)
        received = tcp_transfer(pair.a, pair.b, data)
    finally:
        report = capture.report(pair)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert report.plaintext_count == 0, report.plaintext_samples
    a, b = str(pair.a.router), str(pair.b.router)
    assert set(report.esp_tunnels) == {(a, b, 3), (b, a, 3)}
    assert report.esp_tunnels[(a, b, 3)] > len(data) // 4096  # tcpdump may miss some at this rate

    frames = esp_frames(capture.path)
    inner_pairs = set()
    for frame in frames[:40] + frames[-40:]:
        inner = decrypt(pair, frame, 3)
        inner_pairs.add((inner.src, inner.dst))
    pods, routers = frozenset({str(pair.a.pod), str(pair.b.pod)}), frozenset({a, b})
    assert {frozenset(inner_pair) for inner_pair in inner_pairs} == {pods, routers}, inner_pairs

    status_a, status_b = pair.status(pair.a), pair.status(pair.b)
    for status in (status_a, status_b):
        assert status["errors"] == {}, status["errors"]
        assert status["keysInUse"] == 2
        assert status["seqLimit"] == 2**64 - 1
    peer_a = status_a["peers"][0]
    assert peer_a["outSPI"] == 3 and peer_a["inSPIs"] == [3]
    assert peer_a["bytesOut"] > len(data)
    assert status_a["maxSeq"] == peer_a["outSeq"] == peer_a["packetsOut"] == status_b["peers"][0]["packetsIn"]


def test_unknown_spi_bad_icv_and_replay_are_counted_by_the_receiver(pair: Pair) -> None:
    tap = socket_in(pair.b, socket.SOCK_RAW, 50)  # a raw socket gets its own copy of every ESP packet
    forger = socket_in(pair.a, socket.SOCK_RAW, 50)
    with tap, forger:
        tap.settimeout(5)
        forger.bind((str(pair.a.router), 0))
        ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=1)
        packet = tap.recv(65535)
        esp = packet[(packet[0] & 0x0F) * 4 :]
        assert esp[:4] == (3).to_bytes(4, "big")
        target = (str(pair.b.router), 0)
        forger.sendto(esp, target)  # replayed
        forger.sendto(b"\x00\x00\x00\x63" + esp[4:], target)  # SPI 99: nobody's
        forger.sendto(esp[:4] + (500).to_bytes(4, "big") + esp[8:], target)  # tampered sequence number
        # A fresh sequence number under the right SPI and a wrong key: authentication fails too.
        stranger = OutboundSA(3, cipher_for(generate_line().material), first_seq=1000)
        forger.sendto(stranger.encapsulate(bytes(IP(src=str(pair.a.pod), dst=str(pair.b.pod)))), target)

    def counted() -> bool:
        errors = pair.status(pair.b)["errors"]
        return errors.get("XfrmInStateProtoError") == 2

    wait_until(counted)
    errors = pair.status(pair.b)["errors"]
    assert errors == {"XfrmInStateSeqError": 1, "XfrmInNoStates": 1, "XfrmInStateProtoError": 2}
    assert "1 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=1)
    pair.a.boot_id = str(uuid.uuid4())  # new keys: the SAs that counted are retired, their counts stay
    for node in (pair.a, pair.b):
        pair.apply(node, pair.state(node, (3,), 3))
    assert "1 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=1)
    assert pair.status(pair.b)["errors"] == errors


class UdpSender:
    """Sends a datagram from A's pod to B's pod every 2 ms, counting attempts, until stopped."""

    def __init__(self, pair: Pair) -> None:
        self.sock = socket_in(pair.a, socket.SOCK_DGRAM)
        self.sock.bind((str(pair.a.pod), 0))
        self.target = (str(pair.b.pod), 9999)
        self.attempts = 0
        self.failures = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.002):
            self.attempts += 1
            try:
                self.sock.sendto(b"secret payload " + bytes(100), self.target)
            except OSError:
                self.failures += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()


def test_a_killed_engine_leaves_its_node_silent_never_plaintext(pair: Pair, tmp_path: Path) -> None:
    sender = UdpSender(pair)
    try:
        wait_until(lambda: pair.status(pair.b)["peers"][0]["packetsIn"] > 50)
        assert pair.a.process is not None
        pair.a.process.send_signal(signal.SIGKILL)
        pair.a.process.wait(timeout=5)
        rules = netns.run(pair.a.netns, ["ip", "rule", "show"]).stdout
        assert "ipproto esp" in rules or "ipproto 50" in rules
        received_before = pair.status(pair.b)["peers"][0]["packetsIn"]
        attempts_before = sender.attempts
        capture = PcapCapture(pair.plan, tmp_path / "after-kill.pcap")
        try:
            # B's engine lives on: its ESP towards A shows the capture sees what crosses.
            unanswered = netns.run(
                pair.b.netns, ["ping", "-n", "-c", "10", "-i", "0.1", "-W", "1", str(pair.a.pod)], check=False
            )
            time.sleep(0.5)
        finally:
            report = capture.report(pair)
        assert sender.attempts - attempts_before > 200  # the pod kept trying all along
    finally:
        sender.stop()
    assert "0 received" in unanswered.stdout
    assert report.plaintext_count == 0, report.plaintext_samples
    a, b = str(pair.a.router), str(pair.b.router)
    assert dict(report.esp_tunnels) == {(b, a, 3): 10}
    assert pair.status(pair.b)["peers"][0]["packetsIn"] == received_before


def test_a_key_rotation_through_apply_keeps_traffic_flowing(pair: Pair, tmp_path: Path) -> None:
    pair.lines[4] = generate_line(key_id=4)
    pinging = netns.popen(
        pair.a.netns,
        ["ping", "-n", "-i", "0.01", "-c", "300", "-W", "2", "-I", str(pair.a.pod), str(pair.b.pod)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        for node in (pair.a, pair.b):  # both accept the new key first
            pair.apply(node, pair.state(node, (3, 4), 3))
        time.sleep(0.5)
        for node in (pair.a, pair.b):  # then each sends with it
            pair.apply(node, pair.state(node, (3, 4), 4))
        time.sleep(0.5)
        for node in (pair.a, pair.b):  # and the old key goes
            pair.apply(node, pair.state(node, (4,), 4))
        output, _ = pinging.communicate(timeout=30)
    finally:
        if pinging.poll() is None:
            pinging.kill()
            pinging.wait()
    assert "300 received" in output, output
    capture = PcapCapture(pair.plan, tmp_path / "after-rotation.pcap")
    try:
        assert "3 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod)
    finally:
        report = capture.report(pair)
    assert set(report.esp_by_spi) == {4} and report.plaintext_count == 0
    for node in (pair.a, pair.b):
        status = pair.status(node)
        assert status["errors"] == {}, status["errors"]
        assert status["keysInUse"] == 2
        assert status["peers"][0]["outSPI"] == 4 and status["peers"][0]["inSPIs"] == [4]


def test_reapplying_the_same_state_keeps_sequence_numbers_and_a_bad_state_changes_nothing(pair: Pair) -> None:
    ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=4)
    before = pair.status(pair.a)["peers"][0]["outSeq"]
    assert before >= 4
    pair.apply(pair.a, pair.state(pair.a, (3,), 3))
    pair.a.state_path.write_text('{"localRouterIP": "10.0.1.1", "peers": "none"}')
    os.chmod(pair.a.state_path, 0o600)
    answer = control_request(pair.a.control, "reload")
    assert answer == {"ok": False, "error": "peers: must be a list"}
    ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=1)
    assert pair.status(pair.a)["peers"][0]["outSeq"] == before + 1
    # B rebooted: its boot ID changes, so do both keys; A's outbound SA starts again at 1.
    pair.b.boot_id = str(uuid.uuid4())
    for node in (pair.a, pair.b):
        pair.apply(node, pair.state(node, (3,), 3))
    assert "1 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=1)
    assert pair.status(pair.a)["peers"][0]["outSeq"] == 1
    assert pair.status(pair.b)["errors"] == {}


def test_a_restarted_engine_refuses_the_keys_it_used_and_runs_on_new_ones(pair: Pair) -> None:
    """Issue 10.2 through the state file: a new process would send from 1 under keys B holds a window for."""
    ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=3)
    pair.stop(pair.a)
    runner = [sys.executable, "-m", "ciphermesh.datapath.userspace.ipsec.runner"]
    argv = [*runner, "--state", str(pair.a.state_path), "--tun", TUN, "--control", str(pair.a.control)]
    refused = netns.run(pair.a.netns, argv, check=False)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"ipsec-engine: peers[0] ({pair.b.router}): outbound SPI 3: an earlier engine used this key and its "
        "sequence numbers are gone (the peer would drop them as replays); derive new keys (a new boot ID)"
    ]
    pair.a.boot_id = str(uuid.uuid4())  # as an agent restart does
    pair.start(pair.a, pair.state(pair.a, (3,), 3))
    pair.apply(pair.b, pair.state(pair.b, (3,), 3))
    assert "3 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=3)
    assert pair.status(pair.b)["errors"] == {}


def test_without_its_esp_route_a_node_drops_and_counts_and_recovers_when_it_returns(
    pair: Pair, tmp_path: Path
) -> None:
    route = ["route", "add", f"{pair.b.router}/32", "dev", "cilium_vxlan", "src", str(pair.a.router)]
    capture = PcapCapture(pair.plan, tmp_path / "no-route.pcap")
    try:
        # No ESP route: the engine's ESP falls through to the TUN route and comes back to it.
        netns.run(pair.a.netns, ["ip", "route", "flush", "table", "50"])
        assert "0 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=2, check=False)
        # An unreachable ESP route: sendmsg fails.
        netns.run(pair.a.netns, ["ip", "route", "add", "unreachable", f"{pair.b.router}/32", "table", "50"])
        assert "0 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=2, check=False)
    finally:
        report = capture.report(pair)
    assert report.esp == 0 and report.plaintext_count == 0, report.as_dict()
    assert pair.status(pair.a)["errors"] == {"EngineOutLoop": 2, "EngineOutSendError": 2}
    netns.run(pair.a.netns, ["ip", "route", "flush", "table", "50"])
    netns.run(pair.a.netns, ["ip", *route, "table", "50"])
    assert "2 received" in ping(pair.a, pair.b.pod, from_address=pair.a.pod, count=2)
