"""The kernel engines (issue 13): XFRM over netlink in `xfrm`, IPsec in `ipsec`, WireGuard in `wireguard`."""
