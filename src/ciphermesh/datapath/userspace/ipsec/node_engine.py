"""The userspace IPsec engine as a node runs it: TUN device cm_ipsec and a packet thread, behind the face."""

from __future__ import annotations

import threading
from typing import Any

from ciphermesh.datapath.desired import DesiredDatapath
from ciphermesh.datapath.engine import EngineKind
from ciphermesh.datapath.userspace.ipsec.engine import IPsecEngine

ENGINE_TUN = "cm_ipsec"
_JOIN_SECONDS = 5.0


class UserspaceIPsec:
    """Seals what is routed into `device` for the peer owning its destination; opens ESP from peers."""

    def __init__(self, tun_name: str = ENGINE_TUN) -> None:
        self._engine = IPsecEngine.open(tun_name, offload=True)
        self._tun_name = tun_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._engine.run, args=(self._stop,), name="ipsec-engine",
                                        daemon=True)
        self._thread.start()

    @property
    def kind(self) -> EngineKind:
        return "userspace"

    @property
    def device(self) -> str:
        return self._tun_name

    def apply(self, desired: DesiredDatapath) -> None:
        if desired.engine is None:
            raise ValueError(f"the IPsec engine cannot apply a {desired.mode} datapath (no IPsec state)")
        self._engine.apply(desired.engine)

    def status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        status = self._engine.status()
        peers = status["peers"]
        counters = {"txBytes": sum(p["bytesOut"] for p in peers), "rxBytes": sum(p["bytesIn"] for p in peers)}
        return {"engine": self.kind, **status, "counters": counters,
                "sas": self._engine.security_associations(reveal)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_JOIN_SECONDS)
        # The TUN goes with its last fd; the fail-closed routes then take over its pod CIDRs.
        self._engine.close()
