"""Which engine a node runs: `encryption.engine` (auto, kernel, userspace) against what its kernel can do.

As Cilium's agent, it first loads the modules it needs where it may; then a probe decides: for IPsec an
ESP state add that fails with ENOSYS or EPROTONOSUPPORT means no kernel ESP, for WireGuard a `wireguard`
link add that fails with EOPNOTSUPP means no kernel WireGuard. `auto` takes the kernel where the probe
passes, else userspace; `kernel` where it fails is an error that names what is missing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ciphermesh.datapath.desired import Mode
from ciphermesh.datapath.face import (
    ENGINE_KINDS,
    EngineKind,
    EspProbe,
    WireGuardProbe,
    probe_kernel_esp,
    probe_kernel_wireguard,
)

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", *ENGINE_KINDS)
# Cilium's agent loads these for IPsec (pkg/datapath/linux/ipsec: esp4, xfrm_user and the AEAD modules).
IPSEC_MODULES = ("xfrm_user", "esp4", "xfrm4_tunnel", "tunnel4", "aesni_intel", "gcm", "ghash_clmulni_intel",
                 "seqiv", "authenc", "cbc", "sha256_generic")
# Cilium loads none for WireGuard: its link add makes the kernel load `wireguard` (and, through modprobe's
# dependencies, udp_tunnel, ip6_udp_tunnel and the curve25519/chacha20poly1305 libraries). Loading it here
# covers a node whose kernel does not autoload for the agent's namespace.
WIREGUARD_MODULES = ("wireguard",)
_MODPROBE_TIMEOUT = 30.0


class EngineUnavailableError(RuntimeError):
    """`encryption.engine=kernel` on a node whose kernel cannot run it."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine kind and, for status, why it was chosen."""

    kind: EngineKind
    reason: str


USERSPACE = EngineChoice("userspace", "encryption.engine=userspace")


def load_modules(modules: tuple[str, ...]) -> None:
    """modprobe each module, as far as this node lets us: missing ones are the probe's to find."""
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        log.info("no modprobe here: the kernel's built-in and loaded modules decide")
        return
    for module in modules:
        try:
            done = subprocess.run([modprobe, "-q", module], capture_output=True, text=True,
                                  timeout=_MODPROBE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.info("modprobe %s: %s", module, exc)
            continue
        if done.returncode != 0:
            log.info("modprobe %s failed (exit %d)", module, done.returncode)


def _mode_probe(mode: Mode) -> tuple[tuple[str, ...], Callable[[], EspProbe | WireGuardProbe]]:
    """The modules to load and the probe that decides, for an encrypted mode."""
    if mode == "wireguard":
        return WIREGUARD_MODULES, probe_kernel_wireguard
    return IPSEC_MODULES, probe_kernel_esp


def choose_engine(asked: str, mode: Mode, *, probe: Callable[[], EspProbe | WireGuardProbe] | None = None,
                  load: Callable[[tuple[str, ...]], None] = load_modules) -> EngineChoice:
    """The engine for `mode` under `encryption.engine=asked`; EngineUnavailableError if it cannot be had.

    `probe` replaces the mode's own probe (tests)."""
    if asked not in ENGINE_CHOICES:
        raise ValueError(f"encryption.engine={asked}: choose one of {', '.join(ENGINE_CHOICES)}")
    if mode == "disabled":
        return EngineChoice("userspace", "encryption is off: no engine runs")
    if asked == "userspace":
        return USERSPACE
    modules, mode_probe = _mode_probe(mode)
    load(modules)
    found = (probe or mode_probe)()
    if found.available:
        return EngineChoice("kernel", f"{asked}: {found.reason}")
    if asked == "kernel":
        raise EngineUnavailableError(f"encryption.engine=kernel, but this node has {found.reason}")
    return EngineChoice("userspace", f"auto: {found.reason}")
