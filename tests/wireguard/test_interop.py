"""Our userspace engine against wireguard-go + wg(8), in two network namespaces."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_until
from tests.support.wireguard_netns import (
    GO_TUNNEL,
    GO_UNDERLAY,
    GO_UNDERLAY6,
    OURS_TUNNEL,
    OURS_UNDERLAY6,
    PYTHON,
    WgPair,
    run,
    wg_key,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("wireguard-go", "wg", "iperf3", "ip")),
        reason="needs wireguard-go, wireguard-tools, iperf3 and iproute2",
    ),
]


@pytest.fixture
def pair() -> Iterator[WgPair]:
    lab = WgPair()
    try:
        lab.create_namespaces()
        yield lab
    finally:
        lab.close()


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_we_initiate_ping_both_ways_and_show_agrees_with_wg(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))
    key, _psk, endpoint, allowed, handshake, rx, tx, _keepalive = pair.go_dump_peer()
    assert key == pair.ours_pub and endpoint.endswith(":51871") and allowed == f"{OURS_TUNNEL}/32"
    assert int(handshake) > 0
    status = pair.status()
    (peer,) = status["peers"]
    assert peer["publicKey"] == pair.go_pub and peer["endpoint"] == f"{GO_UNDERLAY}:51820"
    # What one side counts as sent, the other counts as received (quiet link, both read after traffic).
    assert (peer["txBytes"], peer["rxBytes"]) == (int(rx), int(tx))
    assert abs(peer["latestHandshake"] - int(handshake)) <= 1
    text = pair.show().stdout
    assert text.startswith(
        f"interface: {pair.if_ours}\n  public key: {pair.ours_pub}\n  private key: (hidden)\n"
    )
    assert "  listening port: 51871\n" in text
    assert f"\npeer: {pair.go_pub}\n  endpoint: {GO_UNDERLAY}:51820\n  allowed ips: {GO_TUNNEL}/32\n" in text
    assert re.search(r"\n  latest handshake: (Now|\d+ seconds? ago)\n", text)
    assert re.search(r"\n  transfer: [\d.]+ (B|KiB) received, [\d.]+ (B|KiB) sent\n", text)
    assert pair.ours_key not in text and pair.ours_key not in str(status)


def test_wireguard_go_initiates_and_we_respond(pair: WgPair) -> None:
    pair.start_ours(pair.ours_config(with_endpoint=False))
    pair.start_go(pair.go_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    (peer,) = pair.status()["peers"]
    assert peer["endpoint"] == f"{GO_UNDERLAY}:51820"  # learned from the authenticated initiation


def test_iperf3_tcp_both_ways(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    for server_ns, client_ns, dst in (
        (pair.ns_go, pair.ns_ours, GO_TUNNEL),
        (pair.ns_ours, pair.ns_go, OURS_TUNNEL),
    ):
        report = pair.iperf(server_ns, client_ns, dst, seconds=3)
        assert "error" not in report, report.get("error")
        received = report["end"]["sum_received"]["bytes"]
        assert received > 1_000_000, report["end"]
    status = pair.status()
    assert status["drops"].get("internalError", 0) == 0
    assert not status["engineDrops"], status["engineDrops"]


def test_with_a_preshared_key_and_a_mismatched_one(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False, psk=True))
    pair.start_ours(pair.ours_config(with_endpoint=True, psk=True))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    assert pair.go_dump_peer()[1] == pair.psk
    assert "  preshared key: (hidden)\n" in pair.show().stdout
    pair.stop("ours")
    pair.start_ours(pair.ours_config(with_endpoint=True, psk=False))
    assert pair.ping(pair.ns_ours, GO_TUNNEL, count=1, deadline=3).returncode != 0
    assert pair.status()["drops"].get("badResponse", 0) >= 1


def test_recovers_from_a_wireguard_go_restart(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    pair.stop("go")
    gone = lambda: run("ip", "-n", pair.ns_go, "link", "show", pair.if_go, check=False).returncode != 0  # noqa: E731
    wait_until(gone, 10, "wireguard-go's interface to go away")
    pair.start_go(pair.go_config(with_endpoint=False))
    # The restarted peer knows none of our sessions: we keep sending on old keys until the
    # Keepalive-Timeout + Rekey-Timeout timer makes us handshake again (15 s + jitter).
    result = pair.ping(pair.ns_ours, GO_TUNNEL, count=1, deadline=30)
    _ok(result)
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))


def test_roaming_follows_a_port_change(pair: WgPair) -> None:
    pair.start_ours(pair.ours_config(with_endpoint=False))
    pair.start_go(pair.go_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))
    pair.wg("set", pair.if_go, "listen-port", "51999")
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))
    (peer,) = pair.status()["peers"]
    assert peer["endpoint"] == f"{GO_UNDERLAY}:51999"
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))


def test_we_rekey_after_a_shortened_rekey_after_time(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True), "--rekey-after-time", "4")
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL, count=1))
    first = pair.status()["peers"][0]["latestHandshake"]
    # Continuous traffic for 12 s: we must rekey (we are the initiator) without losing a packet.
    result = pair.ping(pair.ns_ours, GO_TUNNEL, count=60, deadline=20)
    _ok(result)
    assert " 0% packet loss" in result.stdout, result.stdout
    assert pair.status()["peers"][0]["latestHandshake"] >= first + 4
    assert int(pair.go_dump_peer()[4]) >= first + 4
    assert pair.log("ours").count("handshakeCompleted") >= 3


def test_sigterm_removes_the_interface_and_the_socket(pair: WgPair) -> None:
    proc = pair.start_ours(pair.ours_config(with_endpoint=False))
    assert run("ip", "-n", pair.ns_ours, "link", "show", pair.if_ours).returncode == 0
    assert pair.stop("ours", signal.SIGTERM) == 0
    assert proc.returncode == 0
    assert not pair.socket.exists()
    assert run("ip", "-n", pair.ns_ours, "link", "show", pair.if_ours, check=False).returncode != 0
    result = pair.show()
    assert result.returncode != 0 and result.stderr.count("\n") == 1


def test_persistent_keepalive_reaches_wireguard_go(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True, keepalive=1))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL, count=1))
    rx_before = int(pair.go_dump_peer()[5])
    time.sleep(3.5)
    # Each keepalive is a 32-byte transport message; at 1 s intervals at least two arrive.
    assert int(pair.go_dump_peer()[5]) - rx_before >= 64
    assert "  persistent keepalive: every 1 second\n" in pair.show().stdout


def test_sighup_reloads_peers_and_keeps_the_session(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    proc = pair.start_ours(pair.ours_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL, count=1))
    handshakes = pair.log("ours").count("handshakeCompleted")
    config = pair.ours_config(with_endpoint=True).replace(f"{GO_TUNNEL}/32", "10.232.0.0/25")
    config += f"\n[Peer]\nPublicKey = {wg_key()[1]}\nAllowedIPs = 10.233.0.0/24\n"
    (pair.workdir / "ours.conf").write_text(config)
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(pair.status()["peers"]) == 2, 10, "the reloaded peers")
    go_peer = next(p for p in pair.status()["peers"] if p["publicKey"] == pair.go_pub)
    assert go_peer["allowedIps"] == ["10.232.0.0/25"]
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL, count=1))
    assert pair.log("ours").count("handshakeCompleted") == handshakes


def test_wireguard_go_answers_our_cookie_reply_with_mac2(pair: WgPair) -> None:
    # Every handshake message puts us under load: wireguard-go's first initiation gets a cookie reply
    # (XChaCha20-Poly1305), and only if it decrypted that cookie does its retry carry a valid mac2.
    pair.start_ours(pair.ours_config(with_endpoint=False), "--handshake-load-threshold", "1")
    pair.start_go(pair.go_config(with_endpoint=True))
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL, count=1, deadline=15))
    drops = pair.status()["drops"]
    assert drops.get("cookieRequired", 0) >= 1
    assert "cookieSent" in pair.log("ours") and "handshakeResponded" in pair.log("ours")


def test_default_control_socket_is_per_namespace(pair: WgPair) -> None:
    pair.start_ours(pair.ours_config(with_endpoint=False), default_socket=True)
    result = pair.show(default_socket=True)
    assert result.returncode == 0 and result.stdout.startswith(f"interface: {pair.if_ours}\n"), result.stderr
    # The same name in another namespace (here: the wireguard-go one) finds no engine.
    show = [PYTHON, "-m", "ciphermesh", "wireguard", "show", pair.if_ours]
    other = run("ip", "netns", "exec", pair.ns_go, *show, check=False)
    assert other.returncode == 1 and "no engine" in other.stderr
    namespace_inode = run(
        "ip", "netns", "exec", pair.ns_ours, "stat", "-L", "-c", "%i", "/proc/self/ns/net"
    ).stdout
    directory = Path("/run/ciphermesh/wireguard") / f"netns-{namespace_inode.strip()}"
    assert (directory / f"{pair.if_ours}.sock").exists()
    assert pair.stop("ours") == 0
    assert not directory.exists()


def test_ipv6_underlay(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True, endpoint=f"[{GO_UNDERLAY6}]:51820"))
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL))
    _ok(pair.ping(pair.ns_go, OURS_TUNNEL))
    (peer,) = pair.status()["peers"]
    assert peer["endpoint"] == f"[{GO_UNDERLAY6}]:51820"
    assert pair.go_dump_peer()[2] == f"[{OURS_UNDERLAY6}]:51871"


def _flood(pair: WgPair, seconds: float) -> subprocess.Popen[bytes]:
    """Bursts of initiations with a valid mac1 (and nothing else valid) at wireguard-go, from a port of
    our namespace that is not our engine's: each costs wireguard-go a DH, so its handshake queue fills
    and it declares itself under load."""
    script = f"""
