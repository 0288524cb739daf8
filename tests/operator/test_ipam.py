"""The operator's cluster-pool IPAM on a real etcd: assignment in the node records, release and reuse,
exhaustion in words (Cilium issue #41130), adoption of recorded CIDRs, racing operators with one leader,
bad config, etcd restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.operator.ipam import IPAMConfigError
from ciphermesh.store.base import NodeRegistration
from ciphermesh.store.errors import PodCIDRTimeoutError
from ciphermesh.store.model import Node
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store
from tests.support.etcd import EtcdFixture
from tests.support.wait import wait_until

CLUSTER = "cmtest"


def _node(index: int, **changes: object) -> Node:
    node = Node(
        name=f"node-{index}", node_ip=f"192.168.{50 + index // 200}.{10 + index % 200}", boot_id=f"b{index}"
    )
    return replace(node, **changes)  # type: ignore[arg-type]


class Operators:
    """Operators run as threads of this process, each with its own store connection; always stopped."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._running: list[tuple[threading.Thread, threading.Event, Store, list[BaseException]]] = []

    def start(self, cidrs: tuple[str, ...], mask: int, operator_id: str = "operator-a") -> None:
        store = open_store(self._url, CLUSTER)
        stop = threading.Event()
        failures: list[BaseException] = []
        config = OperatorConfig(cidrs, mask, operator_id=operator_id, lease_ttl=2)

        def run() -> None:
            try:
                run_operator(store, config, stop)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=run, name=operator_id, daemon=True)
        thread.start()
        self._running.append((thread, stop, store, failures))

    def stop(self, operator_id: str) -> None:
        for entry in [e for e in self._running if e[0].name == operator_id]:
            self._stop(*entry)
            self._running.remove(entry)

    def stop_all(self) -> None:
        for entry in self._running:
            self._stop(*entry)
        self._running.clear()

    @staticmethod
    def _stop(
        thread: threading.Thread, stop: threading.Event, store: Store, failures: list[BaseException]
    ) -> None:
        stop.set()
        thread.join(timeout=10)
        store.close()
        assert not thread.is_alive(), f"{thread.name} did not stop"
        assert not failures, failures


@pytest.fixture
def store(etcd: EtcdFixture) -> Iterator[Store]:
    with open_store(etcd.url, CLUSTER) as s:
        yield s


@pytest.fixture
def operators(etcd: EtcdFixture) -> Iterator[Operators]:
    running = Operators(etcd.url)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def register(store: Store) -> Iterator[Callable[[Node], NodeRegistration]]:
    registrations: list[NodeRegistration] = []

    def make(node: Node) -> NodeRegistration:
        registration = store.register_node(node, ttl=2)
        registrations.append(registration)
        return registration

    try:
        yield make
    finally:
        for registration in registrations:
            registration.close()


def _held(store: Store) -> list[tuple[str, str]]:
    """(CIDR, node) for every pod CIDR a node record holds: what is allocated."""
    return sorted((c, n.value.name) for n in store.list_nodes() for c in n.value.pod_cidrs)


def _assert_consistent(store: Store) -> None:
    """Every node holds at most one CIDR and no CIDR is held twice."""
    nodes = [n.value for n in store.list_nodes()]
    held = [c for n in nodes for c in n.pod_cidrs]
    assert len(held) == len(set(held)), f"a CIDR is held twice: {sorted(held)}"
    assert all(len(n.pod_cidrs) <= 1 for n in nodes), "a node holds two CIDRs"


def test_nodes_get_distinct_cidrs_in_order_and_agents_wait_for_them(
    store: Store, operators: Operators, register: Callable[[Node], NodeRegistration]
) -> None:
    registrations = [register(_node(i)) for i in (1, 2, 3, 10)]
    operators.start(("10.0.0.0/16",), 24)
    got = [r.wait_for_pod_cidrs(15) for r in registrations]
    assert got == [("10.0.0.0/24",), ("10.0.1.0/24",), ("10.0.2.0/24",), ("10.0.3.0/24",)]
    assert registrations[0].node.pod_cidrs == ("10.0.0.0/24",)
    assert _held(store) == [
        ("10.0.0.0/24", "node-1"),
        ("10.0.1.0/24", "node-2"),
        ("10.0.2.0/24", "node-3"),
        ("10.0.3.0/24", "node-10"),
    ]
    assert [o.id for o in store.list_operators()] == ["operator-a"]
    # The agent's own later updates keep the operator's CIDR.
    assert registrations[0].update(lambda n: replace(n, agent="ready")).pod_cidrs == ("10.0.0.0/24",)


