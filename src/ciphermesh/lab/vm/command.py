"""virtme-ng's command line for one run, and the directory that puts the `virtiofsd` wrapper first on its
PATH."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab.vm.host import Host

SHIM = """#!/bin/sh
# virtme-ng runs `virtiofsd` from PATH with the Rust daemon's flags; this translates for QEMU's C one.
exec {python} -m ciphermesh.lab.vm.virtiofsd "$@"
"""


@dataclass(frozen=True)
class Machine:
    """The guest's size and whether it runs under KVM or TCG (emulated)."""

    memory: str
    cpus: int
    kvm: bool


def vng_argv(host: Host, machine: Machine, *, results: Path, cwd: Path, script: Path) -> list[str]:
    """`vng` booting the host's kernel on the host's root (read-only), `results` writable, running `script`
    with sh; verbose, so that its output is the guest's console (kept for when a boot fails)."""
    argv = [str(host.vng), "--run", str(host.kernel), "--qemu", str(host.qemu),
            "--busybox", str(host.busybox), "--name", "ciphermesh-vm",
            "--memory", machine.memory, "--cpus", str(machine.cpus),
            "--rwdir", str(results), "--cwd", str(cwd), "--verbose"]
    if not machine.kvm:
        argv.append("--disable-kvm")
    return [*argv, "--exec", f"sh {shlex.quote(str(script))}"]


def write_shim(directory: Path) -> Path:
    """A `virtiofsd` in `directory` that runs the wrapper with this interpreter; returns `directory`."""
    shim = directory / "virtiofsd"
    shim.write_text(SHIM.format(python=shlex.quote(sys.executable)))
    shim.chmod(0o755)
    return directory
