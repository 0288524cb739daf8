"""Our userspace ESP and the real 6.1 kernel's XFRM exchange pings with Cilium's auth+enc key lines: the
kernel stores hmac(sha256) with 96-bit truncation for Cilium's length 0, and ours matches it byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.vm import read, run_script

pytestmark = [pytest.mark.slow, pytest.mark.vm]

# Namespace `k` is the kernel's side, `u` runs our ESP on a raw socket; the guest is thrown away after,
# the trap is for a failing run that goes on to other commands. PYTHONPATH: this checkout's sources.
SCRIPT = """
r=$CIPHERMESH_VM_RESULTS
trap 'ip netns del k; ip netns del u' EXIT
ip netns add k && ip netns add u
ip link add veth-k netns k type veth peer name veth-u netns u
ip -n k addr add 10.77.0.1/24 dev veth-k && ip -n k link set veth-k up && ip -n k link set lo up
ip -n k addr add 10.78.0.1/32 dev lo && ip -n k route add 10.78.0.2/32 dev veth-k
ip -n u addr add 10.77.0.2/24 dev veth-u && ip -n u link set veth-u up && ip -n u link set lo up
PYTHONPATH="$PWD/src:$PWD" ip netns exec u .venv/bin/python -m tests.support.esp_kernel_peer "$r" \
  > "$r/peer.out" 2>&1
echo $? > "$r/peer.rc"
"""

# hmac(sha256) and hmac(sha512) as Linux 6.1 truncates them when asked for 0 bits (Cilium's request).
KERNEL_ICV_BITS = {"sha256": 96, "sha512": 256}


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    result = run_script(SCRIPT, Path(tmp_path_factory.mktemp("vm-esp-kernel")), timeout=900.0)
    assert result.returncode == 0, result.stderr
    assert read(result, "peer.rc").strip() == "0", read(result, "peer.out")
    found: dict[str, dict[str, Any]] = json.loads(read(result, "esp-kernel.json"))
    return found


@pytest.mark.parametrize("name", sorted(KERNEL_ICV_BITS))
def test_the_kernel_truncates_cilium_s_zero_as_our_table_says(found: dict[str, Any], name: str) -> None:
    case = found[name]
    assert case["dumped_trunc"] == [KERNEL_ICV_BITS[name]] * 2, case["kernel_state"]
    assert case["table_icv_bits"] == KERNEL_ICV_BITS[name]


@pytest.mark.parametrize("name", sorted(KERNEL_ICV_BITS))
def test_the_kernel_accepts_our_esp_and_we_open_its_reply(found: dict[str, Any], name: str) -> None:
    case = found[name]
    # A reply at all means the kernel authenticated and decrypted our echo request.
    assert case["kernel_replied"], case["kernel_state"]
    assert case["kernel_icv_bytes"] == KERNEL_ICV_BITS[name] // 8
    assert case["we_opened"] == "ok"
    assert case["echo_reply"]


@pytest.mark.parametrize("name", sorted(KERNEL_ICV_BITS))
def test_the_kernel_refuses_another_icv_length(found: dict[str, Any], name: str) -> None:
    case = found[name]
    assert case["wrong_icv_proto_errors"] >= 1, case["kernel_state"]
    assert not case["wrong_icv_replied"]
