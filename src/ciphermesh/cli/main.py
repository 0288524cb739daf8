"""The `ciphermesh` command: builds the parser from each command module and dispatches."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ciphermesh import __version__
from ciphermesh.cli import bench, connectivity, daemons, encryption, install, lab, status, values, wireguard
from ciphermesh.cli.errors import CliError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# Each module adds its own subcommands; a handler is stored as `func` on the parsed namespace.
COMMAND_MODULES: tuple[Register, ...] = (
    lab.register,
    status.register,
    encryption.register,
    values.register,
    daemons.register,
    bench.register,
    wireguard.register,
    connectivity.register,
    install.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ciphermesh", description="Transparent encryption for pod networks (Cilium-compatible)."
    )
    parser.add_argument("--version", action="version", version=f"ciphermesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMAND_MODULES:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a command to run (lab exec, pod run/exec), never our options.
    command: list[str] = []
    if "--" in words:
        split = words.index("--")
        words, command = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    if command and not getattr(args, "takes_command", False):
        parser.error(f"unexpected arguments after --: {' '.join(command)}")
    args.command = command
    # Warnings of the layers below (e.g. a store record skipped) would add lines to a one-line error.
    logging.basicConfig(level=logging.ERROR, format="ciphermesh: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(func(args) or 0)
        # Inside the try: a reader that went away (`| head -1`) shows here, not at the exit's own flush.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python's recipe: nothing more can reach the reader, so quietly end as `yes | head` does
        # (128 + SIGPIPE), with stdout on /dev/null so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CliError as exc:
        print(f"ciphermesh: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
