"""ciphermesh: transparent node-to-node encryption for pod networks, Cilium-compatible on the wire."""

__version__ = "0.1.0"
