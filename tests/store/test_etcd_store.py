"""The Store on a real etcd: node registration under leases, watches, restarts, the key secret, IPAM CAS."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from ciphermesh.keys import generate_line
from ciphermesh.store.base import (
    ConflictError,
    InvalidSecretError,
    NodeNotFoundError,
    PodCIDRTimeoutError,
    Store,
    StoreError,
    StoreEvent,
    StoreUnavailableError,
    Versioned,
)
from ciphermesh.store.etcd_client import EtcdClient
from ciphermesh.store.etcd_store import EtcdStore
from ciphermesh.store.model import IPAMAllocation, KeySecret, Node, OperatorRecord
from ciphermesh.store.stream import EventStream
from tests.support.etcd import EtcdFixture, TcpProxy
from tests.support.wait import wait_until

T = TypeVar("T")


@pytest.fixture
def store(etcd: EtcdFixture) -> Iterator[EtcdStore]:
    with EtcdStore.connect(etcd.url, "cm") as s:
        yield s


def _node(name: str, **changes: object) -> Node:
    index = int(name.rsplit("-", 1)[1])
    node = Node(name=name, node_ip=f"192.168.50.{10 + index}", boot_id=f"boot-{name}")
    return replace(node, **changes)  # type: ignore[arg-type]


def _events(stream: EventStream[StoreEvent[T]], count: int, timeout: float = 10.0) -> list[StoreEvent[T]]:
    got: list[StoreEvent[T]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        event = stream.get(timeout=0.2)
        if event is not None:
            got.append(event)
    return got


def _summary(events: list[StoreEvent[T]]) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in events]


def _key_line(key_id: int = 3) -> str:
    return generate_line(key_id=key_id).format(reveal=True)


def test_etcd_store_implements_the_store_protocol(store: EtcdStore) -> None:
    as_protocol: Store = store
    assert as_protocol.cluster == "cm"


def test_register_get_list_and_update(store: EtcdStore) -> None:
    registration = store.register_node(_node("node-1"))
    try:
        got = store.get_node("node-1")
        assert got is not None and got.value == _node("node-1")
        assert store.client.get(store.node_key("node-1")).lease == registration.lease_id  # type: ignore[union-attr]
        updated = registration.update(lambda n: replace(n, agent="ready", key_id=3))
        assert updated.agent == "ready" and registration.node == updated
        by_other = store.update_node("node-1", lambda n: replace(n, router_ip="10.0.0.1"))
        assert by_other.value.agent == "ready" and by_other.value.router_ip == "10.0.0.1"
        assert by_other.revision > got.revision
        # The other writer's change is kept by the agent's next read-modify-write.
        assert registration.update(lambda n: replace(n, key_id=4)).router_ip == "10.0.0.1"
        assert store.client.get(store.node_key("node-1")).lease == registration.lease_id  # type: ignore[union-attr]
        assert [v.value.name for v in store.list_nodes()] == ["node-1"]
        with pytest.raises(StoreError, match="cannot rename node-1 to node-2"):
            registration.update(lambda n: replace(n, name="node-2"))
    finally:
        registration.close()
    assert store.get_node("node-1") is None
    with pytest.raises(NodeNotFoundError, match="node node-1 is not registered"):
        store.update_node("node-1", lambda n: n)


def test_a_dead_agents_node_disappears_when_its_lease_expires(store: EtcdStore) -> None:
    with store.watch_nodes() as events:
        assert _summary(_events(events, 1)) == [("synced", "")]
        registration = store.register_node(_node("node-1"), ttl=2)
        assert _summary(_events(events, 1)) == [("put", "node-1")]
        registration.close(revoke=False)  # the agent dies: no more keepalives, no revoke
        started = time.monotonic()
        deleted = _events(events, 1, timeout=10)
        assert _summary(deleted) == [("delete", "node-1")]
        assert deleted[0].value == _node("node-1")
        assert time.monotonic() - started > 1.0
    assert store.get_node("node-1") is None


@pytest.mark.slow
def test_a_kept_alive_node_outlives_its_ttl(store: EtcdStore) -> None:
    registration = store.register_node(_node("node-1"), ttl=2)
    try:
        time.sleep(5)
        assert store.get_node("node-1") is not None
    finally:
        registration.close()


def test_watch_lists_then_follows(store: EtcdStore) -> None:
    first = store.register_node(_node("node-1"))
    second = store.register_node(_node("node-2"))
    try:
        with store.watch_nodes() as events:
            initial = _events(events, 3)
            assert sorted(_summary(initial)[:2]) == [("put", "node-1"), ("put", "node-2")]
            assert initial[2].kind == "synced"
            rev = second.update(lambda n: replace(n, agent="ready"))
            third = store.register_node(_node("node-3"))
            first.close()
            changes = _events(events, 3)
            assert _summary(changes) == [("put", "node-2"), ("put", "node-3"), ("delete", "node-1")]
            assert changes[0].value == rev
            revisions = [e.revision for e in changes]
            assert revisions == sorted(revisions) and changes[0].revision > initial[2].revision
            third.close()
    finally:
        second.close()


@pytest.mark.slow
def test_registration_and_watch_survive_an_etcd_restart(etcd: EtcdFixture, store: EtcdStore) -> None:
    registration = store.register_node(_node("node-1"), ttl=2)
    try:
        with store.watch_nodes() as events:
            assert _summary(_events(events, 2)) == [("put", "node-1"), ("synced", "")]
            etcd.restart()
            time.sleep(4)  # twice the TTL: keepalives must have resumed
            assert store.get_node("node-1") is not None
            registration.update(lambda n: replace(n, agent="ready"))
            after = _events(events, 1)
            assert _summary(after) == [("put", "node-1")] and after[0].value is not None
            assert after[0].value.agent == "ready"
            assert registration.renewals == 0 and registration.last_error is None
    finally:
        registration.close()


def test_a_lost_lease_is_replaced_and_the_node_published_again(
    etcd: EtcdFixture, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(etcd.url)
    with (
        EtcdStore.connect(proxy.url, "cm", timeout=1.0) as agent_store,
        EtcdStore.connect(etcd.url, "cm") as view,
    ):
        registration = agent_store.register_node(_node("node-1"), ttl=2)
        try:
            node = view.get_node("node-1")
            assert node is not None
            assert view.claim_pod_cidr(node, IPAMAllocation("10.0.1.0/24", "node-1"))
            registration.wait_for_pod_cidrs(5)
            proxy.cut()  # the agent cannot reach etcd for longer than its TTL
            wait_until(lambda: view.get_node("node-1") is None, 10, "the node to expire")
            wait_until(lambda: registration.last_error is not None, 5, "the agent to notice")
            proxy.restore()
            wait_until(lambda: view.get_node("node-1") is not None, 10, "the node to come back")
            back = view.get_node("node-1")
            assert back is not None and back.value.pod_cidrs == ("10.0.1.0/24",)
            assert registration.renewals == 1
            wait_until(lambda: registration.last_error is None, 5, "keepalives to work again")
        finally:
            registration.close()


def test_store_watch_relists_after_falling_behind_a_compaction(
    etcd: EtcdFixture, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(etcd.url)
    with EtcdStore.connect(proxy.url, "cm") as watcher_store, EtcdStore.connect(etcd.url, "cm") as writer:
        one = writer.register_node(_node("node-1"))
        two = writer.register_node(_node("node-2"))
        try:
            with watcher_store.watch_nodes() as events:
                assert len(_events(events, 3)) == 3
                proxy.cut()
                one.close()
                three = writer.register_node(_node("node-3"))
                two.update(lambda n: replace(n, agent="ready"))
                head = writer.client.put(b"/unrelated", b"x")
                writer.client.compact(head)
                proxy.restore()
                resync = _events(events, 4)
                assert sorted(_summary(resync[:3])) == [
                    ("delete", "node-1"),
                    ("put", "node-2"),
                    ("put", "node-3"),
                ]
                assert resync[3].kind == "synced"
                three.close()
                assert _summary(_events(events, 1)) == [("delete", "node-3")]
        finally:
            two.close()


def test_a_malformed_record_is_skipped_with_a_log_line(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.client.put(store.node_key("node-9"), b"{not json")
    registration = store.register_node(_node("node-1"))
    try:
        with caplog.at_level(logging.WARNING):
            assert [v.value.name for v in store.list_nodes()] == ["node-1"]
            with store.watch_nodes() as events:
                assert _summary(_events(events, 2)) == [("put", "node-1"), ("synced", "")]
        assert "ignoring /ciphermesh/cm/nodes/node-9: node record is not JSON" in caplog.text
    finally:
        registration.close()


def test_a_restarted_agent_keeps_its_pod_cidr(store: EtcdStore) -> None:
    old = store.register_node(_node("node-1"))
    node = store.get_node("node-1")
    assert node is not None and store.claim_pod_cidr(node, IPAMAllocation("10.0.7.0/24", "node-1"))
    old.close(revoke=False)
    new = store.register_node(_node("node-1", boot_id="boot-again"))
    try:
        assert new.node.pod_cidrs == ("10.0.7.0/24",)
        stored = store.get_node("node-1")
        assert stored is not None and stored.value.boot_id == "boot-again"
        assert stored.value.pod_cidrs == ("10.0.7.0/24",)
        assert new.wait_for_pod_cidrs(1) == ("10.0.7.0/24",)
    finally:
        new.close()


def test_waiting_for_a_pod_cidr_says_why_it_did_not_come(store: EtcdStore) -> None:
    registration = store.register_node(_node("node-3"))
    try:
        with pytest.raises(
            PodCIDRTimeoutError, match=r"no pod CIDR after 0\.5 s: no IPAM error recorded; is the operator"
        ):
            registration.wait_for_pod_cidrs(0.5)
        node = store.get_node("node-3")
        assert node is not None
        assert store.set_ipam_error(node, "IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-3")
        with pytest.raises(
            PodCIDRTimeoutError,
            match="^"
            + re.escape(
                "node node-3 has no pod CIDR after 0.5 s: IPAM: pool 10.0.0.0/23 exhausted: no /24 left"
            )
            + " for node-3$",
        ):
            registration.wait_for_pod_cidrs(0.5)
        stop = threading.Event()
        stop.set()
        with pytest.raises(
            PodCIDRTimeoutError, match=r"^stopped while node node-3 waited for a pod CIDR: "
        ):
            registration.wait_for_pod_cidrs(60, stop)
    finally:
        registration.close()


def test_key_secret_is_stored_verbatim_and_validated(store: EtcdStore) -> None:
    assert store.get_key_secret() is None
    text = _key_line(3) + "\n"
    with store.watch_key_secret() as events:
        assert _summary(_events(events, 1)) == [("synced", "")]
        stored = store.put_key_secret(text)
        got = store.get_key_secret()
        assert got == stored and got.value == KeySecret(text)
        raw = store.client.get(b"/ciphermesh/cm/secrets/kube-system/cilium-ipsec-keys")
        assert raw is not None and raw.value == text.encode()
        seen = _events(events, 1)
        assert _summary(seen) == [("put", "cilium-ipsec-keys")] and seen[0].value == KeySecret(text)
    bad = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdefZZ 128"
    with pytest.raises(
        InvalidSecretError, match=r"^secret kube-system/cilium-ipsec-keys not stored: line 1, "
    ) as info:
        store.put_key_secret(bad)
    assert "0123456789abcdef" not in str(info.value)
    got = store.get_key_secret()
    assert got is not None and got.value.keys == text


def test_key_secret_compare_and_swap(store: EtcdStore) -> None:
    first = store.put_key_secret(_key_line(3), expect_revision=0)
    with pytest.raises(ConflictError, match="changed since revision 0"):
        store.put_key_secret(_key_line(3), expect_revision=0)
    second = store.put_key_secret(_key_line(4), expect_revision=first.revision)
    with pytest.raises(ConflictError, match=f"changed since revision {first.revision}"):
        store.put_key_secret(_key_line(5), expect_revision=first.revision)
    custom = store.put_key_secret(_key_line(1), name="other-keys", namespace="ns")
    assert store.get_key_secret(name="other-keys", namespace="ns") == custom
    got = store.get_key_secret()
    assert got == second


def test_claim_is_compare_and_swap_on_both_records(store: EtcdStore) -> None:
    one = store.register_node(_node("node-1"))
    two = store.register_node(_node("node-2"))
    try:
        n1, n2 = store.get_node("node-1"), store.get_node("node-2")
        assert n1 is not None and n2 is not None
        assert store.claim_pod_cidr(n1, IPAMAllocation("10.0.0.0/24", "node-1", "10.0.0.0/16"))
        # Same CIDR for another node: refused, nothing written.
        assert not store.claim_pod_cidr(n2, IPAMAllocation("10.0.0.0/24", "node-2", "10.0.0.0/16"))
        # Another CIDR for node-1 from a stale read: refused.
        assert not store.claim_pod_cidr(n1, IPAMAllocation("10.0.1.0/24", "node-1", "10.0.0.0/16"))
        assert [a.value for a in store.list_allocations()] == [
            IPAMAllocation("10.0.0.0/24", "node-1", "10.0.0.0/16")
        ]
        fresh = store.get_node("node-1")
        assert fresh is not None and fresh.value.pod_cidrs == ("10.0.0.0/24",)
        assert store.get_node("node-2").value.pod_cidrs == ()  # type: ignore[union-attr]
        # The record keeps the agent's lease.
        assert store.client.get(store.node_key("node-1")).lease == one.lease_id  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="is for node-1, not node-2"):
            store.claim_pod_cidr(n2, IPAMAllocation("10.0.2.0/24", "node-1"))
    finally:
        one.close()
        two.close()


def test_release_and_bind(store: EtcdStore) -> None:
    one = store.register_node(_node("node-1"))
    n1 = store.get_node("node-1")
    assert n1 is not None and store.claim_pod_cidr(n1, IPAMAllocation("10.0.0.0/24", "node-1"))
    [allocation] = store.list_allocations()
    # Not released while node-1 is there.
    assert not store.release_pod_cidr(allocation, None)
    one.close()
    assert store.release_pod_cidr(allocation, None)
    assert store.list_allocations() == []
    # Released twice: the second finds nothing at that revision.
    assert not store.release_pod_cidr(allocation, None)
    again = store.register_node(_node("node-1"))
    try:
        writer = EtcdClient(store.client.endpoint)
        writer.put(
            store.allocation_key("10.0.5.0/24"), IPAMAllocation("10.0.5.0/24", "node-1").to_json().encode()
        )
        [kept] = store.list_allocations()
        node = store.get_node("node-1")
        assert node is not None and store.bind_pod_cidr(node, kept)
        bound = store.get_node("node-1")
        assert bound is not None and bound.value.pod_cidrs == ("10.0.5.0/24",)
        assert not store.bind_pod_cidr(node, kept)  # stale node revision
        writer.close()
    finally:
        again.close()


def test_set_ipam_error_is_cas_and_idempotent(store: EtcdStore) -> None:
    registration = store.register_node(_node("node-1"))
    try:
        node = store.get_node("node-1")
        assert node is not None
        assert store.set_ipam_error(node, "IPAM: first")
        assert not store.set_ipam_error(node, "IPAM: second")  # stale
        current = store.get_node("node-1")
        assert current is not None and current.value.ipam_error == "IPAM: first"
        assert store.set_ipam_error(current, "IPAM: first")  # nothing to change
        assert store.get_node("node-1") == current
        assert store.set_ipam_error(current, None)
        assert store.get_node("node-1").value.errors == ()  # type: ignore[union-attr]
    finally:
        registration.close()


def test_operators_are_listed_while_alive(store: EtcdStore) -> None:
    record = OperatorRecord("operator-1", 1234, ("10.0.0.0/8",), 24)
    registration = store.register_operator(record, ttl=2)
    assert store.list_operators() == [record]
    registration.close()
    assert store.list_operators() == []


def test_store_errors_are_typed_when_etcd_is_down(etcd: EtcdFixture, store: EtcdStore) -> None:
    etcd.stop()
    with pytest.raises(StoreUnavailableError, match="is unreachable: connection refused"):
        store.list_nodes()
    with pytest.raises(StoreUnavailableError):
        store.register_node(_node("node-1"))
    with pytest.raises(StoreError, match="cluster name 'Bad' is not a valid name"):
        EtcdStore(store.client, "Bad")


def test_versioned_values_compare_by_revision() -> None:
    assert Versioned(1, 5) != Versioned(1, 6)
