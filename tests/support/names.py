"""Lab names for tests: a prefix per kind of test and 4 random hex digits, so no two tests share one."""

from __future__ import annotations

import secrets

# netns: bare topologies; lf: CLI labs; ro: rotation; cc/cn/cd: connectivity and decrypt; kl: labs on
# the Kubernetes control plane and the lab kubelet; ks: the seed on Kubernetes; kf: faults on Kubernetes;
# kn: per-node settings (CiliumNodeConfig) on Kubernetes;
# cb: the control-plane benchmark (its labs are the prefix, e|k and an index); st: the kernel engine's
# nftables steering; xf: XFRM netlink tests.
PREFIXES = ("cmt", "lf", "ro", "cc", "cn", "cd", "kl", "ks", "kf", "kn", "cb", "st", "xf")
# Every name handed out, so tests/conftest.py can check each test left none of its namespaces behind.
ISSUED: list[str] = []


def unique_lab(prefix: str) -> str:
    """`prefix` and 4 random hex digits: a valid lab name (<= 8 chars) no other test uses."""
    assert prefix in PREFIXES, f"lab prefix {prefix!r} is not in tests.support.names.PREFIXES"
    name = prefix + secrets.token_hex(2)
    ISSUED.append(name)
    return name
