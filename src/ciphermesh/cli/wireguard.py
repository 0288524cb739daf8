"""`ciphermesh wireguard ...`: the userspace WireGuard engine (up, show) and wg(8)-style key commands.

`up` runs in the foreground until SIGTERM/SIGINT (SIGHUP re-reads the peers); start it in the
background with `&` or under a supervisor, as the lab does. There is no daemon mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from ciphermesh.cli.errors import CliError
from ciphermesh.datapath.userspace.wireguard.control import default_socket_path, query
from ciphermesh.datapath.userspace.wireguard.engine import DEFAULT_BATCH
from ciphermesh.datapath.userspace.wireguard.runner import RunOptions, serve
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.wireguard.constants import Timing
from ciphermesh.wireguard.device import DEFAULT_HANDSHAKE_LOAD_THRESHOLD
from ciphermesh.wireguard.keys import InvalidKeyError, PresharedKey, PrivateKey


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `wireguard` and its commands to the top-level parser."""
    wireguard = subparsers.add_parser("wireguard", help="the userspace WireGuard engine and keys")
    commands = wireguard.add_subparsers(dest="wireguard_command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="run a WireGuard interface in the foreground (until SIGTERM; SIGHUP reloads peers)",
    )
    up.add_argument("ifname", metavar="IFNAME", help="TUN interface to create (at most 15 bytes)")
    up.add_argument("--config", required=True, type=Path, metavar="FILE", help="wg(8) configuration file")
    up.add_argument("--socket", type=Path, metavar="PATH", help="control socket (default: per namespace)")
    up.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N", help="packets per wakeup")
    up.add_argument("--no-gso", action="store_true", help="send each datagram alone instead of UDP GSO")
    up.add_argument(
        "--no-offload", action="store_true", help="write each received packet alone (no TCP coalescing)"
    )
    up.add_argument(
        "--rekey-after-time",
        type=float,
        metavar="SECONDS",
        help="test only: shorten Rekey-After-Time (default 120 s; must stay below 180)",
    )
    up.add_argument(
        "--handshake-load-threshold",
        type=int,
        default=DEFAULT_HANDSHAKE_LOAD_THRESHOLD,
        metavar="N",
        help="handshake messages per second that count as load and require cookies (test: 1)",
    )
    up.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    up.set_defaults(func=_up)

    show = commands.add_parser("show", help="print an interface's peers as `wg show` does")
    show.add_argument("ifname", metavar="IFNAME")
    show.add_argument("--socket", type=Path, metavar="PATH", help="control socket (default: per namespace)")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(func=_show)

    genkey = commands.add_parser("genkey", help="print a new private key (as `wg genkey`)")
    genkey.set_defaults(func=_genkey)
    genpsk = commands.add_parser("genpsk", help="print a new preshared key (as `wg genpsk`)")
    genpsk.set_defaults(func=_genpsk)
    pubkey = commands.add_parser("pubkey", help="read a private key on stdin, print its public key")
    pubkey.set_defaults(func=_pubkey)


def _up(args: argparse.Namespace) -> int:
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format, stream=sys.stderr, force=True)
    timing = Timing()
    if args.rekey_after_time is not None:
        try:
            timing = Timing(rekey_after_time=args.rekey_after_time)
        except ValueError as exc:
            raise CliError(f"--rekey-after-time: {exc}") from None
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    if args.handshake_load_threshold < 1:
        raise CliError("--handshake-load-threshold must be at least 1")
    options = RunOptions(
        ifname=args.ifname,
        config_path=args.config,
        socket_path=args.socket or default_socket_path(args.ifname),
        timing=timing,
        batch=args.batch,
        gso=not args.no_gso,
        offload=not args.no_offload,
        handshake_load_threshold=args.handshake_load_threshold,
    )
    try:
        serve(options)
    except (ValueError, DatapathError, FileExistsError) as exc:
        # ValueError covers WgConfigError and what the device refuses (a peer with our own key).
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{args.ifname}: {exc.strerror or exc}") from None
    return 0


def _show(args: argparse.Namespace) -> int:
    path = args.socket or default_socket_path(args.ifname)
    try:
        status = query(path)
    except FileNotFoundError:
        raise CliError(f"no engine for {args.ifname} in this network namespace (no {path})") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"{args.ifname}: the engine at {path} did not answer: {exc}") from None
    if "error" in status:
        raise CliError(f"{args.ifname}: {status['error']}")
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        sys.stdout.write(format_show(status, now=int(time.time())))
    return 0


def _genkey(_args: argparse.Namespace) -> int:
    print(PrivateKey.generate(secrets.token_bytes).to_base64())
    return 0


def _genpsk(_args: argparse.Namespace) -> int:
    print(PresharedKey.generate(secrets.token_bytes).to_base64())
    return 0


def _pubkey(_args: argparse.Namespace) -> int:
    try:
        key = PrivateKey.from_base64(sys.stdin.read())
    except InvalidKeyError as exc:
        raise CliError(str(exc)) from None
    print(key.public_key().to_base64())
    return 0


def format_show(status: dict[str, Any], *, now: int) -> str:
    """The text `wg show IFNAME` prints (without colour), from the engine's status document."""
    lines = [
        f"interface: {status['interface']}",
        f"  public key: {status['publicKey']}",
        "  private key: (hidden)",
    ]
    if status.get("listenPort"):
        lines.append(f"  listening port: {status['listenPort']}")
    if status.get("fwmark"):
        lines.append(f"  fwmark: {status['fwmark']:#x}")
    # wg sorts peers by latest handshake, newest first, peers without one last.
    peers = sorted(status["peers"], key=lambda p: (p["latestHandshake"] == 0, -p["latestHandshake"]))
    for peer in peers:
        lines += ["", f"peer: {peer['publicKey']}"]
        if peer["presharedKey"]:
            lines.append("  preshared key: (hidden)")
        if peer["endpoint"]:
            lines.append(f"  endpoint: {peer['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(peer['allowedIps']) or '(none)'}")
        if peer["latestHandshake"]:
            lines.append(f"  latest handshake: {_ago(peer['latestHandshake'], now)}")
        if peer["rxBytes"] or peer["txBytes"]:
            lines.append(f"  transfer: {_bytes(peer['rxBytes'])} received, {_bytes(peer['txBytes'])} sent")
        if peer["persistentKeepalive"]:
            lines.append(f"  persistent keepalive: every {_pretty_time(peer['persistentKeepalive'])}")
    return "\n".join(lines) + "\n"


def _pretty_time(seconds: int) -> str:
    parts = []
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts)


def _ago(then: int, now: int) -> str:
    if now == then:
        return "Now"
    if now < then:
        return "(System clock wound backward; connection problems may ensue.)"
    return f"{_pretty_time(now - then)} ago"


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    for unit, size in (("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)):
        if count < size * 1024:
            return f"{count / size:.2f} {unit}"
    return f"{count / 1024**4:.2f} TiB"
