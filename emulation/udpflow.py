"""A constant-rate UDP flow with sequence numbers and send timestamps, and its receiver.

    python -m emulation.udpflow send --to 10.2.0.10:5001 --rate 1000 --duration 10 [--sport 40001] [--start-at T]
    python -m emulation.udpflow recv --port 5001 --out arrivals.json [--duration 12] [--ready FILE] [--linger 0.5]

Each datagram carries `!QQ` (sequence, CLOCK_REALTIME send time in ns) and padding. All network
namespaces share the host's clock, and the receiver takes each arrival time from the kernel
(`SO_TIMESTAMPNS`: when the datagram reached its socket), so the one-way delay is exact however late
the receiver itself gets to run. The receiver writes every
arrival (seq, sent_ns, received_ns) as JSON when it stops (SIGTERM, SIGINT or --duration), and
`analyse()` turns that into the longest gap, losses and reordering. A runner stops the receiver once
the sender is done, when the flow's last datagrams may still be queued on the socket or crossing the
network: the receiver reads on until its socket has been quiet for `--linger` seconds (at most ten
times that), so that they are counted as arrived, not lost.

The sender paces on an absolute schedule (packet i leaves at start + i/rate), so a late wake-up is
caught up rather than accumulated, and it keeps one source port for the whole run: one connection,
one conntrack entry, which is what a sticky flow is.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulation.traffic import kstamp
from emulation.traffic.stopflag import StopFlag
from patronus.agent import sched

HEADER = struct.Struct("!QQ")
LINGER_S = 0.5          # the receiver's quiet time before it stops (see the module's header)


def send(dst: tuple[str, int], rate: float, duration: float, sport: int = 0, size: int = 64, burst: int = 1,
         dscp: int = 0, start_at: float | None = None) -> int:
    """`rate` ticks per second, `burst` packets per tick (video: 30 frames/s of several packets), from
    `start_at` (wall-clock seconds; now when None or past) for `duration`. A runner starts the process
    ahead of the flow's start and names the instant: a Python process takes ~0.5 s to start on a busy
    host, which a flow started on the instant would begin late by."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", sport))
        if dscp:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
        pad = bytes(max(0, size - HEADER.size))
        stop = StopFlag(signal.SIGTERM)
        if start_at is not None:
            while not stop and (ahead := start_at - time.time()) > 0:
                time.sleep(min(ahead, 0.1))     # to the flow's start on the scenario clock, an absolute schedule
        start = time.monotonic()
        n = 0
        total = int(rate * duration)
        seq = 0
        while n < total and not stop:
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)     # pacing to an absolute schedule, not waiting for a condition
            for _ in range(burst):
                # unreachable for a moment (no path): the packet is lost, go on
                with contextlib.suppress(OSError):
                    s.sendto(HEADER.pack(seq, time.time_ns()) + pad, dst)
                seq += 1
            n += 1
        return seq


def receive(port: int, out: Path, duration: float | None, ready: Path | None, linger: float = LINGER_S) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    kstamp.enable(s)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    arrivals: list[tuple[int, int, int]] = []
    stop = StopFlag(signal.SIGTERM, signal.SIGINT)
    if ready is not None:
        ready.write_text("ready\n")
    end = time.monotonic() + duration if duration else None

    def take() -> bool:
        """One datagram (False: none came within the socket's timeout)."""
        try:
            data, _addr, now = kstamp.recv_stamped(s, 2048)     # the kernel's arrival time, not ours
        except TimeoutError:
            return False
        if len(data) >= HEADER.size:
            seq, sent = HEADER.unpack_from(data)
            arrivals.append((seq, sent, now))
        return True

    while not stop and (end is None or time.monotonic() < end):
        take()
    if linger > 0:              # what is queued or still on its way: until the socket is quiet
        s.settimeout(linger)
        last = time.monotonic() + 10 * linger
        while time.monotonic() < last and take():
            pass
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "arrivals": arrivals}))
    tmp.replace(out)
    return len(arrivals)


@dataclass(frozen=True)
class FlowStats:
    received: int
    lost: int
    max_gap_ms: float
    gap_start_s: float | None      # wall time the longest gap began (last arrival before it)
    mean_delay_ms: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def analyse(path: Path, *, since_ns: int | None = None, until_ns: int | None = None,
            sent: int | None = None) -> FlowStats:
    data = json.loads(path.read_text())
    arr = sorted((a for a in data["arrivals"] if (since_ns is None or a[2] >= since_ns)
                  and (until_ns is None or a[2] <= until_ns)), key=lambda a: a[2])
    if not arr:
        return FlowStats(0, sent or 0, float("inf"), None, float("nan"))
    gap, at = 0, None
    for a, b in itertools.pairwise(arr):
        if b[2] - a[2] > gap:
            gap, at = b[2] - a[2], a[2]
    seqs = {a[0] for a in arr}
    expected = sent if sent is not None else (max(seqs) + 1)
    return FlowStats(received=len(seqs), lost=max(0, expected - len(seqs)), max_gap_ms=gap / 1e6,
                     gap_start_s=at / 1e9 if at is not None else None,
                     mean_delay_ms=sum(a[2] - a[1] for a in arr) / len(arr) / 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.udpflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("send")
    sp.add_argument("--to", required=True, help="HOST:PORT")
    sp.add_argument("--rate", type=float, default=1000.0, help="packets per second")
    sp.add_argument("--duration", type=float, default=10.0)
    sp.add_argument("--sport", type=int, default=0)
    sp.add_argument("--size", type=int, default=64)
    sp.add_argument("--burst", type=int, default=1, help="packets per tick")
    sp.add_argument("--dscp", type=int, default=0)
    sp.add_argument("--start-at", type=float, default=None, metavar="EPOCH_S",
                    help="send from this wall-clock time (seconds since the epoch; default now)")
    for q in (sp, rp := sub.add_parser("recv")):
        q.add_argument("--realtime", type=int, default=None, metavar="PRIO",
                       help="run SCHED_FIFO at PRIO (1-99): a sender that wakes late sends late, which a "
                            "receiver reads as a gap the network did not make")
    rp.add_argument("--port", type=int, required=True)
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--duration", type=float, default=None)
    rp.add_argument("--ready", type=Path, default=None)
    rp.add_argument("--linger", type=float, default=LINGER_S, metavar="SECONDS",
                    help="once stopped, read on until the socket has been quiet this long (0: stop at once)")
    a = ap.parse_args(argv)
    if a.realtime is not None:
        sched.apply(realtime=a.realtime)
    if a.cmd == "send":
        host, _, port = a.to.rpartition(":")
        n = send((host, int(port)), a.rate, a.duration, a.sport, a.size, a.burst, a.dscp, a.start_at)
        print(json.dumps({"sent": n}))
    else:
        n = receive(a.port, a.out, a.duration, a.ready, a.linger)
        print(json.dumps({"received": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
