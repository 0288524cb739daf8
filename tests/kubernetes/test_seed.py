"""The seed's commands, verbatim, on a Kubernetes lab: `kubectl create secret`, the jsonpath | jq | base64
read-back, `ciphermesh install`, ESP with SPI 3 between the CiliumInternalIPs decrypted by tshark with keys
derived independently from the Secret and the CiliumNodes, then the seed's `read ... kubectl patch
secret` rotation under pings and a TCP stream: nothing lost, SPI 4 on the wire, every CiliumNode at key
4; then a malformed Secret patched in, which keeps every node on key 4 and says why. One lab, in order."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.info import LabInfo
from ciphermesh.lab.pod_registry import run_pod
from ciphermesh.tshark import ESP_FIELDS, EspFrame, esp_options, read_fields
from tests.support.lab import lab_guard, run_cli
from tests.support.names import unique_lab
from tests.support.rotation import (
    RotationLab,
    analyse,
    assert_no_loss,
    ping_mesh,
    since,
    tcp_stream,
    underlay_tap,
)
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(600),
]

NODES = 3
GRACE = "8s"  # keyRotationDuration: the seed keeps Cilium's 5m, a test cannot wait that out
KEY_FILE = "/etc/ipsec/keys"

CREATE = """
PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))
kubectl create -n kube-system secret generic cilium-ipsec-keys --from-literal=keys="3+ rfc4106(gcm(aes)) $PSK 128"
kubectl get secret -n kube-system cilium-ipsec-keys -o jsonpath='{.data}' | jq -r '.keys' | base64 --decode
"""  # noqa: E501 (the seed's lines, verbatim)
ROTATE = r"""
read KEYID ALGO PSK KEYSIZE < <(kubectl get secret -n kube-system cilium-ipsec-keys -o go-template='{{.data.keys | base64decode}}{{printf "\n"}}')
if [[ $KEYID =~ "+" ]]; then KEYID=${KEYID%\+}; fi
NEW_PSK=($(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64))
data=$(echo "{\"stringData\":{\"keys\":\"$((($KEYID+1)))+ ${ALGO} ${NEW_PSK} ${KEYSIZE}\"}}")
kubectl patch secret -n kube-system cilium-ipsec-keys -p="${data}" -v=1
"""  # noqa: E501
MALFORMED = """kubectl patch secret -n kube-system cilium-ipsec-keys -p='{"stringData":{"keys":"5+ rfc4106(gcm(aes)) nothex 128"}}'"""  # noqa: E501


def seed(info: LabInfo, script: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`script` in bash after `eval "$(ciphermesh lab env)"`, as a user types it."""
    env_line = f'eval "$(ciphermesh lab env --lab {info.name})"'
    ciphermesh = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin"
    env = {**os.environ, "PATH": f"{ciphermesh}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{env_line}\n{script}"], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)
    assert done.returncode == 0, f"{script}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done


def ciliumnodes(info: LabInfo) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(seed(info, "kubectl get ciliumnodes -o json").stdout)["items"]
    return items


def router_ip(node: dict[str, Any]) -> str:
    return str(next(a["ip"] for a in node["spec"]["addresses"] if a["type"] == "CiliumInternalIP"))


def derived_sa_entries(info: LabInfo, line: str) -> list[str]:
    """tshark records for every tunnel, derived from the Secret's line and the CiliumNodes by the CLI."""
    nodes = ciliumnodes(info)
    entries = []
    for src in nodes:
        for dst in nodes:
            if src is dst:
                continue
            derived = run_cli("encryption", "key", "derive", line, "--src", router_ip(src), "--dst",
                              router_ip(dst), "--src-boot-id", src["spec"]["bootid"], "--dst-boot-id",
                              dst["spec"]["bootid"], "-o", "wireshark")
            assert derived.returncode == 0, derived.stderr
            entries.append(derived.stdout.strip())
    return entries


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RotationLab]:
    name = unique_lab("ks")
    with lab_guard(name):
        up = run_cli("lab", "up", "--lab", name, "--nodes", str(NODES), "--control-plane", "kubernetes",
                     timeout=600)
        assert up.returncode == 0, up.stderr
        info = load_lab(name)
        yield RotationLab(info, {}, tmp_path_factory.mktemp("seed"))


def test_the_seed_creates_the_secret_and_reads_it_back(lab: RotationLab) -> None:
    created, read_back = seed(lab.info, CREATE).stdout.strip().splitlines()
    assert created == "secret/cilium-ipsec-keys created"
    key_id, algo, psk, size = read_back.split(" ")
    assert (key_id, algo, size) == ("3+", "rfc4106(gcm(aes))", "128") and len(psk) == 40, read_back
    int(psk, 16)


