"""MTUs of a node's devices: what each encapsulation costs, and what is left for pods.

With a 1500-byte eth0 the numbers are: cilium_vxlan 1450; pods, lxc veths, the TUN and routes to remote
pods 1393 with IPsec (AES-GCM, 16-byte ICV), 1420 with WireGuard, 1450 without encryption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encryption = Literal["none", "ipsec", "wireguard"]

ETHERNET_MTU = 1500
# Kernel VXLAN over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + the inner Ethernet header 14.
VXLAN_OVERHEAD = 50

# ESP tunnel mode with AES-GCM (RFC 4106) and an IPv4 outer header, the worst case per packet:
IPV4_HEADER = 20
ESP_HEADER = 8  # SPI 4 + sequence number 4 (ESN adds nothing on the wire)
GCM_IV = 8
ESP_TRAILER = 2  # pad length 1 + next header 1
# GCM needs no block padding; RFC 4303 2.4 only asks that the trailer end on a 4-byte boundary.
ESP_MAX_PADDING = 3
DEFAULT_ICV = 16

# Cilium's pkg/mtu figure: 32 bytes of WireGuard message, 40 for an outer IP header (IPv6 size), 8 UDP.
WIREGUARD_OVERHEAD = 80


def esp_overhead(icv_len: int = DEFAULT_ICV) -> int:
    """Bytes ESP tunnel mode adds to an inner packet at most: 20 + 8 + 8 + 3 + 2 + ICV (57 for a 16-byte ICV).

    Cilium reserves 77 for the same SA (its constant also counts a 16-byte "auth" and 16 bytes of padding).
    """
    if icv_len not in (8, 12, 16):
        raise ValueError(f"ICV length {icv_len}: AES-GCM ICVs are 8, 12 or 16 bytes")
    return IPV4_HEADER + ESP_HEADER + GCM_IV + ESP_MAX_PADDING + ESP_TRAILER + icv_len


@dataclass(frozen=True)
class Mtus:
    """MTUs for one node: `device` (eth0), `vxlan` (cilium_vxlan), `pod` (pod veths, lxc, TUN, pod routes)."""

    device: int
    vxlan: int
    pod: int


def plan_mtus(encryption: Encryption, device_mtu: int = ETHERNET_MTU, icv_len: int = DEFAULT_ICV) -> Mtus:
    """MTUs such that a full-size packet from a pod crosses encryption and VXLAN without fragmentation.

    IPsec: the engine's ESP packet (pod MTU + ESP overhead) goes through cilium_vxlan, so
    pod = device - 50 - 57 = 1393 for eth0 1500; the largest ESP packet is 1450 and its frame on eth0 1500.
    WireGuard: pod traffic bypasses VXLAN (as in Cilium <= 1.13): cilium_wg0's datagrams go straight
    between node IPs, so cilium_wg0 and pods get device - 80 = 1420, Cilium's cilium_wg0 MTU.
    """
    vxlan = device_mtu - VXLAN_OVERHEAD
    if encryption == "ipsec":
        pod = vxlan - esp_overhead(icv_len)
    elif encryption == "wireguard":
        pod = device_mtu - WIREGUARD_OVERHEAD
    else:
        pod = vxlan
    if pod < 576:
        raise ValueError(f"device MTU {device_mtu} leaves {pod} for pods: IPv4 needs at least 576")
    return Mtus(device=device_mtu, vxlan=vxlan, pod=pod)
