"""Frame surgery for the relay: virtio-net headers, Internet checksums, GSO segmentation, corruption.

Pure functions on bytes, unit-tested on synthetic frames.

Why a virtio-net header: the relay's AF_PACKET sockets use `PACKET_VNET_HDR`, so every frame comes
with the kernel's offload metadata (10 bytes in front of the Ethernet header) and goes back out
with it. Without it two things break on veth: a sender's checksum offload leaves UDP/TCP checksums
*partial* (only the pseudo-header sum is in the packet, `CHECKSUM_PARTIAL`); the relay would
re-inject those frames as ordinary ones and the receiver would drop them as corrupt (measured here:
`InCsumErrors` at the receiver for every datagram). With the header the frame keeps
`NEEDS_CSUM`/`csum_start`/`csum_offset` and the kernel completes the checksum on the way out. And a
sender's TSO/GSO hands the relay 64 KB "super-frames" (`gso_type` set); `segment_gso` cuts them into
the wire-size packets they stand for, so loss, rate and corruption apply per packet as on a real
link, whatever offloads the endpoints have.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

# struct virtio_net_hdr (legacy, native byte order for packet sockets)
VNET = struct.Struct("=BBHHHH")          # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size                     # 10
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80
ETH_LEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
NO_OFFLOAD = VNET.pack(0, 0, 0, 0, 0, 0)


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """Ones'-complement sum of big-endian 16-bit words, folded to 16 bits (not complemented).

    Uses 2^16 ≡ 1 (mod 0xffff): the sum of the words is the number itself modulo 0xffff."""
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    v = int.from_bytes(b, "big")
    s = (v % 0xFFFF) + start
    s = (s & 0xFFFF) + (s >> 16)
    if s == 0 and (v or start):
        return 0xFFFF
    return s


def ip_header_checksum(header: bytes | bytearray) -> int:
    """The IPv4 header checksum of `header` with its checksum field taken as zero."""
    h = bytearray(header)
    h[10:12] = b"\0\0"
    return ~ones_sum(h) & 0xFFFF


def pseudo_header_sum(frame: bytes | bytearray, l3: int, l4_len: int, proto: int) -> int:
    """Folded sum of the IPv4/IPv6 pseudo-header of the packet whose IP header starts at `l3`."""
    if frame[l3] >> 4 == 4:
        ph = bytes(frame[l3 + 12:l3 + 20]) + bytes((0, proto)) + l4_len.to_bytes(2, "big")
    else:
        ph = bytes(frame[l3 + 8:l3 + 40]) + l4_len.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return ones_sum(ph)


def finish_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """Do what the kernel does for CHECKSUM_PARTIAL: the field at csum_start+csum_offset holds the
    pseudo-header sum; sum from csum_start to the end and store the complement. Offsets are from
    the start of `frame`."""
    at = csum_start + csum_offset
    if at + 2 > len(frame):
        return
    c = ~ones_sum(memoryview(frame)[csum_start:]) & 0xFFFF
    frame[at:at + 2] = (c or 0xFFFF).to_bytes(2, "big")


def l3_offset(frame: bytes | bytearray | memoryview, base: int = VNET_LEN) -> tuple[int, int] | None:
    """(ethertype, offset of the IP header) for an untagged IPv4/IPv6 frame, else None."""
    if len(frame) < base + ETH_LEN + 20:
        return None
    et = (frame[base + 12] << 8) | frame[base + 13]
    if et in (ETH_P_IP, ETH_P_IPV6):
        return et, base + ETH_LEN
    return None


def payload_offset(frame: bytes | bytearray | memoryview, base: int = VNET_LEN) -> int:
    """Where the data past the IP header begins (the Ethernet payload for non-IP frames)."""
    l3 = l3_offset(frame, base)
    if l3 is None:
        return base + ETH_LEN
    et, off = l3
    return off + ((frame[off] & 0x0F) * 4 if et == ETH_P_IP else 40)


def segment_gso(frame: bytes | bytearray | memoryview) -> list[bytes] | None:
    """Cut a GSO super-frame (vnet header with gso_type TCPv4/TCPv6/UDP_L4) into the packets it
    stands for, each with a vnet header asking the kernel to finish its L4 checksum. None when the
    frame is not one we know how to cut (the caller forwards it whole)."""
    flags, gso_type, _hdr_len, gso_size, _cs, _co = VNET.unpack_from(frame)
    kind = gso_type & ~GSO_ECN
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4) or gso_size == 0:
        return None
    l3i = l3_offset(frame)
    if l3i is None:
        return None
    et, l3 = l3i
    if et == ETH_P_IP:
        ihl = (frame[l3] & 0x0F) * 4
        proto, l4 = frame[l3 + 9], l3 + ihl
    else:
        proto, l4 = frame[l3 + 6], l3 + 40           # no extension headers in GSO frames we cut
    want = IPPROTO_UDP if kind == GSO_UDP_L4 else IPPROTO_TCP
    if proto != want or len(frame) < l4 + 8:
        return None
    l4h = ((frame[l4 + 12] >> 4) * 4) if proto == IPPROTO_TCP else 8
    data_off = l4 + l4h
    if len(frame) <= data_off:
        return None
    mv = memoryview(frame)
    payload = mv[data_off:]
    head = bytes(mv[:data_off])
    check_off = 16 if proto == IPPROTO_TCP else 6
    seq = int.from_bytes(head[l4 + 4:l4 + 8], "big") if proto == IPPROTO_TCP else 0
    ip_id = int.from_bytes(head[l3 + 4:l3 + 6], "big") if et == ETH_P_IP else 0
    out: list[bytes] = []
    total = len(payload)
    for i, off in enumerate(range(0, total, gso_size)):
        chunk = payload[off:off + gso_size]
        h = bytearray(head)
        VNET.pack_into(h, 0, VNET_F_NEEDS_CSUM, GSO_NONE, 0, 0, l4 - VNET_LEN, check_off)
        l4_len = l4h + len(chunk)
        if et == ETH_P_IP:
            h[l3 + 2:l3 + 4] = (ihl + l4_len).to_bytes(2, "big")
            h[l3 + 4:l3 + 6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            h[l3 + 10:l3 + 12] = ip_header_checksum(h[l3:l3 + ihl]).to_bytes(2, "big")
        else:
            h[l3 + 4:l3 + 6] = l4_len.to_bytes(2, "big")
        if proto == IPPROTO_TCP:
            h[l4 + 4:l4 + 8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
            fl = h[l4 + 13]
            if off + gso_size < total:
                fl &= ~(TCP_FIN | TCP_PSH) & 0xFF
            if i > 0:
                fl &= ~TCP_CWR & 0xFF
            h[l4 + 13] = fl
        else:
            h[l4 + 4:l4 + 6] = l4_len.to_bytes(2, "big")
        h[l4 + check_off:l4 + check_off + 2] = pseudo_header_sum(h, l3, l4_len, proto).to_bytes(2, "big")
        out.append(bytes(h) + bytes(chunk))
    del flags
    return out


def corrupt_frame(frame: bytearray, pick: Callable[[int], tuple[int, int]]) -> None:
    """Flip one bit of one byte past the IP header, in place. A checksum the kernel was to finish
    (NEEDS_CSUM) is finished first and the flag cleared, so the receiver sees a packet whose
    checksum no longer matches, as on a wire (netem does the same: checksum, then corrupt)."""
    flags, gso_type, hdr_len, gso_size, cs, co = VNET.unpack_from(frame)
    if flags & VNET_F_NEEDS_CSUM and gso_type == GSO_NONE:
        finish_checksum(frame, VNET_LEN + cs, co)
        VNET.pack_into(frame, 0, flags & ~VNET_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, 0, 0)
    lo = payload_offset(frame)
    if lo >= len(frame):
        lo = min(VNET_LEN + ETH_LEN, len(frame) - 1)
    if lo < VNET_LEN:
        return
    idx, mask = pick(len(frame) - lo)
    frame[lo + idx] ^= mask
