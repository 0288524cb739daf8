"""Runs a shell script in a fresh VM for a test; skips, with the harness's reason, where none can start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ciphermesh.lab.vm.errors import VmUnavailableError
from ciphermesh.lab.vm.run import VmOptions, VmResult, run_in_vm

REPO = Path(__file__).resolve().parents[2]


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
