"""One command in a fresh VM: boot, prepare, run, power off; its exit status, output and timings."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ciphermesh.lab import pace
from ciphermesh.lab.vm.command import Machine, vng_argv, write_shim
from ciphermesh.lab.vm.errors import VmError, VmUnavailableError
from ciphermesh.lab.vm.guest import ControlFiles, guest_script
from ciphermesh.lab.vm.host import Host, find_host
from ciphermesh.lab.vm.stream import Follower

# Seconds on the reference machine (see ciphermesh.lab.pace); a TCG boot there takes 5 to 20.
BOOT_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 600.0
# Passed on to the guest, so that a command there runs as it would here (the checkout's modules first).
PASSED_ENV = ("PYTHONPATH", pace.PACE_ENV, "CIPHERMESH_LAB_ROOT")
RESULTS_ENV = "CIPHERMESH_VM_RESULTS"
_POLL = 0.1


@dataclass(frozen=True)
class VmOptions:
    """A run's guest size, time limit (on the reference machine's pace), results and working directory."""

    memory: str = "2G"
    cpus: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4))
    timeout: float = DEFAULT_TIMEOUT
    results: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class VmResult:
    """What the command did in the guest; seconds as measured on the host."""

    returncode: int
    stdout: str
    stderr: str
    boot_seconds: float
    run_seconds: float
    results: Path
    kvm: bool


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no console output)"


def _guest_env(results: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
    return {**env, "CIPHERMESH_VM": "1", RESULTS_ENV: str(results), "HOME": "/root",
            "PYTHONDONTWRITEBYTECODE": "1"}


def _stop(process: subprocess.Popen[bytes]) -> None:
    # vng, QEMU and the virtiofsd daemons share the session vng was started in.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _boot_and_run(host: Host, machine: Machine, options: VmOptions, control: ControlFiles, *,
                  results: Path, sinks: Mapping[str, IO[str]]) -> VmResult:
    for stale in control.root.iterdir():
        if stale != control.script:
            stale.unlink()
    argv = vng_argv(host, machine, results=results, cwd=options.cwd.absolute(), script=control.script)
    follower = Follower({control.stdout: sinks.get("stdout"), control.stderr: sinks.get("stderr")})
    boot_limit, run_limit = pace.scaled(BOOT_TIMEOUT), pace.scaled(options.timeout)
    with tempfile.TemporaryDirectory(prefix="ciphermesh-vm-") as shim, open(control.console, "wb") as console:
        # vng runs `virtme-run` and `virtiofsd` through the shell: its own bin and the wrapper first.
        path = os.pathsep.join([str(write_shim(Path(shim))), str(host.vng.parent),
                                os.environ.get("PATH", "")])
        start = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PATH": path}, start_new_session=True)
        booted: float | None = None
        try:
            while process.poll() is None:
                now = time.monotonic()
                if booted is None and control.started.exists():
                    booted = now
                if booted is None and now - start > boot_limit:
                    _stop(process)
                    raise VmUnavailableError(f"the VM did not boot within {boot_limit:.0f} s; its console "
                                        f"({control.console}) ends:\n{_tail(control.console)}")
                if now - start > run_limit:
                    _stop(process)
                    raise VmError(f"the VM run did not end within {run_limit:.0f} s (results in {results})")
                follower.poll()
                time.sleep(_POLL)
        finally:
            if process.poll() is None:
                _stop(process)
        end = time.monotonic()
    follower.poll()
    if booted is None and not control.started.exists():
        raise VmUnavailableError(f"the VM did not boot (vng exited with {process.returncode}); its console "
                            f"({control.console}) ends:\n{_tail(control.console)}")
    booted = booted or end
    if control.prepare_failed.exists():
        raise VmError(f"the guest could not be prepared: {control.prepare_log.read_text().strip()}")
    if not control.returncode.exists():
        raise VmError(f"the guest ended without the command's exit status (a crash, or out of memory?); its "
                      f"console ({control.console}) ends:\n{_tail(control.console)}")
    return VmResult(
        returncode=int(control.returncode.read_text()),
        stdout=control.stdout.read_text(errors="replace"),
        stderr=control.stderr.read_text(errors="replace"),
        boot_seconds=round(booted - start, 1),
        run_seconds=round(end - booted, 1),
        results=results,
        kvm=machine.kvm,
    )


def run_in_vm(command: Sequence[str], options: VmOptions | None = None, *,
              stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> VmResult:
    """Run `command` (argv) in a fresh VM with the host's root read-only and `options.results` writable,
    copying its output to `stdout`/`stderr` as it comes; VmUnavailableError where no VM can start here."""
    if not command:
        raise VmError("no command to run in the VM")
    options = options or VmOptions()
    host = find_host()
    if options.results is None:
        results = Path(tempfile.mkdtemp(prefix="ciphermesh-vm-results-"))
    else:
        results = options.results.absolute()
    control = ControlFiles.under(results)
    control.root.mkdir(parents=True, exist_ok=True)
    control.script.write_text(guest_script(
        command, control, cwd=options.cwd.absolute(), path=[str(Path(sys.executable).parent)],
        env=_guest_env(results)))
    sinks = {name: sink for name, sink in (("stdout", stdout), ("stderr", stderr)) if sink is not None}
    # KVM where the CPU offers it and a boot under it works (a PVM host offers /dev/kvm that boots nothing).
    accelerations = (True, False) if host.kvm else (False,)
    for kvm in accelerations:
        machine = Machine(memory=options.memory, cpus=options.cpus, kvm=kvm)
        try:
            return _boot_and_run(host, machine, options, control, results=results, sinks=sinks)
        except VmUnavailableError:
            if kvm:
                continue
            raise
    raise AssertionError("unreachable: the last acceleration raises")
