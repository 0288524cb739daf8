"""XFRM over netlink: a sans-IO codec for states and policies, and the socket layer that sends it."""
