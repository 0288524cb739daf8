"""The store contract, run against every backend (`store_harness.BACKENDS`) through the `backend` fixture:
compare-and-swap with opaque revisions, list + watch, registration and liveness, pod CIDRs by CAS on the
node record, the key secret validated above the backends, operators and their leader."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from ciphermesh.keys import generate_line, parse_secret
from ciphermesh.store.base import Expect, Revision, StoreEvent, Versioned
from ciphermesh.store.errors import (
    ConflictError,
    InvalidSecretError,
    NodeNotFoundError,
    PodCIDRTimeoutError,
    StoreError,
    StoreUnavailableError,
)
from ciphermesh.store.model import KeySecret, Node, OperatorRecord
from ciphermesh.store.store import Store
from ciphermesh.store.stream import EventStream
from tests.contract.store_harness import StoreHarness
from tests.support.wait import wait_until

T = TypeVar("T")


@pytest.fixture
def store(backend: StoreHarness) -> Iterator[Store]:
    yield backend.open()


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


def _changes(stream: EventStream[StoreEvent[T]], count: int, timeout: float = 10.0) -> list[StoreEvent[T]]:
    """The next `count` puts and deletes; a `synced` from a re-list in between is passed over."""
    got: list[StoreEvent[T]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [e for e in _events(stream, 1, timeout=0.2) if e.kind != "synced"]
    return got


def _summary(events: list[StoreEvent[T]]) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in events]


def _fold(view: dict[str, T], events: list[StoreEvent[T]]) -> dict[str, T]:
    """A consumer's view after `events`, as the agent's follower folds them."""
    for event in events:
        if event.kind == "put" and event.value is not None:
            view[event.name] = event.value
        elif event.kind == "delete":
            view.pop(event.name, None)
    return view


def _key_line(key_id: int = 3) -> str:
    return generate_line(key_id=key_id).format(reveal=True)


# compare-and-swap


def test_a_node_record_is_compare_and_swapped_on_an_opaque_revision(store: Store) -> None:
    registration = store.register_node(_node("node-1"))
    try:
        read = store.get_node("node-1")
        assert read is not None and read.value == _node("node-1") and isinstance(read.revision, str)
        written = store.write_node(replace(read.value, agent="ready"), read.revision)
        assert written is not None and written.revision != read.revision
        assert store.get_node("node-1") == written
        # A stale revision, or a token this backend never gave out, writes nothing.
        assert store.write_node(replace(read.value, key_id=5), read.revision) is None
        assert store.write_node(replace(read.value, key_id=5), Revision("not-a-revision")) is None
        assert store.get_node("node-1") == written
        by_other = store.update_node("node-1", lambda n: replace(n, router_ip="10.0.0.1"))
        assert by_other.value.agent == "ready" and by_other.value.router_ip == "10.0.0.1"
        # The other writer's change is kept by the agent's next read-modify-write.
        assert registration.update(lambda n: replace(n, key_id=4)).router_ip == "10.0.0.1"
        assert [v.value.name for v in store.list_nodes()] == ["node-1"]
        with pytest.raises(StoreError, match="cannot rename node-1 to node-2"):
            registration.update(lambda n: replace(n, name="node-2"))
    finally:
        registration.close()
    assert store.get_node("node-1") is None
    # A write never brings a node back.
    assert store.write_node(written.value, written.revision) is None
    assert store.get_node("node-1") is None
    with pytest.raises(NodeNotFoundError, match=r"^node node-1 is not registered$"):
        store.update_node("node-1", lambda n: n)


def test_the_key_secret_is_created_if_absent_and_compare_and_swapped(store: Store) -> None:
    assert store.get_key_secret() is None
    first = store.put_key_secret(_key_line(3), expect=Expect.ABSENT)
    assert isinstance(first.revision, str) and store.get_key_secret() == first
    with pytest.raises(ConflictError, match=r"^secret kube-system/cilium-ipsec-keys exists already"):
        store.put_key_secret(_key_line(3), expect=Expect.ABSENT)
    second = store.put_key_secret(_key_line(4), expect=first.revision)
    with pytest.raises(ConflictError, match=r"^secret kube-system/cilium-ipsec-keys changed since it was"):
        store.put_key_secret(_key_line(5), expect=first.revision)
    assert store.get_key_secret() == second
    third = store.put_key_secret(_key_line(5))  # Expect.ANY: unconditional
    assert store.get_key_secret() == third
    custom = store.put_key_secret(_key_line(1), name="other-keys", namespace="ns")
    assert store.get_key_secret(name="other-keys", namespace="ns") == custom
    assert store.get_key_secret() == third


def test_a_node_record_is_deleted_only_at_the_revision_expected(store: Store) -> None:
    registration = store.register_node(_node("node-1"))
    try:
        read = store.get_node("node-1")
        assert read is not None
        assert store.update_node("node-1", lambda n: replace(n, agent="ready"))
        assert not store.delete_node("node-1", expect=read.revision)
        assert not store.delete_node("node-1", expect=Expect.ABSENT)
        assert store.get_node("node-1") is not None
        current = store.get_node("node-1")
        assert current is not None
        registration.close(revoke=False)
        assert store.delete_node("node-1", expect=current.revision)
        assert store.get_node("node-1") is None
        assert not store.delete_node("node-1")
    finally:
        registration.close()


# list + watch


def test_watch_lists_then_follows(store: Store) -> None:
    first = store.register_node(_node("node-1"))
    second = store.register_node(_node("node-2"))
    try:
        with store.watch_nodes() as events:
            initial = _events(events, 3)
            assert sorted(_summary(initial)[:2]) == [("put", "node-1"), ("put", "node-2")]
            assert initial[2].kind == "synced"
            updated = second.update(lambda n: replace(n, agent="ready"))
            third = store.register_node(_node("node-3"))
            first.close()
            changes = _events(events, 3)
            assert _summary(changes) == [("put", "node-2"), ("put", "node-3"), ("delete", "node-1")]
            assert changes[0].value == updated and changes[2].value == _node("node-1")
            # A put's revision is the record's: good for a compare-and-swap.
            assert changes[0].revision is not None
            assert store.write_node(replace(updated, key_id=3), changes[0].revision) is not None
            third.close()
    finally:
        second.close()


def test_watching_one_node_sees_only_that_node(store: Store) -> None:
    one = store.register_node(_node("node-1"))
    try:
        with store.watch_node("node-2") as events:
            assert _summary(_events(events, 1)) == [("synced", "")]
            two = store.register_node(_node("node-2"))
            one.update(lambda n: replace(n, agent="ready"))
            two.close()
            assert _summary(_events(events, 2)) == [("put", "node-2"), ("delete", "node-2")]
            assert events.get(timeout=0.5) is None
    finally:
        one.close()


@pytest.mark.slow
def test_registration_and_watch_survive_a_backend_restart(backend: StoreHarness, store: Store) -> None:
    # A restart shorter than the TTL must not lapse the node; a kube-apiserver roll on this loaded 2-core
    # machine has taken over 2 s, so the TTL leaves room for it.
    ttl = 5
    registration = store.register_node(_node("node-1"), ttl=ttl)
    try:
        with store.watch_nodes() as events:
            assert _summary(_events(events, 2)) == [("put", "node-1"), ("synced", "")]
            backend.restart()
            time.sleep(2 * ttl)  # twice the TTL must pass for "keepalives resumed" to mean anything
            assert store.get_node("node-1") is not None
            registration.update(lambda n: replace(n, agent="ready"))
            after = _changes(events, 1)
            assert _summary(after) == [("put", "node-1")] and after[0].value is not None
            assert after[0].value.agent == "ready"
            assert registration.republished == 0 and registration.last_error is None
    finally:
        registration.close()


@pytest.mark.parametrize("history", ["kept", "expired"])
def test_a_watch_cut_off_converges_without_losing_a_change(backend: StoreHarness, history: str) -> None:
    watcher, writer = backend.open(breakable=True), backend.open()
    one = writer.register_node(_node("node-1"))
    two = writer.register_node(_node("node-2"))
    try:
        with watcher.watch_nodes() as events:
            view = _fold({}, _events(events, 3))
            assert set(view) == {"node-1", "node-2"}
            backend.cut()
            one.close()
            three = writer.register_node(_node("node-3"))
            two.update(lambda n: replace(n, agent="ready"))
            if history == "expired":
                backend.expire_history()
            backend.restore()
            expected = {v.value.name: v.value for v in writer.list_nodes()}
            deadline = time.monotonic() + 15
            while view != expected and time.monotonic() < deadline:
                _fold(view, _events(events, 1, timeout=0.5))
            assert view == expected
            three.close()
            assert _summary(_changes(events, 1)) == [("delete", "node-3")]
    finally:
        two.close()


def test_a_malformed_node_record_is_skipped_with_a_log_line(
    backend: StoreHarness, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    backend.write_malformed_node("node-9")
    registration = store.register_node(_node("node-1"))
    try:
        with caplog.at_level(logging.WARNING):
            assert [v.value.name for v in store.list_nodes()] == ["node-1"]
            with store.watch_nodes() as events:
                assert _summary(_events(events, 2)) == [("put", "node-1"), ("synced", "")]
        assert "node-9" in caplog.text
    finally:
        registration.close()


# registration and liveness


def test_a_registration_not_kept_alive_disappears(store: Store) -> None:
    with store.watch_nodes() as events:
        assert _summary(_events(events, 1)) == [("synced", "")]
        registration = store.register_node(_node("node-1"), ttl=2)
        assert _summary(_events(events, 1)) == [("put", "node-1")]
        registration.close(revoke=False)  # the agent dies: no more keepalives, no revoke
        started = time.monotonic()
        deleted = _events(events, 1, timeout=15)
        assert _summary(deleted) == [("delete", "node-1")]
        assert deleted[0].value == _node("node-1")
        assert time.monotonic() - started > 1.0
    assert store.get_node("node-1") is None


def test_closing_with_revoke_removes_the_record_at_once(store: Store) -> None:
    registration = store.register_node(_node("node-1"), ttl=30)
    assert store.get_node("node-1") is not None
    registration.close(revoke=True)
    assert store.get_node("node-1") is None
    assert store.list_nodes() == []


@pytest.mark.slow
def test_a_kept_alive_registration_outlives_its_ttl(store: Store) -> None:
    registration = store.register_node(_node("node-1"), ttl=2)
    try:
        time.sleep(5)
        assert store.get_node("node-1") is not None
    finally:
        registration.close()


def test_a_registration_cut_off_past_its_ttl_is_published_again(backend: StoreHarness) -> None:
    agent_store, view = backend.open(breakable=True, timeout=1.0), backend.open()
    registration = agent_store.register_node(_node("node-1"), ttl=2)
    try:
        node = view.get_node("node-1")
        assert node is not None and view.assign_pod_cidr(node, "10.0.1.0/24") is not None
        assert registration.wait_for_pod_cidrs(5) == ("10.0.1.0/24",)
        backend.cut()  # the agent cannot reach the store for longer than its TTL
        wait_until(lambda: view.get_node("node-1") is None, 15, "the node to lapse")
        wait_until(lambda: registration.last_error is not None, 5, "the agent to notice")
        backend.restore()
        wait_until(lambda: view.get_node("node-1") is not None, 15, "the node to come back")
        back = view.get_node("node-1")
        assert back is not None and back.value.pod_cidrs == ("10.0.1.0/24",)
        assert registration.republished == 1
        wait_until(lambda: registration.last_error is None, 5, "keeping alive to work again")
    finally:
        registration.close()


def test_a_node_record_deleted_behind_its_registration_is_published_again(store: Store) -> None:
    """Cilium #39720: a CiliumNode deleted by hand must come back, and with what the node uses."""
    registration = store.register_node(_node("node-1"), ttl=2)
    try:
        node = store.get_node("node-1")
        assert node is not None and store.assign_pod_cidr(node, "10.0.4.0/24") is not None
        assert registration.wait_for_pod_cidrs(5) == ("10.0.4.0/24",)
        assert store.delete_node("node-1")
        wait_until(lambda: store.get_node("node-1") is not None, 10, "the record to be published again")
        back = store.get_node("node-1")
        assert back is not None and back.value.pod_cidrs == ("10.0.4.0/24",)
        assert registration.republished >= 1
    finally:
        registration.close()
    assert store.get_node("node-1") is None


