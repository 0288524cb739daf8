"""A lab's record (`lab.json`) rebuilt from what runs when the file is lost: its namespaces and addresses."""

from __future__ import annotations

import time
from ipaddress import IPv4Interface
from typing import Any

from ciphermesh.lab import netns, topology
from ciphermesh.lab.info import ETCD, KUBERNETES, kubernetes_store
from ciphermesh.lab.names import is_lab_netns, node_netns
from ciphermesh.lab.state import LabPaths
from ciphermesh.rtnl import ipv4_addresses, require_link
from ciphermesh.store.etcd.process import client_endpoint


def node_count(lab: str) -> int:
    """How many node namespaces of the lab exist (node-1 to node-N, as `lab up` makes them)."""
    prefix = f"{lab}-node-"
    indices = {int(name[len(prefix):]) for name in netns.names()
               if is_lab_netns(lab, name) and name.startswith(prefix)}
    count = 0
    while count + 1 in indices:
        count += 1
    return count


def recover_manifest(paths: LabPaths) -> dict[str, Any] | None:
    """The record `lab up` wrote, from the node namespaces and node-1's eth0; None if there are no nodes."""
    count = node_count(paths.name)
    if count == 0:
        return None
    with netns.iproute(node_netns(paths.name, 1)) as ipr:
        addresses = ipv4_addresses(ipr, require_link(ipr, topology.NODE_DEVICE)["index"])
    if not addresses:
        return None
    address, prefixlen = addresses[0]
    subnet = IPv4Interface(f"{address}/{prefixlen}").network
    plan = topology.plan_topology(paths.name, count, subnet)
    # Only `lab up --control-plane kubernetes` writes an admin kubeconfig.
    kubernetes = paths.kubeconfig.exists()
    return {"name": paths.name, "nodes": [node.name for node in plan.nodes],
            "nodeIPs": {node.name: str(node.ip) for node in plan.nodes}, "subnet": str(subnet),
            "store": kubernetes_store(paths) if kubernetes else client_endpoint(paths.root),
            "controlPlane": KUBERNETES if kubernetes else ETCD,
            "kubeconfig": str(paths.kubeconfig.absolute()) if kubernetes else None,
            "created": time.time(), "recovered": True}
