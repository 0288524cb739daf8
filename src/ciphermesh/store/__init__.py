"""The cluster's shared state (nodes, key secret, IPAM) behind one small interface."""
