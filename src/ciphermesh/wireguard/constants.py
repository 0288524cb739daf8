"""Protocol constants from the WireGuard whitepaper (section 6) and wireguard-go's device package."""

from __future__ import annotations

from dataclasses import dataclass

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE
MIN_MESSAGE_SIZE = KEEPALIVE_SIZE
# wireguard-go's MaxSegmentSize (2048 - 32) minus the transport overhead.
MAX_CONTENT_SIZE = 2048 - 32 - KEEPALIVE_SIZE
PADDING_MULTIPLE = 16

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50
UNDER_LOAD_AFTER_TIME = 1.0
STAGED_PACKETS_MAX = 128
# A transport message's nonce: 32 zero bits, then its 64-bit counter (whitepaper 5.4.6).
NONCE_PREFIX = bytes(4)
DEFAULT_MTU = 1420
# wireguard-go declares itself under load when 1/8 of its 1024-slot handshake queue is full; we process
# handshakes inline, so the equivalent signal is that many handshake messages within one second.
DEFAULT_HANDSHAKE_LOAD_THRESHOLD = 128


@dataclass(frozen=True, slots=True)
class Timing:
    """The protocol's timers in seconds; defaults are the whitepaper's, tests may shorten them."""

    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_attempt_time: float = 90.0
    rekey_timeout: float = 5.0
    keepalive_timeout: float = 10.0
    rekey_timeout_jitter_max: float = 0.334
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES

    def __post_init__(self) -> None:
        if not 0 < self.rekey_after_time < self.reject_after_time:
            raise ValueError("rekey_after_time must be positive and below reject_after_time")
        if not 0 < self.rekey_timeout <= self.rekey_attempt_time:
            raise ValueError("rekey_timeout must be positive and at most rekey_attempt_time")
        if self.keepalive_timeout <= 0:
            raise ValueError("keepalive_timeout must be positive")
        if not 0 < self.rekey_after_messages < self.reject_after_messages <= REJECT_AFTER_MESSAGES:
            raise ValueError("message limits must satisfy 0 < rekey < reject <= 2^64 - 2^13 - 1")

    @property
    def max_timer_handshakes(self) -> int:
        """Retries before giving up: wireguard-go's RekeyAttemptTime / RekeyTimeout."""
        return int(self.rekey_attempt_time // self.rekey_timeout)


DEFAULT_TIMING = Timing()
