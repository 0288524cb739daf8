"""A stock Debian kernel in QEMU (through virtme-ng) that runs one command with this checkout visible:
where the kernel engine's ESP and WireGuard are tested, as this machine's kernel has neither."""
