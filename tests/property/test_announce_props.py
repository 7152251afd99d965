"""Hypothesis properties of patronus.core.announce (derandomized, as tests/unit/test_identity.py's):

- `AnnounceGate.admit` gives a verdict for any bytes (arbitrary, behind a PTAN header, or valid announcements
  with bytes changed, cut or inserted): `Accepted`, `Duplicate` or `Rejected` with a reason in `REASONS`,
  never an exception; `decode_announcement` raises only `AnnounceError`, and what decodes re-encodes to the
  same bytes (canonical);
- any valid announcement `sign_announcement` makes decodes to the values it was given (lists sorted), re-encodes
  to the same bytes, and is accepted by a fresh gate, then a duplicate.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import bench_announce_fuzz as fuzz
from patronus.core import announce as an
from patronus.core.announce import AnnounceError, Endpoint

pytestmark = pytest.mark.property

CORPUS = fuzz.corpus()
SEEDS = [s.data for s in CORPUS.seeds]
NOW = fuzz.NOW
FUZZ = settings(max_examples=800, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GATE = CORPUS.gate(rate_per_s=1e9, burst=1 << 30)     # one gate across examples: its state is part of the input


def _check(data: bytes) -> None:
    try:
        a = an.decode_announcement(data)
    except AnnounceError as exc:
        assert exc.reason in ("malformed", "unsupported_version")
    else:
        assert an.encode_announcement(a) == data                     # canonical: one value, one encoding
    for sender in ("a", "b"):
        v = GATE.admit(data, sender, NOW)
        assert isinstance(v, an.Accepted | an.Duplicate | an.Rejected)
        if isinstance(v, an.Rejected):
            assert v.reason in an.REASONS and len(v.detail) < 1000


@FUZZ
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_give_a_verdict(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.sampled_from([b"PTAN\x01\x01", b"PTAN\x01\x01\x00", b"PTAN\x02\x01", b"PTAN\x01\x02"]),
       st.binary(max_size=1600))
def test_a_header_on_arbitrary_bytes_gives_a_verdict(header: bytes, tail: bytes) -> None:
    _check(header + tail)


@settings(FUZZ, max_examples=1200)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1,
                                         max_size=6), st.integers(0, 4000), st.binary(max_size=40),
       st.integers(0, 4000))
def test_mutated_valid_announcements_give_a_verdict(seed: bytes, edits: list[tuple[int, int]], cut: int,
                                                    insert: bytes, drop: int) -> None:
    data = bytearray(seed)
    for at, value in edits:
        data[at % len(data)] = value
    at = cut % (len(data) + 1)
    data[at:at] = insert
    if drop % 3 == 0:
        del data[drop % (len(data) + 1):]
    _check(bytes(data))


# --- valid announcements -------------------------------------------------------------------------------

SITE = CORPUS.seeds[1]            # site 2: its certificate allows 10.2.0.0/16 and 10.3.i.0/24, i < 40
SITE_CERT = an.decode_announcement(SITE.data).cert_bytes
names = st.from_regex(r"[a-z][a-z0-9-]{0,14}", fullmatch=True)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
endpoints = st.lists(st.builds(Endpoint, names, addresses, st.integers(1, 65535)), max_size=16,
                     unique_by=lambda e: e.uplink)
capabilities = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True), max_size=16, unique=True)
prefixes = st.lists(st.one_of(
    st.builds(lambda n, length: ipaddress.ip_network((0x0A020000 | (n << 8 & 0xFFFF), length), strict=False),
              st.integers(0, 255), st.integers(16, 32)),
    st.builds(lambda i: ipaddress.ip_network(f"10.3.{i}.0/24"), st.integers(0, 39))), max_size=64)


@settings(FUZZ, max_examples=300)
@given(endpoints, capabilities, prefixes, st.integers(1, 2**64 - 1), st.integers(-3_600_000, 30_000), st.booleans(),
       st.binary(min_size=32, max_size=32).filter(any))
def test_valid_announcements_round_trip_and_are_admitted(eps: list[Endpoint], caps: list[str], ps: list[Any],
                                                         seq: int, skew_ms: int, leaving: bool, wg: bytes) -> None:
    data = an.sign_announcement(SITE.key, SITE_CERT, wg_key=wg, endpoints=eps, capabilities=caps, prefixes=ps,
                                timestamp_ms=NOW * 1000 + skew_ms, sequence=seq, leaving=leaving)
    a = an.decode_announcement(data)
    assert an.encode_announcement(a) == data and len(data) <= an.MAX_ANNOUNCEMENT_BYTES
    assert a.endpoints == tuple(sorted(eps, key=lambda e: e.uplink)) and a.capabilities == tuple(sorted(caps))
    assert set(a.prefixes) == set(ps)
    assert (a.sequence, a.leaving, a.wg_key, a.site_id) == (seq, leaving, wg, 2)
    gate = CORPUS.gate()
    v = gate.admit(data, "a", NOW)
    assert isinstance(v, an.Accepted) and v.announcement == a and gate.held(2) == a
    assert isinstance(gate.admit(data, "b", NOW), an.Duplicate)
