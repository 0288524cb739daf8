"""What is etcd's own in the etcd backend: its key layout, leases under the records, revisions as
mod_revisions, and opening a store by endpoint. The contract itself is tests/contract/."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from ciphermesh.keys import generate_line
from ciphermesh.store.base import Backend
from ciphermesh.store.errors import StoreError
from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.etcd.registrations import EtcdNodeRegistration, EtcdOperatorRegistration
from ciphermesh.store.model import Node, OperatorRecord
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store
from tests.support.etcd import EtcdFixture
from tests.support.wait import wait_until


@pytest.fixture
def backend(etcd: EtcdFixture) -> Iterator[EtcdBackend]:
    connected = EtcdBackend.connect(etcd.url, "cm")
    try:
        yield connected
    finally:
        connected.close()


def _node(name: str) -> Node:
    return Node(name=name, node_ip="192.168.50.11", boot_id=f"boot-{name}")


def test_etcd_backend_implements_the_backend_protocol(backend: EtcdBackend) -> None:
    as_protocol: Backend = backend
    assert as_protocol.cluster == "cm"


def test_a_node_record_stays_under_its_agents_lease_whoever_writes_it(backend: EtcdBackend) -> None:
    store = Store(backend)
    registration = store.register_node(_node("node-1"))
    assert isinstance(registration, EtcdNodeRegistration)
    key = b"/ciphermesh/cm/nodes/node-1"
    try:

        def lease() -> int | None:
            kv = backend.client.get(key)
            return None if kv is None else kv.lease

        assert lease() == registration.lease_id
        store.update_node("node-1", lambda n: replace(n, router_ip="10.0.0.1"))
        assert lease() == registration.lease_id
        node = store.get_node("node-1")
        assert node is not None
        assigned = store.assign_pod_cidr(node, "10.0.3.0/24")
        assert assigned is not None and lease() == registration.lease_id
        kv = backend.client.get(key)
        assert kv is not None and assigned.revision == str(kv.mod_revision)
        assert store.set_ipam_error(assigned, "IPAM: test") and lease() == registration.lease_id
    finally:
        registration.close()


def test_the_secret_is_stored_verbatim_at_its_key(backend: EtcdBackend) -> None:
    text = generate_line(key_id=3).format(reveal=True) + "\n"
    stored = Store(backend).put_key_secret(text)
    raw = backend.client.get(b"/ciphermesh/cm/secrets/kube-system/cilium-ipsec-keys")
    assert raw is not None and raw.value == text.encode() and stored.revision == str(raw.mod_revision)


def test_the_leader_key_is_held_under_the_leaders_lease(backend: EtcdBackend) -> None:
    record = OperatorRecord("operator-1", 1, ("10.0.0.0/8",), 24)
    registration = Store(backend).register_operator(record, ttl=2)
    assert isinstance(registration, EtcdOperatorRegistration)
    try:
        wait_until(lambda: registration.leading, 5, "the only operator to lead")
        kv = backend.client.get(b"/ciphermesh/cm/operator-leader")
        assert kv is not None and kv.value == b"operator-1" and kv.lease != 0
    finally:
        registration.close()
    assert backend.client.get(b"/ciphermesh/cm/operator-leader") is None


def test_open_store_chooses_etcd_by_endpoint_and_names_a_bad_one(etcd: EtcdFixture) -> None:
    with open_store(etcd.url, "cm") as store:
        assert isinstance(store.backend, EtcdBackend) and store.list_nodes() == []
    with pytest.raises(StoreError, match=r"^store endpoint 'etcd:2379' is not http://HOST:PORT or unix:///PATH"):
        open_store("etcd:2379", "cm")
    with pytest.raises(StoreError, match="cluster name 'Bad' is not a valid name"):
        open_store(etcd.url, "Bad")
