"""The agent runs only modes it can carry out; anything else is refused, never run in plaintext."""

from __future__ import annotations

import pytest

from ciphermesh.agent.daemon import UnsupportedModeError, agent_mode
from ciphermesh.cli.main import main
from ciphermesh.config import load_values


def test_modes() -> None:
    assert agent_mode(load_values()) == "disabled"
    assert agent_mode(load_values(sets=["encryption.type=wireguard"])) == "disabled"
    assert agent_mode(load_values(sets=["encryption.enabled=true"])) == "ipsec"
    with pytest.raises(UnsupportedModeError, match="refusing to start"):
        agent_mode(load_values(sets=["encryption.enabled=true,encryption.type=wireguard"]))


def test_lab_up_refuses_before_building(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lab", "up", "--name", "wgrefuse", "--set", "encryption.enabled=true,encryption.type=wireguard"]
    assert main(argv) == 1
    assert "refusing to start rather than send pod traffic unencrypted" in capsys.readouterr().err
    assert main(["lab", "pod", "list", "--name", "wgrefuse"]) == 1
    assert "no lab named" in capsys.readouterr().err
