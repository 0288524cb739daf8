"""The kernel WireGuard engine in a real kernel: 3-node WireGuard labs in the VM, `encryption.engine` at auto,
node encryption and strict mode on.

Every node reports `kernel`; the real `wg show cilium_wg0` lists both peers at :51871 with fwmark 0x1e00;
connectivity test passes (no plaintext on the wire); an agent SIGKILLed on a kernel node leaves pings
flowing while it is dead, and its restart adopts cilium_wg0 (same public key, the same peers: their
counters carried on).
Then a mixed lab (node-3 userspace): kernel and userspace nodes talk both ways, zero plaintext.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ciphermesh.lab.vm.run import VmResult
from tests.support.vm import STEPS_SH, check_step, read, run_script

# Two labs in one guest boot: 10 to 11 minutes under TCG here.
pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(1800)]

LAB, MIXED = "vmw", "vmx"
ENCRYPTION = ("--set encryption.enabled=true --set encryption.type=wireguard "
              "--set encryption.nodeEncryption=true --set encryption.strictMode.enabled=true")
SCRIPT = f"""{STEPS_SH}
wg1() {{ ip netns exec {LAB}-node-1 wg show cilium_wg0 "$@"; }}
up() {{ ciphermesh lab up --lab {LAB} --control-plane etcd --nodes 3 {ENCRYPTION}; }}
step up up
ciphermesh status --lab {LAB} -o json > "$r/status.json" 2>&1
wg1 > "$r/wg-show.txt" 2>&1
wg1 fwmark > "$r/fwmark.txt" 2>&1
step connectivity ciphermesh connectivity test --lab {LAB}
step client ciphermesh lab pod run client --lab {LAB} --node node-1
step server ciphermesh lab pod run server --lab {LAB} --node node-2
ciphermesh lab pod list --lab {LAB} -o json > "$r/pods.json"
server=$(jq -r '.pods[] | select(.name == "server") | .ip' "$r/pods.json")
wg1 public-key > "$r/key-before.txt"
step kill kill -9 "$(cut -d' ' -f1 /run/ciphermesh/labs/{LAB}/pids/agent-node-1.pid)"
wg1 transfer > "$r/transfer-before.txt"
# Straight into the pod's namespace (the CLI starts slowly here): 5 s of pings with the agent dead.
ip netns exec {LAB}-pod-client ping -n -q -i 0.05 -c 100 -W 2 "$server" > "$r/ping-dead.txt" 2>&1
wg1 transfer > "$r/transfer-dead.txt"
step restart up
ciphermesh status --lab {LAB} -o json > "$r/status-after.json" 2>&1
wg1 public-key > "$r/key-after.txt"; wg1 transfer > "$r/transfer-after.txt"
ip netns exec {LAB}-pod-client ping -n -q -i 0.05 -c 20 -W 2 "$server" > "$r/ping-after.txt" 2>&1
step down ciphermesh lab down --lab {LAB}
step mixed-up ciphermesh lab up --lab {MIXED} --control-plane etcd --nodes 3 {ENCRYPTION} \\
  --node-set node-3:encryption.engine=userspace
ciphermesh status --lab {MIXED} -o json > "$r/mixed-status.json" 2>&1
step mixed-connectivity ciphermesh connectivity test --lab {MIXED}
step mixed-down ciphermesh lab down --lab {MIXED}
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> VmResult:
    result = run_script(SCRIPT, Path(tmp_path_factory.mktemp("vm-kernel-wg-lab")), memory="3G",
                        timeout=1500.0)
    assert result.returncode == 0, result.stderr
    return result


def _engines(guest: VmResult, name: str) -> list[str]:
    nodes = json.loads(read(guest, name))["nodes"]
    return [n["encryption"]["engine"] for n in nodes]


def _transfer(guest: VmResult, name: str) -> dict[str, tuple[int, int]]:
    """`wg show cilium_wg0 transfer`: peer public key -> (received, sent) bytes."""
    rows = (line.split() for line in read(guest, name).splitlines())
    return {key: (int(rx), int(tx)) for key, rx, tx in rows}


def test_every_node_chose_kernel_wireguard(guest: VmResult) -> None:
    check_step(guest, "up")
    assert _engines(guest, "status.json") == ["kernel"] * 3, read(guest, "status.json")
    nodes = json.loads(read(guest, "status.json"))["nodes"]
    assert all("kernel WireGuard works" in n["engineReason"] for n in nodes), read(guest, "status.json")


def test_wg_show_lists_both_peers_at_51871_with_cilium_s_fwmark(guest: VmResult) -> None:
    shown = read(guest, "wg-show.txt")
    assert "listening port: 51871" in shown and "private key: (hidden)" in shown, shown
    assert read(guest, "fwmark.txt").strip() == "0x1e00", shown
    assert len(re.findall(r"^peer: ", shown, re.M)) == 2, shown
    assert len(re.findall(r"endpoint: [0-9.]+:51871$", shown, re.M)) == 2, shown


def test_connectivity_test_passes_on_kernel_wireguard_nodes(guest: VmResult) -> None:
    check_step(guest, "connectivity")
    out = read(guest, "connectivity.out")
    assert re.search(r"All \d+ tests passed", out), out


def test_a_sigkilled_agent_leaves_traffic_flowing_and_its_restart_adopts_cilium_wg0(guest: VmResult) -> None:
    check_step(guest, "kill")
    check_step(guest, "restart")
    assert "restarted the agent of node-1" in read(guest, "restart.out"), read(guest, "restart.out")
    summary = read(guest, "ping-dead.txt")
    assert re.search(r"100 packets transmitted, 100 received, 0% packet loss", summary), summary
    summary = read(guest, "ping-after.txt")
    assert re.search(r"20 packets transmitted, 20 received, 0% packet loss", summary), summary
    assert _engines(guest, "status-after.json") == ["kernel"] * 3
    key = read(guest, "key-before.txt").strip()
    assert key and read(guest, "key-after.txt").strip() == key
    before, dead, after = (_transfer(guest, f"transfer-{when}.txt") for when in ("before", "dead", "after"))
    assert len(before) == 2 and before.keys() == dead.keys() == after.keys()
    # The same peers, never rebuilt: their counters only grew, across the restart too.
    for peer, (rx, tx) in before.items():
        assert after[peer][0] >= dead[peer][0] >= rx and after[peer][1] >= dead[peer][1] >= tx, peer
    # The pings went through cilium_wg0 while the agent was dead.
    sent = sum(tx for _, tx in dead.values()) - sum(tx for _, tx in before.values())
    assert sent > 50 * 100, (before, dead)
    check_step(guest, "down")


def test_kernel_and_userspace_wireguard_nodes_talk_both_ways_with_no_plaintext(guest: VmResult) -> None:
    check_step(guest, "mixed-up")
    assert _engines(guest, "mixed-status.json") == ["kernel", "kernel", "userspace"]
    check_step(guest, "mixed-connectivity")
    out = read(guest, "mixed-connectivity.out")
    assert re.search(r"All \d+ tests passed", out), out
    check_step(guest, "mixed-down")