def test_install_brings_esp_with_spi_3_between_the_router_ips(lab: RotationLab) -> None:
    seed(lab.info, "ciphermesh install --set encryption.enabled=true --set encryption.type=ipsec "
                   f"--set encryption.ipsec.keyRotationDuration={GRACE}")
    waited = run_cli("status", "--lab", lab.name, "--wait", "--wait-duration", "5m", timeout=330)
    assert waited.returncode == 0, waited.stderr
    pods = seed(lab.info, "kubectl get pods -n kube-system -o json").stdout
    agents = [p for p in json.loads(pods)["items"] if p["metadata"]["labels"].get("k8s-app") == "cilium"]
    assert sorted(p["spec"]["nodeName"] for p in agents) == list(lab.info.nodes)
    lab.pods.update({f"p{i}": run_pod(lab.info, f"p{i}", node) for i, node in enumerate(lab.info.nodes, 1)})
    line = seed(lab.info, "kubectl get secret -n kube-system cilium-ipsec-keys "
                          "-o jsonpath='{.data.keys}' | base64 --decode").stdout.strip()
    with underlay_tap(lab, "seed-spi3") as tap, ping_mesh(lab) as mesh:
        time.sleep(2)
        pings = mesh.stop()
        pcap = tap.stop()
    assert_no_loss(pings)
    wire = analyse(lab, pcap)
    assert set(wire.esp_by_spi) == {3} and wire.esp > 0 and wire.plaintext_count == 0, wire.as_dict()
    path = lab.tmp / "spi3.pcap"
    path.write_bytes(pcap)
    options = [*esp_options(derived_sa_entries(lab.info, line)), "-d", "udp.port==8472,vxlan"]
    fields = [*ESP_FIELDS, "ip.src", "icmp.type"]
    frames = [EspFrame(row) for row in read_fields(path, fields, options=options)]
    esp = [f for f in frames if f.spi is not None]
    routers = {router_ip(n) for n in ciliumnodes(lab.info)}
    # tshark 4.0 has no ESN, so it flags every ICV; GCM decrypts without the AAD, so inner ICMP shows.
    decrypted = [f for f in esp if f.first("icmp.type") in ("0", "8")]
    assert esp and len(decrypted) == len(esp), f"{len(decrypted)} of {len(esp)} ESP frames decrypted"
    # ip.src occurrences: the underlay (VXLAN between node IPs), then the ESP carrier, then the pod.
    assert {str(IPv4Address(f.fields["ip.src"][1])) for f in esp} == routers


def test_the_seed_rotation_loses_nothing_and_moves_every_node_to_spi_4(lab: RotationLab) -> None:
    peers = len(lab.info.nodes) - 1
    with underlay_tap(lab, "seed-rotate", snaplen=160) as tap, ping_mesh(lab) as mesh, \
            tcp_stream(lab, "p1", "p2") as stream:
        time.sleep(2)
        patched = seed(lab.info, ROTATE)
        timeline = lab.wait_settled(4, timeout=120)
        settled_at = time.time()
        time.sleep(3)
        pings = mesh.stop()
        streamed = stream.stop()
        pcap = tap.stop()
    assert "secret/cilium-ipsec-keys patched" in patched.stdout, patched.stdout
    print(f"key 4 after the patch: published {timeline.published:.2f} s, sending {timeline.sending:.2f} s, "
          f"settled {timeline.settled:.2f} s")
    assert_no_loss(pings)
    assert streamed.received["intact"] and streamed.received["bytes"] == streamed.sent["bytes"] > 0
    assert streamed.received["maxGap"] < 1.0, streamed.received
    wire, after = analyse(lab, pcap), analyse(lab, since(pcap, settled_at))
    assert set(wire.esp_by_spi) == {3, 4} and set(after.esp_by_spi) == {4}, (wire.as_dict(), after.as_dict())
    assert wire.plaintext_count == 0, wire.plaintext_samples
    assert {n["spec"]["encryption"]["key"] for n in ciliumnodes(lab.info)} == {4}
    status = lab.encryption_status()
    for node in status["nodes"]:
        assert (node["keyID"], node["keysInUse"]) == (4, 2 * peers), node


def test_a_malformed_secret_keeps_every_node_on_key_4_and_says_why(lab: RotationLab) -> None:
    seed(lab.info, MALFORMED)

    def every_node_says_why() -> bool:
        nodes = run_cli("status", "--lab", lab.name, "-o", "json")
        return nodes.returncode == 0 and all(
            any(e.startswith(f"key file {KEY_FILE}: ") for e in n["errors"])
            for n in json.loads(nodes.stdout)["nodes"])

    wait_until(every_node_says_why, 60.0, "every node reporting the malformed key file")
    text = run_cli("status", "--lab", lab.name).stdout
    assert f"key file {KEY_FILE}: " in text and "nothex" not in text, text
    with ping_mesh(lab) as mesh:
        time.sleep(2)
        pings = mesh.stop()
    assert_no_loss(pings)
    assert {n["spec"]["encryption"]["key"] for n in ciliumnodes(lab.info)} == {4}
    logs = [p for p in lab.info.paths.logs.glob("cilium-*.log") if not p.name.startswith("cilium-operator")]
    assert len(logs) >= NODES and all(f"key file {KEY_FILE}: " in p.read_text() for p in logs), logs
    assert not any("nothex" in p.read_text() for p in lab.info.paths.logs.glob("*.log"))


def test_the_seed_wireguard_line_with_node_encryption_passes_the_connectivity_test(lab: RotationLab) -> None:
    seed(lab.info, "ciphermesh uninstall\n"
                   "ciphermesh install --set encryption.enabled=true --set encryption.type=wireguard "
                   "--set encryption.nodeEncryption=true")
    # The agent has no permission on Secrets: with WireGuard it must not wait for one.
    waited = run_cli("status", "--lab", lab.name, "--wait", "--wait-duration", "3m", "-o", "json",
                     timeout=200)
    assert waited.returncode == 0, waited.stderr
    nodes = json.loads(waited.stdout)["nodes"]
    assert {(n["encryption"]["mode"], n["nodeEncryption"]) for n in nodes} == {("wireguard", True)}, nodes
    annotated = [n["metadata"]["annotations"].get("network.cilium.io/wg-pub-key")
                 for n in ciliumnodes(lab.info)]
    assert all(annotated) and len(set(annotated)) == NODES, annotated
    tested = run_cli("connectivity", "test", "--lab", lab.name, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
