"""The socket layer against this machine's kernel, in a throwaway namespace: policies (which this kernel
holds) added by us and read by `ip xfrm`, added by `ip xfrm` and read by us, batch errors, lost acks,
and the ESP probe. States: this kernel has no ESP, so their dumps are checked in the VM tests.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from ciphermesh.datapath.kernel.xfrm import requests as rq
from ciphermesh.datapath.kernel.xfrm.constants import (
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)
from ciphermesh.datapath.kernel.xfrm.model import Mark, Policy, Selector, StateId, Template, prefix
from ciphermesh.datapath.kernel.xfrm.netlink_socket import XfrmRequestError, XfrmSocket
from ciphermesh.datapath.kernel.xfrm.probe import probe_kernel_esp
from ciphermesh.lab import netns
from tests.support.xfrm import ip_xfrm, parse_policies, xfrm_netns
from tests.xfrm.test_iproute2_requests import CASES

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LOCAL, REMOTE = ip_address("10.56.0.17"), ip_address("10.56.1.238")


def cilium_policies(peers: int) -> list[Policy]:
    """Cilium v1.17's policies for `peers` remote nodes: default drops, catch-all IN and FWD, OUT per peer."""
    anywhere = Template(optional=True)
    found = [
        Policy(Selector(), XFRM_POLICY_OUT, priority=100, action=XFRM_POLICY_BLOCK, mark=Mark(0xE00, 0xF00)),
        Policy(Selector(prefix("::/0"), prefix("::/0")), XFRM_POLICY_OUT, priority=100,
               action=XFRM_POLICY_BLOCK, mark=Mark(0xE00, 0xF00)),
        Policy(Selector(), XFRM_POLICY_IN, templates=(anywhere,)),
        Policy(Selector(), XFRM_POLICY_FWD, priority=0xB9F, templates=(anywhere,)),
    ]  # fmt: skip
    pods = ip_network("10.128.0.0/9").subnets(new_prefix=24)
    for node_id in range(1, peers + 1):
        router = ip_address(int(REMOTE) + node_id)
        found.append(
            Policy(
                Selector(dst=prefix(str(next(pods)))),
                XFRM_POLICY_OUT,
                mark=Mark((node_id << 16) | (3 << 12) | 0xE00, 0xFFFFFF00),
                templates=(Template(src=LOCAL, dst=router, spi=3, reqid=1),),
            )
        )
    return found


@pytest.fixture
def namespace() -> Iterator[str]:
    with xfrm_netns() as name:
        yield name


def dump(name: str) -> list[Policy]:
    with netns.entered(name), XfrmSocket() as sock:
        return sorted(sock.policies(), key=lambda p: p.index)


def test_policies_we_add_are_what_ip_xfrm_shows(namespace: str) -> None:
    wanted = cilium_policies(20)
    with netns.entered(namespace), XfrmSocket() as sock:
        sock.apply([rq.new_policy(p) for p in wanted])
    ours = dump(namespace)
    shown = sorted(parse_policies(ip_xfrm(namespace, "policy", "show")), key=lambda p: p.index)
    assert ours == shown
    assert sorted(map(repr, (replace(p, index=0) for p in ours))) == sorted(map(repr, wanted))


def test_policies_ip_xfrm_adds_decode_exactly(namespace: str) -> None:
    adds = [(args, request) for _, args, request in CASES if args[:3] == ["xfrm", "policy", "add"]]
    assert len(adds) >= 3
    for args, _ in adds:
        netns.run(namespace, ["ip", *args])
    ours = dump(namespace)
    assert ours == sorted(parse_policies(ip_xfrm(namespace, "policy", "show")), key=lambda p: p.index)
    # What ip sent (compared byte for byte in test_iproute2_requests) is what the kernel keeps, read by us.
    sent = sorted(request.encode(0).hex() for _, request in adds)
    assert sorted(rq.new_policy(replace(p, index=0)).encode(0).hex() for p in ours) == sent