def test_a_restarted_agent_keeps_its_pod_cidr(store: Store) -> None:
    old = store.register_node(_node("node-1"))
    node = store.get_node("node-1")
    assert node is not None and store.assign_pod_cidr(node, "10.0.7.0/24") is not None
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


def test_a_lapsed_record_holds_exactly_the_pod_cidrs_its_next_registration_brings_back(store: Store) -> None:
    """What IPAM must not hand out again: a kept record (a CiliumNode) comes back with its CIDRs, one gone
    with its lease (etcd) with none."""
    old = store.register_node(_node("node-1"), ttl=2)
    node = store.get_node("node-1")
    assert node is not None and store.assign_pod_cidr(node, "10.0.7.0/24") is not None
    assert store.held_pod_cidrs() == {"node-1": ("10.0.7.0/24",)}
    old.close(revoke=False)
    wait_until(lambda: store.get_node("node-1") is None, 15, "the node to lapse")
    held = store.held_pod_cidrs()
    assert held in ({}, {"node-1": ("10.0.7.0/24",)})
    new = store.register_node(_node("node-1", boot_id="boot-again"))
    try:
        assert new.node.pod_cidrs == held.get("node-1", ())
    finally:
        new.close()
    assert store.held_pod_cidrs() == {}


def test_a_restarted_agent_s_record_keeps_what_its_peers_route_by_until_it_updates_it(store: Store) -> None:
    old = store.register_node(_node("node-1"))
    node = store.get_node("node-1")
    assert node is not None and store.assign_pod_cidr(node, "10.0.7.0/24") is not None
    old.update(lambda n: replace(n, router_ip="10.0.7.1", health_endpoint="10.0.7.1:4240", key_id=3,
                                 encryption={"mode": "ipsec"}, agent="ready"))
    old.close(revoke=False)  # SIGKILL: the record stays until its lease runs out
    new = store.register_node(_node("node-1", boot_id="boot-again"))
    try:
        stored = store.get_node("node-1")
        assert stored is not None
        # Peers must not see the node leave while its agent starts again (its kernel SAs still carry).
        kept = stored.value
        assert (kept.router_ip, kept.health_endpoint, kept.key_id, dict(kept.encryption)) == (
            "10.0.7.1", "10.0.7.1:4240", 3, {"mode": "ipsec"})
        assert (kept.boot_id, kept.agent) == ("boot-again", "starting")  # the new registration's own
        updated = new.update(lambda n: replace(n, key_id=4))
        assert updated.key_id == 4 and updated.router_ip == "10.0.7.1"
    finally:
        new.close()


