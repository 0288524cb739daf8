"""Sans-IO WireGuard: Noise_IKpsk2 handshake, transport, timers."""
