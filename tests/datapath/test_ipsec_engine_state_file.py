"""The engine's state file: round trip, mode 0600, one-line errors that never show a key."""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path

import pytest

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.userspace.ipsec.state_file import (
    StateFileError,
    check_fresh,
    read_state_file,
    read_used,
    record_used,
    sa_digests,
    state_from_document,
    state_to_document,
    used_path,
    write_state_file,
)
from ciphermesh.keys import derive_tunnel_key, generate_line

A, B = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1")


@pytest.fixture
def state() -> IPsecEngineState:
    boot_a, boot_b = str(uuid.uuid4()), str(uuid.uuid4())
    old, new = generate_line(key_id=3), generate_line("cbc-aes-sha256", key_id=4)
    peer = IPsecPeer(
        router_ip=B,
        pod_cidrs=(IPv4Network("10.0.2.0/24"), IPv6Network("fd00:0:0:2::/64")),
        out_spi=3,
        out_key=derive_tunnel_key(old, A, B, boot_a, boot_b),
        in_keys={
            3: derive_tunnel_key(old, B, A, boot_b, boot_a),
            4: derive_tunnel_key(new, B, A, boot_b, boot_a),
        },
    )
    return IPsecEngineState(A, (peer,))


def test_a_written_state_reads_back_equal_and_only_its_owner_may_read_it(
    tmp_path: Path, state: IPsecEngineState
) -> None:
    path = tmp_path / "state.json"
    write_state_file(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state_file(path) == state
    write_state_file(path, state)  # replacing keeps the mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_state_file_others_may_read_is_refused(tmp_path: Path, state: IPsecEngineState) -> None:
    path = tmp_path / "state.json"
    write_state_file(path, state)
    os.chmod(path, 0o644)
    with pytest.raises(StateFileError, match="mode 0644 lets others read keys"):
        read_state_file(path)


def test_the_repr_of_a_state_shows_no_key(state: IPsecEngineState) -> None:
    document = state_to_document(state)
    hex_keys = [line.split(" ")[2] for line in document["peers"][0]["inKeys"].values()]
    assert all(len(key) >= 32 for key in hex_keys)
    assert not any(key in repr(state) for key in hex_keys)


def _mutations(document: dict) -> list[tuple[str, dict, str]]:  # type: ignore[type-arg]
    def changed(path: list[str | int], value: object) -> dict:  # type: ignore[type-arg]
        copy = json.loads(json.dumps(document))
        target = copy
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return copy

    key = document["peers"][0]["outKey"]
    return [
        ("bad local", changed(["localRouterIP"], "10.0.1"), "localRouterIP: '10.0.1' is not an IP address"),
        ("v6 local", changed(["localRouterIP"], "fd00::1"), "localRouterIP: fd00::1 is IPv6"),
        ("peers", changed(["peers"], {}), "peers: must be a list"),
        ("cidr", changed(["peers", 0, "podCIDRs"], ["10.0.2.1/24"]), "peers[0].podCIDRs[0]"),
        ("spi", changed(["peers", 0, "outSPI"], "3"), "peers[0].outSPI: must be an integer"),
        ("in spi", changed(["peers", 0, "inKeys"], {"x": key}), "peers[0].inKeys: every key must be an SPI"),
        (
            "key",
            changed(["peers", 0, "outKey"], key[:-5] + "zz 128"),
            "peers[0].outKey: key: not hexadecimal",
        ),
        (
            "short key",
            changed(["peers", 0, "outKey"], key.replace(key.split()[2], key.split()[2][:-2])),
            "bytes",
        ),
        ("overlap", changed(["peers", 0, "podCIDRs"], ["10.0.2.0/24", "10.0.2.0/25"]), "overlaps"),
        ("no out key", changed(["peers", 0, "outKey"], None), "together"),
    ]


def test_malformed_documents_give_one_line_naming_the_field_and_no_key(state: IPsecEngineState) -> None:
    document = state_to_document(state)
    secrets_hex = [document["peers"][0]["outKey"].split(" ")[2]]
    for name, bad, expected in _mutations(document):
        with pytest.raises(StateFileError) as caught:
            state_from_document(bad)
        message = str(caught.value)
        assert expected in message, name
        assert "\n" not in message and not any(hex_key[:16] in message for hex_key in secrets_hex), name


def test_a_file_that_is_not_json_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        '{"localRouterIP": "10.0.1.1", "peers": [{"outKey": "3+ rfc4106(gcm(aes)) 0123456789abcdef'
    )
    os.chmod(path, 0o600)
    with pytest.raises(StateFileError, match="not valid JSON at line 1") as caught:
        read_state_file(path)
    assert "0123456789" not in str(caught.value)
    with pytest.raises(StateFileError, match="No such file"):
        read_state_file(tmp_path / "missing.json")


def test_keys_an_earlier_engine_used_are_refused_by_name_and_new_ones_pass(
    tmp_path: Path, state: IPsecEngineState
) -> None:
    path = tmp_path / "state.json"
    assert read_used(path) == frozenset()
    digests = sa_digests(state)
    assert len(digests) == 3  # one outbound, two inbound
    record_used(path, frozenset(digests))
    assert stat.S_IMODE(used_path(path).stat().st_mode) == 0o600
    lines = used_path(path).read_text().split()
    assert sorted(lines) == sorted(digests) and all(len(line) == 32 for line in lines)  # digests, no key
    peer = state.peers[0]
    with pytest.raises(StateFileError, match=r"peers\[0\] \(10.0.2.1\): outbound SPI 3: an earlier engine"):
        check_fresh(state, read_used(path))
    line, boot_a, boot_b = generate_line(key_id=3), str(uuid.uuid4()), str(uuid.uuid4())
    rebooted = replace(peer, out_key=derive_tunnel_key(line, A, B, boot_a, boot_b),
                       in_keys={3: derive_tunnel_key(line, B, A, boot_b, boot_a)})
    check_fresh(IPsecEngineState(A, (rebooted,)), read_used(path))
