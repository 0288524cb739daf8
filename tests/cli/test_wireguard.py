"""The configuration format, `wireguard show`'s text, and the CLI's errors (no namespaces needed)."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest

from ciphermesh.cli.wireguard import format_show
from ciphermesh.datapath.userspace.wireguard.wgconfig import (
    WgConfigError,
    parse,
    parse_endpoint,
    peer_config,
    resolve_endpoint,
)

PRIVATE = "AKeZaHwBxjiKLFnkY2unvEdOTtg4AL+M9dQXfopFVFk="
PUBLIC_R = "YDCttCs9e1J52/g9vEnwJJa+2x6RqaayAYMpSVQfGEY="
PUBLIC_I = "Igge9KzRytKNwrgkzDE/8hrLu6Ly0OqVdvOPWhA5KR4="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="

FULL = f"""
# a comment
[Interface]
PrivateKey = {PRIVATE}
ListenPort = 51871   # trailing comment
Address = 10.0.0.1/24, fd00::1/64
MTU = 1380

[Peer]
PublicKey = {PUBLIC_R}
PresharedKey = {PSK}
Endpoint = 192.0.2.7:51820
AllowedIPs = 10.0.0.2/32, 10.1.0.0/16
allowedips = fd00::2/128
PersistentKeepalive = 25

[peer]
PublicKey = {PUBLIC_I}
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = off
"""


def test_parse_the_standard_format() -> None:
    config = parse(FULL)
    assert config.private_key.public_key().to_base64() == PUBLIC_I
    assert config.listen_port == 51871 and config.mtu == 1380
    assert config.addresses == (ip_interface("10.0.0.1/24"), ip_interface("fd00::1/64"))
    first, second = config.peers
    assert first.public_key.to_base64() == PUBLIC_R
    assert first.preshared_key is not None and first.preshared_key.to_base64() == PSK
    assert first.endpoint == ("192.0.2.7", 51820)
    assert first.allowed_ips == (
        ip_network("10.0.0.2/32"),
        ip_network("10.1.0.0/16"),
        ip_network("fd00::2/128"),
    )
    assert first.persistent_keepalive == 25
    assert second.endpoint == ("2001:db8::1", 51820) and second.persistent_keepalive == 0
    assert peer_config(second).endpoint == ("2001:db8::1", 51820, 0, 0)
    assert PSK not in repr(config) and PRIVATE not in repr(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Peer]\nPublicKey = " + PUBLIC_R, "no [Interface]"),
        ("[Interface]\nListenPort = 1", "no PrivateKey"),
        (f"[Interface]\nPrivateKey = {PRIVATE[:-2]}", "line 2: private key must be 44 characters"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 70000", "line 3: ListenPort must be 0..65535"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\nDNS = 1.1.1.1", "line 3: dns is a wg-quick setting"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\nColour = blue", "line 3: unknown [Interface] setting"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n[Interface]", "line 3: a second [Interface]"),
        (f"PrivateKey = {PRIVATE}", "line 1: a setting outside"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nEndpoint = 1.2.3.4:5", "no PublicKey"),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC_R}\nEndpoint = 1.2.3.4",
            "line 5",
        ),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC_R}\nAllowedIPs = 10.0.0/8",
            "line 5",
        ),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n" + f"[Peer]\nPublicKey = {PUBLIC_R}\n" * 2, "twice"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n[Wat]", "line 3: unknown section"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\nPrivateKey = {PRIVATE}", "line 3: PrivateKey is set twice"),
        (f"[Interface]\nPrivateKey {PRIVATE}", "line 2: expected Key = Value"),
    ],
)
def test_config_errors_name_the_line_and_hide_keys(text: str, message: str) -> None:
    with pytest.raises(WgConfigError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    for key in (PRIVATE, PRIVATE[:-2], PSK):
        assert key.lower() not in str(info.value).lower()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1.2.3.4:51820", ("1.2.3.4", 51820)), ("[::1]:1", ("::1", 1)), ("host.example:9", ("host.example", 9))],
)
def test_endpoints(value: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(value) == expected


@pytest.mark.parametrize("value", ["1.2.3.4", "::1:80", "[::1]80", "1.2.3.4:0", "1.2.3.4:x", ":80"])
def test_bad_endpoints(value: str) -> None:
    with pytest.raises(WgConfigError):
        parse_endpoint(value)


def test_resolve_endpoint_numeric_and_localhost() -> None:
    assert resolve_endpoint("192.0.2.1", 5) == ("192.0.2.1", 5)
    assert resolve_endpoint("localhost", 5) == ("127.0.0.1", 5)
    with pytest.raises(WgConfigError, match="cannot resolve"):
        resolve_endpoint("no-such-host.invalid", 5)


STATUS = {
    "interface": "wg0",
    "publicKey": PUBLIC_I,
    "listenPort": 51871,
    "fwmark": 0x1E00,
    "peers": [
        {
            "publicKey": PUBLIC_R,
            "presharedKey": False,
            "endpoint": None,
            "allowedIps": [],
            "latestHandshake": 0,
            "rxBytes": 0,
            "txBytes": 0,
            "persistentKeepalive": 0,
        },
        {
            "publicKey": "Ji3DTyFh9FiWI7YMhoG+TmB3AbFKh8L1ZiGEXEzt5Ek=",
            "presharedKey": True,
            "endpoint": "[2001:db8::1]:51820",
            "allowedIps": ["10.0.0.2/32", "fd00::/64"],
            "latestHandshake": 1_700_000_000 - 3725,
            "rxBytes": 1023,
            "txBytes": 5 * 1024 * 1024 + 1024 * 1024 // 2,
            "persistentKeepalive": 25,
        },
        {
            "publicKey": "Abc+TyFh9FiWI7YMhoG+TmB3AbFKh8L1ZiGEXEzt5Ek=",
            "presharedKey": False,
            "endpoint": "192.0.2.9:1",
            "allowedIps": ["10.0.0.3/32"],
            "latestHandshake": 1_700_000_000,
            "rxBytes": 2048,
            "txBytes": 0,
            "persistentKeepalive": 61,
        },
    ],
}


def test_show_prints_what_wg_show_prints() -> None:
    expected = f"""interface: wg0
  public key: {PUBLIC_I}
  private key: (hidden)
  listening port: 51871
  fwmark: 0x1e00

