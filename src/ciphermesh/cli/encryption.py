"""`ciphermesh encryption ...`: key lines (generate, validate, derive); one function per command group."""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address, IPv6Address, ip_address

from ciphermesh.cli.errors import CliError
from ciphermesh.cli.key_secret import register_key_secret
from ciphermesh.cli.status import register_encryption
from ciphermesh.keys import (
    ALGO_CHOICES,
    KeyLine,
    KeyLineError,
    derive_tunnel_key,
    describe_line,
    esp_sa_entry,
    generate_line,
    parse_line,
    parse_secret,
)

LINE_HELP = "a key line as in the secret, or - to read the secret from stdin (keeps it out of ps)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `encryption` and its command groups to the top-level parser."""
    encryption = subparsers.add_parser("encryption", help="transparent encryption: keys and status")
    commands = encryption.add_subparsers(dest="encryption_command", metavar="COMMAND", required=True)
    register_key(commands)
    register_encryption(commands)


def register_key(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `encryption key ...`: the commands that work on a key line."""
    key = commands.add_parser("key", help="generate, check and derive IPsec key lines")
    key_commands = key.add_subparsers(dest="key_command", metavar="COMMAND", required=True)

    generate = key_commands.add_parser("generate", help="print a new random key line")
    generate.add_argument("--algo", choices=ALGO_CHOICES, default=ALGO_CHOICES[0])
    generate.add_argument("--key-id", type=int, default=3, metavar="N", help="key ID 1..15 (default 3)")
    generate.set_defaults(func=_generate)

    validate = key_commands.add_parser("validate", help="check a key line; prints a redacted summary")
    validate.add_argument("line", metavar="LINE", help=LINE_HELP)
    validate.set_defaults(func=_validate)

    derive = key_commands.add_parser(
        "derive", help="print the per-tunnel key of one direction (reveals key material)"
    )
    derive.add_argument("line", metavar="LINE", help=LINE_HELP)
    derive.add_argument("--src", required=True, metavar="IP", help="outer source address of the SA")
    derive.add_argument("--dst", required=True, metavar="IP", help="outer destination address of the SA")
    derive.add_argument("--src-boot-id", required=True, metavar="ID", help="boot ID of the sending node")
    derive.add_argument("--dst-boot-id", required=True, metavar="ID", help="boot ID of the receiving node")
    derive.add_argument(
        "-o",
        "--output",
        choices=("line", "wireshark"),
        default="line",
        help="a key line, or a tshark uat:esp_sa record",
    )
    derive.set_defaults(func=_derive)
    register_key_secret(key_commands)


def _generate(args: argparse.Namespace) -> int:
    try:
        line = generate_line(args.algo, args.key_id)
    except KeyLineError as exc:
        raise CliError(f"--key-id: {exc.reason}") from None
    print(line.format(reveal=True))
    return 0


def _validate(args: argparse.Namespace) -> int:
    line = _read_line(args.line)
    print(f"valid: {describe_line(line)}")
    return 0


def _derive(args: argparse.Namespace) -> int:
    line = _read_line(args.line)
    src, dst = _address("--src", args.src), _address("--dst", args.dst)
    try:
        derived = derive_tunnel_key(line, src, dst, args.src_boot_id, args.dst_boot_id)
        # Showing the derived key is the point of this command, so it is printed revealed.
        output = derived.format(reveal=True) if args.output == "line" else esp_sa_entry(derived, src, dst)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(output)
    return 0


def _read_line(text: str) -> KeyLine:
    try:
        return parse_secret(sys.stdin.read()) if text == "-" else parse_line(text)
    except KeyLineError as exc:
        raise CliError(f"invalid key line: {exc}") from None


def _address(option: str, text: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(text)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an IP address") from None
