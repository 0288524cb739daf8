"""ESP transforms: AES-GCM (RFC 4106) and AES-CBC with truncated HMAC (RFC 3602, 4868, 2404)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ciphermesh.keys.algorithms import AUTH_ALGORITHMS, CBC_AES, GCM_SALT_LEN, RFC4106_GCM_AES
from ciphermesh.keys.line import AeadKey, KeyMaterial

_AES_KEY_LENGTHS = (16, 24, 32)
_GCM_ICV_LENGTHS = (8, 12, 16)
_GCM_TAG_LEN = 16
_CBC_BLOCK = 16
_HMAC_HASHES = ("sha1", "sha256", "sha384", "sha512")
# RFC 2404's 96 bits is the shortest truncation any ESP integrity transform uses.
_MIN_HMAC_ICV = 12


class EspCipher(Protocol):
    """One SA's transform. `aad` is authenticated before the ciphertext, `icv_extra` after it.

    The SA fills them: without ESN aad = SPI ‖ seq and icv_extra = b""; with ESN either
    aad = SPI ‖ seq_hi ‖ seq_lo (`esn_in_aad`, RFC 4106 §5) or aad = SPI ‖ seq_lo and
    icv_extra = seq_hi (RFC 4303 §2.2.1, for separate integrity transforms).
    """

    @property
    def iv_len(self) -> int:
        """Bytes of explicit IV after the ESP header."""
        ...

    @property
    def icv_len(self) -> int:
        """Bytes of ICV at the end of the packet."""
        ...

    @property
    def block_size(self) -> int:
        """The plaintext must be a multiple of this (1 for counter modes)."""
        ...

    @property
    def esn_in_aad(self) -> bool:
        """Whether the ESN high bits go inside the AAD (combined mode) rather than after the payload."""
        ...

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes, icv_extra: bytes) -> bytes:
        """Ciphertext ‖ ICV."""
        ...

    def open(self, aad: bytes, iv: bytes, ciphertext_and_icv: bytes, icv_extra: bytes) -> bytes | None:
        """The plaintext, or None if the ICV does not verify or the input cannot be valid."""
        ...


class AesGcmCipher:
    """rfc4106(gcm(aes)): nonce = salt ‖ IV, AAD = SPI ‖ [seq_hi ‖] seq_lo, ICV = the GCM tag."""

    __slots__ = ("_aead", "_aes", "_cut", "_key_bits", "_salt", "icv_len")

    iv_len = 8
    block_size = 1
    esn_in_aad = True

    def __init__(self, keymat: bytes, icv_len: int = 16) -> None:
        key_len = len(keymat) - GCM_SALT_LEN
        if key_len not in _AES_KEY_LENGTHS:
            raise ValueError(
                "rfc4106(gcm(aes)) key material must be 20, 28 or 36 bytes (key + 4-byte salt), "
                f"got {len(keymat)}"
            )
        if icv_len not in _GCM_ICV_LENGTHS:
            raise ValueError(f"rfc4106(gcm(aes)) ICV must be 8, 12 or 16 bytes, got {icv_len}")
        key = bytes(keymat[:key_len])
        self._aead = AESGCM(key)
        # Only truncated tags need the streaming API (AESGCM insists on the full 16-byte tag).
        self._aes = algorithms.AES(key) if icv_len != _GCM_TAG_LEN else None
        self._salt = bytes(keymat[key_len:])
        self._cut = _GCM_TAG_LEN - icv_len
        self._key_bits = 8 * key_len
        self.icv_len = icv_len

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes, icv_extra: bytes) -> bytes:
        """Ciphertext ‖ tag (truncated to icv_len)."""
        if icv_extra:
            raise ValueError("GCM authenticates nothing after the ciphertext: put the ESN bits in the AAD")
        sealed = self._aead.encrypt(self._salt + iv, plaintext, aad)
        return sealed[: -self._cut] if self._cut else sealed

    def open(self, aad: bytes, iv: bytes, ciphertext_and_icv: bytes, icv_extra: bytes) -> bytes | None:
        """Plaintext, or None if the tag does not verify."""
        if icv_extra or len(iv) != self.iv_len:
            return None
        if self._aes is None:
            try:
                # Shorter than a tag fails here too, as InvalidTag.
                return self._aead.decrypt(self._salt + iv, ciphertext_and_icv, aad)
            except InvalidTag:
                return None
        split = len(ciphertext_and_icv) - self.icv_len
        if split < 0:
            return None
        mode = modes.GCM(self._salt + iv, ciphertext_and_icv[split:], min_tag_length=self.icv_len)
        decryptor = Cipher(self._aes, mode).decryptor()
        decryptor.authenticate_additional_data(aad)
        plaintext = decryptor.update(ciphertext_and_icv[:split])
        try:
            return plaintext + decryptor.finalize()
        except InvalidTag:
            return None

    def __repr__(self) -> str:
        return f"AesGcmCipher(key_bits={self._key_bits}, icv_len={self.icv_len})"


class CbcHmacCipher:
    """cbc(aes) encryption then HMAC over SPI ‖ seq_lo ‖ IV ‖ ciphertext [‖ seq_hi], truncated.

    Building a CBC context costs several times a 1400-byte encryption, so one encryptor and one
    decryptor live as long as the cipher and every packet continues their chain: the first block
    is corrected by the previous packet's last ciphertext block and the packet's own IV, which
    gives exactly CBC with that IV. Not safe for concurrent use.
    """

    __slots__ = (
        "_decryptor",
        "_encryptor",
        "_hash_name",
        "_key_bits",
        "_last_in",
        "_last_out",
        "_mac",
        "icv_len",
    )

    iv_len = _CBC_BLOCK
    block_size = _CBC_BLOCK
    esn_in_aad = False

    def __init__(self, enc_key: bytes, auth_key: bytes, hash_name: str, icv_len: int) -> None:
        if len(enc_key) not in _AES_KEY_LENGTHS:
            raise ValueError(f"cbc(aes) key must be 16, 24 or 32 bytes, got {len(enc_key)}")
        if hash_name not in _HMAC_HASHES:
            expected = ", ".join(_HMAC_HASHES)
            raise ValueError(f"unsupported HMAC hash {hash_name!r}; expected one of {expected}")
        digest_size = hashlib.new(hash_name).digest_size
        if not _MIN_HMAC_ICV <= icv_len <= digest_size:
            raise ValueError(
                f"hmac({hash_name}) ICV must be {_MIN_HMAC_ICV}..{digest_size} bytes, got {icv_len}"
            )
        aes = algorithms.AES(bytes(enc_key))
        # Both chains start from an all-zero block; _last_out/_last_in track where they are.
        self._encryptor = Cipher(aes, modes.CBC(bytes(_CBC_BLOCK))).encryptor()
        self._decryptor = Cipher(aes, modes.CBC(bytes(_CBC_BLOCK))).decryptor()
        self._last_out = 0
        self._last_in = 0
        # Keyed once; every packet works on a copy, so the key schedule is not redone per packet.
        self._mac = hmac.new(bytes(auth_key), digestmod=hash_name)
        self._hash_name = hash_name
        self._key_bits = 8 * len(enc_key)
        self.icv_len = icv_len

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes, icv_extra: bytes) -> bytes:
        """Ciphertext ‖ truncated HMAC; the plaintext must already be padded to whole blocks."""
        if len(iv) != _CBC_BLOCK or not plaintext or len(plaintext) % _CBC_BLOCK:
            raise ValueError("cbc(aes) needs a 16-byte IV and a plaintext of whole 16-byte blocks")
        first = int.from_bytes(plaintext[:_CBC_BLOCK]) ^ int.from_bytes(iv) ^ self._last_out
        encryptor = self._encryptor
        ciphertext = encryptor.update(first.to_bytes(_CBC_BLOCK)) + encryptor.update(plaintext[_CBC_BLOCK:])
        self._last_out = int.from_bytes(ciphertext[-_CBC_BLOCK:])
        return ciphertext + self._icv(aad, iv, ciphertext, icv_extra)

    def open(self, aad: bytes, iv: bytes, ciphertext_and_icv: bytes, icv_extra: bytes) -> bytes | None:
        """Plaintext, or None if the HMAC does not verify or the ciphertext is not whole blocks."""
        split = len(ciphertext_and_icv) - self.icv_len
        if split <= 0 or split % _CBC_BLOCK or len(iv) != _CBC_BLOCK:
            return None
        ciphertext = ciphertext_and_icv[:split]
        if not hmac.compare_digest(self._icv(aad, iv, ciphertext, icv_extra), ciphertext_and_icv[split:]):
            return None
        plaintext = self._decryptor.update(ciphertext)
        first = int.from_bytes(plaintext[:_CBC_BLOCK]) ^ self._last_in ^ int.from_bytes(iv)
        self._last_in = int.from_bytes(ciphertext[-_CBC_BLOCK:])
        return first.to_bytes(_CBC_BLOCK) + plaintext[_CBC_BLOCK:]

    def _icv(self, aad: bytes, iv: bytes, ciphertext: bytes, icv_extra: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(aad)
        mac.update(iv)
        mac.update(ciphertext)
        # RFC 4303 §2.2.1: the ESN high bits are authenticated after the payload but never sent.
        mac.update(icv_extra)
        return mac.digest()[: self.icv_len]

    def __repr__(self) -> str:
        return f"CbcHmacCipher(key_bits={self._key_bits}, hash={self._hash_name}, icv_len={self.icv_len})"


def cipher_for(material: KeyMaterial) -> EspCipher:
    """The transform for one key of a key line (already derived per tunnel, if it is to be)."""
    if isinstance(material, AeadKey):
        if material.algo != RFC4106_GCM_AES:
            raise ValueError(f"unsupported ESP AEAD algorithm {material.algo!r}")
        return AesGcmCipher(material.key.reveal(), material.icv_bits // 8)
    auth = AUTH_ALGORITHMS.get(material.auth_algo)
    if auth is None:
        raise ValueError(f"unsupported ESP authentication algorithm {material.auth_algo!r}")
    if material.enc_algo != CBC_AES:
        raise ValueError(f"unsupported ESP encryption algorithm {material.enc_algo!r}")
    return CbcHmacCipher(
        material.enc_key.reveal(), material.auth_key.reveal(), auth.hash_name, auth.icv_bits // 8
    )
