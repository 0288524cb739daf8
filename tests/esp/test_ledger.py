"""The rule on sequence counters, in bytes: an SA made again under a key it has used goes on, never at 1."""

from __future__ import annotations

import pytest

from ciphermesh.esp import AesGcmCipher, Decapsulated, Drop, InboundSA, OutboundSA
from ciphermesh.esp.ledger import SALedger

KEY = bytes(range(20))
OTHER_KEY = bytes(range(1, 21))
A_TO_B = (b"\x0a\x00\x01\x01", b"\x0a\x00\x02\x01", 3)
IPV4 = bytes([0x45]) + bytes(19)


def _outbound(key: bytes = KEY) -> OutboundSA:
    return OutboundSA(3, AesGcmCipher(key), iv_salt=0x1234)


def _inbound(key: bytes = KEY) -> InboundSA:
    return InboundSA(3, AesGcmCipher(key))


def test_the_same_identity_is_the_same_sa_so_its_counter_goes_on() -> None:
    ledger = SALedger()
    sender = ledger.outbound(A_TO_B, KEY, _outbound)
    receiver = _inbound()
    for _ in range(1500):  # past the 1024-packet window
        assert isinstance(receiver.decapsulate(sender.encapsulate(IPV4)), Decapsulated)
    again = ledger.outbound(A_TO_B, KEY, _outbound)
    assert again is sender
    assert again.seq == 1500
    assert isinstance(receiver.decapsulate(again.encapsulate(IPV4)), Decapsulated)
    assert receiver.counters[Drop.XfrmInStateSeqError] == 0


def test_without_the_ledger_the_receiver_drops_the_restarted_sender_as_replays() -> None:
    """What the ledger prevents: a fresh SA under a held key is wedged until it passes the old count."""
    sender, receiver = _outbound(), _inbound()
    for _ in range(500):
        receiver.decapsulate(sender.encapsulate(IPV4))
    restarted = _outbound()
    for _ in range(100):
        assert receiver.decapsulate(restarted.encapsulate(IPV4)) is Drop.XfrmInStateSeqError


def test_a_kept_window_still_refuses_replays_after_the_sa_was_away() -> None:
    ledger = SALedger()
    sender = _outbound()
    receiver = ledger.inbound(A_TO_B, KEY, _inbound)
    packet = sender.encapsulate(IPV4)
    assert isinstance(receiver.decapsulate(packet), Decapsulated)
    back = ledger.inbound(A_TO_B, KEY, _inbound)
    assert back is receiver and back.max_seq == 1
    assert back.decapsulate(packet) is Drop.XfrmInStateSeqError


def test_a_new_key_for_the_triple_is_a_new_sa_and_the_old_one_is_forgotten() -> None:
    ledger = SALedger()
    first = ledger.outbound(A_TO_B, KEY, _outbound)
    first.encapsulate(IPV4)
    second = ledger.outbound(A_TO_B, OTHER_KEY, lambda: _outbound(OTHER_KEY))
    assert second is not first and second.seq == 0
    assert ledger.retired.packets_out == 1
    assert len(ledger) == 1
    # Another SPI or direction is another triple: both are kept.
    ledger.outbound((*A_TO_B[:2], 4), KEY, _outbound)
    ledger.inbound(A_TO_B, KEY, _inbound)
    assert len(ledger) == 3


def test_a_block_that_raises_leaves_the_ledger_as_it_was() -> None:
    """A desired state refused halfway must not make the ledger forget the SA still in use."""
    ledger = SALedger()
    live = ledger.outbound(A_TO_B, KEY, _outbound)
    live.encapsulate(IPV4)
    with pytest.raises(ValueError, match="refused"), ledger.all_or_nothing():
        ledger.outbound(A_TO_B, OTHER_KEY, lambda: _outbound(OTHER_KEY))
        raise ValueError("refused")
    assert ledger.outbound(A_TO_B, KEY, _outbound) is live
    assert ledger.retired.packets_out == 0