def test_waiting_for_a_pod_cidr_says_why_it_did_not_come(store: Store) -> None:
    registration = store.register_node(_node("node-3"))
    try:
        with pytest.raises(
            PodCIDRTimeoutError, match=r"no pod CIDR after 0\.5 s: no IPAM error recorded; is the operator"
        ):
            registration.wait_for_pod_cidrs(0.5)
        node = store.get_node("node-3")
        assert node is not None
        assert store.set_ipam_error(node, "IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-3")
        message = "node node-3 has no pod CIDR after 0.5 s: IPAM: pool 10.0.0.0/23 exhausted: no /24 left"
        with pytest.raises(PodCIDRTimeoutError, match="^" + re.escape(message) + " for node-3$"):
            registration.wait_for_pod_cidrs(0.5)
        stop = threading.Event()
        stop.set()
        with pytest.raises(PodCIDRTimeoutError, match=r"^stopped while node node-3 waited for a pod CIDR: "):
            registration.wait_for_pod_cidrs(60, stop)
    finally:
        registration.close()


# pod CIDRs: one compare-and-swap on the node's own record


def test_a_pod_cidr_is_assigned_by_one_cas_on_the_node_record(store: Store) -> None:
    registration = store.register_node(_node("node-1"))
    try:
        node = store.get_node("node-1")
        assert node is not None and store.set_ipam_error(node, "IPAM: pool exhausted")
        stale, node = node, store.get_node("node-1")
        assert node is not None and node.value.ipam_error == "IPAM: pool exhausted"
        assert store.assign_pod_cidr(stale, "10.0.0.0/24") is None
        assigned = store.assign_pod_cidr(node, "10.0.0.0/24")
        assert assigned is not None and store.get_node("node-1") == assigned
        assert assigned.value.pod_cidrs == ("10.0.0.0/24",) and assigned.value.errors == ()
        # A second family is added beside the first; the same family is replaced.
        both = store.assign_pod_cidr(assigned, "fd00:10::/64")
        assert both is not None and both.value.pod_cidrs == ("10.0.0.0/24", "fd00:10::/64")
        assert registration.update(lambda n: replace(n, agent="ready")).pod_cidrs == both.value.pod_cidrs
    finally:
        registration.close()
    # The record lives and dies with its registration, whoever wrote it last.
    assert store.get_node("node-1") is None


