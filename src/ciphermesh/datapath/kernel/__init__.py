"""Room for the kernel engine (XFRM over netlink, kernel WireGuard; issue 13): not built yet."""
