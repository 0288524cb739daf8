"""The engine contract suite, unchanged, against the kernel IPsec and WireGuard engines in the VM's real
kernel: here they skip (no ESP, no WireGuard), there every one of their cases must run and pass."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.vm import read, run_script

pytestmark = [pytest.mark.slow, pytest.mark.vm]

SCRIPT = """
.venv/bin/pytest -p no:cacheprovider -q tests/contract/test_engine_contract.py \\
  -k "kernel-ipsec or kernel-wireguard" --junitxml="$CIPHERMESH_VM_RESULTS/contract.xml" \\
  > "$CIPHERMESH_VM_RESULTS/contract.out" 2>&1
echo $? > "$CIPHERMESH_VM_RESULTS/contract.rc"
"""


def test_the_kernel_engines_pass_the_engine_contract_in_a_real_kernel(tmp_path: Path) -> None:
    result = run_script(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    output = read(result, "contract.out")
    suite = ET.fromstring(read(result, "contract.xml") or "<testsuites/>").find("testsuite")
    assert suite is not None, output
    cases = suite.findall("testcase")
    # Every case of the contract that takes an engine, for each kernel engine.
    assert len(cases) >= 12, output
    assert {name.split("[")[1] for case in cases if "[" in (name := case.get("name", ""))} == {
        "kernel-ipsec]", "kernel-wireguard]"}, output
    assert all(case.find("failure") is None and case.find("error") is None for case in cases), output
    assert all(case.find("skipped") is None for case in cases), output
    assert read(result, "contract.rc").strip() == "0", output