def test_an_exhausted_pool_is_an_error_in_words_then_a_released_cidr_is_reused(
    store: Store, operators: Operators, register: Callable[[Node], NodeRegistration]
) -> None:
    """Cilium #41130: pool 10.0.0.0/23, /24 per node, 3 nodes; the third must say why it has no CIDR."""
    one, two, three = (register(_node(i)) for i in (1, 2, 3))
    operators.start(("10.0.0.0/23",), 24)
    assert one.wait_for_pod_cidrs(15) == ("10.0.0.0/24",)
    assert two.wait_for_pod_cidrs(15) == ("10.0.1.0/24",)
    message = "IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-3"
    wait_until(
        lambda: (n := store.get_node("node-3")) is not None and message in n.value.errors, 15, "the error"
    )
    with pytest.raises(PodCIDRTimeoutError, match=f"^node node-3 has no pod CIDR after 1 s: {message}$"):
        three.wait_for_pod_cidrs(1)
    one.close()  # node-1 leaves: its CIDR goes back to the pool and node-3 gets it
    assert three.wait_for_pod_cidrs(15) == ("10.0.0.0/24",)
    node3 = store.get_node("node-3")
    assert node3 is not None and node3.value.errors == ()
    assert _held(store) == [("10.0.0.0/24", "node-3"), ("10.0.1.0/24", "node-2")]


def test_recorded_cidrs_are_adopted_and_conflicts_reported(
    store: Store, operators: Operators, register: Callable[[Node], NodeRegistration]
) -> None:
    register(_node(1, pod_cidrs=("10.0.0.0/24",)))
    register(_node(3, pod_cidrs=("10.0.0.0/24",)))
    register(_node(4, pod_cidrs=("10.0.9.128/25",)))
    register(_node(5, pod_cidrs=("172.16.0.0/24",)))
    two = register(_node(2))
    operators.start(("10.0.0.0/16",), 24)
    assert two.wait_for_pod_cidrs(15) == ("10.0.1.0/24",)

    def errors_written() -> bool:
        nodes = {n.value.name: n.value for n in store.list_nodes()}
        return nodes["node-3"].ipam_error is not None and nodes["node-4"].ipam_error is not None

    wait_until(errors_written, 15, "the conflict errors")
    nodes = {n.value.name: n.value for n in store.list_nodes()}
    assert nodes["node-3"].ipam_error == "IPAM: podCIDR 10.0.0.0/24 of node-3 is already allocated to node-1"
    assert nodes["node-4"].ipam_error == (
        "IPAM: podCIDR 10.0.9.128/25 of node-4 overlaps pool 10.0.0.0/16 but is not one of its /24 blocks"
    )
    assert nodes["node-1"].ipam_error is None and nodes["node-5"].ipam_error is None
    # Nothing was taken from anyone: the records keep what they named, the operator only said why.
    assert _held(store) == [
        ("10.0.0.0/24", "node-1"),
        ("10.0.0.0/24", "node-3"),
        ("10.0.1.0/24", "node-2"),
        ("10.0.9.128/25", "node-4"),
        ("172.16.0.0/24", "node-5"),
    ]


def test_bad_config_fails_at_once_with_the_value_named(store: Store) -> None:
    stop = threading.Event()
    with pytest.raises(IPAMConfigError, match=r"^ipam.operator.clusterPoolIPv4MaskSize 16 is smaller than"):
        run_operator(store, OperatorConfig(("10.0.0.0/23",), 16), stop)
    with pytest.raises(
        IPAMConfigError, match=r"^ipam.operator.clusterPoolIPv4PodCIDRList: '10.0.0/8' is not a CIDR"
    ):
        run_operator(store, OperatorConfig(("10.0.0/8",), 24), stop)
    assert store.list_operators() == []


