"""Sans-IO key handling: the Cilium key secret, per-tunnel derivation, generation."""
