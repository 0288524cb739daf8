"""Issue 4: two key rotations, one across the 15 -> 1 wrap, under 10 ms pings and TCP, lose nothing."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from tests.support.rotation import (
    analyse,
    assert_no_loss,
    ping_mesh,
    rotation_lab,
    since,
    tcp_stream,
    underlay_tap,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

GRACE_SECONDS = 8
HEADERS = 160  # bytes of each frame kept: VXLAN, inner IPv4 and the ESP header fit with room to spare


def _line(key_id: int) -> str:
    return f"{key_id}+ rfc4106(gcm(aes)) {secrets.token_hex(20)} 128"


def test_two_rotations_across_the_wrap_lose_no_packet(tmp_path: Path) -> None:
    with rotation_lab(tmp_path, sets=(f"encryption.ipsec.keyRotationDuration={GRACE_SECONDS}s",)) as lab:
        peers = len(lab.info.nodes) - 1
        # A set may move at most 7 IDs ahead (further is "backwards" across the wrap): 3 -> 10 -> 15.
        for key_id in (10, 15):
            lab.key_set(_line(key_id))
            lab.wait_settled(key_id)
        errors_before = lab.encryption_status()["summary"]["errors"]
        with underlay_tap(lab, "underlay", snaplen=HEADERS) as tap, ping_mesh(lab) as mesh, \
                tcp_stream(lab, "p1", "p2") as stream:
            time.sleep(2)
            timelines = []
            for expected in (1, 2):
                assert lab.rotate() == expected
                timelines.append(lab.wait_settled(expected))
            settled_at = time.time()
            time.sleep(3)
            pings = mesh.stop()
            streamed = stream.stop()
            pcap = tap.stop()
        wire, after_grace = analyse(lab, pcap), analyse(lab, since(pcap, settled_at))
        status = lab.encryption_status()

    for result in pings.values():
        print(result.summary())
    print(f"stream: {streamed.received}, sender {streamed.sent}")
    for timeline in timelines:
        print(f"key {timeline.key_id}, seconds after `key rotate` returned: "
              f"published {timeline.published:.2f}, sending {timeline.sending:.2f}, "
              f"settled {timeline.settled:.2f}; keys in use at most {timeline.max_keys_in_use}")
    print(f"whole capture: {wire.as_dict()}; after the grace period: {after_grace.as_dict()}")

    assert_no_loss(pings)
    assert streamed.received["intact"] and streamed.received["bytes"] == streamed.sent["bytes"] > 0
    assert streamed.received["maxGap"] < 1.0
    # During a rotation every node holds 4 keys per peer (old and new, each way), then 2.
    assert [t.max_keys_in_use for t in timelines] == [4 * peers, 4 * peers]
    assert set(after_grace.esp_by_spi) == {2} and after_grace.esp > 0
    assert set(wire.esp_by_spi) == {15, 1, 2}
    assert wire.plaintext_count == 0 and after_grace.plaintext_count == 0, wire.plaintext_samples
    for node in status["nodes"]:
        assert (node["keyID"], node["keysInUse"], node["rotationInProgress"]) == (2, 2 * peers, False), node
        assert node["problems"] == [], node
    assert status["summary"]["errors"] == errors_before
