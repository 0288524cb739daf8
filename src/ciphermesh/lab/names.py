"""Names of a lab's network namespaces; the only names teardown will ever delete."""

from __future__ import annotations

import re

from ciphermesh.lab.state import check_lab_name

_POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class PodNameError(ValueError):
    """A pod name that is not a short DNS label."""


def check_pod_name(name: str) -> str:
    if not _POD_NAME.match(name):
        raise PodNameError(
            f"pod name {name!r}: use 1 to 32 lowercase letters, digits or '-', not at the ends"
        )
    return name


def underlay_netns(lab: str) -> str:
    return f"{check_lab_name(lab)}-underlay"


def node_netns(lab: str, index: int) -> str:
    if index < 1:
        raise ValueError(f"node index {index}: nodes count from 1")
    return f"{check_lab_name(lab)}-node-{index}"


def pod_netns(lab: str, pod: str) -> str:
    return f"{check_lab_name(lab)}-pod-{check_pod_name(pod)}"


def is_lab_netns(lab: str, name: str) -> bool:
    """Whether `name` is one of lab `lab`'s namespaces (lab names have no '-', so prefixes cannot collide)."""
    prefix = f"{check_lab_name(lab)}-"
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :]
    if rest == "underlay":
        return True
    if rest.startswith("node-"):
        number = rest[len("node-") :]
        return number.isdigit() and not number.startswith("0")
    return rest.startswith("pod-") and bool(_POD_NAME.match(rest[len("pod-") :]))
