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


@pytest.mark.parametrize("linger", [0.4, 0.0])
def test_a_stopped_receiver_reads_what_is_still_on_its_way(linger: float, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A runner stops the receiver once the sender is done, with the last datagrams still crossing the
    network: they count as arrived. Here three are sent just before the stop and five more every 0.1 s
    after it; with --linger 0 (as before) the receiver stops at once and loses them, even those already
    queued on its socket (here it kept only the first)."""
    import json
    import signal
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out, ready = tmp_path / "arrivals.json", tmp_path / "ready"
    rx = subprocess.Popen([sys.executable, "-m", "emulation.udpflow", "recv", "--port", str(port), "--out", str(out),
                           "--ready", str(ready), "--linger", str(linger)])
    try:
        from emulation.wait import wait_for

        wait_for(ready.exists, 10.0, "the receiver to start", interval_s=0.02)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in range(3):
                tx.sendto(HEADER.pack(seq, time.time_ns()), ("127.0.0.1", port))
            rx.send_signal(signal.SIGTERM)
            for seq in range(3, 8):
                time.sleep(0.1)           # pacing the late datagrams, as a network delays them
                tx.sendto(HEADER.pack(seq, time.time_ns()), ("127.0.0.1", port))
        rx.wait(10)
    finally:
        rx.kill()
        rx.wait(5)
    got = sorted(a[0] for a in json.loads(out.read_text())["arrivals"])
    if linger:
        assert got == list(range(8))
    else:
        assert len(got) < 8
