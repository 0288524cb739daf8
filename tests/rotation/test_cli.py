"""Issue 4 from the command line: Cilium's documented shell recipe, idempotent `key set`, a refused line,
and rotation on a schedule (`encryption.ipsec.autoRotateInterval`)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciphermesh.keys import next_key_id
from ciphermesh.lab.cluster import LabInfo, connect
from tests.support.rotation import RotationLab, assert_no_loss, ping_mesh, rotation_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SECRET = "cilium-ipsec-keys"
# Cilium's rotation recipe (docs: "Key Rotation"), with `key show` and `key set` in place of kubectl.
RECIPE = """
set -euo pipefail
read KEYID ALGO PSK KEYSIZE < <($CM encryption key show --lab "$LAB" --reveal -o json \\
    | $PY -c 'import json, sys; print(json.load(sys.stdin)["keys"])')
KEYID=${KEYID%\\+}
NEW_PSK=$(dd if=/dev/urandom count=20 bs=1 2> /dev/null | xxd -p -c 64)
$CM encryption key set --lab "$LAB" "$((KEYID+1))+ ${ALGO} ${NEW_PSK} ${KEYSIZE}"
"""


def _revision(info: LabInfo) -> tuple[str, str]:
    with connect(info) as store:
        stored = store.get_key_secret(name=SECRET)
    assert stored is not None
    return stored.revision, stored.value.keys


def _shown(lab: RotationLab, *flags: str) -> dict[str, object]:
    result = lab.cli("encryption", "key", "show", "-o", "json", *flags)
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_the_documented_recipe_rotates_and_key_set_is_idempotent(tmp_path: Path) -> None:
    with rotation_lab(tmp_path, sets=("encryption.ipsec.keyRotationDuration=3s",)) as lab:
        info = lab.info
        _, original = _revision(info)
        hidden, revealed = _shown(lab), _shown(lab, "--reveal")
        assert revealed["keys"] == original and revealed["revealed"] is True and revealed["keyID"] == 3
        assert original.split()[2] not in json.dumps(hidden) and hidden["revealed"] is False

        python = shlex.quote(sys.executable)
        env = {**os.environ, "CM": f"{python} -m ciphermesh", "PY": python, "LAB": lab.name}
        recipe = subprocess.run(["bash", "-c", RECIPE], env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert recipe.returncode == 0, recipe.stderr
        assert recipe.stdout.strip() == "IPsec key set, key ID (SPI): 4"
        revision, line = _revision(info)
        assert line.startswith("4+ rfc4106(gcm(aes)) ") and line.endswith(" 128") and line != original
        lab.wait_settled(4)

        again = lab.cli("encryption", "key", "set", line)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == ("IPsec key unchanged: the secret already holds this key as "
                                        "key ID (SPI) 4")
        assert _revision(info) == (revision, line)

        for bad in (f"5+ rfc4106(gcm(aes)) {'zz' * 20} 128",
                    f"3+ rfc4106(gcm(aes)) {secrets.token_hex(20)} 128",
                    f"4+ rfc4106(gcm(aes)) {secrets.token_hex(20)} 128",
                    f"5+ rfc4106(gcm(aes)) {secrets.token_hex(36)} 128"):
            refused = lab.cli("encryption", "key", "set", bad)
            assert refused.returncode != 0 and refused.stdout == ""
            assert len(refused.stderr.splitlines()) == 1
            assert refused.stderr.startswith("ciphermesh: key not set: ")
            assert bad.split()[2] not in refused.stderr
            assert _revision(info) == (revision, line)
        assert all(node["keyID"] == 4 and node["problems"] == [] for node in lab.encryption_status()["nodes"])


def test_scheduled_rotation_loses_no_ping(tmp_path: Path) -> None:
    sets = ("encryption.ipsec.autoRotateInterval=10s", "encryption.ipsec.keyRotationDuration=4s")
    with rotation_lab(tmp_path, sets=sets) as lab:
        info = lab.info
        seen: list[tuple[float, int]] = []

        def rotated_twice() -> bool:
            key_id = int(_revision(info)[1].split()[0].rstrip("+"))
            if not seen or seen[-1][1] != key_id:
                seen.append((time.monotonic(), key_id))
            return len(seen) >= 3

        with ping_mesh(lab) as mesh:
            started = time.monotonic()
            wait_until(rotated_twice, 40, "two scheduled rotations", interval=0.2)
            lab.wait_settled(seen[-1][1])
            pings = mesh.stop()

    print("key IDs over time: " + ", ".join(f"{key_id} at {at - started:.1f} s" for at, key_id in seen))
    for result in pings.values():
        print(result.summary())
    first = seen[0][1]
    assert [key_id for _, key_id in seen] == [first, next_key_id(first), next_key_id(next_key_id(first))]
    assert_no_loss(pings)
