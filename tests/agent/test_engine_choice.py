"""encryption.engine against the kernel: auto follows the mode's probe (ESP for IPsec, a `wireguard` link
for WireGuard), kernel without it is an error."""

from __future__ import annotations

import os

import pytest

from ciphermesh.agent.engine_choice import (
    IPSEC_MODULES,
    WIREGUARD_MODULES,
    EngineUnavailableError,
    choose_engine,
)
from ciphermesh.datapath.face import EspProbe, WireGuardProbe, probe_kernel_esp, probe_kernel_wireguard
from ciphermesh.lab import netns
from tests.support.xfrm import xfrm_netns

WORKS = EspProbe(True, "kernel ESP works")
MISSING = EspProbe(False, "no kernel ESP: an ESP state add failed with ENOSYS", 38)
WG_WORKS = WireGuardProbe(True, "kernel WireGuard works")
WG_MISSING = WireGuardProbe(False, "no kernel WireGuard: a wireguard link add failed with EOPNOTSUPP", 95)


def _choose(asked: str, mode: str, found: EspProbe | WireGuardProbe,
            loaded: list[tuple[str, ...]]) -> tuple[str, str]:
    choice = choose_engine(asked, mode, probe=lambda: found, load=loaded.append)  # type: ignore[arg-type]
    return choice.kind, choice.reason


def test_auto_takes_the_kernel_where_the_probe_passes_after_loading_modules() -> None:
    loaded: list[tuple[str, ...]] = []
    assert _choose("auto", "ipsec", WORKS, loaded) == ("kernel", "auto: kernel ESP works")
    assert loaded == [IPSEC_MODULES] and "esp4" in IPSEC_MODULES and "xfrm_user" in IPSEC_MODULES
    assert _choose("auto", "ipsec", MISSING, loaded) == ("userspace", f"auto: {MISSING.reason}")


def test_kernel_without_esp_names_what_is_missing() -> None:
    with pytest.raises(EngineUnavailableError, match="ENOSYS"):
        _choose("kernel", "ipsec", MISSING, [])
    assert _choose("kernel", "ipsec", WORKS, [])[0] == "kernel"


def test_wireguard_loads_its_module_and_follows_the_wireguard_probe() -> None:
    loaded: list[tuple[str, ...]] = []
    assert _choose("auto", "wireguard", WG_WORKS, loaded) == ("kernel", "auto: kernel WireGuard works")
    assert loaded == [WIREGUARD_MODULES] and "wireguard" in WIREGUARD_MODULES
    assert _choose("auto", "wireguard", WG_MISSING, loaded) == ("userspace", f"auto: {WG_MISSING.reason}")
    with pytest.raises(EngineUnavailableError, match=r"no kernel WireGuard.*EOPNOTSUPP"):
        _choose("kernel", "wireguard", WG_MISSING, loaded)
    assert _choose("kernel", "wireguard", WG_WORKS, loaded)[0] == "kernel"


def test_userspace_needs_no_probe() -> None:
    loaded: list[tuple[str, ...]] = []
    assert _choose("userspace", "ipsec", WORKS, loaded)[0] == "userspace"
    assert _choose("userspace", "wireguard", WG_WORKS, loaded)[0] == "userspace"
    with pytest.raises(ValueError, match="choose one of"):
        _choose("fast", "ipsec", WORKS, loaded)
    assert loaded == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_on_this_kernel_auto_agrees_with_the_real_probe() -> None:
    with xfrm_netns() as name, netns.entered(name):
        expected = "kernel" if probe_kernel_esp().available else "userspace"
        assert choose_engine("auto", "ipsec", load=lambda _modules: None).kind == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_on_this_kernel_auto_agrees_with_the_real_wireguard_probe() -> None:
    with xfrm_netns() as name, netns.entered(name):
        found = probe_kernel_wireguard()
        assert choose_engine("auto", "wireguard", load=lambda _modules: None).kind == (
            "kernel" if found.available else "userspace")
        links = netns.run(name, ["ip", "-o", "link"]).stdout
        assert "cm-wgprobe-" not in links, "the probe left its link behind"
