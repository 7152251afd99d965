"""Kernel receive timestamps: when a datagram or frame reached the socket, not when we read it.

A receiver that stamps arrivals with `time.time_ns()` after `recv` adds its own scheduling delay to
every one-way delay and every gap it measures: on a busy 2-core host a receiver woken 200 ms late
read a burst of packets at once, and the run reported a 250 ms delay spike on a clean path. With
`SO_TIMESTAMPNS` the kernel stamps each packet (CLOCK_REALTIME) as it is queued on the socket, so the
measurement is the network's, whenever the process gets to it.

    enable(sock)
    data, addr, t_ns = recv_stamped(sock, 2048)     # t_ns: kernel arrival time, CLOCK_REALTIME ns
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

SO_TIMESTAMPNS = 35                    # linux/asm-generic/socket.h (socket.SO_TIMESTAMPNS is not exported)
_TIMESPEC = struct.Struct("@qq")
ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size)


def enable(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def stamp_of(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel timestamp (ns) in a recvmsg's ancillary data, None if it carries none."""
    for level, kind, val in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(val) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(val)
            return int(sec * 1_000_000_000 + nsec)
    return None


def recv_stamped(sock: socket.socket, bufsize: int) -> tuple[bytes, Any, int]:
    """recvfrom with the kernel's arrival time; falls back to the read time if the kernel gave none."""
    data, anc, _flags, addr = sock.recvmsg(bufsize, ANCBUF)
    t = stamp_of(anc)
    return data, addr, t if t is not None else time.time_ns()