peer: Abc+TyFh9FiWI7YMhoG+TmB3AbFKh8L1ZiGEXEzt5Ek=
  endpoint: 192.0.2.9:1
  allowed ips: 10.0.0.3/32
  latest handshake: Now
  transfer: 2.00 KiB received, 0 B sent
  persistent keepalive: every 1 minute, 1 second

peer: Ji3DTyFh9FiWI7YMhoG+TmB3AbFKh8L1ZiGEXEzt5Ek=
  preshared key: (hidden)
  endpoint: [2001:db8::1]:51820
  allowed ips: 10.0.0.2/32, fd00::/64
  latest handshake: 1 hour, 2 minutes, 5 seconds ago
  transfer: 1023 B received, 5.50 MiB sent
  persistent keepalive: every 25 seconds

peer: {PUBLIC_R}
  allowed ips: (none)
"""
    assert format_show(STATUS, now=1_700_000_000) == expected


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ciphermesh", "wireguard", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=60)


def test_up_with_a_bad_config_fails_with_one_line(tmp_path: Path) -> None:
    missing = _cli("up", "cmwgx0", "--config", str(tmp_path / "nope.conf"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope.conf" in missing.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(f"[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 99999\n")
    result = _cli("up", "cmwgx0", "--config", str(bad))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "line 3: ListenPort must be 0..65535" in result.stderr and PRIVATE not in result.stderr
    too_short = _cli("up", "cmwgx0", "--config", str(bad), "--rekey-after-time", "200")
    assert too_short.returncode == 1 and "--rekey-after-time" in too_short.stderr


def test_show_without_an_engine_fails_with_one_line(tmp_path: Path) -> None:
    result = _cli("show", "cmwgx0", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no engine" in result.stderr


def test_genkey_pubkey_genpsk() -> None:
    private = _cli("genkey").stdout.strip()
    public = _cli("pubkey", stdin=private + "\n").stdout.strip()
    assert len(private) == len(public) == 44 and private != public
    assert len(_cli("genpsk").stdout.strip()) == 44
    bad = _cli("pubkey", stdin="nonsense\n")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


def test_up_refuses_a_peer_with_our_own_key_before_creating_anything(tmp_path: Path) -> None:
    config = tmp_path / "own.conf"
    config.write_text(f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC_I}\n")
    result = _cli("up", "cmwgx0", "--config", str(config))
    assert (
        result.returncode == 1
        and result.stderr == "ciphermesh: a peer cannot have the interface's own public key\n"
    )
