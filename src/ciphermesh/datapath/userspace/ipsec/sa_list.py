"""The SAs one generation of the engine's tables holds, as `encryption sa list` shows them."""

from __future__ import annotations

from typing import Any

from ciphermesh.datapath.userspace.ipsec.tables import IPsecTables


def held_sas(tables: IPsecTables, reveal: bool) -> list[dict[str, Any]]:
    """Every SA in `tables`: direction, outer src and dst, SPI, and the key line (hex only with `reveal`).

    `active` is false for an outbound SA kept on standby during a rotation (installed, not sent with).
    """
    local = tables.local_router_ip
    if local is None:
        return []
    sas = []
    for path in tables.paths:
        peer = path.peer
        for spi, key in sorted(peer.out_keys.items()):
            sas.append({"direction": "out", "src": str(local), "dst": str(peer.router_ip), "spi": spi,
                        "active": spi == peer.out_spi, "key": key.format(reveal=reveal)})
        for spi, key in sorted(peer.in_keys.items()):
            sas.append({"direction": "in", "src": str(peer.router_ip), "dst": str(local), "spi": spi,
                        "active": True, "key": key.format(reveal=reveal)})
    return sas
