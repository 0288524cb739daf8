"""Cluster-wide controllers: cluster-pool IPAM and garbage collection."""