import random, socket, time
from ciphermesh.wireguard.cookie import CookieGenerator
from ciphermesh.wireguard.keys import PublicKey
from ciphermesh.wireguard.messages import pack_initiation_unmacked
gen = CookieGenerator(PublicKey.from_base64({pair.go_pub!r}).raw)
rng = random.Random(1)
burst = []
for _ in range(400):
    message = pack_initiation_unmacked(rng.getrandbits(32), rng.randbytes(108))
    gen.add_macs(message, 0.0)
    burst.append(bytes(message))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for message in burst:
        sock.sendto(message, ({GO_UNDERLAY!r}, 51820))
    time.sleep(0.05)
"""
    return pair.spawn("flood", *pair.in_ours, PYTHON, "-c", script)


def test_we_answer_a_cookie_reply_from_wireguard_go_under_load(pair: WgPair) -> None:
    pair.start_go(pair.go_config(with_endpoint=False))
    pair.start_ours(pair.ours_config(with_endpoint=True))
    started = time.monotonic()
    _flood(pair, seconds=25)
    time.sleep(1)
    # Our first initiation meets a loaded wireguard-go: it answers with a cookie reply, which we must
    # decrypt (XChaCha20-Poly1305) to put a valid mac2 on the retry 5 s later; only then does it answer.
    _ok(pair.ping(pair.ns_ours, GO_TUNNEL, count=1, deadline=20))
    assert time.monotonic() - started < 24, "the handshake must complete while the flood still runs"
    log = pair.log("ours")
    assert "cookieReceived" in log, log
    assert log.index("cookieReceived") < log.index("handshakeCompleted")
