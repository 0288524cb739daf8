"""Netlink and nftables plumbing of a node: links, VXLAN peers, routes, rules, the strict-mode guard."""
