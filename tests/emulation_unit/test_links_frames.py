"""The relay's frame surgery on synthetic frames: checksums, GSO segmentation, corruption."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from emulation.links.frames import (
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    VNET,
    VNET_F_NEEDS_CSUM,
    VNET_LEN,
    corrupt_frame,
    finish_checksum,
    ip_header_checksum,
    ones_sum,
    payload_offset,
    pseudo_header_sum,
    segment_gso,
)

pytestmark = pytest.mark.unit

ETH = bytes.fromhex("020000000002" "020000000001")


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4(proto: int, l4: bytes, ident: int = 100) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0,
                              ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address("10.0.0.2").packed))
    h[10:12] = ip_header_checksum(h).to_bytes(2, "big")
    return bytes(h) + l4


def ipv6(proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, ipaddress.ip_address("fd00::1").packed,
                       ipaddress.ip_address("fd00::2").packed) + l4


def tcp(seq: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 5001, seq, 7, 5 << 4, flags, 65535, 0, 0) + payload


def udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, 5001, 8 + len(payload), 0) + payload


def frame(l3: bytes, v6: bool = False, vnet: bytes | None = None) -> bytearray:
    return bytearray((vnet or bytes(VNET_LEN)) + ETH + (b"\x86\xdd" if v6 else b"\x08\x00") + l3)


def l4_valid(fr: bytes | bytearray, proto: int) -> bool:
    """The L4 checksum verifies (sum over pseudo-header and segment is 0xffff)."""
    l3 = VNET_LEN + 14
    v4 = fr[l3] >> 4 == 4
    l4 = l3 + (20 if v4 else 40)
    seg = bytes(fr[l4:])
    return ones_sum(seg, pseudo_header_sum(fr, l3, len(seg), proto)) == 0xFFFF


def with_partial_checksum(fr: bytearray, proto: int) -> bytearray:
    """What a checksum-offloading sender hands over: the pseudo-header sum in the field, NEEDS_CSUM."""
    l3 = VNET_LEN + 14
    l4 = l3 + (20 if fr[l3] >> 4 == 4 else 40)
    off = 16 if proto == 6 else 6
    fr[l4 + off:l4 + off + 2] = pseudo_header_sum(fr, l3, len(fr) - l4, proto).to_bytes(2, "big")
    VNET.pack_into(fr, 0, VNET_F_NEEDS_CSUM, 0, 0, 0, l4 - VNET_LEN, off)
    return fr


def test_ones_sum_matches_naive() -> None:
    rng = random.Random(1)
    for n in [0, 1, 2, 3, 19, 20, 1500, 1501] + [rng.randrange(0, 3000) for _ in range(200)]:
        data = rng.randbytes(n)
        assert ones_sum(data) == naive_sum(data), n
    assert ones_sum(b"\xff\xff") == 0xFFFF and ones_sum(b"\0\0") == 0


def test_finish_checksum_completes_a_partial_udp_checksum() -> None:
    fr = with_partial_checksum(frame(ipv4(17, udp(b"hello world!"))), 17)
    assert not l4_valid(fr, 17)
    _, _, _, _, cs, co = VNET.unpack_from(fr)
    finish_checksum(fr, VNET_LEN + cs, co)
    assert l4_valid(fr, 17)


@pytest.mark.parametrize("v6", [False, True])
def test_segment_tcp_gso(v6: bool) -> None:
    payload = random.Random(2).randbytes(10_000)
    mss = 1448
    seg_l3 = (ipv6 if v6 else ipv4)(6, tcp(1_000_000, 0x18 | 0x01, payload))   # PSH|ACK|FIN on the last
    vnet = VNET.pack(VNET_F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, 0, mss, 0, 0)
    segs = segment_gso(frame(seg_l3, v6, vnet))
    assert segs is not None and len(segs) == 7
    got = b""
    for i, seg in enumerate(segs):
        flags, gso, _, _, cs, co = VNET.unpack_from(seg)
        assert gso == 0 and flags == VNET_F_NEEDS_CSUM and co == 16
        s = bytearray(seg)
        l3 = VNET_LEN + 14
        l4 = l3 + (40 if v6 else 20)
        assert cs == l4 - VNET_LEN
        data = bytes(s[l4 + 20:])
        assert len(data) == (mss if i < 6 else 10_000 - 6 * mss)
        if v6:
            assert struct.unpack_from("!H", s, l3 + 4)[0] == 20 + len(data)
        else:
            tot, ident = struct.unpack_from("!HH", s, l3 + 2)
            assert tot == 40 + len(data) and ident == 100 + i
            assert ip_header_checksum(s[l3:l3 + 20]) == struct.unpack_from("!H", s, l3 + 10)[0]
        assert struct.unpack_from("!I", s, l4 + 4)[0] == 1_000_000 + i * mss
        tcp_flags = s[l4 + 13]
        assert (tcp_flags & 0x09) == (0x09 if i == 6 else 0)            # FIN and PSH only on the last
        finish_checksum(s, VNET_LEN + cs, co)
        assert l4_valid(s, 6)
        got += data
    assert got == payload


def test_segment_udp_gso() -> None:
    payload = random.Random(3).randbytes(3000)
    vnet = VNET.pack(VNET_F_NEEDS_CSUM, GSO_UDP_L4, 0, 1200, 0, 0)
    segs = segment_gso(frame(ipv4(17, udp(payload)), vnet=vnet))
    assert segs is not None and [len(s) - VNET_LEN - 14 - 28 for s in segs] == [1200, 1200, 600]
    for s in segs:
        b = bytearray(s)
        assert struct.unpack_from("!H", b, VNET_LEN + 14 + 24)[0] == 8 + len(b) - VNET_LEN - 14 - 28
        _, _, _, _, cs, co = VNET.unpack_from(b)
        finish_checksum(b, VNET_LEN + cs, co)
        assert l4_valid(b, 17)


def test_segment_refuses_what_it_does_not_know() -> None:
    assert segment_gso(frame(ipv4(17, udp(bytes(3000))), vnet=VNET.pack(1, GSO_UDP, 0, 1200, 0, 0))) is None
    assert segment_gso(frame(ipv4(17, udp(bytes(3000))), vnet=VNET.pack(1, GSO_TCPV4, 0, 1200, 0, 0))) is None
    assert segment_gso(frame(ipv4(6, tcp(1, 0x10, bytes(100))), vnet=VNET.pack(1, GSO_TCPV4, 0, 0, 0, 0))) is None


def test_corrupt_flips_one_bit_past_the_ip_header_and_breaks_the_checksum() -> None:
    orig = with_partial_checksum(frame(ipv4(17, udp(b"x" * 64))), 17)
    reference = bytearray(orig)
    _, _, _, _, cs, co = VNET.unpack_from(reference)
    finish_checksum(reference, VNET_LEN + cs, co)
    for k in range(40):
        fr = bytearray(orig)

        def pick(span: int, k: int = k) -> tuple[int, int]:
            return k * 7 % span, 1 << (k % 8)
        corrupt_frame(fr, pick)
        assert VNET.unpack_from(fr)[0] & VNET_F_NEEDS_CSUM == 0
        diff = [i for i in range(VNET_LEN, len(fr)) if fr[i] != reference[i]]
        assert len(diff) == 1 and diff[0] >= payload_offset(fr)
        assert bin(fr[diff[0]] ^ reference[diff[0]]).count("1") == 1
        assert not l4_valid(fr, 17)
