"""Engines that encrypt in this process, behind TUN devices; and the pieces they share (TUN, batching)."""