def test_two_writers_racing_on_one_node_record_exactly_one_wins(backend: StoreHarness) -> None:
    first, second = backend.open(), backend.open()
    registration = first.register_node(_node("node-1"))
    try:
        for round_ in range(10):
            node = first.get_node("node-1")
            assert node is not None
            barrier = threading.Barrier(2)
            results: dict[str, object] = {}

            def write(
                store: Store,
                cidr: str,
                barrier: threading.Barrier = barrier,
                node: Versioned[Node] = node,
                results: dict[str, object] = results,
            ) -> None:
                barrier.wait()
                results[cidr] = store.assign_pod_cidr(node, cidr)

            cidrs = (f"10.1.{round_}.0/24", f"10.2.{round_}.0/24")
            pairs = zip((first, second), cidrs, strict=True)
            threads = [threading.Thread(target=write, args=pair) for pair in pairs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            winners = [cidr for cidr, result in results.items() if result is not None]
            assert len(winners) == 1, results
            stored = first.get_node("node-1")
            assert stored is not None and stored.value.pod_cidrs == (winners[0],)
    finally:
        registration.close()


def test_set_ipam_error_is_cas_and_idempotent(store: Store) -> None:
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
        cleared = store.get_node("node-1")
        assert cleared is not None and cleared.value.errors == ()
    finally:
        registration.close()


# the key secret


def test_the_key_secret_is_stored_verbatim_and_watched(store: Store) -> None:
    text = _key_line(3) + "\n"
    with store.watch_key_secret() as events:
        assert _summary(_events(events, 1)) == [("synced", "")]
        stored = store.put_key_secret(text)
        got = store.get_key_secret()
        assert got == stored and got.value == KeySecret(text)
        seen = _events(events, 1)
        assert _summary(seen) == [("put", "cilium-ipsec-keys")] and seen[0].value == KeySecret(text)


BAD_SECRET = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdefZZ 128"


def test_a_malformed_secret_is_refused_above_the_backend(store: Store) -> None:
    good = store.put_key_secret(_key_line(3))
    with pytest.raises(InvalidSecretError) as info:
        store.put_key_secret(BAD_SECRET, expect=good.revision)
    # The same one line from every backend: parse_secret's reason, and no key material in it.
    with pytest.raises(ValueError) as reason:
        parse_secret(BAD_SECRET)
    assert str(info.value) == f"secret kube-system/cilium-ipsec-keys not stored: {reason.value}"
    assert "0123456789abcdef" not in str(info.value)
    with pytest.raises(InvalidSecretError, match=r"^secret kube-system/cilium-ipsec-keys not stored: "):
        store.put_key_secret("   ")
    assert store.get_key_secret() == good


def test_a_malformed_secret_written_behind_the_stores_back_is_reported_not_fatal(
    backend: StoreHarness, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.put_key_secret(_key_line(3))
    with store.watch_key_secret() as events, caplog.at_level(logging.WARNING):
        assert _summary(_events(events, 2)) == [("put", "cilium-ipsec-keys"), ("synced", "")]
        # What `kubectl edit` can leave: text that is no key line reaches the consumer, who says why.
        backend.write_raw_secret("cilium-ipsec-keys", "kube-system", b"garbage")
        seen = _events(events, 1)
        assert _summary(seen) == [("put", "cilium-ipsec-keys")] and seen[0].value == KeySecret("garbage")
        got = store.get_key_secret()
        assert got is not None and got.value.keys == "garbage"
        # Bytes that are not even text: the record is gone for the consumer, and the log says why.
        backend.write_raw_secret("cilium-ipsec-keys", "kube-system", b"\xff\xfe")
        assert _summary(_events(events, 1)) == [("delete", "cilium-ipsec-keys")]
        assert "secret kube-system/cilium-ipsec-keys is not UTF-8 text" in caplog.text
        assert store.get_key_secret() is None
        # The watch carries on.
        good = _key_line(4)
        store.put_key_secret(good)
        seen = _events(events, 1)
        assert _summary(seen) == [("put", "cilium-ipsec-keys")] and seen[0].value == KeySecret(good)


# operators


def test_operators_are_listed_while_alive_and_exactly_one_leads(store: Store) -> None:
    records = [OperatorRecord(f"operator-{i}", 1000 + i, ("10.0.0.0/8",), 24) for i in (1, 2)]
    registrations = [store.register_operator(record, ttl=2) for record in records]
    try:
        assert sorted(store.list_operators(), key=lambda r: r.id) == records
        wait_until(lambda: sum(r.leading for r in registrations) == 1, 10, "one operator to lead")
        leader = next(r for r in registrations if r.leading)
        other = next(r for r in registrations if r is not leader)
        leader.close()
        assert not leader.leading
        wait_until(lambda: other.leading, 10, "the other operator to take over")
        assert len(store.list_operators()) == 1
        other.close(revoke=False)
        assert not other.leading
        wait_until(lambda: store.list_operators() == [], 15, "the last operator to lapse")
    finally:
        for registration in registrations:
            registration.close()


def test_store_errors_are_typed_when_the_backend_is_down(backend: StoreHarness, store: Store) -> None:
    backend.stop()
    with pytest.raises(StoreUnavailableError):
        store.list_nodes()
    with pytest.raises(StoreUnavailableError):
        store.register_node(_node("node-1"))
    with pytest.raises(StoreUnavailableError):
        store.put_key_secret(_key_line(3))
