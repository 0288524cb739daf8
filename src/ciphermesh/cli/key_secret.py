"""`encryption key set/rotate/show`: the cluster's key secret, as `kubectl patch` and cilium-cli use it."""

from __future__ import annotations

import argparse
import json
import sys

from ciphermesh.cli.errors import CliError
from ciphermesh.keys import KeyLineError, KeyRotationError
from ciphermesh.lab.cluster import connect, load_lab, running_values
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.state import LabNameError
from ciphermesh.operator.key_secret import NoKeySecretError, current_key, rotate_key, set_key
from ciphermesh.store.errors import StoreError

DEFAULT_LAB = "cm"


def _lab(args: argparse.Namespace) -> tuple[LabInfo, str]:
    try:
        info = load_lab(args.lab)
        return info, running_values(info).text("encryption.ipsec.secretName")
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None


def _set(args: argparse.Namespace) -> int:
    info, secret_name = _lab(args)
    text = sys.stdin.read() if args.line == "-" else args.line
    try:
        with connect(info) as store:
            done = set_key(store, secret_name, text)
    except (KeyLineError, KeyRotationError) as exc:
        raise CliError(f"key not set: {exc}") from None
    except (LabError, NoKeySecretError, StoreError) as exc:
        raise CliError(str(exc)) from None
    if not done.changed:
        print(f"IPsec key unchanged: the secret already holds this key as key ID (SPI) {done.line.key_id}")
        return 0
    print(f"IPsec key set, key ID (SPI): {done.line.key_id}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    info, secret_name = _lab(args)
    try:
        with connect(info) as store:
            line = rotate_key(store, secret_name)
    except KeyLineError as exc:
        raise CliError(
            f"key not rotated: the stored secret is not valid ({exc}); set a new key with "
            "`ciphermesh encryption key set`"
        ) from None
    except (LabError, NoKeySecretError, StoreError) as exc:
        raise CliError(f"key not rotated: {exc}") from None
    print(f"IPsec key successfully rotated, new key SPI: {line.key_id}")
    return 0


def _show(args: argparse.Namespace) -> int:
    info, secret_name = _lab(args)
    try:
        with connect(info) as store:
            current = current_key(store, secret_name)
    except (KeyLineError, LabError, NoKeySecretError, StoreError) as exc:
        raise CliError(str(exc)) from None
    shown = current.text if args.reveal else current.line.format(reveal=False)
    if args.output == "json":
        print(json.dumps({"keys": shown, "keyID": current.line.key_id, "secret": f"kube-system/{secret_name}",
                          "revealed": args.reveal}))
    else:
        print(shown)
    return 0


def register_key_secret(key_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add set, rotate and show beside generate, validate and derive."""
    for name, help_text, func in (
        ("set", "store a new key line (validated; it must carry a new key ID)", _set),
        ("rotate", "move to the next key ID with a fresh key of the same algorithm and size", _rotate),
        ("show", "the secret's line (key material redacted unless --reveal)", _show),
    ):
        parser = key_commands.add_parser(name, help=help_text)
        parser.add_argument("--lab", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
        if name == "set":
            parser.add_argument("line", metavar="LINE", help="- reads the key line from stdin (preferred: a "
                                "LINE given here shows in `ps` to every user while the command runs)")
        if name == "show":
            parser.add_argument("--reveal", action="store_true", help="show key material")
            parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
        parser.set_defaults(func=func)
