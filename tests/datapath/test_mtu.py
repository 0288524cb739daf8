"""MTU plan: a full-size pod packet fits ESP + VXLAN on a 1500-byte eth0; only padding is held back."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from ciphermesh.datapath.mtu import Mtus, esp_overhead, plan_mtus


def esp_tunnel_size(inner: int, icv: int = 16) -> int:
    """RFC 4303/4106: outer IPv4, SPI+seq, IV, payload, padding to 4 bytes, pad length, next header, ICV."""
    padding = -(inner + 2) % 4
    return 20 + 8 + 8 + inner + padding + 2 + icv


def test_numbers_for_a_1500_byte_ethernet() -> None:
    assert esp_overhead() == 57
    assert plan_mtus("ipsec") == Mtus(device=1500, vxlan=1450, pod=1393)
    assert plan_mtus("wireguard") == Mtus(device=1500, vxlan=1450, pod=1420)
    assert plan_mtus("none") == Mtus(device=1500, vxlan=1450, pod=1450)
    assert plan_mtus("ipsec", device_mtu=9000).pod == 8893


@pytest.mark.parametrize("icv", [8, 12, 16])
def test_every_pod_packet_fits_and_the_bound_is_tight(icv: int) -> None:
    mtus = plan_mtus("ipsec", icv_len=icv)
    assert all(esp_tunnel_size(size, icv) <= mtus.vxlan for size in range(20, mtus.pod + 1))
    assert all(esp_tunnel_size(size, icv) + 50 <= mtus.device for size in range(20, mtus.pod + 1))
    # Only the worst-case padding (3 bytes) is held back: 4 bytes more would not fit.
    assert esp_tunnel_size(mtus.pod + 4, icv) > mtus.vxlan


def test_scapy_esp_packet_of_a_full_size_pod_packet_fits_cilium_vxlan() -> None:
    sa = SecurityAssociation(
        ESP,
        spi=3,
        crypt_algo="AES-GCM",
        crypt_key=bytes(range(20)),
        tunnel_header=IP(src="10.0.1.1", dst="10.0.2.1"),
    )
    mtus = plan_mtus("ipsec")
    for size in range(mtus.pod - 8, mtus.pod + 1):
        inner = IP(src="10.0.1.5", dst="10.0.2.5") / UDP(sport=1, dport=2) / Raw(b"x" * (size - 28))
        assert len(inner) == size
        outer = bytes(sa.encrypt(inner, iv=b"\x00" * 8))
        assert len(outer) <= mtus.vxlan


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="ICV length 10"):
        esp_overhead(10)
    with pytest.raises(ValueError, match="leaves"):
        plan_mtus("ipsec", device_mtu=600)