def test_a_batch_reports_each_failure_with_its_request(namespace: str) -> None:
    out, drop = cilium_policies(1)[4], cilium_policies(1)[0]
    batch = [
        rq.new_policy(out),
        rq.new_policy(out),
        rq.new_policy(drop),
        rq.delete_policy(replace(out, mark=None).id),
    ]
    with netns.entered(namespace), XfrmSocket() as sock:
        outcomes = sock.execute(batch)
        assert [o.errno for o in outcomes] == [0, errno.EEXIST, 0, errno.ENOENT]
        with pytest.raises(XfrmRequestError) as caught:
            sock.apply([rq.new_policy(drop), rq.delete_policy(out.id), rq.delete_policy(out.id)])
    error = caught.value
    assert (error.errno, error.index) == (errno.EEXIST, 0)
    assert [(f.index, f.errno) for f in error.failures] == [(0, errno.EEXIST), (2, errno.ENOENT)]
    assert "EEXIST" in str(error) and "dir 1" in str(error) and "1 more" in str(error)
    # The drop policy's second add failed and the first delete removed the OUT policy: the drop is left.
    assert [replace(p, index=0) for p in dump(namespace)] == [drop]


def test_lost_acks_are_reported_not_guessed(namespace: str) -> None:
    # A receive buffer far too small for one chunk's acks: the kernel drops acks (ENOBUFS), though it
    # applied every request; those outcomes are reported as unknown and the chunk size shrinks.
    wanted = cilium_policies(600)
    with netns.entered(namespace), XfrmSocket(chunk_requests=400, receive_buffer=4096) as sock:
        outcomes = sock.execute([rq.new_policy(p) for p in wanted])
        assert sock.chunk_requests < 400
    lost = [o.index for o in outcomes if o.errno == errno.ENOBUFS]
    assert [o.index for o in outcomes] == list(range(len(wanted)))
    assert lost and lost[0] < 400  # the first chunk overflowed
    assert all(o.ok for o in outcomes if o.index not in lost)
    assert len(dump(namespace)) == len(wanted)


def test_a_flush_through_the_socket_leaves_nothing(namespace: str) -> None:
    with netns.entered(namespace), XfrmSocket() as sock:
        sock.apply([rq.new_policy(p) for p in cilium_policies(5)] + [rq.flush_policies(), rq.flush_states()])
        assert sock.policies() == [] and sock.states() == []
    assert ip_xfrm(namespace, "policy", "show") == ""


def test_the_probe_agrees_with_ip_xfrm_on_kernel_esp(namespace: str) -> None:
    ip_add = ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
              "spi", "7", "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"]  # fmt: skip
    kernel_has_esp = netns.run(namespace, ip_add, check=False).returncode == 0
    netns.run(namespace, ["ip", "xfrm", "state", "flush"])
    with netns.entered(namespace):
        probe = probe_kernel_esp()
        with XfrmSocket() as sock:
            assert sock.states() == []  # the probe left nothing behind
            # ... and a policy add and delete work on this kernel either way.
            policy = cilium_policies(1)[4]
            sock.apply([rq.new_policy(policy), rq.delete_policy(policy.id)])
    assert probe.available is kernel_has_esp
    if not kernel_has_esp:
        assert probe.errno in (errno.ENOSYS, errno.EPROTONOSUPPORT)
        assert "no kernel ESP" in probe.reason and "ENOSYS" in probe.reason


def test_get_finds_one_policy_by_selector_or_index(namespace: str) -> None:
    wanted = cilium_policies(3)
    with netns.entered(namespace), XfrmSocket() as sock:
        sock.apply([rq.new_policy(p) for p in wanted])
        got = sock.policy(wanted[5].id)
        assert got is not None and replace(got, index=0) == wanted[5]
        assert sock.policy(replace(wanted[5].id, index=got.index, selector=Selector())) == got
        assert sock.policy(replace(wanted[5].id, mark=Mark(0xE00, 0xFFFFFF00))) is None
        assert sock.state(StateId(LOCAL, REMOTE, 3)) is None
