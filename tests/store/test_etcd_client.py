"""The etcd JSON-gateway client against a real etcd: KV, CAS, leases, watch across restarts, errors."""

from __future__ import annotations

import time

import pytest

from ciphermesh.store.etcd.client import EtcdClient, decode_reply
from ciphermesh.store.etcd.messages import (
    Delete,
    EtcdError,
    EtcdRequestError,
    EtcdUnavailableError,
    Get,
    LeaseNotFoundError,
    Put,
    WatchCompactedError,
    WatchEvent,
    create_revision_is,
    key_missing,
    mod_revision_is,
    prefix_end,
)
from tests.support.etcd import EtcdFixture
from tests.support.wait import wait_until


@pytest.fixture
def client(etcd: EtcdFixture) -> EtcdClient:
    return EtcdClient(etcd.url, timeout=3.0)


def _drain(stream: object, count: int, timeout: float = 10.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = stream.get(timeout=0.2)  # type: ignore[attr-defined]
        if event is not None:
            events.append(event)
    return events


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"


def test_put_get_range_delete(client: EtcdClient) -> None:
    r1 = client.put(b"/t/a", b"1")
    r2 = client.put(b"/t/b", b"\x00\xffbinary")
    client.put(b"/u/c", b"3")
    assert r2 == r1 + 1
    kv = client.get(b"/t/b")
    assert kv is not None and kv.value == b"\x00\xffbinary" and kv.mod_revision == r2 == kv.create_revision
    listing = client.get_prefix(b"/t/")
    assert [kv.key for kv in listing.kvs] == [b"/t/a", b"/t/b"]
    assert listing.revision == r2 + 1
    assert client.get(b"/nothing") is None
    assert client.delete_prefix(b"/t/") == 2
    assert client.get_prefix(b"/t/").kvs == ()
    assert client.delete(b"/u/c") == 1


def test_txn_compare_and_swap(client: EtcdClient) -> None:
    rev = client.put(b"/cas", b"v1")
    stale = client.txn([mod_revision_is(b"/cas", rev - 1)], [Put(b"/cas", b"lost")], [Get(b"/cas")])
    assert not stale.succeeded
    assert stale.ranges[0][0].value == b"v1"
    won = client.txn([mod_revision_is(b"/cas", rev)], [Put(b"/cas", b"v2")])
    assert won.succeeded
    assert client.get(b"/cas").value == b"v2"  # type: ignore[union-attr]
    assert not client.txn([key_missing(b"/cas")], [Put(b"/cas", b"again")]).succeeded
    assert client.txn([key_missing(b"/fresh")], [Put(b"/fresh", b"1"), Put(b"/other", b"2")]).succeeded
    fresh = client.get(b"/fresh")
    assert fresh is not None
    assert client.txn([create_revision_is(b"/fresh", fresh.create_revision)], [Delete(b"/fresh")]).succeeded
    assert client.get(b"/fresh") is None


@pytest.mark.slow
def test_lease_keeps_a_key_until_it_expires(client: EtcdClient) -> None:
    lease = client.lease_grant(2)
    assert lease.ttl == 2
    client.put(b"/leased", b"x", lease=lease.id)
    assert client.get(b"/leased").lease == lease.id  # type: ignore[union-attr]
    for _ in range(3):
        time.sleep(1)
        assert client.lease_keepalive(lease.id) == 2
    assert client.get(b"/leased") is not None
    wait_until(lambda: client.get(b"/leased") is None, 6, "the leased key to go")
    assert client.lease_time_to_live(lease.id) == -1
    with pytest.raises(LeaseNotFoundError):
        client.lease_keepalive(lease.id)


def test_lease_revoke_deletes_its_keys(client: EtcdClient) -> None:
    lease = client.lease_grant(30)
    client.put(b"/r", b"x", lease=lease.id)
    assert client.lease_revoke(lease.id) is True
    assert client.get(b"/r") is None
    assert client.lease_revoke(lease.id) is False
    with pytest.raises(LeaseNotFoundError, match="lease not found"):
        client.put(b"/r", b"x", lease=lease.id)


def test_watch_delivers_puts_and_deletes_with_revisions(client: EtcdClient) -> None:
    client.put(b"/w/before", b"old")
    with client.watch_prefix(b"/w/") as stream:
        r1 = client.put(b"/w/a", b"1")
        r2 = client.put(b"/w/a", b"2")
        client.put(b"/x/ignored", b"-")
        r3 = client.put(b"/w/b", b"3")
        d = client.delete(b"/w/a")
        events = _drain(stream, 4)
    assert [(e.kind, e.kv.key, e.revision) for e in events] == [
        ("put", b"/w/a", r1),
        ("put", b"/w/a", r2),
        ("put", b"/w/b", r3),
        ("delete", b"/w/a", r3 + 1),
    ]
    assert d == 1
    assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
    assert events[3].prev_kv is not None and events[3].prev_kv.value == b"2"


def test_watch_from_a_past_revision_replays(client: EtcdClient) -> None:
    r1 = client.put(b"/h/a", b"1")
    client.put(b"/h/a", b"2")
    with client.watch(b"/h/a", start_revision=r1) as stream:
        events = _drain(stream, 2)
    assert [e.kv.value for e in events] == [b"1", b"2"]


def test_watch_resumes_after_an_etcd_restart_without_loss_or_duplicates(
    etcd: EtcdFixture, client: EtcdClient
) -> None:
    with client.watch_prefix(b"/r/") as stream:
        r1 = client.put(b"/r/1", b"a")
        assert [e.revision for e in _drain(stream, 1)] == [r1]
        etcd.restart()
        # Written before the watch has reconnected: it must arrive once, from the resumed revision.
        r2 = client.put(b"/r/2", b"b")
        r3 = client.put(b"/r/3", b"c")
        events = _drain(stream, 2)
        assert [e.revision for e in events] == [r2, r3]
        assert stream.get(timeout=0.5) is None


def test_a_lease_survives_an_etcd_restart(etcd: EtcdFixture, client: EtcdClient) -> None:
    lease = client.lease_grant(3)
    client.put(b"/l", b"x", lease=lease.id)
    etcd.restart()
    assert client.lease_keepalive(lease.id) == 3
    assert client.get(b"/l") is not None


def test_a_compacted_start_revision_is_a_typed_watch_error(client: EtcdClient) -> None:
    r1 = client.put(b"/c", b"1")
    r2 = client.put(b"/c", b"2")
    client.compact(r2)
    with (
        client.watch(b"/c", start_revision=r1) as stream,
        pytest.raises(WatchCompactedError, match=f"up to revision {r2}") as info,
    ):
        for _ in range(50):
            stream.get(timeout=0.2)
    assert info.value.compact_revision == r2


def test_unreachable_etcd_is_a_typed_one_line_error(etcd: EtcdFixture, client: EtcdClient) -> None:
    client.put(b"/k", b"v")
    etcd.stop()
    with pytest.raises(
        EtcdUnavailableError,
        match=r"^etcd at unix:///\S+/client\.sock:0 is unreachable: connection refused: no socket ",
    ) as info:
        client.get(b"/k")
    assert "\n" not in str(info.value)
    etcd.start()
    assert client.get(b"/k") is not None


def test_bad_endpoint_and_bad_request_are_typed(client: EtcdClient) -> None:
    with pytest.raises(EtcdError, match=r"^etcd endpoint 'localhost:2379' is not http://HOST:PORT"):
        EtcdClient("localhost:2379")
    with pytest.raises(LeaseNotFoundError):
        client.lease_keepalive(12345)
    with pytest.raises(EtcdError, match="rejected /v3/kv/txn"):
        client.txn([mod_revision_is(b"/a", 0)], [Put(b"/a", b"1"), Put(b"/a", b"2")])


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # What the gateway sends while etcd shuts down: retry, do not give up.
        (
            200,
            b'{"error": {"grpc_code": 14, "http_code": 503, "message": "transport is closing"}}',
            EtcdUnavailableError,
        ),
        (
            200,
            b'{"error": {"grpc_code": 1, "message": "grpc: the client connection is closing"}}',
            EtcdUnavailableError,
        ),
        (503, b'{"error": "etcdserver: request timed out", "code": 4}', EtcdUnavailableError),
        (400, b'{"error": "etcdserver: duplicate key given in txn request", "code": 3}', EtcdRequestError),
        (404, b'{"error": "etcdserver: requested lease not found", "code": 5}', LeaseNotFoundError),
        (502, b"<html>bad gateway</html>", EtcdUnavailableError),
    ],
)
def test_gateway_errors_map_to_retryable_or_not(status: int, body: bytes, kind: type[Exception]) -> None:
    with pytest.raises(kind) as info:
        decode_reply("http://127.0.0.1:1", "/v3/watch", status, body)
    assert type(info.value) is kind and "\n" not in str(info.value)
