"""The plan-and-apply benchmark at a small size: a row per engine this kernel runs, a reason per other."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ciphermesh.datapath.face import probe_kernel_esp, probe_kernel_wireguard
from ciphermesh.lab import netns
from tests.support.xfrm import xfrm_netns

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_apply_bench.py"


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_twenty_peers_on_every_engine_this_kernel_has() -> None:
    with xfrm_netns() as name, netns.entered(name):
        kernel = {"ipsec": probe_kernel_esp().available, "wireguard": probe_kernel_wireguard().available}
    done = subprocess.run([sys.executable, str(SCRIPT), "--peers", "20", "-o", "markdown"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(row["mode"], row["engine"]) for row in rows] == [
        (mode, kind) for mode in ("ipsec", "wireguard") for kind in ("userspace", "kernel")
        if kind == "userspace" or kernel[mode]]
    if not kernel["ipsec"]:
        assert "kernel ipsec engine skipped: no kernel ESP" in done.stdout
    if not kernel["wireguard"]:
        assert "kernel wireguard engine skipped: no kernel WireGuard" in done.stdout
    for row in rows:
        steps = ("planMs", "applyMs", "reapplyMs") + (("rotationApplyMs",) if row["mode"] == "ipsec" else ())
        assert row["peers"] == 20 and all(row[key] > 0 for key in steps), row
        # IPsec: both SPIs, both directions, after rotating; WireGuard: one peer each.
        assert row["held"] == (20 * 4 if row["mode"] == "ipsec" else 20), row
    assert "| userspace | wireguard | 20 |" in done.stdout
    # Other tests' namespaces may come and go meanwhile: only the bench's own (`ea` + 4 hex) must be gone.
    assert not [name for name in netns.names() if re.fullmatch(r"ea[0-9a-f]{4}", name)]
