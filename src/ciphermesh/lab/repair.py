"""What `lab up` finds of a lab already there: the same settings may repair it, other ones are refused."""

from __future__ import annotations

from typing import Any

from ciphermesh.agent.modes import UnsupportedModeError, agent_mode, node_encryption
from ciphermesh.config import Values, load_values
from ciphermesh.config.schema import BY_PATH
from ciphermesh.lab import netns
from ciphermesh.lab.info import ETCD, LabError
from ciphermesh.lab.processes import marked_pids
from ciphermesh.lab.recovery import recover_manifest
from ciphermesh.lab.state import LabPaths


def encryption_words(values: Values) -> str:
    """`IPsec`, `WireGuard + node encryption + strict mode`, `encryption disabled`: for messages."""
    try:
        mode = agent_mode(values)
    except UnsupportedModeError:
        return "unsupported encryption settings"
    if mode == "disabled":
        return "encryption disabled"
    words = [{"ipsec": "IPsec", "wireguard": "WireGuard"}[mode]]
    words += ["node encryption"] if node_encryption(values) else []
    words += ["strict mode"] if values.flag("encryption.strictMode.enabled") else []
    return " + ".join(words)


def existing_lab(paths: LabPaths, values: Values, nodes: int, control_plane: str) -> dict[str, Any] | None:
    """The record of the lab already there, if `lab up` with these settings may repair it; None if none is.

    LabError if it runs with other settings or another control plane, or left too little behind to be
    brought back.
    """
    name = paths.name
    if not paths.root.exists() and not netns.lab_residue(name) and not marked_pids(paths.marker):
        return None
    manifest = paths.read_manifest() or (recover_manifest(paths) if paths.root.is_dir() else None)
    if manifest is None or not (paths.etcd_dir / "data" / "member").is_dir():
        found = ", ".join(netns.lab_residue(name).namespaces[:4]) or str(paths.root)
        raise LabError(f"lab {name} left things behind (a crash?): {found}; run `ciphermesh lab down --name "
                       f"{name}` first")
    had_plane = manifest.get("controlPlane", ETCD)
    if had_plane != control_plane:
        # Its data are in the other plane's shape (etcd keys or API objects): nothing carries over.
        raise LabError(f"lab {name} is already up on the {had_plane} control plane; it cannot change to "
                       f"{control_plane}: run `ciphermesh lab down --name {name}` first, then `lab up "
                       f"--control-plane {control_plane}` again")
    if paths.values.exists():
        now = load_values(files=[str(paths.values)])
        words, asked = encryption_words(now), encryption_words(values)
        if words != asked:
            # Nodes switched one by one would disagree meanwhile: isolated, never in clear, but down.
            raise LabError(f"lab {name} is already up, with {words}; switching a running lab to {asked} is "
                           f"not supported: run `ciphermesh lab down --name {name}` first, then `lab up` "
                           "again")
        changed = [path for path in BY_PATH if now.get(path) != values.get(path)]
        had = len(manifest["nodes"])
        if changed or had != nodes:
            what = ", ".join(changed) if changed else f"--nodes {nodes} where it has {had}"
            raise LabError(f"lab {name} is already up with other settings ({what}); run `ciphermesh lab down "
                           f"--name {name}` first, then `lab up` again")
    return manifest
