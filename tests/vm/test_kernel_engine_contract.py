"""The engine contract suite, unchanged, against the kernel IPsec engine in the VM's real kernel: here it
skips (no ESP), there every one of its cases must run and pass."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.vm import read, run_script

pytestmark = [pytest.mark.slow, pytest.mark.vm]

SCRIPT = """
.venv/bin/pytest -p no:cacheprovider -q tests/contract/test_engine_contract.py -k kernel-ipsec \\
  --junitxml="$CIPHERMESH_VM_RESULTS/contract.xml" > "$CIPHERMESH_VM_RESULTS/contract.out" 2>&1
echo $? > "$CIPHERMESH_VM_RESULTS/contract.rc"
"""


def test_the_kernel_engine_passes_the_engine_contract_in_a_real_kernel(tmp_path: Path) -> None:
    result = run_script(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    output = read(result, "contract.out")
    suite = ET.fromstring(read(result, "contract.xml") or "<testsuites/>").find("testsuite")
    assert suite is not None, output
    cases = suite.findall("testcase")
    assert len(cases) >= 6, output  # every case of the contract that takes an engine, for this one
    assert all(case.find("failure") is None and case.find("error") is None for case in cases), output
    assert all(case.find("skipped") is None for case in cases), output
    assert read(result, "contract.rc").strip() == "0", output
