"""The cilium-config ConfigMap read back from its volume: the kubelet's layout, Cilium's key names,
unknown keys ignored, a bad value an error naming its key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ciphermesh.cli.main import build_parser
from ciphermesh.cli.values import values_from_args
from ciphermesh.config import Values, ValuesError
from ciphermesh.config.agent_config import values_from_config_dir
from tests.support.atomic_volume import write_volume

IPSEC = {
    "enable-ipsec": "true",
    "enable-wireguard": "false",
    "ipsec-key-file": "/run/keys/psk",
    "cluster-pool-ipv4-cidr": "10.10.0.0/16 10.20.0.0/16",
    "cluster-pool-ipv4-mask-size": "26",
    "routing-mode": "tunnel",  # Cilium's, not a ciphermesh setting
}


def test_reads_the_kubelet_layout_through_its_data_link(tmp_path: Path) -> None:
    write_volume(tmp_path / "config", IPSEC)
    assert (tmp_path / "config" / "enable-ipsec").is_symlink()
    values = values_from_config_dir(tmp_path / "config")
    assert values.flag("encryption.enabled") and values.text("encryption.type") == "ipsec"
    assert values.text("encryption.ipsec.mountPath") == "/run/keys"
    assert values.text("encryption.ipsec.keyFile") == "psk"
    assert [str(c) for c in values.cidrs("ipam.operator.clusterPoolIPv4PodCIDRList")] == [
        "10.10.0.0/16", "10.20.0.0/16"]
    assert values.number("ipam.operator.clusterPoolIPv4MaskSize") == 26
    # After the swap the new data is read, and a key that went away has its default again.
    write_volume(tmp_path / "config", {"enable-wireguard": "true", "encrypt-node": "true"})
    values = values_from_config_dir(tmp_path / "config")
    assert values.text("encryption.type") == "wireguard" and values.flag("encryption.nodeEncryption")
    assert values.number("ipam.operator.clusterPoolIPv4MaskSize") == 24


def test_a_plain_directory_works_too(tmp_path: Path) -> None:
    (tmp_path / "mtu").write_text("1400\n")  # a file made by hand ends in a newline
    (tmp_path / ".hidden").write_text("not a key")
    assert values_from_config_dir(tmp_path) == Values().with_value("MTU", 1400).with_value(
        "encryption.enabled", False)


def test_unknown_keys_are_ignored_with_a_debug_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_volume(tmp_path, {"enable-bpf-masquerade": "true", "enable-ipsec": "false"})
    with caplog.at_level(logging.DEBUG, logger="ciphermesh.config.agent_config"):
        values = values_from_config_dir(tmp_path)
    assert not values.flag("encryption.enabled")
    assert "enable-bpf-masquerade is not a ciphermesh setting; ignored" in caplog.text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"encrypt-node": "maybe"}, "encrypt-node: encryption.nodeEncryption: 'maybe' is not true or false"),
        ({"enable-ipsec": "yes"}, "enable-ipsec: 'yes' is not true or false"),
        ({"enable-ipsec": "true", "enable-wireguard": "true"}, "both are true"),
        ({"cluster-pool-ipv4-mask-size": "33"}, "cluster-pool-ipv4-mask-size: ipam.operator."
                                                 "clusterPoolIPv4MaskSize: 33 is above the maximum 30"),
        ({"cluster-pool-ipv4-cidr": ""}, "cluster-pool-ipv4-cidr: ipam.operator.clusterPoolIPv4PodCIDRList: "
                                         "the list is empty"),
        ({"ipsec-key-file": "keys"}, "ipsec-key-file: 'keys' is not a path to a file"),
        ({"encryption-engine": "ebpf"}, "encryption-engine: encryption.engine: 'ebpf' is not one of"),
        ({"ipsec-key-rotation-duration": "5 minutes"}, "ipsec-key-rotation-duration: "),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, data: dict[str, str], message: str) -> None:
    write_volume(tmp_path / "config", data)
    with pytest.raises(ValuesError) as caught:
        values_from_config_dir(tmp_path / "config")
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"config dir {tmp_path / 'config'}: ")


def test_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValuesError, match=r"config dir .*/absent: cannot read \(No such file"):
        values_from_config_dir(tmp_path / "absent")


def test_daemons_take_the_config_dir_first_then_files_then_set(tmp_path: Path) -> None:
    write_volume(tmp_path / "config", IPSEC)
    file = tmp_path / "values.yaml"
    file.write_text("ipam:\n  operator:\n    clusterPoolIPv4MaskSize: 27\nMTU: 1300\n")
    args = build_parser().parse_args([
        "operator", "--store=unix:///nowhere", f"--config-dir={tmp_path / 'config'}", "-f", str(file),
        "--set", "ipam.operator.clusterPoolIPv4MaskSize=28",
    ])
    values = values_from_args(args)
    assert values.number("ipam.operator.clusterPoolIPv4MaskSize") == 28  # --set over -f over the dir
    assert values.number("MTU") == 1300  # -f over the dir's default
    assert values.text("encryption.ipsec.keyFile") == "psk"  # the dir's
    args = build_parser().parse_args(["agent", "--store=x", "--node=n", "--node-ip=192.0.2.1",
                                      "--status-socket=/s", f"--config-dir={tmp_path / 'config'}"])
    assert values_from_args(args).text("encryption.ipsec.mountPath") == "/run/keys"
