"""A mixed 3-node IPsec lab in the VM: node-1 and node-2 on the kernel engine, node-3 on the userspace one
(`--node-set node-3:encryption.engine=userspace`). It comes up although Python runs many times slower
there (the lab's waits follow the machine's pace, ciphermesh.lab.pace), and connectivity test passes: pods
on kernel and userspace nodes ping and talk TCP both ways over one wire format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ciphermesh.lab.vm.run import VmResult
from tests.support.vm import STEPS_SH, read, run_script, steps

pytestmark = [pytest.mark.slow, pytest.mark.vm]

SCRIPT = STEPS_SH + """
python -c 'from ciphermesh.lab import pace; print(pace.factor())' > $r/pace.txt
step up ciphermesh lab up --lab vmlab --control-plane etcd --nodes 3 \
  --set encryption.enabled=true --set encryption.type=ipsec --node-set node-3:encryption.engine=userspace
ciphermesh status --lab vmlab -o json > $r/status.json
timeout 60 ip netns exec vmlab-node-3 tcpdump -n -l -i cilium_vxlan -c 2 esp > "$r/esp.txt" 2>/dev/null &
step connectivity ciphermesh connectivity test --lab vmlab
step down ciphermesh lab down --lab vmlab
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> VmResult:
    result = run_script(SCRIPT, Path(tmp_path_factory.mktemp("vm-lab")), memory="3G")
    assert result.returncode == 0, result.stderr
    return result


def test_the_lab_comes_up_in_the_slow_guest_and_every_pair_connects(guest: VmResult) -> None:
    recorded = steps(guest)
    timings = f"boot {guest.boot_seconds} s, pace {read(guest, 'pace.txt').strip()}, steps {recorded}"
    print(timings)
    for name in ("up", "connectivity", "down"):
        assert recorded.get(name, (None,))[0] == 0, f"{name}: {read(guest, f'{name}.out')} ({timings})"
    assert "lab vmlab is up: 3 nodes" in read(guest, "up.out")
    assert "All 36 tests passed" in read(guest, "connectivity.out"), read(guest, "connectivity.out")


def test_kernel_and_userspace_nodes_share_one_wire_format(guest: VmResult) -> None:
    nodes = json.loads(read(guest, "status.json"))["nodes"]
    assert [n["encryption"]["engine"] for n in nodes] == ["kernel", "kernel", "userspace"]
    assert "encryption.engine=userspace" in nodes[2]["engineReason"]
    # The userspace node's cilium_vxlan carries ESP under the same SPI to and from the kernel nodes.
    lines = read(guest, "esp.txt").splitlines()
    assert len(lines) == 2 and all("ESP(spi=0x00000003," in line for line in lines), lines


def test_the_guest_runs_at_a_pace_the_lab_measured_as_slower(guest: VmResult) -> None:
    # Under TCG the guest is many times slower; under KVM about as fast as here (factor 1).
    factor = float(read(guest, "pace.txt"))
    assert factor >= 1.0
    if not guest.kvm:
        assert factor > 2.0, f"a TCG guest measured pace {factor}"
