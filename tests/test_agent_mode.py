"""The agent runs only modes it can carry out; anything else is refused, never run in plaintext."""

from __future__ import annotations

import pytest

from ciphermesh.agent.daemon import UnsupportedModeError, agent_mode
from ciphermesh.cli.main import main
from ciphermesh.config import Values, load_values


def test_modes() -> None:
    assert agent_mode(load_values()) == "disabled"
    assert agent_mode(load_values(sets=["encryption.type=wireguard"])) == "disabled"
    assert agent_mode(load_values(sets=["encryption.enabled=true"])) == "ipsec"
    assert agent_mode(load_values(sets=["encryption.enabled=true,encryption.type=wireguard"])) == "wireguard"
    # Values built past the schema's checks: a type the agent has no datapath for is refused.
    with pytest.raises(UnsupportedModeError, match="refusing to start"):
        agent_mode(Values({"encryption.enabled": True, "encryption.type": "geneve"}))


def test_lab_up_refuses_unknown_type_before_building(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lab", "up", "--name", "cmrefuse", "--set", "encryption.enabled=true,encryption.type=geneve"]
    assert main(argv) != 0
    assert "encryption.type" in capsys.readouterr().err
    assert main(["lab", "pod", "list", "--name", "cmrefuse"]) == 1
    assert "no lab named" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["encryption.nodeEncryption", "encryption.strictMode.enabled"])
def test_settings_not_carried_out_yet_are_refused(setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnsupportedModeError, match=f"{setting}=true is not carried out"):
        agent_mode(load_values(sets=["encryption.enabled=true", f"{setting}=true"]))
    assert main(["lab", "up", "--name", "cmrefuse", "--set", f"encryption.enabled=true,{setting}=true"]) == 1
    assert f"{setting}=true is not carried out" in capsys.readouterr().err
    assert main(["lab", "pod", "list", "--name", "cmrefuse"]) == 1
