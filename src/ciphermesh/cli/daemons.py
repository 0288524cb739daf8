"""`ciphermesh agent` and `ciphermesh operator`: the daemons, as the lab (or a DaemonSet) runs them."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute

from ciphermesh.agent.daemon import DEFAULT_STATE_DIR, Agent, AgentOptions
from ciphermesh.agent.engine_choice import EngineUnavailableError, choose_engine
from ciphermesh.agent.modes import UnsupportedModeError, agent_mode
from ciphermesh.agent.node_config import resolve_node_config
from ciphermesh.agent.wireguard_key import KeyFileError
from ciphermesh.cli.errors import CliError
from ciphermesh.cli.values import add_config_dir_argument, add_values_arguments, values_from_args
from ciphermesh.config import Values, ValuesError, load_values
from ciphermesh.config.agent_config import read_config_dir, values_from_config_data
from ciphermesh.config.node_config import Resolved
from ciphermesh.datapath.face import DatapathError
from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.operator.ipam import IPAMConfigError
from ciphermesh.operator.key_rotation import AutoRotator, run_key_rotation
from ciphermesh.store.errors import StoreError
from ciphermesh.store.open import ENDPOINTS_HELP, open_store
from ciphermesh.store.store import Store

DEFAULT_CLUSTER = "default"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _connect(args: argparse.Namespace) -> Store:
    try:
        return open_store(args.store, args.cluster)
    except StoreError as exc:
        raise CliError(f"store {args.store}: {exc}") from None


def node_values(args: argparse.Namespace, store: Store) -> tuple[Values, Resolved]:
    """The ConfigMap with this node's CiliumNodeConfigs over it, then -f and --set."""
    try:
        data = read_config_dir(args.config_dir)  # its errors name the directory
    except ValuesError as exc:
        raise CliError(str(exc)) from None
    try:
        resolved = resolve_node_config(store, args.k8s_namespace, args.node, data)
    except StoreError as exc:
        raise CliError(f"agent: per-node settings (CiliumNodeConfig): {exc}") from None
    try:
        # A bad value of the ConfigMap itself (the overrides' values were checked one by one).
        base = values_from_config_data(resolved.data)
    except ValuesError as exc:
        raise CliError(f"config dir {args.config_dir}: {exc}") from None
    try:
        return load_values(files=args.value_files, sets=args.sets, base=base), resolved
    except ValuesError as exc:
        raise CliError(str(exc)) from None


def _agent(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    # Per-node settings need the API server; without them a bad value is reported before any connection.
    per_node = args.config_dir is not None and args.k8s_namespace is not None
    early = None if per_node else values_from_args(args)
    store = _connect(args)
    try:
        values, resolved = node_values(args, store) if early is None else (early, None)
        engine = choose_engine(values.text("encryption.engine"), agent_mode(values))
    except (UnsupportedModeError, EngineUnavailableError) as exc:
        store.close()
        raise CliError(f"agent: {exc}") from None
    except CliError:
        store.close()
        raise
    stop = _stop_on_signals()
    options = AgentOptions(
        node=args.node,
        node_ip=args.node_ip,
        values=values,
        status_socket=args.status_socket,
        probe_interval=args.probe_interval,
        state_dir=args.state_dir,
        engine=engine,
        config_sources=() if resolved is None else resolved.sources,
        config_problems=() if resolved is None else resolved.problems,
    )
    with IPRoute() as ipr:
        try:
            agent = Agent(options, store, ipr)
        except (UnsupportedModeError, KeyFileError) as exc:
            store.close()
            raise CliError(f"agent: {exc}") from None
        try:
            agent.run(stop)
        except DatapathError as exc:
            raise CliError(f"agent: {exc}") from None
        finally:
            store.close()
    return 0


def _operator(args: argparse.Namespace) -> int:
    values = values_from_args(args)
    _logging(args.log_level)
    store = _connect(args)
    config = OperatorConfig(
        cluster_pool_ipv4_cidrs=tuple(
            str(cidr) for cidr in values.cidrs("ipam.operator.clusterPoolIPv4PodCIDRList")
        ),
        cluster_pool_ipv4_mask_size=values.number("ipam.operator.clusterPoolIPv4MaskSize"),
    )
    stop = _stop_on_signals()
    rotation = _start_auto_rotation(store, values, stop)
    try:
        run_operator(store, config, stop)
    except IPAMConfigError as exc:
        raise CliError(f"operator: {exc}") from None
    finally:
        stop.set()
        if rotation is not None:
            rotation.join(timeout=5)
        store.close()
    return 0


def _start_auto_rotation(store: Store, values: Values, stop: threading.Event) -> threading.Thread | None:
    interval = values.seconds("encryption.ipsec.autoRotateInterval")
    try:
        ipsec = agent_mode(values) == "ipsec"
    except UnsupportedModeError:
        ipsec = False  # no agent runs with these settings: there are no SAs to rotate keys for
    if not ipsec or interval <= 0:
        return None
    rotator = AutoRotator(store, values.text("encryption.ipsec.secretName"), interval)
    thread = threading.Thread(target=run_key_rotation, args=(rotator, stop), name="key-rotation", daemon=True)
    thread.start()
    return thread


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="ENDPOINT",
                        help=f"the cluster's store: {ENDPOINTS_HELP}")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name (key prefix in the store)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_config_dir_argument(parser)
    add_values_arguments(parser)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="run the agent of one node (in that node's network namespace)")
    _common(agent)
    agent.add_argument("--node", required=True, help="this node's name")
    agent.add_argument("--node-ip", required=True, type=IPv4Address, help="this node's address on eth0")
    agent.add_argument("--status-socket", required=True, type=Path, help="unix socket for status queries")
    agent.add_argument("--probe-interval", type=float, default=15.0, help="seconds between health probes")
    agent.add_argument("--k8s-namespace", metavar="NAMESPACE",
                       help="the agent's namespace (Cilium's --k8s-namespace): with --config-dir and a "
                            "Kubernetes store, the CiliumNodeConfigs there that select this node override "
                            "the ConfigMap's keys, read once at start")
    agent.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"state kept across restarts: the WireGuard key (default {DEFAULT_STATE_DIR})")
    agent.set_defaults(func=_agent)
    operator = sub.add_parser("operator", help="run the operator (cluster-pool IPAM)")
    _common(operator)
    operator.set_defaults(func=_operator)
