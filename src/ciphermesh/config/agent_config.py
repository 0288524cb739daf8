"""The `cilium-config` ConfigMap read back into the values tree: Cilium's key names, as the chart's
`cilium-configmap.yaml` writes them, from the directory the kubelet mounts it as."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from ciphermesh.config.schema import MASK_KEY, POOL_KEY
from ciphermesh.config.values import Values, ValuesError, parse_bool

log = logging.getLogger(__name__)

# The kubelet's atomic writer: visible files are symlinks into `..data`, itself a symlink to the current
# timestamped directory, swapped by a rename on each update.
DATA_LINK = "..data"
# A ConfigMap holds at most 1 MiB in all; a bigger file is not one of its keys.
_MAX_FILE_BYTES = 1 << 20

# ConfigMap keys that carry one setting each, in the setting's own text form.
DIRECT_KEYS: dict[str, str] = {
    "encrypt-node": "encryption.nodeEncryption",
    "encryption-engine": "encryption.engine",
    "ipsec-secret-name": "encryption.ipsec.secretName",
    "enable-ipsec-key-watcher": "encryption.ipsec.keyWatcher",
    "ipsec-key-rotation-duration": "encryption.ipsec.keyRotationDuration",
    "ipsec-auto-rotate-interval": "encryption.ipsec.autoRotateInterval",
    "encrypt-interface": "encryption.ipsec.interface",
    "wireguard-persistent-keepalive": "encryption.wireguard.persistentKeepalive",
    "enable-encryption-strict-mode-egress": "encryption.strictMode.enabled",
    "encryption-strict-mode-egress-cidr": "encryption.strictMode.cidr",
    "encryption-strict-mode-egress-allow-remote-node-identities":
        "encryption.strictMode.allowRemoteNodeIdentities",
    "ipam": "ipam.mode",
    "cluster-pool-ipv4-mask-size": MASK_KEY,
    "tunnel-protocol": "tunnelProtocol",
    "mtu": "MTU",
}


def _key_file(values: Values, text: str) -> Values:
    # `<mountPath>/<keyFile>`: a Secret's field names have no slash, so the last one splits them.
    mount_path, sep, key_file = text.rpartition("/")
    if not sep or not key_file:
        raise ValueError(f"{text!r} is not a path to a file (<mountPath>/<keyFile>)")
    return values.with_value("encryption.ipsec.mountPath", mount_path or "/").with_value(
        "encryption.ipsec.keyFile", key_file
    )


def _pool(values: Values, text: str) -> Values:
    return values.with_value(POOL_KEY, text.split())


# ConfigMap keys whose text becomes settings in another form.
_SHAPED_KEYS: dict[str, Callable[[Values, str], Values]] = {
    "ipsec-key-file": _key_file,
    "cluster-pool-ipv4-cidr": _pool,
}
# The encryption mode is two flags in Cilium's ConfigMap; read together below.
_MODE_KEYS = ("enable-ipsec", "enable-wireguard")
# Every ConfigMap key ciphermesh reads; the rest are Cilium's features it does not have.
CONFIG_KEYS = frozenset(DIRECT_KEYS) | frozenset(_SHAPED_KEYS) | frozenset(_MODE_KEYS)


def _mode(values: Values, data: Mapping[str, str]) -> Values:
    flags = {}
    for key in _MODE_KEYS:
        if key in data:
            try:
                flags[key] = parse_bool(data[key])
            except ValueError as exc:
                raise ValuesError(f"{key}: {exc}") from None
    ipsec, wireguard = flags.get("enable-ipsec", False), flags.get("enable-wireguard", False)
    if ipsec and wireguard:
        raise ValuesError("enable-ipsec and enable-wireguard: both are true; choose one encryption type")
    if not (ipsec or wireguard):
        return values.with_value("encryption.enabled", False)
    return values.with_value("encryption.enabled", True).with_value(
        "encryption.type", "ipsec" if ipsec else "wireguard"
    )


def values_from_config_data(data: Mapping[str, str]) -> Values:
    """The values a `cilium-config` data map gives; ValuesError naming the key for a bad value."""
    values = _mode(Values(), data)
    for key, raw in sorted(data.items()):
        text = raw.strip()
        try:
            if key in DIRECT_KEYS:
                values = values.with_value(DIRECT_KEYS[key], text)
            elif key in _SHAPED_KEYS:
                values = _SHAPED_KEYS[key](values, text)
            elif key not in _MODE_KEYS:
                # Cilium's ConfigMap holds many keys of features ciphermesh does not have.
                log.debug("cilium-config: %s is not a ciphermesh setting; ignored", key)
        except ValueError as exc:  # ValuesError included: its message names the setting
            raise ValuesError(f"{key}: {exc}") from None
    return values


def read_config_dir(path: Path) -> dict[str, str]:
    """A ConfigMap volume's keys and values: through `..data` when the kubelet wrote it (one consistent
    snapshot even while it swaps), else the directory's plain files."""
    link = path / DATA_LINK
    try:
        root = link.resolve(strict=True) if link.is_dir() else path
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise ValuesError(f"config dir {path}: cannot read ({exc.strerror or exc})") from None
    data: dict[str, str] = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            with entry.open("rb") as handle:
                raw = handle.read(_MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ValuesError(f"config dir {path}: {entry.name}: cannot read ({exc.strerror})") from None
        if len(raw) > _MAX_FILE_BYTES:
            raise ValuesError(f"config dir {path}: {entry.name}: larger than a ConfigMap can hold")
        try:
            data[entry.name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValuesError(f"config dir {path}: {entry.name}: not UTF-8 text") from None
    return data


def values_from_config_dir(path: Path) -> Values:
    """The values of the `cilium-config` ConfigMap mounted at `path` (one file per key)."""
    data = read_config_dir(path)
    try:
        return values_from_config_data(data)
    except ValuesError as exc:
        raise ValuesError(f"config dir {path}: {exc}") from None
