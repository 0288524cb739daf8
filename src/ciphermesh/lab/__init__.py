"""A cluster on one machine: namespaces as nodes, a bridge as the network."""
