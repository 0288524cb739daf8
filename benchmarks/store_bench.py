"""The control plane on a real etcd: start time, request latency, watch delay, lease expiry, IPAM speed.

Starts its own etcd in a temp dir (always stopped), prints one JSON object.
Run: `.venv/bin/python benchmarks/store_bench.py [--ops 500] [--nodes 200]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.store.base import NodeRegistration
from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.messages import Put, mod_revision_is
from ciphermesh.store.etcd.process import start_etcd, stop_etcd
from ciphermesh.store.model import Node
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store


def _latencies_ms(op: Callable[[int], object], count: int) -> dict[str, float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        op(i)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median": round(statistics.median(samples), 3), "p99": round(samples[int(count * 0.99) - 1], 3)}


def _watch_delay_ms(client: EtcdClient, count: int) -> dict[str, float]:
    samples = []
    with client.watch_prefix(b"/bench/watch/") as events:
        for i in range(count):
            start = time.perf_counter()
            client.put(b"/bench/watch/k", str(i).encode())
            event = events.get(timeout=5)
            assert event is not None
            samples.append((time.perf_counter() - start) * 1000)
    return {"median": round(statistics.median(samples), 3), "max": round(max(samples), 3)}


def _lease_expiry_s(store: Store) -> float:
    with store.watch_nodes() as events:
        while (event := events.get(timeout=5)) is not None and event.kind != "synced":
            pass
        registration = store.register_node(Node("expiry-1", "192.168.0.1", "b"), ttl=2)
        registration.close(revoke=False)
        start = time.monotonic()
        while (event := events.get(timeout=10)) is not None and event.kind != "delete":
            pass
        return round(time.monotonic() - start, 2)


def _ipam_seconds(url: str, nodes: int, operators: int, cluster: str) -> float:
    """Register `nodes` agents, start `operators` operators, time until every agent has its CIDR."""
    with open_store(url, cluster) as store:
        registrations: list[NodeRegistration] = [
            store.register_node(Node(f"node-{i}", f"192.168.{i // 250}.{i % 250 + 1}", f"b{i}"), ttl=10)
            for i in range(1, nodes + 1)
        ]
        stop = threading.Event()
        stores = [open_store(url, cluster) for _ in range(operators)]
        start = time.monotonic()
        threads = [
            threading.Thread(
                target=run_operator,
                args=(s, OperatorConfig(("10.0.0.0/8",), 24, operator_id=f"op-{k}"), stop),
            )
            for k, s in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        try:
            for registration in registrations:
                registration.wait_for_pod_cidrs(120)
            elapsed = time.monotonic() - start
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for s in stores:
                s.close()
            for registration in registrations:
                registration.close()
        return round(elapsed, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cm-store-bench-") as tmp:
        state = Path(tmp)
        start = time.monotonic()
        info = start_etcd(state)
        results: dict[str, object] = {"etcd_start_s": round(time.monotonic() - start, 2)}
        try:
            with EtcdClient(info.client_url) as client, Store(EtcdBackend(client, "bench")) as store:
                results["put_ms"] = _latencies_ms(lambda i: client.put(b"/bench/k", b"%d" % i), args.ops)
                results["get_ms"] = _latencies_ms(lambda i: client.get(b"/bench/k"), args.ops)
                kv = client.get(b"/bench/k")
                assert kv is not None
                rev = [kv.mod_revision]

                def cas(i: int) -> None:
                    result = client.txn([mod_revision_is(b"/bench/k", rev[0])], [Put(b"/bench/k", b"x")])
                    rev[0] = result.revision

                results["cas_txn_ms"] = _latencies_ms(cas, args.ops)
                results["watch_delay_ms"] = _watch_delay_ms(client, min(args.ops, 200))
                results["lease_expiry_after_death_s_ttl2"] = _lease_expiry_s(store)
            for operators, cluster in ((1, "one"), (2, "two")):
                seconds = _ipam_seconds(info.client_url, args.nodes, operators, cluster)
                results[f"ipam_{args.nodes}_nodes_{operators}_operators_s"] = seconds
        finally:
            stop_etcd(state)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
