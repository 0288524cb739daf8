"""The kernel WireGuard engine: cilium_wg0 as the kernel's own `wireguard` link, configured over genetlink."""
