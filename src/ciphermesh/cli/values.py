"""`ciphermesh values`: show the settings and what `--set`/`-f` make of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from ciphermesh.cli.errors import CliError
from ciphermesh.config import SETTINGS, Values, ValuesError, load_values
from ciphermesh.config.agent_config import values_from_config_dir


def add_values_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--set` and `-f` options, for every command that takes values."""
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a Helm-style value (a.b=c, several joined by commas, a={x,y}, a[0]=x); repeatable",
    )
    parser.add_argument(
        "-f", "--values", dest="value_files", action="append", default=[], metavar="FILE",
        help="a YAML values file; repeatable (files first, then --set, later wins)",
    )


def add_config_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--config-dir`, for the daemons: the values of a mounted `cilium-config` ConfigMap."""
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR",
        help="a directory of Cilium ConfigMap keys, one file each (as the kubelet mounts cilium-config); "
             "-f and --set apply on top",
    )


def values_from_args(args: argparse.Namespace) -> Values:
    """The config dir's values if given, then each `-f` file, then each `--set` (later wins)."""
    try:
        config_dir: Path | None = getattr(args, "config_dir", None)
        base = None if config_dir is None else values_from_config_dir(config_dir)
        return load_values(files=args.value_files, sets=args.sets, base=base)
    except ValuesError as exc:
        raise CliError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    values = values_from_args(args)
    if args.output == "json":
        print(json.dumps(values.as_tree(), indent=2))
    else:
        print(yaml.safe_dump(values.as_tree(), sort_keys=False), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    width = max(len(s.path) for s in SETTINGS)
    for setting in SETTINGS:
        default = setting.default
        shown = json.dumps(list(default) if isinstance(default, tuple) else default)
        print(f"{setting.path:<{width}}  {shown:<16}  {setting.doc}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("values", help="show settings and validate --set / -f values")
    values_sub = parser.add_subparsers(dest="values_command", metavar="SUBCOMMAND", required=True)
    show = values_sub.add_parser("show", help="print the values tree that --set and -f give")
    add_values_arguments(show)
    show.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    show.set_defaults(func=_show)
    listing = values_sub.add_parser("list", help="every setting with its default")
    listing.set_defaults(func=_list)
