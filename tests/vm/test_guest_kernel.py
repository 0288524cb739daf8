"""The guest kernel has what the kernel engine needs and this machine's lacks: ESP with AES-GCM in XFRM,
and WireGuard links that the real `wg` reads. One boot for all checks."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from ciphermesh.lab.vm.run import VmResult
from tests.support.vm import read, run_script

pytestmark = [pytest.mark.slow, pytest.mark.vm]

KEY = secrets.token_hex(20)
SCRIPT = f"""
r=$CIPHERMESH_VM_RESULTS
ip netns add vmesp
ip -n vmesp xfrm state add src 10.9.0.1 dst 10.9.0.2 proto esp spi 0x3 reqid 1 mode tunnel \
  aead 'rfc4106(gcm(aes))' 0x{KEY} 128 2> $r/esp-add.err
echo $? > $r/esp-add.rc
ip -n vmesp xfrm state > $r/esp-state.txt 2>&1
grep -A3 '^name *: rfc4106(gcm(aes))' /proc/crypto > $r/crypto.txt
ip netns add vmwg
ip -n vmwg link add cilium_wg0 type wireguard 2> $r/wg-add.err
echo $? > $r/wg-add.rc
wg genkey > $r/wg.key
ip netns exec vmwg wg set cilium_wg0 private-key $r/wg.key listen-port 51871
ip netns exec vmwg wg show cilium_wg0 > $r/wg-show.txt 2>&1
wg pubkey < $r/wg.key > $r/wg.pub
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> VmResult:
    result = run_script(SCRIPT, Path(tmp_path_factory.mktemp("vm-kernel")))
    assert result.returncode == 0, result.stderr
    return result


def test_an_esp_state_with_rfc4106_gcm_aes_is_added_and_shown(guest: VmResult) -> None:
    assert read(guest, "esp-add.rc").strip() == "0", read(guest, "esp-add.err")
    state = read(guest, "esp-state.txt")
    assert "src 10.9.0.1 dst 10.9.0.2" in state, state
    assert "proto esp spi 0x00000003 reqid 1 mode tunnel" in state, state
    assert f"aead rfc4106(gcm(aes)) 0x{KEY} 128" in state, state


def test_the_guest_kernel_has_an_aes_gcm_esp_implementation(guest: VmResult) -> None:
    assert "driver       : rfc4106-gcm-aesni" in read(guest, "crypto.txt"), read(guest, "crypto.txt")


def test_a_wireguard_link_is_created_and_wg_show_reads_it(guest: VmResult) -> None:
    assert read(guest, "wg-add.rc").strip() == "0", read(guest, "wg-add.err")
    shown = read(guest, "wg-show.txt")
    assert "interface: cilium_wg0" in shown, shown
    assert f"public key: {read(guest, 'wg.pub').strip()}" in shown, shown
    assert "listening port: 51871" in shown, shown
