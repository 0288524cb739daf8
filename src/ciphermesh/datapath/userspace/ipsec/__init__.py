"""The userspace IPsec engine: ESP on a raw socket, SAs per tunnel, Cilium's XFRM drop names."""
