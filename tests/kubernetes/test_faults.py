"""The issue's faults on a Kubernetes lab, against its real kube-apiserver, in order on one IPsec lab of
3 nodes with a pod per node: kube-apiserver killed and brought back under traffic; a watch expired by
compaction (410 Gone) across a gap in which nodes came and went; a CiliumNode deleted by hand; the
operator leader killed; and last, since it takes a node away, a Node deleted. Each prints its numbers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.pod_registry import run_pod
from ciphermesh.lab.processes import pid_alive, read_pidfile
from tests.kubernetes.faults import (
    NODES,
    SETS,
    UP_TIMEOUT,
    cilium_nodes,
    compact_etcd,
    engine_errors,
    engine_peers,
    ghost,
    held_sas,
    kill,
    kill_apiserver,
    kill_relay,
    kube_json,
    kubectl,
    lab_up_again,
    log_count,
    remove_ghost,
    rotate_secret,
    router_ips,
    sas_for,
    sending_with,
    statuses,
    viewed_peers,
)
from tests.support.lab import lab_guard, run_cli
from tests.support.names import unique_lab
from tests.support.rotation import RotationLab, assert_no_loss, ping_mesh
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(900),
]

RELIST = "listing again"  # the store's log line when a watch got 410 Gone (store/kubernetes/watch.py)
LEADER_LEASE = ("kube-system", "ciphermesh-operator")
# How long pod traffic to a node whose CiliumNode was deleted may take to come back: its agent publishes
# it again on its next Lease renewal (a third of the 10 s TTL), its peers need one watch event each.
CILIUMNODE_RECOVERY_BOUND = 20.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RotationLab]:
    name = unique_lab("kf")
    with lab_guard(name):
        up = run_cli("lab", "up", "--lab", name, "--nodes", str(NODES), "--control-plane", "kubernetes",
                     *SETS, timeout=UP_TIMEOUT)
        assert up.returncode == 0, up.stderr
        info = load_lab(name)
        pods = {f"p{i}": run_pod(info, f"p{i}", node) for i, node in enumerate(info.nodes, 1)}
        yield RotationLab(info, pods, tmp_path_factory.mktemp("faults"))


def test_kube_apiserver_restarted_under_traffic(lab: RotationLab) -> None:
    info = lab.info
    relisted = log_count(info, RELIST)
    with ping_mesh(lab) as mesh:
        time.sleep(1)
        killed = time.monotonic()
        kill_apiserver(info)
        up, took = lab_up_again(info)
        outage = time.monotonic() - killed
        assert up.returncode == 0, up.stderr
        assert "kube-apiserver" in up.stderr + up.stdout, up.stderr
        # A change after the restart: each agent sends with the new key to a peer only once it has seen that
        # peer's CiliumNode publish it, so every agent's CiliumNode watch must have resumed.
        rotated = time.monotonic()
        key_id = rotate_secret(info)
        wait_until(lambda: sending_with(info, key_id), 120.0, f"every agent sending with key {key_id}",
                   interval=0.2, detail=lambda: {n: {ip: p["outSPI"] for ip, p in engine_peers(s).items()}
                                                 for n, s in statuses(info).items()})
        converged = time.monotonic() - rotated
        time.sleep(1)
        pings = mesh.stop()
    gaps = max(p.outage() for p in pings.values())
    print(f"kube-apiserver down {outage:.1f} s (lab up {took:.1f} s); key {key_id} on every path "
          f"{converged:.1f} s after the patch; longest ping gap {gaps:.3f} s")
    assert_no_loss(pings)
    assert {n["spec"]["encryption"]["key"] for n in cilium_nodes(info).values()} == {key_id}
    after = log_count(info, RELIST)
    print(f"agents' re-lists across the restart: {sum(after.values()) - sum(relisted.values())}")


def test_a_watch_expired_by_compaction_relists_and_loses_no_event(lab: RotationLab) -> None:
    info = lab.info
    others = {n: set(info.nodes) - {n} for n in info.nodes}
    ghost(info, "ghost-a", "192.0.2.10")
    wait_until(lambda: all(viewed_peers(s) == others[n] | {"ghost-a"} for n, s in statuses(info).items()),
               60.0, "every agent seeing ghost-a", detail=lambda: {n: viewed_peers(s) for n, s in
                                                                   statuses(info).items()})
    relisted = log_count(info, RELIST)
    with ping_mesh(lab) as mesh:
        time.sleep(1)
        cut = time.monotonic()
        kill_relay(info)  # the agents lose their watches; the host still reaches the API server
        # Events the agents never see through a watch: one node goes, another comes.
        remove_ghost(info, "ghost-a")
        ghost(info, "ghost-b", "192.0.2.11")
        head = compact_etcd(info)
        # A new API server's watch cache starts at etcd's head: a watch from before it gets 410 Gone.
        kill_apiserver(info)
        up, took = lab_up_again(info)
        assert up.returncode == 0, up.stderr
        wanted = {n: others[n] | {"ghost-b"} for n in info.nodes}
        wait_until(lambda: all(viewed_peers(s) == wanted[n] for n, s in statuses(info).items()), 120.0,
                   "every agent's view to match the API", interval=0.2,
                   detail=lambda: {n: viewed_peers(s) for n, s in statuses(info).items()})
        matched = time.monotonic() - cut
        time.sleep(1)
        pings = mesh.stop()
    after = log_count(info, RELIST)
    fresh = {pod: after[pod] - relisted.get(pod, 0) for pod in after}
    print(f"etcd compacted at {head}; agents cut off and back {matched:.1f} s (lab up {took:.1f} s); "
          f"re-lists per agent pod {fresh}; longest ping gap {max(p.outage() for p in pings.values()):.3f} s")
    assert len(fresh) == NODES and all(count > 0 for count in fresh.values()), fresh
    in_api = set(cilium_nodes(info))
    assert in_api == set(info.nodes) | {"ghost-b"}, in_api
    assert_no_loss(pings)
    remove_ghost(info, "ghost-b")
    wait_until(lambda: all(viewed_peers(s) == others[n] for n, s in statuses(info).items()), 60.0,
               "every agent dropping ghost-b")


def test_a_ciliumnode_deleted_by_hand_comes_back_with_no_stale_state(lab: RotationLab) -> None:
    info = lab.info
    victim, router = "node-2", router_ips(info)["node-2"]
    peers = [n for n in info.nodes if n != victim]
    key_id = cilium_nodes(info)[victim]["spec"]["encryption"]["key"]
    uid = cilium_nodes(info)[victim]["metadata"]["uid"]
    held = {n: held_sas(s, router) for n, s in statuses(info, tuple(peers)).items()}
    with ping_mesh(lab) as mesh:
        time.sleep(1)
        deleted = time.monotonic()
        kubectl(info, "delete", "ciliumnode", victim)
        wait_until(lambda: (c := cilium_nodes(info).get(victim)) is not None and c["metadata"]["uid"] != uid,
                   60.0, f"{victim}'s agent creating its CiliumNode again")
        recreated = time.monotonic() - deleted
        wait_until(lambda: all(engine_peers(s).get(router, {}).get("outSPI") == key_id
                               for s in statuses(info, tuple(peers)).values()), 60.0,
                   f"{victim}'s peers sending to it again")
        time.sleep(3)  # steady traffic after the recovery, to see any drop counter move
        before = {n: engine_errors(s) for n, s in statuses(info).items()}
        time.sleep(2)
        after = {n: engine_errors(s) for n, s in statuses(info).items()}
        pings = mesh.stop()
    to_victim = [pair for pair in pings if "p2" in pair]
    recovery = max(pings[pair].outage() for pair in to_victim)
    print(f"CiliumNode {victim} recreated by its agent {recreated:.1f} s after the delete; pod traffic "
          f"to/from it back within {recovery:.2f} s (longest ping gap)")
    assert recovery < CILIUMNODE_RECOVERY_BOUND, [pings[p].summary() for p in to_victim]
    assert_no_loss(pings, [pair for pair in pings if pair not in to_victim])
    # No stale state: the pings of the last seconds all came back, and no drop counter grew meanwhile.
    tail_start = time.time() - 5
    for pair in to_victim:
        late = [seq for seq, at in pings[pair].replies.items() if at >= tail_start]
        assert len(late) > 100, pings[pair].summary()
        assert not [seq for seq in pings[pair].lost if seq > min(late)], pings[pair].summary()
    assert before == after, (before, after)
    # The peers hold for it exactly the SAs they held before (the old key's too while its grace period
    # runs), and send with the current key: nothing of the deleted object's life is left over.
    current = statuses(info, tuple(peers))
    for node in peers:
        assert held_sas(current[node], router) == held[node], (node, held[node])
        active = [sa for sa in sas_for(current[node], router) if sa["direction"] == "out" and sa["active"]]
        assert [sa["spi"] for sa in active] == [key_id], active


def test_the_operator_leader_killed_another_takes_over(lab: RotationLab) -> None:
    info = lab.info
    namespace, name = LEADER_LEASE
    lease = kube_json(info, "lease", "-n", namespace, name)
    holder, duration = lease["spec"]["holderIdentity"], int(lease["spec"]["leaseDurationSeconds"])
    pid = int(holder.removeprefix("operator-"))
    operator_pids = {p for f in info.paths.root.glob("kubelet/pods/*/containers/cilium-operator.pid")
                     if (p := read_pidfile(f)) is not None}
    assert pid in operator_pids and len(operator_pids) == 2, (holder, operator_pids)
    other = f"operator-{(operator_pids - {pid}).pop()}"
    killed = time.monotonic()
    kill(pid, f"the leading operator {holder}")
    new = wait_until(lambda: (h := kube_json(info, "lease", "-n", namespace, name)["spec"]
                              .get("holderIdentity")) not in (None, "", holder) and h, 4.0 * duration + 60,
                     "another operator to lead")
    took = time.monotonic() - killed
    who = "the other replica" if new == other else "the killed pod's restarted container"
    print(f"leader {holder} killed; {new} ({who}) leads {took:.1f} s later (lease duration {duration} s)")
    # The kubelet restarts the killed container at once, so the other replica and the restarted process
    # race for the lapsed Lease as client-go's candidates do: either may win, a live pod's operator must.
    live = {p for f in info.paths.root.glob("kubelet/pods/*/containers/cilium-operator.pid")
            if (p := read_pidfile(f)) is not None}
    assert int(new.removeprefix("operator-")) in live, (new, live)
    assert not pid_alive(pid)
    assert took <= 2 * duration + 5, f"{took:.1f} s to take over with a {duration} s lease"
    # IPAM and the garbage collector still work under the new leader: a new node gets a pod CIDR, and its
    # CiliumNode goes once its Node is gone.
    ghost(info, "ghost-c", "192.0.2.12")
    cidrs = wait_until(lambda: cilium_nodes(info).get("ghost-c", {}).get("spec", {}).get("ipam", {})
                       .get("podCIDRs"), 60.0, "the new leader giving ghost-c a pod CIDR")
    kubectl(info, "delete", "node", "ghost-c")
    gone = time.monotonic()
    wait_until(lambda: "ghost-c" not in cilium_nodes(info), 120.0, "the new leader collecting ghost-c")
    print(f"ghost-c got {cidrs}; its CiliumNode collected {time.monotonic() - gone:.1f} s after its Node "
          "went")
    remove_ghost(info, "ghost-c")


def test_a_node_removed_its_peers_drop_it_and_traffic_goes_on(lab: RotationLab) -> None:
    info = lab.info
    victim, router = "node-3", router_ips(info)["node-3"]
    rest = tuple(n for n in info.nodes if n != victim)
    pods = [p for p in kube_json(info, "pods", "-n", "kube-system")["items"]
            if p["spec"]["nodeName"] == victim]
    assert pods, "no pod on node-3 to stop"
    pidfiles = [f for p in pods
                for f in info.paths.root.glob(f"kubelet/pods/{p['metadata']['uid']}/containers/*.pid")]
    pids = [p for f in pidfiles if (p := read_pidfile(f)) is not None]
    assert pids
    with ping_mesh(lab, [("p1", "p2"), ("p2", "p1")]) as mesh:
        time.sleep(1)
        removed = time.monotonic()
        kubectl(info, "delete", "node", victim)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 120.0,
                   f"the lab kubelet stopping {victim}'s pods")
        stopped = time.monotonic() - removed
        wait_until(lambda: victim not in cilium_nodes(info), 120.0,
                   f"the operator collecting {victim}'s CiliumNode")
        collected = time.monotonic() - removed

        def dropped() -> bool:
            current = statuses(info, rest)
            return all(s is not None and s["health"]["expectedPeers"] == 1 and s["health"]["probed"] == 1
                       and router not in engine_peers(s) and not sas_for(s, router) for s in current.values())

        wait_until(dropped, 60.0, f"{victim}'s peers dropping it", detail=lambda: statuses(info, rest))
        forgotten = time.monotonic() - removed
        time.sleep(1)
        pings = mesh.stop()
    left = {p["metadata"]["name"] for p in kube_json(info, "pods", "-n", "kube-system")["items"]
            if p["spec"]["nodeName"] == victim}
    print(f"Node {victim} deleted: its pods stopped after {stopped:.1f} s, its CiliumNode collected after "
          f"{collected:.1f} s, its peers dropped it after {forgotten:.1f} s; "
          f"longest ping gap between the others {max(p.outage() for p in pings.values()):.3f} s")
    assert not left, left
    assert_no_loss(pings)
