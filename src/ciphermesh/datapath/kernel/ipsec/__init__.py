"""The kernel IPsec engine's layout: Cilium's XFRM marks, node IDs, states and policies."""
