"""The UDP flow sender on loopback: it sends nothing before the instant it is given (`--start-at`), then
its packets at the rate, numbered from 0, each stamped with its send time."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from emulation.udpflow import HEADER, send

pytestmark = pytest.mark.unit


def _collect(sock: socket.socket, into: list[tuple[int, int]], until_n: int) -> None:
    sock.settimeout(5.0)
    while len(into) < until_n:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return
        into.append(HEADER.unpack_from(data))


@pytest.mark.parametrize("ahead_s", [0.3, -5.0])          # a start ahead, and one already past (now)
def test_the_sender_starts_at_the_instant_it_is_given(ahead_s: float) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    got: list[tuple[int, int]] = []
    reader = threading.Thread(target=_collect, args=(rx, got, 10))
    reader.start()
    called = time.time()
    start_at = called + ahead_s
    try:
        sent = send(("127.0.0.1", rx.getsockname()[1]), rate=100.0, duration=0.1, start_at=start_at)
    finally:
        reader.join(10)
        rx.close()
    assert sent == 10 and [seq for seq, _ in got] == list(range(10))
    first_ns = got[0][1]
    assert first_ns >= max(start_at, called) * 1e9              # nothing before the instant
    assert first_ns < (max(start_at, called) + 1.0) * 1e9        # and it did start
