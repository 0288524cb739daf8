"""Strict mode in a real 3-node IPsec lab: a peer that cannot encrypt gets nothing in clear, then resumes.

Two ways a peer cannot encrypt: its key is withheld (its agent reads a secret that does not exist yet),
and it was switched to WireGuard while the others run IPsec.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.lab.cluster import LabInfo, agent_status, connect, start_agent, wait_ready
from ciphermesh.lab.plaintext_probe import inject_plaintext
from ciphermesh.lab.pod_registry import PodRecord
from ciphermesh.lab.processes import stop_daemon
from ciphermesh.store.base import Expect
from tests.support.lab import (
    READY_TIMEOUT,
    UP_ETCD,
    UnderlayCapture,
    analyse,
    error_line,
    lab_with_pods,
    node_entries,
    ping,
    pod_cidrs,
    reach_all,
    replies,
    run_cli,
)
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

STRICT = ("--set", "encryption.enabled=true", "--set", "encryption.strictMode.enabled=true")
WITHHELD = "cilium-ipsec-keys-withheld"


@pytest.fixture(scope="module")
def strict_lab() -> Iterator[tuple[LabInfo, dict[str, PodRecord]]]:
    with lab_with_pods(unique_lab("lf"), *STRICT) as lab:
        yield lab


def _restart_node3(info: LabInfo, tmp_path: Path, change: dict[str, Any] | None) -> None:
    """Restart node-3's agent with the lab's values, or with `change` merged into them."""
    stop_daemon(info.paths.pids / "agent-node-3.pid")
    values_file = None
    if change is not None:
        values = yaml.safe_load(info.paths.values.read_text())
        for path, value in change.items():
            *parents, leaf = path.split(".")
            node = values
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        values_file = tmp_path / "node-3-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
    start_agent(info, "node-3", values_file)


def _strict_drops(info: LabInfo, node: str) -> int:
    status = agent_status(info, node)
    assert status is not None, f"{node}'s agent does not answer"
    strict = status["encryption"]["strictMode"]
    assert strict["guard"] is True, strict
    return int(strict["unencryptedDrops"])


def _waiting(info: LabInfo, node: str, text: str) -> bool:
    status = agent_status(info, node)
    return status is not None and any(text in line for line in status.get("waiting", []))


def test_switching_the_running_lab_is_refused_with_the_way_out(
    strict_lab: tuple[LabInfo, dict[str, PodRecord]],
) -> None:
    info, _ = strict_lab
    switch = run_cli(*UP_ETCD, "--name", info.name, "--nodes", "3", "--set", "encryption.enabled=true",
                     "--set", "encryption.type=wireguard")
    assert switch.returncode == 1
    assert error_line(switch) == (
        f"ciphermesh: lab {info.name} is already up, with IPsec + strict mode; switching a running lab to "
        f"WireGuard is not supported: run `ciphermesh lab down --name {info.name}` first, then `lab up` again"
    )
    wait_ready(info, READY_TIMEOUT)  # untouched


def test_peer_with_withheld_key_gets_nothing_in_clear_and_resumes_with_it(
    strict_lab: tuple[LabInfo, dict[str, PodRecord]], tmp_path: Path
) -> None:
    info, pods = strict_lab
    a, b, c = pods["node-1"], pods["node-2"], pods["node-3"]
    reach_all([a, b, c])
    _restart_node3(info, tmp_path, {"encryption.ipsec.secretName": WITHHELD})
    wait_until(lambda: _waiting(info, "node-3", "no valid IPsec key"), 20.0, "node-3 waits for its key")
    wait_until(lambda: _waiting(info, "node-1", "node-3: has not published an IPsec key ID"), 20.0,
               "node-1 sees node-3 without a key")
    with UnderlayCapture(info.name, tmp_path / "withheld.pcap") as capture:
        assert replies(a, c.ip, 3) == 0
        assert replies(c, a.ip, 3) == 0
        assert ping(a, b.ip)  # the others are untouched
        # What a datapath that forgot the missing key would send: the guard drops and counts it.
        before = _strict_drops(info, "node-1")
        marker = b"cm-strict withheld-key probe"
        router3 = IPv4Address(node_entries(info.name)["node-3"]["routerIP"])
        inject_plaintext(info.netns_of("node-1"), src=IPv4Address(a.ip), dst=router3, device=CILIUM_VXLAN,
                         payload=marker)
        wait_until(lambda: _strict_drops(info, "node-1") > before, 5.0, "node-1 counts the drop")
        with connect(info) as store:
            secret = store.get_key_secret(name="cilium-ipsec-keys")
            assert secret is not None
            store.put_key_secret(secret.value.keys, name=WITHHELD, expect=Expect.ABSENT)
        start = time.monotonic()
        wait_until(lambda: ping(a, c.ip), 20.0, "node-1's pod reaches node-3's once the key is there")
        took = time.monotonic() - start
        print(f"traffic resumed {took:.2f} s after the key was written")
        reach_all([a, b, c])
        pcap = capture.stop()
    report = analyse(capture, pod_cidrs(info.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert marker not in pcap
    assert report.esp > 0
    _restart_node3(info, tmp_path, None)
    wait_ready(info, READY_TIMEOUT)


def test_node_switched_to_wireguard_is_isolated_without_plaintext_and_switches_back(
    strict_lab: tuple[LabInfo, dict[str, PodRecord]], tmp_path: Path
) -> None:
    info, pods = strict_lab
    a, c = pods["node-1"], pods["node-3"]
    reach_all(list(pods.values()))
    with UnderlayCapture(info.name, tmp_path / "switch.pcap") as capture:
        _restart_node3(info, tmp_path, {"encryption.type": "wireguard"})
        wait_until(lambda: _waiting(info, "node-1", "node-3: runs encryption mode wireguard"), 20.0,
                   "node-1 holds node-3's pods")
        wait_until(lambda: _waiting(info, "node-3", "node-1: runs encryption mode ipsec"), 20.0,
                   "node-3 holds node-1's pods")
        assert replies(c, a.ip, 3) == 0
        assert replies(a, c.ip, 3) == 0
        assert _strict_drops(info, "node-3") >= 0  # its guard is in place in the other mode too
        _restart_node3(info, tmp_path, None)
        wait_ready(info, READY_TIMEOUT)
        reach_all(list(pods.values()))
        report = analyse(capture, pod_cidrs(info.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert report.esp > 0
