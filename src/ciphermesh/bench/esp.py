"""Per-packet CPU cost of ESP encapsulation and decapsulation beside the bare cipher calls they wrap."""

from __future__ import annotations

import hmac
import itertools
import os
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ciphermesh.esp.ciphers import cipher_for
from ciphermesh.esp.sa import Decapsulated, InboundSA, OutboundSA
from ciphermesh.inet import IPV4_HEADER, with_checksum
from ciphermesh.keys import AeadKey, AuthEncKey, KeyMaterial, generate_line
from ciphermesh.keys.algorithms import AUTH_ALGORITHMS

DEFAULT_SIZES: tuple[int, ...] = (64, 1400, 8000)
DEFAULT_ALGOS: tuple[str, ...] = ("rfc4106-gcm-aes", "cbc-aes-sha256")
GOAL_SIZE = 1400
GOAL_RATIO = 2.0

_SPI = 3
_POOL = 1024  # packets decapsulated per fresh inbound SA: each is accepted once, then it is a replay
_CALIBRATION_NS = 20_000_000
_ESP_HEADER = struct.Struct("!II")

Clock = Callable[[], int]
# Runs an operation n times and returns the CPU nanoseconds spent in the measured part only.
Workload = Callable[[int], int]


@dataclass(frozen=True)
class EspBenchRow:
    """Median CPU microseconds per call for one algorithm and inner packet size."""

    algo: str
    size: int
    encap_us: float
    decap_us: float
    reference: str
    bare_encrypt_us: float
    bare_decrypt_us: float

    @property
    def ratio(self) -> float:
        """(encapsulate + decapsulate) / (bare encrypt + bare decrypt)."""
        return (self.encap_us + self.decap_us) / (self.bare_encrypt_us + self.bare_decrypt_us)

    @property
    def gbit_per_s(self) -> float:
        """Inner bits per second through both ends of a tunnel (encapsulate and decapsulate) on one core."""
        return self.size * 8 / ((self.encap_us + self.decap_us) * 1000)

    @property
    def cpu_seconds_per_gb(self) -> float:
        """CPU seconds both ends spend to carry 10^9 bytes of inner packets."""
        return (self.encap_us + self.decap_us) * 1e-6 * 1e9 / self.size


@dataclass(frozen=True)
class EspBenchResult:
    """All rows of one run, with the settings that produced them."""

    rows: tuple[EspBenchRow, ...]
    seconds: float
    repeats: int

    def goal_row(self) -> EspBenchRow | None:
        """The AES-GCM-128 row at 1400 bytes that the 2x goal is judged on, if it was measured."""
        for row in self.rows:
            if row.algo == "rfc4106-gcm-aes" and row.size == GOAL_SIZE:
                return row
        return None


def run_esp_bench(
    sizes: Sequence[int] = DEFAULT_SIZES,
    algos: Sequence[str] = DEFAULT_ALGOS,
    *,
    seconds: float = 0.5,
    repeats: int = 7,
    clock: Clock = time.process_time_ns,
) -> EspBenchResult:
    """Measure every (algorithm, size): `seconds` of CPU per operation, split over interleaved repeats."""
    if repeats < 1 or seconds <= 0:
        raise ValueError("repeats must be at least 1 and seconds positive")
    rows = []
    for algo in algos:
        material = generate_line(algo, randbytes=os.urandom).material
        for size in sizes:
            workloads = {
                "encap": _encap_workload(material, size, clock),
                "decap": _decap_workload(material, size, clock),
                "bare_encrypt": _bare_workload(material, size, clock, decrypt=False),
                "bare_decrypt": _bare_workload(material, size, clock, decrypt=True),
            }
            medians = _measure(workloads, seconds / repeats, repeats)
            rows.append(
                EspBenchRow(
                    algo,
                    size,
                    medians["encap"],
                    medians["decap"],
                    _reference_name(material),
                    medians["bare_encrypt"],
                    medians["bare_decrypt"],
                )
            )
    return EspBenchResult(tuple(rows), seconds, repeats)


def ipv4_packet(size: int) -> bytes:
    """A valid IPv4 packet of exactly `size` bytes, 10.0.1.5 -> 10.0.2.7, protocol 253 (experimental)."""
    if not 20 <= size <= 0xFFFF:
        raise ValueError(f"an IPv4 packet is 20..65535 bytes, not {size}")
    header = IPV4_HEADER.pack(
        0x45, 0, size, 0, 0x4000, 64, 253, 0, bytes((10, 0, 1, 5)), bytes((10, 0, 2, 7))
    )
    return with_checksum(header, 10) + bytes(size - 20)


