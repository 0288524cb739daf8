"""What a container runs as: its environment (fieldRefs resolved, `$(VAR)` expanded as Kubernetes
does), its command (`ciphermesh` is this checkout's interpreter: the lab runs no images) and its
capabilities (applied by setpriv, as a container runtime sets them for a root process)."""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ciphermesh.lab.processes import LAB_MARKER

JSONObject = dict[str, Any]
# What a container runtime grants a root process when the spec says nothing (containerd's defaults).
DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})
_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
Lookup = Callable[[str, str], JSONObject | None]


class ContainerSpecError(ValueError):
    """A container the lab kubelet cannot run (a missing key reference, an unknown field)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` replaced by its value when defined (kept as written otherwise), `$$` by `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(one, text)


def field_value(pod: JSONObject, path: str) -> str:
    """A fieldRef of the pod; a hostNetwork pod's IP is its node's."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in values:
        return str(values[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerSpecError(f"fieldRef {path!r} is not supported by the lab kubelet")


def _key_ref(kind: str, ref: JSONObject, lookup: Lookup) -> str | None:
    obj = lookup(kind, ref["name"])
    data = (obj or {}).get("data") or {}
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ContainerSpecError(f"{kind.lower()} {ref['name']!r} has no key {ref['key']!r}")
    value = data[ref["key"]]
    return base64.b64decode(value).decode() if kind == "Secret" else str(value)


def container_env(
    pod: JSONObject, container: JSONObject, lookup: Lookup, extra: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment: the base, `extra` (service host, lab marker), envFrom, then env
    in order, each value expanded with what came before it."""
    env = {**_BASE_ENV, "HOSTNAME": str(pod["spec"].get("nodeName") or ""), **extra}
    for source in container.get("envFrom") or []:
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else (
            "Secret", source["secretRef"])
        obj = lookup(kind, ref["name"])
        if obj is None and not ref.get("optional"):
            raise ContainerSpecError(f"{kind.lower()} {ref['name']!r} not found")
        for key, value in ((obj or {}).get("data") or {}).items():
            text = base64.b64decode(value).decode() if kind == "Secret" else str(value)
            env[source.get("prefix", "") + key] = text
    for var in container.get("env") or []:
        name = str(var["name"])
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], lookup)
            if value is not None:
                env[name] = value
        elif "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], lookup)
            if value is not None:
                env[name] = value
        else:
            env[name] = ""
    if LAB_MARKER not in env:
        raise ContainerSpecError("the lab marker is missing from the container's environment")
    return env


def command_line(container: JSONObject, env: Mapping[str, str]) -> list[str]:
    """command + args, expanded; `ciphermesh` is `python -m ciphermesh` of this checkout."""
    words = (container.get("command") or []) + (container.get("args") or [])
    argv = [expand(str(word), env) for word in words]
    if not argv:
        name = container.get("name")
        raise ContainerSpecError(f"container {name!r} has no command (the lab runs no images)")
    if argv[0] == "ciphermesh":
        argv = [sys.executable, "-m", "ciphermesh", *argv[1:]]
    return argv


def capabilities(container: JSONObject) -> frozenset[str] | None:
    """The capability set of the container's root process; None when privileged (everything)."""
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        return None
    caps = context.get("capabilities") or {}

    def names(key: str) -> set[str]:
        return {str(c).upper().removeprefix("CAP_") for c in caps.get(key) or []}

    dropped = names("drop")
    granted = set() if "ALL" in dropped else set(DEFAULT_CAPS) - dropped
    return frozenset(granted | names("add"))


def setpriv_prefix(caps: frozenset[str] | None, no_new_privs: bool) -> list[str]:
    """setpriv's words for `caps`: the bounding set (root's permitted and effective sets after exec
    follow from it), no inheritable or ambient capabilities, as containerd sets them."""
    if caps is None:
        return []
    wanted = "".join(f",+{c.lower()}" for c in sorted(caps))
    argv = ["setpriv", f"--bounding-set=-all{wanted}", "--inh-caps=-all", "--ambient-caps=-all"]
    return [*argv, "--no-new-privs"] if no_new_privs else argv
