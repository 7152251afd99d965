from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronus.core.errors import PeerError
from patronus.core.probe import Probe, ProbeType, ReplayWindow, decode, encode, pair_key

pytestmark = pytest.mark.property

KEY = pair_key(b"k", "a", "b")
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
probes = st.builds(
    lambda t, s, q, ts, tr, pad: Probe(t, s, q, ts, tr if t is ProbeType.REPLY else 0, pad, True),
    st.sampled_from(ProbeType), U32, U64, U64, U64, st.integers(0, 64))


@settings(max_examples=300)
@given(probes)
def test_round_trip(p: Probe) -> None:
    assert decode(encode(p, KEY), KEY) == p


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_and_never_pass_authentication(data: bytes) -> None:
    try:
        decode(data, KEY)
    except PeerError:
        return
    raise AssertionError("random bytes passed HMAC verification")


@settings(max_examples=300)
@given(probes, st.data())
def test_any_single_byte_change_is_detected(p: Probe, data: st.DataObject) -> None:
    wire = bytearray(encode(p, KEY))
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PeerError):
        decode(bytes(wire), KEY)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 300), max_size=300), st.integers(1, 64))
def test_replay_window_accepts_each_seq_at_most_once_and_nothing_too_old(seqs: list[int], size: int) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = -1
    for s in seqs:
        ok = w.check_and_update(s)
        if s in seen or (top >= 0 and s <= top - size):
            assert not ok
        if ok:
            seen.add(s)
            top = max(top, s)
        elif s > top:
            raise AssertionError("a new highest sequence number was refused")
