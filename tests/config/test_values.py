"""The values tree: Helm --set syntax, YAML files, defaults and errors that name the setting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ciphermesh.cli.main import main
from ciphermesh.config import SETTINGS, Values, ValuesError, load_values, parse_duration


def test_defaults_are_ciliums() -> None:
    values = Values()
    assert values.flag("encryption.enabled") is False
    assert values.text("encryption.type") == "ipsec"
    assert values.flag("encryption.nodeEncryption") is False
    assert values.flag("encryption.strictMode.enabled") is False
    assert values.text("encryption.ipsec.secretName") == "cilium-ipsec-keys"
    assert values.seconds("encryption.ipsec.keyRotationDuration") == 300.0
    assert values.text("ipam.mode") == "cluster-pool"
    assert [str(c) for c in values.cidrs("ipam.operator.clusterPoolIPv4PodCIDRList")] == ["10.0.0.0/8"]
    assert values.number("ipam.operator.clusterPoolIPv4MaskSize") == 24


def test_every_default_passes_its_own_validation() -> None:
    for setting in SETTINGS:
        default = setting.default
        raw = list(default) if isinstance(default, tuple) else default
        assert Values().with_value(setting.path, raw).get(setting.path) == setting.default


def test_set_syntax() -> None:
    values = load_values(
        sets=[
            "encryption.enabled=true,encryption.type=wireguard",
            "ipam.operator.clusterPoolIPv4PodCIDRList={10.10.0.0/16,10.20.0.0/16}",
            "ipam.operator.clusterPoolIPv4PodCIDRList[1]=10.30.0.0/16",
            "encryption.ipsec.keyRotationDuration=1m30s",
        ]
    )
    assert values.flag("encryption.enabled") is True
    assert values.text("encryption.type") == "wireguard"
    assert [str(c) for c in values.cidrs("ipam.operator.clusterPoolIPv4PodCIDRList")] == [
        "10.10.0.0/16",
        "10.30.0.0/16",
    ]
    assert values.seconds("encryption.ipsec.keyRotationDuration") == 90.0


def test_later_set_wins_and_set_beats_file(tmp_path: Path) -> None:
    file = tmp_path / "values.yaml"
    file.write_text("encryption:\n  enabled: true\n  type: wireguard\nipam:\n  operator:\n"
                    "    clusterPoolIPv4MaskSize: 26\n")
    values = load_values(files=[str(file)], sets=["encryption.type=ipsec", "encryption.type=wireguard"])
    assert values.text("encryption.type") == "wireguard"
    assert values.number("ipam.operator.clusterPoolIPv4MaskSize") == 26
    values = load_values(files=[str(file)], sets=["encryption.enabled=false"])
    assert values.flag("encryption.enabled") is False


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("encryption.typ=ipsec", "encryption.typ: unknown setting"),
        ("encryption.type=esp", "encryption.type: 'esp' is not one of ipsec, wireguard"),
        ("encryption.enabled=yes", "encryption.enabled: 'yes' is not true or false"),
        ("ipam.operator.clusterPoolIPv4MaskSize=abc", "clusterPoolIPv4MaskSize: 'abc' is not a whole number"),
        ("ipam.operator.clusterPoolIPv4MaskSize=31", "above the maximum 30"),
        ("ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.1/8}", "is not a CIDR"),
        ("ipam.operator.clusterPoolIPv4PodCIDRList={fd00::/104}", "not an IPv4 CIDR"),
        ("ipam.operator.clusterPoolIPv4PodCIDRList={}", "the list is empty"),
        ("ipam.operator.clusterPoolIPv4PodCIDRList[3]=10.0.0.0/8", "index leaves a gap"),
        ("encryption.enabled[0]=true", "encryption.enabled is not a list"),
        ("encryption.ipsec.keyRotationDuration=5 minutes", "is not a duration"),
        ("ipam.mode=kubernetes", "ipam.mode: 'kubernetes' is not one of cluster-pool"),
        ("encryption.enabled", "expected KEY=VALUE"),
        ("=true", "expected KEY=VALUE"),
        ("encryption.ipsec.secretName=", "encryption.ipsec.secretName: must not be empty"),
    ],
)
def test_bad_values_name_the_setting(expr: str, message: str) -> None:
    with pytest.raises(ValuesError, match=message.replace("{", r"\{").replace("[", r"\[")):
        load_values(sets=[expr])


def test_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValuesError, match="cannot read"):
        load_values(files=[str(missing)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("encryption: [unclosed\n")
    with pytest.raises(ValuesError, match="not valid YAML"):
        load_values(files=[str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("encryption:\n  ipsec:\n    keyRotationDurations: 5m\n")
    with pytest.raises(ValuesError, match="keyRotationDurations: unknown setting"):
        load_values(files=[str(unknown)])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- a\n- b\n")
    with pytest.raises(ValuesError, match="top level must be a mapping"):
        load_values(files=[str(scalar)])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("0s", 0.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(st.integers(min_value=0, max_value=10**6))
def test_duration_seconds_round_trip(n: int) -> None:
    assert parse_duration(f"{n}s") == n


def test_tree_round_trips_through_a_file(tmp_path: Path) -> None:
    values = load_values(sets=["encryption.enabled=true", "ipam.operator.clusterPoolIPv4MaskSize=25"])
    file = tmp_path / "v.yaml"
    file.write_text(yaml.safe_dump(values.as_tree()))
    assert load_values(files=[str(file)]).as_tree() == values.as_tree()


def test_cli_values_show_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["values", "show", "-o", "json", "--set", "encryption.enabled=true"]) == 0
    assert '"enabled": true' in capsys.readouterr().out
    assert main(["values", "show", "--set", "encryption.type=esp"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["ciphermesh: encryption.type: 'esp' is not one of ipsec, wireguard"]


def test_a_values_file_over_1_mib_is_refused_without_parsing_it(tmp_path: Path) -> None:
    # Issue 10 item 7: a 50 MB file was parsed for 48 s.
    big = tmp_path / "big.yaml"
    big.write_text("encryption:\n  enabled: true\n" + "# padding\n" * (5 << 20))
    started = time.monotonic()
    with pytest.raises(ValuesError) as refused:
        load_values(files=[str(big)])
    assert str(refused.value) == f"{big}: larger than 1 MiB, the most a values file may be"
    assert time.monotonic() - started < 2
    exact = tmp_path / "exact.yaml"
    exact.write_text("encryption:\n  enabled: true\n".ljust(1 << 20, "#"))
    assert load_values(files=[str(exact)]).flag("encryption.enabled")
