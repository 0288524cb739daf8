"""Issue 4: no GCM nonce is used twice under one key, also across an agent restart (CVE-2024-28860); each
ESP packet is mapped to its key by opening it with `cryptography`'s AES-GCM, independent of our ESP code."""

from __future__ import annotations

import functools
import os
import signal
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ciphermesh.keys import AeadKey
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import agent_pid, agent_status, connect, start_agent
from ciphermesh.lab.inspect import TunnelSA, security_associations
from ciphermesh.lab.processes import pid_alive
from ciphermesh.lab.rotation_progress import follow_rotation
from ciphermesh.pcap import parse_pcap, strip_ethernet
from tests.support.rotation import ping_mesh, rotation_lab, underlay_tap
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

RESTARTED = "node-2"
VXLAN_PORT = 8472
ESP_HEADER = 8
GCM_IV = 8
ICV = 16

Tunnel = tuple[str, str, int]  # outer source, outer destination, SPI


@dataclass(frozen=True)
class EspPacket:
    src: str
    dst: str
    spi: int
    seq: int
    iv: bytes
    esp: bytes
    at_ns: int


def _esp_packets(pcap: bytes) -> Iterator[EspPacket]:
    """ESP packets inside the VXLAN frames of an underlay capture."""
    for record in parse_pcap(pcap).records:
        outer = strip_ethernet(record.data)
        if outer is None or outer[0] >> 4 != 4 or outer[9] != 17:
            continue
        udp = outer[(outer[0] & 0x0F) * 4 :]
        if struct.unpack_from("!H", udp, 2)[0] != VXLAN_PORT:
            continue
        inner = strip_ethernet(udp[16:])
        if inner is None or inner[0] >> 4 != 4 or inner[9] != 50:
            continue
        esp = inner[(inner[0] & 0x0F) * 4 :]
        spi, seq = struct.unpack_from("!II", esp)
        src, dst = ".".join(map(str, inner[12:16])), ".".join(map(str, inner[16:20]))
        yield EspPacket(src, dst, spi, seq, esp[ESP_HEADER : ESP_HEADER + GCM_IV], esp, record.timestamp_ns)


def _opens(key: bytes, packet: EspPacket) -> bool:
    """Whether `key` (AES key ‖ 4-byte salt, RFC 4106) authenticates the packet; ESN on, high bits 0."""
    aes, salt = key[:-4], key[-4:]
    aad = struct.pack("!III", packet.spi, 0, packet.seq)
    try:
        AESGCM(aes).decrypt(salt + packet.iv, packet.esp[ESP_HEADER + GCM_IV :], aad)
    except InvalidTag:
        return False
    return True


def _pings(pod_netns: str, ip: object) -> bool:
    return netns.run(pod_netns, ["ping", "-n", "-c", "1", "-W", "1", str(ip)], check=False).returncode == 0


def _keys_by_tunnel(*snapshots: list[TunnelSA]) -> dict[Tunnel, set[bytes]]:
    keys: dict[Tunnel, set[bytes]] = {}
    for snapshot in snapshots:
        for sa in snapshot:
            assert sa.key is not None
            material = sa.key.material
            assert isinstance(material, AeadKey)
            keys.setdefault((str(sa.src), str(sa.dst), sa.spi), set()).add(material.key.reveal())
    return keys


def test_no_nonce_repeats_across_an_agent_restart(tmp_path: Path) -> None:
    with rotation_lab(tmp_path) as lab:
        info = lab.info
        before_sas = security_associations(info, reveal=True)
        old_boot = agent_status(info, RESTARTED)
        assert old_boot is not None
        router = {node: agent_status(info, node)["routerIP"] for node in info.nodes}  # type: ignore[index]
        with underlay_tap(lab, "esp") as tap, ping_mesh(lab) as mesh:
            time.sleep(3)
            pid = agent_pid(info, RESTARTED)
            assert pid is not None
            restarted_ns = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, "the agent to exit", interval=0.05)
            start_agent(info, RESTARTED)

            def new_boot_everywhere() -> bool:
                status = agent_status(info, RESTARTED)
                with connect(info) as store:
                    record = next(v.value for v in store.list_nodes() if v.value.name == RESTARTED)
                return status is not None and status["bootID"] == record.boot_id != old_boot["bootID"]

            wait_until(new_boot_everywhere, 30, "the new boot ID in the store", interval=0.2)
            key_id = before_sas[0].spi
            moving = follow_rotation(info, key_id, start=time.monotonic(), timeout=30,
                                     until=lambda progress: progress.all_settled)
            assert moving.settled is not None, moving.last.describe()
            # Its peers use the new keys once their pings get through (it opens nothing else).
            for pod in ("p1", "p3"):
                wait_until(functools.partial(_pings, lab.pods[pod].netns, lab.pods["p2"].ip), 30,
                           f"{pod} to reach p2", interval=0.2)
            converged_ns = time.time_ns()
            time.sleep(3)
            mesh.stop()
            pcap = tap.stop()
        after_sas = security_associations(info, reveal=True)

    candidates = _keys_by_tunnel(before_sas, after_sas)
    restarted_ip = router[RESTARTED]
    nonces: Counter[tuple[str, str, int, bytes, bytes]] = Counter()
    key_nonces: Counter[tuple[bytes, bytes]] = Counter()
    key_seqs: Counter[tuple[bytes, int]] = Counter()
    # Keys of the restarted node's tunnels on the wire: what it sent before and after its restart, and
    # what its peers sent it once the cluster had converged.
    sent_before: set[bytes] = set()
    sent_after: set[bytes] = set()
    received_converged: set[bytes] = set()
    unopened = []
    packets = 0
    for packet in _esp_packets(pcap):
        packets += 1
        keys = [k for k in candidates.get((packet.src, packet.dst, packet.spi), set()) if _opens(k, packet)]
        if len(keys) != 1:
            unopened.append((packet.src, packet.dst, packet.spi, packet.seq, len(keys)))
            continue
        key = keys[0]
        nonces[(packet.src, packet.dst, packet.spi, key, packet.iv)] += 1
        key_nonces[(key, packet.iv)] += 1
        key_seqs[(key, packet.seq)] += 1
        if packet.src == restarted_ip:
            (sent_before if packet.at_ns < restarted_ns else sent_after).add(key)
        elif packet.dst == restarted_ip and packet.at_ns >= converged_ns:
            received_converged.add(key)

    print(f"{packets} ESP packets, {len(unopened)} opened by no (or more than one) key; "
          f"{len(key_nonces)} distinct (key, IV), {len(key_seqs)} distinct (key, seq); "
          f"keys {RESTARTED} sent with: {len(sent_before)} before, {len(sent_after)} after its restart")
    assert packets > 1000
    assert not unopened, unopened[:5]
    assert max(nonces.values()) == 1, nonces.most_common(3)
    assert max(key_nonces.values()) == 1
    assert max(key_seqs.values()) == 1
    peers = len(info.nodes) - 1
    old_keys = {k for keys in _keys_by_tunnel(before_sas).values() for k in keys}
    new_keys = {k for keys in _keys_by_tunnel(after_sas).values() for k in keys}
    assert len(sent_before) == len(sent_after) == len(received_converged) == peers
    assert sent_before <= old_keys and sent_after <= new_keys - old_keys
    assert received_converged <= new_keys - old_keys
