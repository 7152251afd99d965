from __future__ import annotations

import pytest

from patronus.core.errors import PeerError
from patronus.core.probe import BASE_LEN, Probe, ProbeType, ReplayWindow, decode, encode, pair_key, reflect

pytestmark = pytest.mark.unit

KEY = pair_key(b"shared-secret", "hq", "branch")


def req(seq: int = 7, padding: int = 0) -> Probe:
    return Probe(ProbeType.REQUEST, session=3, seq=seq, t_send_ns=1_700_000_000_123_456_789, padding=padding)


def test_layout_is_48_bytes_plus_padding() -> None:
    assert BASE_LEN == 48
    assert len(encode(req())) == 48
    assert len(encode(req(padding=1400), KEY)) == 1448


def test_round_trip_authenticated_request_and_reply() -> None:
    wire = encode(req(), KEY)
    got = decode(wire, KEY)
    assert got == Probe(ProbeType.REQUEST, 3, 7, 1_700_000_000_123_456_789, 0, 0, True)
    rep = reflect(got, 1_700_000_000_200_000_000)
    back = decode(encode(rep, KEY), KEY)
    assert back.type is ProbeType.REPLY and back.seq == 7 and back.t_reflect_ns == 1_700_000_000_200_000_000


def test_round_trip_unauthenticated() -> None:
    assert decode(encode(req(padding=10))) == req(padding=10)


def test_pair_key_is_symmetric_and_pair_specific() -> None:
    assert pair_key(b"s", "a", "b") == pair_key(b"s", "b", "a")
    assert pair_key(b"s", "a", "b") != pair_key(b"s", "a", "c")
    assert pair_key(b"s", "a", "b") != pair_key(b"t", "a", "b")


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b: b[:20], "too short"),
    (lambda b: b"XX" + b[2:], "magic"),
    (lambda b: b[:2] + b"\x09" + b[3:], "version"),
    (lambda b: b[:3] + b"\x85" + b[4:], "type"),
    (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "HMAC"),          # a flipped bit in seq
    (lambda b: b[:40] + bytes([b[40] ^ 0x80]) + b[41:], "HMAC"),       # a flipped bit in the MAC
    (lambda b: b + b"\x00", "HMAC"),                                   # padding added afterwards
])
def test_forged_or_damaged_probes_are_refused_with_a_reason(mutate: object, reason: str) -> None:
    wire = encode(req(), KEY)
    with pytest.raises(PeerError, match=reason):
        decode(mutate(wire), KEY)  # type: ignore[operator]


def test_wrong_key_or_missing_authentication_is_refused() -> None:
    with pytest.raises(PeerError, match="HMAC"):
        decode(encode(req(), pair_key(b"other", "hq", "branch")), KEY)
    with pytest.raises(PeerError, match="unauthenticated"):
        decode(encode(req()), KEY)
    with pytest.raises(PeerError, match="no key"):
        decode(encode(req(), KEY))


def test_request_with_reflect_time_is_refused() -> None:
    bad = Probe(ProbeType.REQUEST, 1, 1, 5, t_reflect_ns=9)
    with pytest.raises(PeerError, match="reflect timestamp"):
        decode(encode(bad, KEY), KEY)


def test_only_requests_are_reflected() -> None:
    with pytest.raises(PeerError):
        reflect(reflect(req(), 1), 2)


def test_replay_window() -> None:
    w = ReplayWindow(size=8)
    assert [w.check_and_update(s) for s in (1, 2, 3)] == [True, True, True]
    assert w.check_and_update(2) is False            # replay
    assert w.check_and_update(10) is True            # jump ahead
    assert w.check_and_update(3) is False            # now older than the window (10 - 3 >= 8)
    assert w.check_and_update(5) is True             # inside the window, unseen: reordering is fine
    assert w.check_and_update(5) is False
    assert w.check_and_update(10_000) is True        # a jump beyond the window resets it
    assert w.check_and_update(9_999) is True
    assert (w.accepted, w.rejected) == (7, 3)
