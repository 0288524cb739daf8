"""`ciphermesh lab env` (kubectl and helm for a Kubernetes lab) and the internal `lab relay`."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from ciphermesh.cli.errors import CliError
from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.info import KUBERNETES, LabError, LabInfo
from ciphermesh.lab.kube.control_plane import apiserver_port, link_tools
from ciphermesh.lab.kube.relay import Relay
from ciphermesh.lab.state import LabNameError


def _kubernetes_lab(name: str) -> LabInfo:
    try:
        info = load_lab(name)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    if info.control_plane != KUBERNETES:
        raise CliError(f"lab {name} runs on the {info.control_plane} control plane: it has no "
                       f"kube-apiserver, so no kubeconfig for kubectl; `ciphermesh lab down --name {name}`, "
                       f"then `ciphermesh lab up --name {name} --control-plane kubernetes` makes one")
    return info


def _env(args: argparse.Namespace) -> int:
    info = _kubernetes_lab(args.name)
    try:
        tools = link_tools(info.paths)
    except LabError as exc:
        raise CliError(str(exc)) from None
    # For `eval "$(ciphermesh lab env)"`: quoted for the shell, $PATH left for it to expand.
    print(f'export PATH={shlex.quote(str(tools))}:"$PATH"')
    print(f"export KUBECONFIG={shlex.quote(str(info.paths.kubeconfig.absolute()))}")
    return 0


def _relay(args: argparse.Namespace) -> int:
    info = _kubernetes_lab(args.name)
    try:
        port = apiserver_port(info.paths)
    except LabError as exc:
        raise CliError(str(exc)) from None
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"relaying 127.0.0.1:{port} in {len(info.nodes)} node namespaces to the host's 127.0.0.1:{port}",
          file=sys.stderr, flush=True)
    Relay(info.namespaces, port).run(stop)
    return 0


def register_kube(
    lab_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_name: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `env` and the internal `relay` (no help line: `lab up` starts it, nobody types it)."""
    env = lab_sub.add_parser("env", help='kubectl and helm on a Kubernetes lab: eval "$(ciphermesh lab env)"',
                             description="Print shell lines that put the pinned kubectl and helm on PATH "
                             "and set KUBECONFIG to the lab's admin kubeconfig.")
    add_name(env)
    env.set_defaults(func=_env)
    relay = lab_sub.add_parser("relay", description="Internal, started by `lab up --control-plane "
                               "kubernetes`: the stand-in for a node's route to the control plane; listens "
                               "on the API server's port inside every node namespace, relays to the host.")
    add_name(relay)
    relay.set_defaults(func=_relay)
