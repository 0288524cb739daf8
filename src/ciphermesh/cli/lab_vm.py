"""`ciphermesh lab vm -- CMD...`: a command in a fresh VM (a stock Debian kernel in QEMU) with this
checkout visible; the kernel engine's ESP and WireGuard are tested there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ciphermesh.cli.errors import CliError
from ciphermesh.lab.vm.errors import VmError, VmUnavailableError
from ciphermesh.lab.vm.run import DEFAULT_TIMEOUT, VmOptions, run_in_vm

# Distinct from a command's own failure, so a script can tell "no VM here" from "the test failed".
UNAVAILABLE_EXIT = 77


def _vm(args: argparse.Namespace) -> int:
    defaults = VmOptions()
    options = VmOptions(memory=args.memory, cpus=args.cpus or defaults.cpus, timeout=args.timeout,
                        results=args.results)
    try:
        result = run_in_vm(list(args.command), options, stdout=sys.stdout, stderr=sys.stderr)
    except VmUnavailableError as exc:
        raise CliError(f"no VM: {exc}", UNAVAILABLE_EXIT) from None
    except VmError as exc:
        raise CliError(str(exc)) from None
    accel = "KVM" if result.kvm else "TCG, emulated"
    print(f"vm: booted in {result.boot_seconds:.1f} s ({accel}), the command ran {result.run_seconds:.1f} s "
          f"and exited {result.returncode}; results in {result.results}", file=sys.stderr)
    return result.returncode


def register_vm(lab_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vm = lab_sub.add_parser("vm", help="run a command in a fresh VM (Debian kernel in QEMU) with this "
                            "checkout and its .venv visible read-only, e.g. `lab vm -- ip xfrm state`")
    vm.add_argument("--memory", default=VmOptions().memory,
                    help="guest memory, as QEMU takes it (default 2G)")
    vm.add_argument("--cpus", type=int, help="guest CPUs (default: this machine's, at most 4)")
    vm.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds for boot and command, scaled by this machine's pace (default "
                    f"{DEFAULT_TIMEOUT:g})")
    vm.add_argument("--results", type=Path, help="a directory the guest may write (at the same path; "
                    "$CIPHERMESH_VM_RESULTS there); default: a new one under /tmp")
    vm.set_defaults(func=_vm, takes_command=True)
    vm.usage = f"{vm.format_usage().removeprefix('usage: ').strip()} -- CMD..."
    vm.epilog = ("CMD runs as root in the guest, in this directory, with ESP, WireGuard, veth, VXLAN and TUN "
                 "modules loaded; its exit status is this command's (77: no VM can start here, and why).")
