"""The kernel IPsec engine in a real kernel: a 3-node lab in the VM with `encryption.engine` left at auto.

Every node reports `kernel`; each holds Cilium's states (SPI = key ID, per-tunnel keys, Cilium's marks)
for each peer; pods ping over ESP on cilium_vxlan, seen by tcpdump as the seed shows it; a key rotation
under 50 pings a second loses none and leaves only the new SPI; an agent SIGKILLed on a kernel node leaves
traffic flowing, and its restart adopts the kernel's states (same keys, sequence numbers carried on, so no
(key, IV) repeats); connectivity test passes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ciphermesh.lab.vm.run import VmResult
from tests.support.vm import read, run_script

pytestmark = [pytest.mark.slow, pytest.mark.vm]

LAB = "vmk"
SCRIPT = f"""
r=$CIPHERMESH_VM_RESULTS
step() {{
  name=$1; shift
  "$@" > "$r/$name.out" 2>&1
  echo "$name $?" >> "$r/steps.txt"
}}
xfrm() {{ for i in 1 2 3; do ip -n {LAB}-node-$i xfrm state > "$r/xfrm-$1-$i.txt"; done; }}
step up ciphermesh lab up --lab {LAB} --control-plane etcd --nodes 3 \\
  --set encryption.enabled=true --set encryption.type=ipsec --set encryption.ipsec.keyRotationDuration=5s
ciphermesh status --lab {LAB} -o json > "$r/status.json" 2>&1
xfrm before
step client ciphermesh lab pod run client --lab {LAB} --node node-1
step server ciphermesh lab pod run server --lab {LAB} --node node-2
ciphermesh lab pod list --lab {LAB} -o json > "$r/pods.json"
server=$(jq -r '.pods[] | select(.name == "server") | .ip' "$r/pods.json")
timeout 60 ip netns exec {LAB}-node-1 tcpdump -n -l -i cilium_vxlan -c 2 esp > "$r/esp.txt" 2>/dev/null &
ciphermesh lab pod exec --lab {LAB} client -- ping -n -q -i 0.02 -c 1000 -W 2 "$server" > "$r/ping.txt" 2>&1 &
ping=$!
sleep 3
step rotate ciphermesh encryption key rotate --lab {LAB}
wait $ping
echo "ping $?" >> "$r/steps.txt"
for _ in $(seq 120); do
  xfrm after
  grep -q "spi 0x00000003" "$r"/xfrm-after-*.txt || break
  sleep 1
done
xfrm prekill
ciphermesh lab pod exec --lab {LAB} client -- ping -n -q -i 0.05 -c 300 -W 2 "$server" \
  > "$r/ping-kill.txt" 2>&1 &
ping=$!
sleep 2
kill -9 "$(cat /run/ciphermesh/labs/{LAB}/pids/agent-node-1.pid)"
sleep 5
step restart ciphermesh lab up --lab {LAB} --control-plane etcd --nodes 3 \
  --set encryption.enabled=true --set encryption.type=ipsec --set encryption.ipsec.keyRotationDuration=5s
wait $ping
echo "pingkill $?" >> "$r/steps.txt"
xfrm postkill
step connectivity ciphermesh connectivity test --lab {LAB}
step down ciphermesh lab down --lab {LAB}
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> VmResult:
    result = run_script(SCRIPT, Path(tmp_path_factory.mktemp("vm-kernel-lab")), memory="3G")
    assert result.returncode == 0, result.stderr
    return result


def _step(guest: VmResult, name: str) -> None:
    rows = dict(line.split() for line in read(guest, "steps.txt").splitlines())
    assert rows.get(name) == "0", f"{name}: {read(guest, f'{name}.out') or read(guest, 'ping.txt')}"


def test_every_node_chose_the_kernel_engine(guest: VmResult) -> None:
    _step(guest, "up")
    nodes = json.loads(read(guest, "status.json"))["nodes"]
    assert [n["encryption"]["engine"] for n in nodes] == ["kernel"] * 3, read(guest, "status.json")
    assert all("kernel ESP works" in n["engineReason"] for n in nodes), read(guest, "status.json")


def test_each_node_holds_cilium_s_states_for_each_peer(guest: VmResult) -> None:
    for i in (1, 2, 3):
        listing = read(guest, f"xfrm-before-{i}.txt")
        spis = re.findall(r"proto esp spi (0x[0-9a-f]+) reqid 1 mode tunnel", listing)
        assert spis == ["0x00000003"] * 4, listing  # an IN and an OUT state per peer
        marks = re.findall(r"mark (0x[0-9a-f]+)/(0x[0-9a-f]+) output-mark (0x[0-9a-f]+)", listing)
        assert sorted(mask for _, mask, _ in marks) == ["0xffff0f00"] * 2 + ["0xffffff00"] * 2
        keys = re.findall(r"aead rfc4106\(gcm\(aes\)\) (0x[0-9a-f]{40}) 128", listing)
        assert len(set(keys)) == 4, "per-tunnel keys: one per direction and peer"


def test_pods_talk_over_esp_on_cilium_vxlan(guest: VmResult) -> None:
    lines = read(guest, "esp.txt").splitlines()
    assert len(lines) == 2 and all("ESP(spi=0x00000003,seq=" in line for line in lines), lines


def test_a_rotation_under_50_pings_a_second_loses_none_and_leaves_only_the_new_spi(guest: VmResult) -> None:
    _step(guest, "rotate")
    summary = read(guest, "ping.txt")
    assert re.search(r"1000 packets transmitted, 1000 received, 0% packet loss", summary), summary
    for i in (1, 2, 3):
        listing = read(guest, f"xfrm-after-{i}.txt")
        assert re.findall(r"proto esp spi (0x[0-9a-f]+)", listing) == ["0x00000004"] * 4, listing


def _out_states(listing: str) -> dict[tuple[str, str], tuple[str, int]]:
    """(src, dst) -> (key, oseq) of each state in `ip xfrm state` output."""
    found = {}
    for block in re.split(r"\n(?=src )", listing.strip()):
        addresses = re.match(r"src (\S+) dst (\S+)", block)
        key = re.search(r"aead \S+ (0x[0-9a-f]+)", block)
        oseq = re.search(r"oseq-hi 0x([0-9a-f]+), oseq 0x([0-9a-f]+)", block)
        if addresses and key and oseq:
            found[addresses.groups()] = (key.group(1), int(oseq.group(1), 16) << 32 | int(oseq.group(2), 16))
    return found


def test_a_sigkilled_agent_leaves_traffic_flowing_and_its_restart_adopts_the_states(guest: VmResult) -> None:
    _step(guest, "restart")
    summary = read(guest, "ping-kill.txt")
    assert re.search(r"300 packets transmitted, 300 received, 0% packet loss", summary), summary
    before, after = (_out_states(read(guest, f"xfrm-{when}-1.txt")) for when in ("prekill", "postkill"))
    assert before and before.keys() == after.keys()
    for pair, (key, seq) in before.items():
        # The same SA, not a new one: its key stayed and its sequence numbers (the IVs) carried on.
        assert after[pair][0] == key and after[pair][1] >= seq, pair
    assert any(after[pair][1] > seq for pair, (_, seq) in before.items())


def test_connectivity_test_passes_on_kernel_nodes(guest: VmResult) -> None:
    _step(guest, "connectivity")
    assert "All 36 tests passed" in read(guest, "connectivity.out")
    _step(guest, "down")
