"""What a VM needs on this machine, found or named as missing: QEMU, a kernel with ESP and WireGuard
modules, a static busybox, virtme-ng's `vng`; and whether KVM can be tried."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab.vm.errors import VmUnavailableError
from ciphermesh.lab.vm.virtiofsd import C_DAEMON

CACHE_ENV = "CIPHERMESH_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/ciphermesh/vm")
KERNEL_ENV = "CIPHERMESH_VM_KERNEL"
QEMU = "qemu-system-x86_64"
# Modules the guest loads (the kernel engine's and the lab's); a kernel lacking one is not used.
GUEST_MODULES = ("veth", "esp4", "xfrm_user", "wireguard", "vxlan", "tun", "aesni_intel", "gcm",
                 "ghash_clmulni_intel", "seqiv")
_CHECKED_MODULES = ("esp4", "wireguard", "vxlan", "xfrm_user")
SETUP_HINT = "bash scripts/setup.sh installs it"


@dataclass(frozen=True)
class Host:
    """The binaries and files one VM run uses."""

    qemu: Path
    kernel: Path
    busybox: Path
    vng: Path
    kvm: bool


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)))


def _has_modules(version: str, modules: Path) -> bool:
    try:
        listed = (modules / version / "modules.dep").read_text()
    except OSError:
        return False
    return all(f"/{name}.ko" in listed for name in _CHECKED_MODULES)


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path:
    """`$CIPHERMESH_VM_KERNEL`, else the newest /boot/vmlinuz-* whose modules include ESP and WireGuard."""
    if named := os.environ.get(KERNEL_ENV):
        if not Path(named).is_file():
            raise VmUnavailableError(f"no kernel at {named} (from ${KERNEL_ENV})")
        return Path(named)
    images = sorted(boot.glob("vmlinuz-*"), key=lambda path: path.stat().st_mtime, reverse=True)
    for image in images:
        if _has_modules(image.name.removeprefix("vmlinuz-"), modules):
            return image
    seen = ", ".join(image.name for image in images) or "none"
    raise VmUnavailableError(
        f"no kernel for the VM: no {boot}/vmlinuz-* with esp4, wireguard, vxlan and xfrm_user modules in "
        f"{modules} (seen: {seen}); the Debian package linux-image-cloud-amd64 has them ({SETUP_HINT})")


def find_vng() -> Path:
    """virtme-ng's `vng` beside this interpreter (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file():
        return beside
    found = shutil.which("vng")
    if found is None:
        raise VmUnavailableError(f"no virtme-ng: `vng` is neither in {beside.parent} nor on PATH (it is in "
                                 f"the project's dev extras; {SETUP_HINT})")
    return Path(found)


def kvm_usable(cpuinfo: str) -> bool:
    """Hardware virtualisation offered to us: /dev/kvm alone is not enough (a PVM host has it, without
    vmx or svm, and runs only PVM guests)."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and bool(flags & {"vmx", "svm"})


def find_host() -> Host:
    """Everything a VM needs here, or VmUnavailableError naming the first thing missing."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise VmUnavailableError(f"no QEMU: {QEMU} is not on PATH (Debian package qemu-system-x86; "
                                 f"{SETUP_HINT})")
    if not C_DAEMON.is_file():
        raise VmUnavailableError(f"no {C_DAEMON} to share the root with the guest ({SETUP_HINT})")
    busybox = cache_dir() / "busybox" / "bin" / "busybox"
    if not busybox.is_file():
        raise VmUnavailableError(f"no static busybox at {busybox} (from the Debian package busybox-static; "
                                 f"{SETUP_HINT})")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return Host(qemu=Path(qemu), kernel=find_kernel(), busybox=busybox, vng=find_vng(),
                kvm=kvm_usable(cpuinfo))
