"""Sans-IO ESP (RFC 4303, 4106, 4868): security associations, anti-replay, drop counters."""
