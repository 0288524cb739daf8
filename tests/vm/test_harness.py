"""The VM harness's parts that need no VM: finding what a VM needs, the vng and virtiofsd command lines,
the guest script, and the pace factor the lab's waits follow."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciphermesh.lab import pace
from ciphermesh.lab.vm import host as vm_host
from ciphermesh.lab.vm import virtiofsd
from ciphermesh.lab.vm.command import Machine, vng_argv
from ciphermesh.lab.vm.errors import VmUnavailableError
from ciphermesh.lab.vm.guest import PREPARE, ControlFiles, guest_script
from ciphermesh.lab.vm.run import run_in_vm

HOST = vm_host.Host(qemu=Path("/q/qemu"), kernel=Path("/boot/vmlinuz-6.1"), busybox=Path("/c/busybox"),
                    vng=Path("/v/bin/vng"), kvm=False)


@pytest.fixture
def fresh_pace() -> Iterator[None]:
    pace.factor.cache_clear()
    yield
    pace.factor.cache_clear()


def test_without_qemu_on_path_a_run_is_unavailable_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VmUnavailableError, match="no QEMU: qemu-system-x86_64 is not on PATH"):
        run_in_vm(["true"])


def test_a_kernel_is_taken_only_with_esp_and_wireguard_modules(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vm_host.KERNEL_ENV, raising=False)
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-1-cloud-amd64").write_bytes(b"kernel")
    (modules / "6.1.0-1-cloud-amd64").mkdir(parents=True)
    dep = modules / "6.1.0-1-cloud-amd64" / "modules.dep"
    dep.write_text("kernel/drivers/net/vxlan/vxlan.ko:\nkernel/net/xfrm/xfrm_user.ko:\n")
    with pytest.raises(VmUnavailableError, match="linux-image-cloud-amd64"):
        vm_host.find_kernel(boot, modules)
    dep.write_text(dep.read_text() + "kernel/net/ipv4/esp4.ko:\nkernel/drivers/net/wireguard/wireguard.ko:\n")
    assert vm_host.find_kernel(boot, modules) == boot / "vmlinuz-6.1.0-1-cloud-amd64"


def test_kvm_is_tried_only_where_the_cpu_offers_vmx_or_svm() -> None:
    assert not vm_host.kvm_usable("flags\t\t: fpu sse2 aes hypervisor\n")


def test_vng_runs_the_script_under_tcg_unless_kvm_is_chosen(tmp_path: Path) -> None:
    args = dict(results=tmp_path, cwd=Path("/src"), script=tmp_path / ".vm" / "run.sh")
    tcg = vng_argv(HOST, Machine(memory="3G", cpus=2, kvm=False), **args)
    assert tcg[:3] == ["/v/bin/vng", "--run", "/boot/vmlinuz-6.1"]
    assert "--disable-kvm" in tcg
    assert tcg[tcg.index("--rwdir") + 1] == str(tmp_path)
    assert tcg[tcg.index("--memory") + 1] == "3G"
    assert tcg[-2:] == ["--exec", f"sh {tmp_path}/.vm/run.sh"]
    assert "--disable-kvm" not in vng_argv(HOST, Machine(memory="3G", cpus=2, kvm=True), **args)


def test_the_wrapper_answers_virtme_ngs_probes() -> None:
    # virtme-ng takes a daemon that answers --version, and asks for read-only exports if --help says so.
    probe = [virtiofsd.sys.executable, "-m", "ciphermesh.lab.vm.virtiofsd"]
    assert subprocess.run([*probe, "--version"], capture_output=True, check=False).returncode == 0
    helped = subprocess.run([*probe, "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--readonly" in helped.stdout


def test_the_wrapper_exports_a_read_only_bind_mount_to_the_c_daemon() -> None:
    argv = virtiofsd.launch_argv("/tmp/s", "/", "always", readonly=True)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert "mount --bind -o ro / /tmp/s.ro && exec /usr/lib/qemu/virtiofsd" in argv[-1]
    assert "-o source=/tmp/s.ro -o cache=always -o sandbox=chroot" in argv[-1]
    writable = virtiofsd.launch_argv("/tmp/s", "/results", "auto", readonly=False)
    assert writable[0] == "/usr/lib/qemu/virtiofsd" and "source=/results" in writable


def _run_guest_script(tmp_path: Path, prepare: tuple[str, ...]) -> ControlFiles:
    control = ControlFiles.under(tmp_path)
    control.root.mkdir(exist_ok=True)
    script = guest_script(["sh", "-c", "echo out; echo err >&2; exit 3"], control, cwd=tmp_path,
                          path=["/venv/bin"], env={"CIPHERMESH_VM": "1"}, prepare=prepare)
    subprocess.run(["sh", "-c", script], check=False, capture_output=True)
    return control


def test_the_guest_script_prepares_then_runs_the_command_with_its_output_in_files(tmp_path: Path) -> None:
    assert PREPARE[0] == "modprobe -a veth esp4 xfrm_user wireguard vxlan tun aesni_intel gcm " \
                         "ghash_clmulni_intel seqiv"
    control = _run_guest_script(tmp_path, ("true", "echo prepared"))
    assert control.started.exists() and not control.prepare_failed.exists()
    assert control.prepare_log.read_text() == "prepared\n"
    assert control.returncode.read_text() == "3\n"
    assert control.stdout.read_text() == "out\n"
    assert control.stderr.read_text() == "err\n"


def test_a_failed_preparation_is_recorded_and_the_command_not_run(tmp_path: Path) -> None:
    control = _run_guest_script(tmp_path, ("echo no module esp4 >&2; false", "echo not reached"))
    assert control.prepare_failed.exists()
    assert control.prepare_log.read_text() == "no module esp4\n"
    assert not control.returncode.exists() and not control.stdout.exists()


@pytest.mark.usefixtures("fresh_pace")
def test_the_pace_factor_is_the_env_value_or_measured_and_never_below_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pace.PACE_ENV, "12.5")
    assert pace.factor() == 12.5
    assert pace.scaled(54) == 675
    pace.factor.cache_clear()
    monkeypatch.setenv(pace.PACE_ENV, "0.2")
    assert pace.factor() == 1.0
    pace.factor.cache_clear()
    monkeypatch.delenv(pace.PACE_ENV)
    monkeypatch.setattr(pace, "_workload", lambda: pace.REFERENCE_SECONDS * 20)
    assert pace.factor() == pytest.approx(20)
