"""Runs a shell script in a fresh VM for a test; skips, with the harness's reason, where none can start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ciphermesh.lab.vm.errors import VmUnavailableError
from ciphermesh.lab.vm.run import VmOptions, VmResult, run_in_vm

REPO = Path(__file__).resolve().parents[2]
# The start of every VM test script: `step NAME CMD...` runs CMD with its output in $r/NAME.out, and
# `mark NAME RC` records something run another way; both append `NAME RC SECONDS` to $r/steps.txt.
STEPS_SH = r"""
r=$CIPHERMESH_VM_RESULTS
step() {
  name=$1; shift
  start=$(date +%s.%N)
  "$@" > "$r/$name.out" 2>&1
  echo "$name $? $(echo "$(date +%s.%N) - $start" | bc)" >> "$r/steps.txt"
}
mark() { echo "$1 $2 0" >> "$r/steps.txt"; }
"""


def run_script(script: str, results: Path, *, memory: str = "2G", timeout: float = 600.0) -> VmResult:
    """`script` (POSIX sh) in a VM, in the checkout, `results` writable ($CIPHERMESH_VM_RESULTS there)."""
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (QEMU's virtiofsd and the guest's namespaces)")
    try:
        return run_in_vm(["sh", "-c", script], VmOptions(memory=memory, timeout=timeout, results=results,
                                                          cwd=REPO))
    except VmUnavailableError as exc:
        pytest.skip(f"no VM can start here: {exc}")


def read(result: VmResult, name: str) -> str:
    """A file the guest wrote into the results directory ('' if it wrote none)."""
    path = result.results / name
    return path.read_text() if path.exists() else ""


def steps(result: VmResult) -> dict[str, tuple[int, float]]:
    """What STEPS_SH recorded: step name -> (exit status, seconds)."""
    rows = (line.split() for line in read(result, "steps.txt").splitlines())
    return {row[0]: (int(row[1]), float(row[2])) for row in rows if len(row) == 3}


def check_step(result: VmResult, name: str) -> None:
    """Fail, quoting the step's output (NAME.out), unless the step ran and exited 0."""
    recorded = steps(result)
    assert recorded.get(name, (None,))[0] == 0, f"{name}: {read(result, f'{name}.out')} (steps: {recorded})"
