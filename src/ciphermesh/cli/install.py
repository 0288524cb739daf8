"""`ciphermesh install` / `ciphermesh uninstall`: the chart into the current kubeconfig's cluster, as
`cilium install` does; the values are checked against the schema before helm sees them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ciphermesh.cli.errors import CliError
from ciphermesh.cli.values import add_values_arguments, values_from_args
from ciphermesh.install import Helm, InstallError


def _helm(args: argparse.Namespace) -> Helm:
    try:
        return Helm.pinned(args.kubeconfig)
    except InstallError as exc:
        raise CliError(str(exc)) from None


def _install(args: argparse.Namespace) -> int:
    values = values_from_args(args)
    helm = _helm(args)
    try:
        output = helm.template(values) if args.dry_run else helm.install(values)
    except InstallError as exc:
        raise CliError(str(exc)) from None
    print(output, end="")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    try:
        print(_helm(args).uninstall(), end="")
    except InstallError as exc:
        raise CliError(str(exc)) from None
    return 0


def _kubeconfig(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path, metavar="PATH",
                        help="the cluster's kubeconfig (default: $KUBECONFIG, then ~/.kube/config)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    install = sub.add_parser("install", help="install (or upgrade) ciphermesh with its Helm chart")
    add_values_arguments(install)
    install.add_argument("--dry-run", action="store_true",
                         help="print the manifests instead of installing (helm template, CRD included)")
    install.add_argument("-o", "--output", choices=("yaml",), default="yaml",
                         help="the format of --dry-run's manifests")
    _kubeconfig(install)
    install.set_defaults(func=_install)
    uninstall = sub.add_parser("uninstall", help="remove ciphermesh's release from a cluster (the CRD stays)")
    _kubeconfig(uninstall)
    uninstall.set_defaults(func=_uninstall)
