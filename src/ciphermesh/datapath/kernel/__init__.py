"""The kernel engine (issue 13): XFRM over netlink in `xfrm`; the engine and kernel WireGuard are to come."""
