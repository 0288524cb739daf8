"""Known-answer tests: the WireGuard and Noise vectors of tests/testdata, XChaCha20-Poly1305, TAI64N."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ciphermesh.wireguard.constants import CONSTRUCTION, IDENTIFIER, LABEL_COOKIE, LABEL_MAC1
from ciphermesh.wireguard.keys import PrivateKey, PublicKey
from ciphermesh.wireguard.noise import HandshakeState, NoiseError, SymmetricState, pattern_for
from ciphermesh.wireguard.primitives import hash_, kdf1, kdf2, kdf3
from ciphermesh.wireguard.replay import WINDOW_SIZE, ReplayFilter
from ciphermesh.wireguard.tai64n import after, stamp
from ciphermesh.wireguard.xchacha import hchacha20, xchacha20poly1305_decrypt, xchacha20poly1305_encrypt
from tests.support.testdata import load

WG = load("wireguard_vectors.json")
NOISE = load("noise_IK_IKpsk2_25519_ChaChaPoly_BLAKE2s.json")
H = bytes.fromhex


@pytest.mark.parametrize("vector", WG["kdf"]["vectors"], ids=lambda v: v["key"] or "empty")
def test_kdf_matches_wireguard_go(vector: dict[str, str]) -> None:
    key, data = H(vector["key"]), H(vector["input"])
    t0, t1, t2 = H(vector["t0"]), H(vector["t1"]), H(vector["t2"])
    assert kdf1(key, data) == t0
    assert kdf2(key, data) == (t0, t1)
    assert kdf3(key, data) == (t0, t1, t2)


def test_construction_identifier_and_labels() -> None:
    c = WG["construction"]
    assert c["construction"].encode() == CONSTRUCTION
    assert c["identifier"].encode() == IDENTIFIER
    assert c["label_mac1"].encode() == LABEL_MAC1
    assert c["label_cookie"].encode() == LABEL_COOKIE
    ck = hash_(CONSTRUCTION)
    assert ck.hex() == c["initial_chaining_key"]
    assert hash_(ck, IDENTIFIER).hex() == c["initial_hash"]
    # The generic Noise symmetric state starts from the same Ci, and mixing the prologue gives Hi.
    sym = SymmetricState(CONSTRUCTION)
    sym.mix_hash(IDENTIFIER)
    assert (sym.ck.hex(), sym.h.hex()) == (c["initial_chaining_key"], c["initial_hash"])


@pytest.mark.parametrize("pair", WG["x25519_keypairs"]["pairs"], ids=lambda p: p["name"])
def test_public_keys_from_private_keys(pair: dict[str, str]) -> None:
    private = PrivateKey.from_base64(pair["private_key"])
    assert private.public_key() == PublicKey.from_base64(pair["public_key"])
    assert private.public_key().to_base64() == pair["public_key"]


def _noise_name(vector: dict[str, Any]) -> str:
    return str(vector.get("protocol_name") or vector["name"])


@pytest.mark.parametrize("vector", NOISE["vectors"], ids=lambda v: f"{_noise_name(v)}:{v['source'][:20]}")
def test_noise_vectors(vector: dict[str, Any]) -> None:
    pattern = pattern_for(_noise_name(vector))
    psk_i = [H(p) for p in vector.get("init_psks", [])]
    psk_r = [H(p) for p in vector.get("resp_psks", [])]
    initiator = HandshakeState(
        pattern,
        initiator=True,
        prologue=H(vector["init_prologue"]),
        s=X25519PrivateKey.from_private_bytes(H(vector["init_static"])),
        rs=H(vector["init_remote_static"]),
        psk=psk_i[0] if psk_i else None,
    )
    responder = HandshakeState(
        pattern,
        initiator=False,
        prologue=H(vector["resp_prologue"]),
        s=X25519PrivateKey.from_private_bytes(H(vector["resp_static"])),
        psk=psk_r[0] if psk_r else None,
    )
    messages = vector["messages"]
    first = initiator.write_message(H(messages[0]["payload"]), H(vector["init_ephemeral"]))
    assert first.hex() == messages[0]["ciphertext"]
    assert responder.read_message(first) == H(messages[0]["payload"])
    second = responder.write_message(H(messages[1]["payload"]), H(vector["resp_ephemeral"]))
    assert second.hex() == messages[1]["ciphertext"]
    assert initiator.read_message(second) == H(messages[1]["payload"])
    if "handshake_hash" in vector:
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]
        assert responder.handshake_hash.hex() == vector["handshake_hash"]
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for n, message in enumerate(messages[2:]):
        send, recv = (i_send, r_recv) if n % 2 == 0 else (r_send, i_recv)
        ciphertext = send.encrypt_with_ad(b"", H(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert recv.decrypt_with_ad(b"", ciphertext) == H(message["payload"])


def test_noise_rejects_a_tampered_message() -> None:
    vector = next(v for v in NOISE["vectors"] if _noise_name(v).startswith("Noise_IKpsk2"))
    pattern = pattern_for(_noise_name(vector))
    initiator = HandshakeState(
        pattern,
        initiator=True,
        prologue=H(vector["init_prologue"]),
        s=X25519PrivateKey.from_private_bytes(H(vector["init_static"])),
        rs=H(vector["init_remote_static"]),
        psk=H(vector["init_psks"][0]),
    )
    responder = HandshakeState(
        pattern,
        initiator=False,
        prologue=H(vector["resp_prologue"]),
        s=X25519PrivateKey.from_private_bytes(H(vector["resp_static"])),
        psk=H(vector["resp_psks"][0]),
    )
    first = bytearray(initiator.write_message(b"", H(vector["init_ephemeral"])))
    first[40] ^= 1
    with pytest.raises(NoiseError):
        responder.read_message(bytes(first))


def _replay_steps(steps: list[Any]) -> list[tuple[int, bool]]:
    out: list[tuple[int, bool]] = []
    for step in steps:
        if isinstance(step, list):
            out.append((int(step[0]), bool(step[1])))
        else:
            stop = step["to"] + (1 if step["step"] > 0 else -1)
            out += [(c, bool(step["expected"])) for c in range(step["from"], stop, step["step"])]
    return out


@pytest.mark.parametrize("test", WG["replay_window"]["tests"], ids=lambda t: t["name"])
def test_replay_window_vectors(test: dict[str, Any]) -> None:
    assert WG["replay_window"]["window_size"] == WINDOW_SIZE
    limit = WG["replay_window"]["limit"]
    window = ReplayFilter()
    for n, (counter, expected) in enumerate(_replay_steps(test["steps"])):
        assert window.validate(counter, limit) is expected, f"step {n}: counter {counter}"


def test_hchacha20_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    subkey = hchacha20(bytes(range(32)), H("000000090000004a0000000031415927"))
    assert subkey.hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


def test_xchacha20poly1305_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1
    key, nonce = bytes(range(0x80, 0xA0)), bytes(range(0x40, 0x58))
    aad = H("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    expected = H(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert xchacha20poly1305_encrypt(key, nonce, plaintext, aad) == expected
    assert xchacha20poly1305_decrypt(key, nonce, expected, aad) == plaintext
    tampered = bytes([expected[0] ^ 1]) + expected[1:]
    assert xchacha20poly1305_decrypt(key, nonce, tampered, aad) is None
    assert xchacha20poly1305_decrypt(key, nonce, expected, aad + b"x") is None


def test_tai64n_layout_and_whitening() -> None:
    t = stamp(1_700_000_000.123456789)
    assert len(t) == 12
    assert int.from_bytes(t[:8], "big") == 0x400000000000000A + 1_700_000_000
    nanos = int.from_bytes(t[8:], "big")
    assert nanos & 0xFFFFFF == 0
    assert 0 <= 123_456_789 - nanos < 0x1000000
    # Within one whitening unit two stamps are equal, and the later one is not "after".
    base = 1_700_000_000.0336  # 1 ms into the third 16.8 ms unit of the second
    assert stamp(base) == stamp(base + 0.001)
    assert not after(stamp(base + 0.001), stamp(base))
    assert after(stamp(base + 0.02), stamp(base))
    assert after(stamp(1_700_000_001.0), stamp(1_700_000_000.9))
