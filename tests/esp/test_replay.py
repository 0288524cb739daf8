"""Anti-replay window (RFC 4303 §3.4.3) and ESN high-bit inference (Appendix A2.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciphermesh.esp import AesGcmCipher, Decapsulated, InboundSA, ReplayWindow
from ciphermesh.esp.replay import MAX_WINDOW
from tests.support.esp import sa_pair

M32 = 2**32 - 1
M64 = 2**64 - 1


def receive(window: ReplayWindow, seq: int) -> bool:
    """What an SA does with an authentic packet whose full sequence number is `seq`."""
    inferred = window.infer(seq & M32)
    if inferred is None:
        return False
    assert inferred == seq, f"inferred {inferred:#x} for {seq:#x}"
    window.accept(inferred)
    return True


def rfc_seq_hi(top: int, window: int, seq_lo: int) -> int:
    """RFC 4303 Appendix A2.2, transcribed case by case."""
    th, tl = top >> 32, top & M32
    bl = (tl - window + 1) & M32
    if tl >= window - 1:  # Case A: the window lies within one subspace
        return th if seq_lo >= bl else th + 1
    return th - 1 if seq_lo >= bl else th  # Case B: it spans two


def test_default_window_is_1024_as_cilium_per_tunnel_sas() -> None:
    assert ReplayWindow().size == 1024 and ReplayWindow().esn
    assert InboundSA(3, AesGcmCipher(bytes(20))).replay.size == 1024


def test_in_order() -> None:
    window = ReplayWindow()
    assert all(receive(window, seq) for seq in range(1, 5000))
    assert window.top == 4999


def test_out_of_order_within_the_window() -> None:
    window = ReplayWindow()
    assert receive(window, 2000)
    assert [receive(window, seq) for seq in (1999, 1500, 977, 1998)] == [True] * 4
    assert window.top == 2000


def test_duplicates_are_refused() -> None:
    window = ReplayWindow()
    for seq in (1, 2, 3, 10, 7):
        assert receive(window, seq)
    assert [window.infer(seq) for seq in (1, 2, 3, 10, 7)] == [None] * 5
    assert window.infer(8) == 8 and window.infer(11) == 11


def test_too_old_is_refused_at_exactly_the_window_edge() -> None:
    window = ReplayWindow(1024, esn=False)
    assert receive(window, 2000)
    assert window.infer(2000 - 1023) == 977  # the oldest number still inside the window
    assert window.infer(2000 - 1024) is None
    assert window.infer(1) is None


def test_with_esn_too_old_means_the_next_subspace() -> None:
    # Appendix A2.2: low bits below the window belong to the next 2^32 block; the ICV then fails.
    window = ReplayWindow(1024, esn=True)
    assert receive(window, 2000)
    assert window.infer(2000 - 1023) == 977
    assert window.infer(2000 - 1024) == 2**32 + 976


def test_far_jump_forgets_the_old_window() -> None:
    window = ReplayWindow(esn=False)
    for seq in range(1, 100):
        assert receive(window, seq)
    assert receive(window, 1_000_000)
    assert window.infer(99) is None  # now far too old
    assert receive(window, 1_000_000 - 1023)  # fresh bitmap: not marked as seen
    assert window.infer(1_000_000 - 1024) is None
    assert window.infer(1_000_000) is None


def test_far_jump_with_esn() -> None:
    window = ReplayWindow()
    for seq in range(1, 100):
        assert receive(window, seq)
    assert receive(window, 3_000_000_000)
    assert receive(window, 3_000_000_000 - 1023)
    assert window.infer((3_000_000_000 - 1023) & M32) is None
    assert receive(window, 3_000_000_001)


def test_jump_by_less_than_the_window_keeps_the_bits() -> None:
    window = ReplayWindow(64, esn=False)
    for seq in (1, 5, 10):
        assert receive(window, seq)
    assert receive(window, 60)
    assert [window.infer(seq) for seq in (1, 5, 10)] == [None, None, None]
    assert window.infer(2) == 2
    assert receive(window, 66)  # 2 falls out of the 64-wide window (66 - 64); 5 and 10 stay seen
    assert [window.infer(seq) for seq in (2, 3, 5, 10)] == [None, 3, None, None]


def test_sequence_number_zero_is_never_valid() -> None:
    assert ReplayWindow(esn=False).infer(0) is None
    assert ReplayWindow(esn=True).infer(0) is None


def test_window_zero_turns_the_check_off() -> None:
    window = ReplayWindow(0, esn=False)
    for seq in (5, 5, 1, 0, 5):
        assert window.infer(seq) == seq
        window.accept(seq)
    assert window.top == 5


def test_window_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="replay window"):
        ReplayWindow(-1)
    with pytest.raises(ValueError, match="replay window"):
        ReplayWindow(MAX_WINDOW + 1)


def test_esn_crossing_2_to_the_32() -> None:
    window = ReplayWindow()
    start = 2**32 - 10
    window.accept(start - 1)
    assert all(receive(window, seq) for seq in range(start, start + 30))
    assert window.top == 2**32 + 19
    # Late packets from just below the boundary still infer high bits 0.
    window2 = ReplayWindow()
    window2.accept(2**32 + 5)
    assert window2.infer(M32 - 3) == 2**32 - 4
    assert window2.infer(6) == 2**32 + 6
    # More than a window below the top is taken as far ahead (Case B, Seqh = Th); its ICV then fails.
    assert window2.infer(M32 - 2000) == 2**32 + M32 - 2000


def test_esn_window_inside_one_subspace_moves_up_for_small_low_bits() -> None:
    window = ReplayWindow()
    window.accept(5 * 2**32 + 3_000_000_000)
    # Below the window bottom's low bits: belongs to the next subspace (Case A, Seqh = Th + 1).
    assert window.infer(7) == 6 * 2**32 + 7
    assert window.infer(3_000_000_001) == 5 * 2**32 + 3_000_000_001


def test_esn_top_of_the_64_bit_space() -> None:
    window = ReplayWindow()
    window.accept(M64 - 1)
    assert window.infer(M32) == M64
    window.accept(M64)
    # The next subspace would be 2^64: no such sequence number.
    assert window.infer(0) is None and window.infer(5) is None
    assert window.infer(M32 - 1) is None  # replay of M64 - 1


def test_esn_first_subspace_has_nothing_below_zero() -> None:
    window = ReplayWindow()
    assert receive(window, 3)
    # Case B with Th = 0: high bits would be -1.
    assert window.infer(M32) is None and window.infer(M32 - 1000) is None


def test_esn_with_window_off_still_infers_high_bits() -> None:
    window = ReplayWindow(0, esn=True)
    window.accept(7 * 2**32 + 10)
    assert window.infer(5) == 7 * 2**32 + 5  # no replay check, but the subspace is still tracked
    assert window.infer(M32 - 5) == 6 * 2**32 + M32 - 5
    assert window.infer(2**31) == 7 * 2**32 + 2**31


@settings(max_examples=500, deadline=None)
@given(
    top=st.integers(0, M64),
    seq_lo=st.integers(0, M32),
    size=st.sampled_from([1, 32, 64, 1024, MAX_WINDOW]),
)
def test_esn_inference_matches_the_rfc_transcription(top: int, seq_lo: int, size: int) -> None:
    window = ReplayWindow(size, esn=True)
    window.accept(top)
    hi = rfc_seq_hi(top, size, seq_lo)
    expected = (hi << 32) | seq_lo
    got = window.infer(seq_lo)
    if hi < 0 or hi > M32 or expected in (0, top):
        assert got is None
    elif expected > top:
        assert got == expected
    else:
        # Inside the window and never seen (only `top` was accepted).
        assert top - expected < size
        assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(1, 2**40),
    steps=st.lists(st.integers(-1500, 1500), min_size=1, max_size=120),
    size=st.sampled_from([32, 64, 1024]),
    esn=st.booleans(),
)
def test_window_agrees_with_a_set_model(start: int, steps: list[int], size: int, esn: bool) -> None:
    if not esn:
        start %= 2**31
    window = ReplayWindow(size, esn=esn)
    # Start as if `start` had been received, so ESN inference has a reference point.
    window.accept(start)
    seen = {start}
    top = seq = start
    for step in steps:
        seq = max(1, seq + step)
        if not esn and seq > M32:
            break
        accept_expected = seq not in seen and (seq > top or top - seq < size)
        inferred = window.infer(seq & M32)
        assert (inferred == seq) == accept_expected, (seq, top, inferred)
        if accept_expected:
            window.accept(seq)
            seen.add(seq)
            top = max(top, seq)
        assert window.top == top


def test_forged_packets_do_not_move_the_window() -> None:
    outbound, inbound = sa_pair("gcm128")
    packets = [outbound.encapsulate(bytes([0x45]) + bytes(40)) for _ in range(3)]
    forged = bytearray(packets[2])
    forged[-1] ^= 0x80
    inbound.decapsulate(bytes(forged))
    assert inbound.max_seq == 0
    assert all(isinstance(inbound.decapsulate(p), Decapsulated) for p in packets)
