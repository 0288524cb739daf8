"""`ciphermesh lab ...`: a cluster on this machine, its nodes and its pods."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from ipaddress import IPv4Address

from rich.console import Console
from rich.table import Table

from ciphermesh.cli.errors import CliError
from ciphermesh.cli.lab_kube import register_kube
from ciphermesh.cli.lab_vm import register_vm
from ciphermesh.cli.values import add_values_arguments, values_from_args
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import DEFAULT_CONTROL_PLANE, lab_up, load_lab
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.info import CONTROL_PLANES, KUBERNETES, LabError
from ciphermesh.lab.kubelet.daemon import Kubelet, setup_of
from ciphermesh.lab.pod_registry import delete_pod_record, list_pod_records, pod_command, run_pod
from ciphermesh.lab.repair import encryption_words
from ciphermesh.lab.state import LabNameError

DEFAULT_LAB = "cm"


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _command(args: argparse.Namespace) -> list[str]:
    return list(args.command)


def _up(args: argparse.Namespace) -> int:
    values = values_from_args(args)
    try:
        info = lab_up(args.name, args.nodes, values, _progress, control_plane=args.control_plane,
                      node_sets=args.node_sets)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    words = encryption_words(values)
    mode = words if words == "encryption disabled" else f"encryption {words}"
    if info.control_plane == KUBERNETES:
        # As Kind: a cluster with nothing installed unless encryption values asked for the chart.
        installed = f"ciphermesh installed, {mode}" if words != "encryption disabled" else "nothing installed"
        mode = f"on Kubernetes, {installed}"
    print(f"lab {info.name} is up: {len(info.nodes)} nodes on {info.subnet}, {mode}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        lab_down(args.name, _progress)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    print(f"lab {args.name} is down")
    return 0


def _exec_into(namespace: str, command: list[str]) -> int:
    if not command:
        raise CliError("give a command after --, e.g. `-- ip addr`")
    argv = netns.command(namespace, command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _exec(args: argparse.Namespace) -> int:
    try:
        info = load_lab(args.name)
        namespace = info.netns_of(args.node)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    return _exec_into(namespace, _command(args))


def _pod_run(args: argparse.Namespace) -> int:
    try:
        info = load_lab(args.name)
        record = run_pod(info, args.pod, args.node, _command(args), ip=args.ip)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    print(f"pod/{record.name} created on {record.node} with IP {record.ip}")
    return 0


def _pod_exec(args: argparse.Namespace) -> int:
    command = _command(args)
    if not command:
        raise CliError("give a command after --, e.g. `-- ping -c1 10.0.2.5`")
    try:
        argv = pod_command(load_lab(args.name), args.pod, command)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _pod_list(args: argparse.Namespace) -> int:
    try:
        info = load_lab(args.name)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    pods = [record.as_dict(info) for record in list_pod_records(info)]
    if args.output == "json":
        print(json.dumps({"pods": pods}, indent=2))
        return 0
    table = Table("NAME", "NODE", "IP", "STATE", "COMMAND", box=None)
    for pod in pods:
        table.add_row(pod["name"], pod["node"], pod["ip"], pod["state"], " ".join(pod["command"]))
    Console().print(table)
    return 0


def _pod_delete(args: argparse.Namespace) -> int:
    try:
        delete_pod_record(load_lab(args.name), args.pod)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    print(f"pod/{args.pod} deleted")
    return 0


def _kubelet(args: argparse.Namespace) -> int:
    try:
        setup = setup_of(args.name)
    except (LabError, LabNameError) as exc:
        raise CliError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    Kubelet(setup).run(stopped)
    return 0


def _name(parser: argparse.ArgumentParser) -> None:
    # `--lab` as every other command takes it; `--name` as the lab commands always took it.
    parser.add_argument("--lab", "--name", dest="name", metavar="LAB", default=DEFAULT_LAB,
                        help=f"lab name (default {DEFAULT_LAB})")


def _takes_command(parser: argparse.ArgumentParser, example: str, optional: bool = False) -> None:
    """Say in usage and help that CMD comes after `--` (main() splits it off before parsing)."""
    command = "[-- CMD...]" if optional else "-- CMD..."
    parser.usage = f"{parser.format_usage().removeprefix('usage: ').strip()} {command}"
    parser.epilog = f"CMD and its arguments come after --, e.g. `{example}`."


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="a cluster on this machine: namespaces as nodes, a bridge as network")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    up = lab_sub.add_parser("up", help="build the lab (or restart what is missing of it, same settings) and "
                            "wait until every node reaches every other")
    _name(up)
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--control-plane", choices=CONTROL_PLANES, default=DEFAULT_CONTROL_PLANE,
                    help="kubernetes: etcd, kube-apiserver and the lab kubelet, the chart runs the agents "
                    f"(installed only with encryption values); etcd: the kvstore mode (default "
                    f"{DEFAULT_CONTROL_PLANE})")
    add_values_arguments(up)
    up.add_argument("--node-set", dest="node_sets", action="append", default=[], metavar="NODE:KEY=VALUE",
                    help="a setting of one node (repeatable), e.g. node-3:encryption.engine=userspace")
    up.set_defaults(func=_up)

    down = lab_sub.add_parser("down", help="remove the lab: processes, namespaces, state")
    _name(down)
    down.set_defaults(func=_down)
    register_kube(lab_sub, _name)
    register_vm(lab_sub)

    exec_ = lab_sub.add_parser("exec", help="run a command inside a node, e.g. `lab exec node-1 -- tcpdump`")
    _name(exec_)
    exec_.add_argument("node", metavar="NODE")
    exec_.set_defaults(func=_exec, takes_command=True)
    _takes_command(exec_, "ciphermesh lab exec node-1 -- tcpdump -n -i cilium_vxlan esp")

    kubelet = lab_sub.add_parser("kubelet", help="the lab's stand-in kubelet (a daemon): runs ciphermesh's "
                                 "workloads only, from the API, as processes on the lab's nodes")
    _name(kubelet)
    kubelet.set_defaults(func=_kubelet)

    pod = lab_sub.add_parser("pod", help="pods: run, exec, list, delete")
    pod_sub = pod.add_subparsers(dest="pod_command", metavar="SUBCOMMAND", required=True)
    run = pod_sub.add_parser("run", help="create a pod on a node (and start CMD in it)")
    _name(run)
    run.add_argument("pod")
    run.add_argument("--node", required=True)
    run.add_argument("--ip", type=IPv4Address, help="a fixed address inside the node's pod CIDR")
    run.set_defaults(func=_pod_run, takes_command=True)
    _takes_command(run, "ciphermesh lab pod run web --node node-2 -- python3 -m http.server", optional=True)
    pexec = pod_sub.add_parser("exec", help="run a command inside a pod; its exit status is ours")
    _name(pexec)
    pexec.add_argument("pod")
    pexec.set_defaults(func=_pod_exec, takes_command=True)
    _takes_command(pexec, "ciphermesh lab pod exec web -- ping -c1 10.0.1.5")
    plist = pod_sub.add_parser("list", help="pods with node, IP and state")
    _name(plist)
    plist.add_argument("-o", "--output", choices=("table", "json"), default="table")
    plist.set_defaults(func=_pod_list)
    delete = pod_sub.add_parser("delete", help="delete a pod and stop its command")
    _name(delete)
    delete.add_argument("pod")
    delete.set_defaults(func=_pod_delete)
