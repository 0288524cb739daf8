"""Follow the IPsec key line in the file the kubelet mounts the Secret as (`ipsec-key-file`).

The kubelet's atomic writer swaps the whole directory (`keys -> ..data/keys`, `..data -> ..<timestamp>`,
a new timestamped directory and `..data_tmp` renamed over `..data`); an inotify watch on `keys` sees
IN_DELETE_SELF and then nothing (kubernetes#111947). So the path is opened afresh each second, which
resolves the symlinks again, as Cilium 1.18+ polls (cilium#38537): the kubelet itself takes up to a
minute to sync a patched Secret, so a directory watch would win under a second for a ctypes binding.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ciphermesh.config import Values
from ciphermesh.keys import KeyLineError, parse_secret
from ciphermesh.store.errors import RecordError
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.model import SECRET_NAMESPACE, KeySecret
from ciphermesh.store.store import Store

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# An open racing the kubelet's swap can resolve `..data` to the directory it is removing: read again.
_SWAP_RETRY_SECONDS = 0.05


def ipsec_key_file(values: Values) -> Path:
    """`encryption.ipsec.mountPath`/`keyFile`, the ConfigMap's `ipsec-key-file` (/etc/ipsec/keys)."""
    return Path(values.text("encryption.ipsec.mountPath")) / values.text("encryption.ipsec.keyFile")


def mounted_key_file(store: Store, values: Values, mode: str) -> Path | None:
    """The one place the agent's key source is chosen: the file the kubelet mounts on Kubernetes with
    IPsec (the agent needs no permission on Secrets), None to follow the store's Secret (etcd)."""
    if mode == "ipsec" and isinstance(store.backend, KubernetesBackend):
        return ipsec_key_file(values)
    return None


class KeyFileFollower:
    """The key file's last good content as the store's secret follower gives a Secret: `records`
    (by secret name), `synced` after the first read, `errors()`; `changed` is set when either changes.
    A missing, unreadable or malformed file keeps the last good key and says why, logged once a reason."""

    def __init__(
        self, path: Path, secret_name: str, changed: threading.Event, *, poll: float = POLL_SECONDS
    ) -> None:
        self.path = path
        self.records: dict[str, KeySecret] = {}
        self.synced = threading.Event()
        self.last_error: str | None = None
        self._secret_name = secret_name
        self._changed = changed
        self._poll = poll
        self._seen: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-file", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def errors(self) -> list[str]:
        return [self.last_error] if self.last_error else []

    def _run(self) -> None:
        while True:
            self.read()
            self.synced.set()
            if self._stop.wait(self._poll):
                return

    def read(self) -> None:
        """Read the file once and take its key line if it changed and is valid."""
        try:
            data = self._read_bytes()
        except OSError as exc:
            self._seen = None
            self._report(exc.strerror or type(exc).__name__)
            return
        if data == self._seen:
            return
        self._seen = data
        try:
            secret = KeySecret.from_bytes(data, name=self._secret_name, namespace=SECRET_NAMESPACE)
            line = parse_secret(secret.keys)
        except RecordError:
            self._report("empty" if not data.strip() else "not UTF-8 text")
            return
        except KeyLineError as exc:
            self._report(str(exc))  # names the field and why, never the material
            return
        if self.last_error is not None:
            log.info("key file %s: readable again, key ID %d", self.path, line.key_id)
        self.records, self.last_error = {secret.name: secret}, None
        self._changed.set()

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:
            if self._stop.wait(_SWAP_RETRY_SECONDS):
                raise
            return self.path.read_bytes()

    def _report(self, reason: str) -> None:
        current = next(iter(self.records.values()), None)
        kept = "no key yet" if current is None else f"keeping key ID {parse_secret(current.keys).key_id}"
        message = f"key file {self.path}: {reason}; {kept}"
        if message != self.last_error:
            log.warning("%s", message)
            self.last_error = message
            self._changed.set()