def _measure(workloads: dict[str, Workload], batch_seconds: float, repeats: int) -> dict[str, float]:
    counts = {name: _calibrate(workload, batch_seconds) for name, workload in workloads.items()}
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    # Interleaved, so a neighbour taking the core for a while slows every operation alike.
    for _ in range(repeats):
        for name, workload in workloads.items():
            samples[name].append(workload(counts[name]) / counts[name] / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _calibrate(workload: Workload, batch_seconds: float) -> int:
    n = 1
    while True:
        spent = workload(n)
        if spent >= _CALIBRATION_NS:
            return max(1, int(n * batch_seconds * 1e9 / spent))
        n *= 4 if spent < _CALIBRATION_NS // 10 else 2


def _encap_workload(material: KeyMaterial, size: int, clock: Clock) -> Workload:
    cipher = cipher_for(material)
    inner = ipv4_packet(size)

    def run(n: int) -> int:
        encapsulate = OutboundSA(_SPI, cipher, esn=True).encapsulate
        start = clock()
        for _ in itertools.repeat(None, n):
            encapsulate(inner)
        return clock() - start

    return run


def _decap_workload(material: KeyMaterial, size: int, clock: Clock) -> Workload:
    cipher = cipher_for(material)
    inner = ipv4_packet(size)
    outbound = OutboundSA(_SPI, cipher, esn=True)
    pool = [outbound.encapsulate(inner) for _ in range(_POOL)]
    check = InboundSA(_SPI, cipher, esn=True)
    for packet in pool:
        result = check.decapsulate(packet)
        if not isinstance(result, Decapsulated) or result.inner != inner:
            raise RuntimeError(f"benchmark setup: decapsulation of a fresh packet failed ({result!r})")

    def run(n: int) -> int:
        spent = 0
        remaining = n
        while remaining:
            decapsulate = InboundSA(_SPI, cipher, esn=True).decapsulate
            chunk = pool[: min(remaining, _POOL)]
            start = clock()
            for packet in chunk:
                decapsulate(packet)
            spent += clock() - start
            remaining -= len(chunk)
        return spent

    return run


def _bare_workload(material: KeyMaterial, size: int, clock: Clock, *, decrypt: bool) -> Workload:
    if isinstance(material, AeadKey):
        return _bare_gcm(material, size, clock, decrypt=decrypt)
    return _bare_cbc_hmac(material, size, clock, decrypt=decrypt)


def _bare_gcm(material: AeadKey, size: int, clock: Clock, *, decrypt: bool) -> Workload:
    keymat = material.key.reveal()
    aead = AESGCM(keymat[:-4])
    # A fixed nonce is fine here: the output is thrown away, only the cost is of interest.
    nonce, aad, data = keymat[-4:] + bytes(8), _ESP_HEADER.pack(_SPI, 1), bytes(size)
    sealed = aead.encrypt(nonce, data, aad)
    call = aead.decrypt if decrypt else aead.encrypt
    argument = sealed if decrypt else data

    def run(n: int) -> int:
        start = clock()
        for _ in itertools.repeat(None, n):
            call(nonce, argument, aad)
        return clock() - start

    return run


def _bare_cbc_hmac(material: AuthEncKey, size: int, clock: Clock, *, decrypt: bool) -> Workload:
    enc_key, auth_key = material.enc_key.reveal(), material.auth_key.reveal()
    auth = AUTH_ALGORITHMS[material.auth_algo]
    hash_name, icv_len = auth.hash_name, auth.icv_bits // 8
    data = bytes(-(-size // 16) * 16)
    aes = algorithms.AES(enc_key)
    # Long-lived contexts and a pre-keyed HMAC: only the cipher and hash work itself is counted,
    # not the setup a naive per-packet use of the library would add.
    encryptor = Cipher(aes, modes.CBC(bytes(16))).encryptor()
    decryptor = Cipher(aes, modes.CBC(bytes(16))).decryptor()
    keyed = hmac.new(auth_key, digestmod=hash_name)
    authenticated = _ESP_HEADER.pack(_SPI, 1) + bytes(16) + encryptor.update(data)
    reference = keyed.copy()
    reference.update(authenticated)
    icv = reference.digest()[:icv_len]

    def seal() -> None:
        mac = keyed.copy()
        mac.update(encryptor.update(data))
        mac.digest()

    def open_() -> None:
        mac = keyed.copy()
        mac.update(authenticated)
        if hmac.compare_digest(mac.digest()[:icv_len], icv):
            decryptor.update(data)

    call = open_ if decrypt else seal

    def run(n: int) -> int:
        start = clock()
        for _ in itertools.repeat(None, n):
            call()
        return clock() - start

    return run


def _reference_name(material: KeyMaterial) -> str:
    if isinstance(material, AeadKey):
        return f"AESGCM (AES-{(len(material.key) - 4) * 8})"
    hash_name = material.auth_algo.removeprefix("hmac(").removesuffix(")").upper()
    return f"AES-{len(material.enc_key) * 8}-CBC + HMAC-{hash_name}"
