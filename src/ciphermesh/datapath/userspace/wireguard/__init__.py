"""The userspace WireGuard engine: cilium_wg0 as a TUN device driven by the wireguard core."""
