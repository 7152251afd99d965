"""The probe reflector, in its own small process.

A reflector's answer time is part of every RTT its peers measure. Inside the agent it would share an
interpreter with the API, SQLite commits and the garbage collector, and any pause of those (tens of
ms) would delay every reply and make peers with a 20 ms probe interval declare live paths Down. So
the agent starts this process (same network namespace, its child), which does nothing but reflect:
no cyclic garbage collection, no other work, one `select` loop over one socket per uplink. With
`probe.realtime_priority` set it runs SCHED_FIFO (`patronus.agent.sched`): a busy host then delays
its answers by microseconds, not by a scheduler slice.

Protocol with the agent: the agent writes one JSON object on our stdin (the uplinks to listen on and
each peer address's pair key), we answer `{"ready": true}` on stdout once every socket is bound (or
`{"error": ...}` and exit 2), then print one JSON line of counters per second
(`{"counters": {uplink: {"replies": n, "send_errors": n, "rejected": {reason: n}}}}`). We exit when
stdin closes (the agent died or stopped) or on SIGTERM.

Each request is decoded with the pair key of its source address; a forged, truncated or
unauthenticated request, or one replayed within its stream's window, is dropped and counted. The
reply carries the reflector's CLOCK_REALTIME receive time and the request's padding (same size: the
path-MTU search depends on it), sent with DF set from the uplink's own socket.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import time
from collections import Counter, OrderedDict
from typing import Any

from patronus.agent import sched
from patronus.agent.sockets import open_path_socket
from patronus.core.errors import PeerError
from patronus.core.probe import ProbeType, ReplayWindow, decode, encode, reflect

_STREAMS = 4096          # replay windows kept per uplink (least recently used dropped)
_MAX_DGRAM = 65535


def reject_reason(exc: PeerError) -> str:
    msg = str(exc)
    if "HMAC" in msg or "authenticat" in msg or "key" in msg:
        return "auth"
    if "short" in msg or "long" in msg:
        return "truncated"
    return "malformed"


class Reflector:
    """Sans-loop core: `handle(uplink, data, addr, t_ns)` returns the reply bytes or None."""

    def __init__(self, peers: dict[str, bytes | None]) -> None:
        self.peers = peers
        self.counters: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, OrderedDict[tuple[str, int, int], ReplayWindow]] = {}

    def _c(self, uplink: str) -> dict[str, Any]:
        c = self.counters.get(uplink)
        if c is None:
            c = self.counters[uplink] = {"replies": 0, "send_errors": 0, "rejected": Counter()}
            self._windows[uplink] = OrderedDict()
        return c

    def handle(self, uplink: str, data: bytes, addr: tuple[str, int], t_ns: int) -> bytes | None:
        c = self._c(uplink)
        host = addr[0]
        if host not in self.peers:
            c["rejected"]["unknown_peer"] += 1
            return None
        key = self.peers[host]
        try:
            req = decode(data, key)
        except PeerError as exc:
            c["rejected"][reject_reason(exc)] += 1
            return None
        if req.type is not ProbeType.REQUEST:
            c["rejected"]["unexpected"] += 1
            return None
        windows = self._windows[uplink]
        stream = (host, addr[1], req.session)
        w = windows.get(stream)
        if w is None:
            w = windows[stream] = ReplayWindow(4096)
            if len(windows) > _STREAMS:
                windows.popitem(last=False)
        else:
            windows.move_to_end(stream)
        if not w.check_and_update(req.seq):
            c["rejected"]["replay"] += 1
            return None
        c["replies"] += 1
        return encode(reflect(req, t_ns), key)


def serve(spec: dict[str, Any]) -> int:
    peers = {a: (bytes.fromhex(k) if k else None) for a, k in spec["peers"].items()}
    refl = Reflector(peers)
    socks: dict[int, tuple[str, socket.socket]] = {}
    try:
        for up in spec["uplinks"]:
            s = open_path_socket(up["address"], up["interface"], int(up["mark"]), int(spec["port"]), df=True)
            socks[s.fileno()] = (up["name"], s)
            refl._c(up["name"])
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    sched_class = sched.apply(realtime=int(spec.get("realtime") or 0) or None)
    print(json.dumps({"ready": True, "sched": sched_class}), flush=True)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    fds = [*socks, stdin]
    next_report = time.monotonic() + 1.0
    while not stop:
        timeout = max(0.0, next_report - time.monotonic())
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            continue
        for fd in ready:
            if fd == stdin:
                try:
                    if not os.read(stdin, 4096):
                        stop = True          # the agent is gone
                except BlockingIOError:
                    pass
                continue
            name, s = socks[fd]
            while True:
                try:
                    data, addr = s.recvfrom(_MAX_DGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                reply = refl.handle(name, data, addr, time.time_ns())
                if reply is not None:
                    try:
                        s.sendto(reply, addr)
                    except OSError:
                        refl.counters[name]["send_errors"] += 1
        if time.monotonic() >= next_report:
            next_report += 1.0
            try:
                print(json.dumps({"counters": refl.counters}), flush=True)
            except BrokenPipeError:
                break
    for _, s in socks.values():
        s.close()
    return 0


def main() -> int:
    gc.disable()         # the loop makes no reference cycles; no collector pauses in the reply path
    line = sys.stdin.readline()
    try:
        spec = json.loads(line)
    except ValueError as exc:
        print(json.dumps({"error": f"bad spec: {exc}"}), flush=True)
        return 2
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main())
