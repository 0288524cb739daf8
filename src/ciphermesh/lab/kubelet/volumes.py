"""A pod's volumes on the node: what each holds and where it lives on this machine.

configMap, secret and projected volumes are written in the atomic-writer layout under the pod's
directory (`volumes/kubernetes.io~<kind>/<name>`) and rewritten as soon as the watch shows a source
changed (within about a second; a real kubelet takes up to its sync period plus its cache's TTL, about
a minute, so nothing may rely on this speed); hostPath
`/X` of node `node-i` is `<lab>/nodes/node-i/root/X`, except the machine's real `/lib/modules` and
`/dev/net/tun`; emptyDir is a directory of the pod.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciphermesh.lab.kubelet.atomic_writer import File, write_payload

JSONObject = dict[str, Any]
DEFAULT_MODE = 0o644
# The node's own kernel modules and TUN device: a lab node shares the machine's kernel.
REAL_HOST_PATHS = ("/lib/modules", "/dev/net/tun")

# (kind, name) -> the object, or None if absent: ("ConfigMap", "cilium-config").
Lookup = Callable[[str, str], JSONObject | None]
# A projected serviceAccountToken source -> the token.
TokenSource = Callable[[JSONObject], str]


class VolumeError(RuntimeError):
    """A volume cannot be made (a missing, non-optional source); the pod waits for it."""


@dataclass(frozen=True)
class Mount:
    """A bind mount of the container: `source` on this machine at `target` inside it."""

    source: str
    target: str
    read_only: bool


def host_path(node_root: Path, path: str) -> Path:
    """Where hostPath `path` of the node is on this machine."""
    if any(path == real or path.startswith(real + "/") for real in REAL_HOST_PATHS):
        return Path(path)
    return node_root / path.lstrip("/")


def _items(data: Mapping[str, bytes], items: list[JSONObject] | None, mode: int) -> dict[str, File]:
    if not items:
        return {key: File(value, mode) for key, value in data.items()}
    chosen = {}
    for item in items:
        if item["key"] in data:
            chosen[str(item["path"])] = File(data[item["key"]], int(item.get("mode", mode)))
    return chosen


def _object_data(kind: str, obj: JSONObject) -> dict[str, bytes]:
    if kind == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _source(kind: str, name: str, spec: JSONObject, lookup: Lookup, mode: int) -> dict[str, File]:
    obj = lookup(kind, name)
    if obj is None:
        if spec.get("optional"):
            return {}
        raise VolumeError(f"{kind.lower()} {name!r} not found")
    return _items(_object_data(kind, obj), spec.get("items"), mode)


def _field(pod: JSONObject, path: str) -> str:
    meta = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta[path.split(".", 1)[1]])
    if path in ("spec.nodeName", "spec.serviceAccountName"):
        return str(pod["spec"].get(path.split(".", 1)[1], ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".", 1)[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise VolumeError(f"fieldRef {path!r} is not supported by the lab kubelet")


def payload(volume: JSONObject, pod: JSONObject, lookup: Lookup, token: TokenSource) -> dict[str, File]:
    """The files of a configMap, secret or projected volume, as of now."""
    if "configMap" in volume:
        spec = volume["configMap"]
        return _source("ConfigMap", spec["name"], spec, lookup, int(spec.get("defaultMode", DEFAULT_MODE)))
    if "secret" in volume:
        spec = volume["secret"]
        mode = int(spec.get("defaultMode", DEFAULT_MODE))
        return _source("Secret", spec["secretName"], spec, lookup, mode)
    spec = volume["projected"]
    mode = int(spec.get("defaultMode", DEFAULT_MODE))
    files: dict[str, File] = {}
    for source in spec.get("sources") or []:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            files[sat["path"]] = File(token(sat).encode(), mode)
        elif "configMap" in source:
            files.update(_source("ConfigMap", source["configMap"]["name"], source["configMap"], lookup, mode))
        elif "secret" in source:
            files.update(_source("Secret", source["secret"]["name"], source["secret"], lookup, mode))
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                value = _field(pod, item["fieldRef"]["fieldPath"])
                files[item["path"]] = File(value.encode(), int(item.get("mode", mode)))
    return files


def kind_dir(volume: JSONObject) -> str | None:
    """The kubelet's plugin directory name for a written volume, None for the others."""
    for key, plugin in (("configMap", "configmap"), ("secret", "secret"), ("projected", "projected")):
        if key in volume:
            return f"kubernetes.io~{plugin}"
    return None


def sources(volume: JSONObject) -> set[tuple[str, str]]:
    """The (kind, name) of every ConfigMap and Secret the volume shows."""
    if "configMap" in volume:
        return {("ConfigMap", volume["configMap"]["name"])}
    if "secret" in volume:
        return {("Secret", volume["secret"]["secretName"])}
    found = set()
    for source in (volume.get("projected") or {}).get("sources") or []:
        for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if key in source:
                found.add((kind, source[key]["name"]))
    return found


class PodVolumes:
    """The volumes of one pod under `pod_dir`, on node root `node_root`."""

    def __init__(self, pod: JSONObject, pod_dir: Path, node_root: Path) -> None:
        self.pod = pod
        self.pod_dir = pod_dir
        self.node_root = node_root

    def location(self, volume: JSONObject) -> Path:
        plugin = kind_dir(volume)
        if plugin is not None:
            return self.pod_dir / "volumes" / plugin / str(volume["name"])
        if "hostPath" in volume:
            return host_path(self.node_root, volume["hostPath"]["path"])
        if "emptyDir" in volume:
            return self.pod_dir / "volumes" / "kubernetes.io~empty-dir" / str(volume["name"])
        raise VolumeError(f"volume {volume['name']!r}: its type is not supported by the lab kubelet")

    def sync(self, lookup: Lookup, token: TokenSource) -> list[str]:
        """Write or refresh every volume; the names of those whose files changed."""
        changed = []
        for volume in self.pod["spec"].get("volumes") or []:
            where = self.location(volume)
            if kind_dir(volume) is not None:
                if write_payload(where, payload(volume, self.pod, lookup, token)):
                    changed.append(str(volume["name"]))
            elif "emptyDir" in volume:
                where.mkdir(parents=True, exist_ok=True)
            else:
                _prepare_host_path(where, volume["hostPath"])
        return changed

    def mounts(self, container: JSONObject) -> list[Mount]:
        """The container's volumeMounts as bind mounts (written volumes are read-only, as the kubelet's)."""
        by_name = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        found = []
        for mount in container.get("volumeMounts") or []:
            volume = by_name.get(mount["name"])
            if volume is None:
                raise VolumeError(f"volumeMount {mount['name']!r} has no volume")
            source = self.location(volume)
            if mount.get("subPath"):
                source = source / mount["subPath"]
            read_only = bool(mount.get("readOnly")) or kind_dir(volume) is not None
            found.append(Mount(str(source), str(mount["mountPath"]), read_only))
        return found


def _prepare_host_path(where: Path, spec: JSONObject) -> None:
    """Create what DirectoryOrCreate/FileOrCreate ask for; with no type a missing path becomes a
    directory (as the container runtimes do); the other types must exist."""
    kind = spec.get("type") or ""
    if where.exists():
        return
    if kind in ("", "DirectoryOrCreate"):
        where.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        where.parent.mkdir(parents=True, exist_ok=True)
        where.touch()
    else:
        raise VolumeError(f"hostPath {spec['path']!r} ({kind}) does not exist on the node")