def test_operators_racing_in_threads_never_share_a_cidr(
    store: Store, operators: Operators, register: Callable[[Node], NodeRegistration]
) -> None:
    """Each write is a CAS on one node record; one leader at a time keeps a CIDR from two nodes."""
    for i in range(1, 21):
        register(_node(i))
    for name in ("operator-a", "operator-b", "operator-c"):
        operators.start(("10.0.0.0/24",), 28, operator_id=name)  # 16 blocks for 20 nodes

    def settled() -> bool:
        nodes = [n.value for n in store.list_nodes()]
        return sum(1 for n in nodes if n.pod_cidrs) == 16 and all(n.pod_cidrs or n.ipam_error for n in nodes)

    wait_until(settled, 30, "16 nodes to hold a CIDR and 4 to say why not")
    _assert_consistent(store)
    errors = [n.value.ipam_error for n in store.list_nodes() if not n.value.pod_cidrs]
    assert len(errors) == 4 and all(e is not None and "exhausted: no /28 left" in e for e in errors)


def test_another_operator_takes_over_when_the_leader_stops(
    store: Store, operators: Operators, register: Callable[[Node], NodeRegistration]
) -> None:
    first = register(_node(1))
    operators.start(("10.0.0.0/16",), 24, operator_id="operator-a")
    assert first.wait_for_pod_cidrs(15) == ("10.0.0.0/24",)
    operators.start(("10.0.0.0/16",), 24, operator_id="operator-b")
    wait_until(lambda: len(store.list_operators()) == 2, 10, "both operators to register")
    operators.stop("operator-a")
    assert [o.id for o in store.list_operators()] == ["operator-b"]
    second = register(_node(2))
    assert second.wait_for_pod_cidrs(15) == ("10.0.1.0/24",)
    _assert_consistent(store)


OPERATOR_SCRIPT = """
import logging, signal, sys, threading
from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.store.open import open_store
logging.basicConfig(level=logging.WARNING)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with open_store(sys.argv[1], sys.argv[2]) as store:
    run_operator(store, OperatorConfig(("10.0.0.0/24",), 29, operator_id=sys.argv[3], lease_ttl=2), stop)
"""


@pytest.fixture
def operator_processes(etcd: EtcdFixture, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = []
    try:
        for name in ("operator-a", "operator-b"):
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", OPERATOR_SCRIPT, etcd.url, CLUSTER, name], stdout=log, stderr=log
                )
            )
            log.close()
        yield processes
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_two_operator_processes_racing_over_churning_nodes(
    store: Store,
    operator_processes: list[subprocess.Popen[bytes]],
    register: Callable[[Node], NodeRegistration],
) -> None:
    wait_until(lambda: len(store.list_operators()) == 2, 30, "both operators to register")
    # 32 blocks of /29: nodes arrive concurrently, some leave, more arrive than fit.
    registrations: dict[int, NodeRegistration] = {}
    lock = threading.Lock()

    def arrive(indexes: range) -> None:
        for i in indexes:
            registration = register(_node(i))
            with lock:
                registrations[i] = registration

    arrivals = [threading.Thread(target=arrive, args=(range(k, 41, 4),)) for k in range(1, 5)]
    for thread in arrivals:
        thread.start()
    for thread in arrivals:
        thread.join(timeout=60)
    for i in range(1, 9):
        registrations[i].close()
    for i in range(41, 47):
        registrations[i] = register(_node(i))

    def settled() -> bool:
        nodes = [n.value for n in store.list_nodes()]
        held = sum(1 for n in nodes if n.pod_cidrs)
        return len(nodes) == 38 and held == 32 and all(n.pod_cidrs or n.ipam_error for n in nodes)

    # 38 nodes want 32 blocks: every block in use, the six left over say why.
    wait_until(settled, 60, "every block to be used and every other node to have an error")
    _assert_consistent(store)
    assert len(_held(store)) == 32
    assert all(proc.poll() is None for proc in operator_processes)
    for proc in operator_processes:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    wait_until(lambda: store.list_operators() == [], 5, "the operators to deregister")


def test_the_operator_carries_on_after_an_etcd_restart(
    store: Store,
    etcd: EtcdFixture,
    operators: Operators,
    register: Callable[[Node], NodeRegistration],
) -> None:
    first = register(_node(1))
    operators.start(("10.0.0.0/16",), 24)
    assert first.wait_for_pod_cidrs(15) == ("10.0.0.0/24",)
    etcd.restart()
    second = register(_node(2))
    assert second.wait_for_pod_cidrs(20) == ("10.0.1.0/24",)
    assert [o.id for o in store.list_operators()] == ["operator-a"]
    assert os.getpid() == store.list_operators()[0].pid
