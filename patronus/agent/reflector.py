"""The probe reflector, in its own small process.

A reflector's answer time is part of every RTT its peers measure. Inside the agent it would share an
interpreter with the API, SQLite commits and the garbage collector, and any pause of those (tens of
ms) would delay every reply and make peers with a 20 ms probe interval declare live paths Down. So
the agent starts this process (same network namespace, its child), which does nothing but reflect:
no cyclic garbage collection, no other work, one `select` loop over one socket per uplink. With
`probe.realtime_priority` set it runs SCHED_FIFO (`patronus.agent.sched`): a busy host then delays
its answers by microseconds, not by a scheduler slice.

Protocol with the agent: the agent writes one JSON object on our stdin (the uplinks to listen on,
each peer address's pair key and the file for our counters), we answer `{"ready": true}` on stdout
once every socket is bound (or `{"error": ...}` and exit 2) and close stdin and stdout. Once a second
we replace the counters file with
`{"counters": {uplink: {"replies": n, "send_errors": n, "rejected": {reason: n}}}, "at": t}`.
We exit on SIGTERM only: the reflector outlives its agent (it runs in a session of its own), so a
restarting agent's peers keep their probes answered and their paths to us Up. The next agent finds us
by the pid file it keeps (`ReflectorProcess`), and `patronus cleanup` stops us.

SIGHUP makes us re-read the peers and their keys from the spec's `peers_file` (the agent rewrites it
when mesh discovery changes its remotes), without closing a socket.

Each request is decoded with the pair key of its source address; a forged, truncated or
unauthenticated request, or one replayed within its stream's window, is dropped and counted. The
reply carries the reflector's CLOCK_REALTIME receive time and the request's padding (same size: the
path-MTU search depends on it), sent with DF set from the uplink's own socket.
"""

from __future__ import annotations

import contextlib
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


class _Stop(Exception):
    """SIGTERM: leave the loop at once, whatever it was waiting for."""


def _write_counters(path: str | None, counters: dict[str, dict[str, Any]]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"counters": counters, "at": time.time()}))
        os.replace(tmp, path)
    except OSError:
        pass             # the state directory went away (cleanup): the counters are nobody's business now


def _detach_stdio() -> None:
    """stdin and stdout point at /dev/null from now on: the agent that started us may be gone."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)


def _peers(doc: dict[str, Any]) -> dict[str, bytes | None]:
    return {a: (bytes.fromhex(k) if k else None) for a, k in doc["peers"].items()}


def _reload(refl: Reflector, peers_file: str | None) -> None:
    """SIGHUP: the agent's remotes changed (mesh discovery); their keys are in `peers_file`."""
    if not peers_file:
        return
    try:
        with open(peers_file) as fh:
            refl.peers = _peers(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass           # a half-written or missing file: keep the peers we have (the agent writes atomically)


def serve(spec: dict[str, Any]) -> int:
    refl = Reflector(_peers(spec))
    peers_file = spec.get("peers_file")
    _reload(refl, peers_file)
    socks: dict[int, tuple[str, socket.socket]] = {}
    counters_file = spec.get("counters_file")
    try:
        for up in spec["uplinks"]:
            s = open_path_socket(up["address"], up["interface"], int(up["mark"]), int(spec["port"]), df=True)
            socks[s.fileno()] = (up["name"], s)
            refl._c(up["name"])
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    sched_class = sched.apply(realtime=int(spec.get("realtime") or 0) or None)

    def on_term(*_: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # SIGHUP wakes the select at once (wakeup fd) and the peers are re-read before the next datagram
    wake_r, wake_w = socket.socketpair()
    for w in (wake_r, wake_w):
        w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGHUP, lambda *_: None)
    print(json.dumps({"ready": True, "sched": sched_class}), flush=True)
    _detach_stdio()
    fds = [*socks, wake_r.fileno()]
    next_report = time.monotonic() + 1.0
    try:
        while True:
            timeout = max(0.0, next_report - time.monotonic())
            ready, _, _ = select.select(fds, [], [], timeout)
            for fd in ready:
                if fd == wake_r.fileno():
                    with contextlib.suppress(OSError):
                        wake_r.recv(512)
                    _reload(refl, peers_file)
                    continue
                name, s = socks[fd]
                while True:
                    try:
                        data, addr = s.recvfrom(_MAX_DGRAM)
                    except OSError:          # nothing more waiting (EAGAIN), or an ICMP error reported
                        break
                    reply = refl.handle(name, data, addr, time.time_ns())
                    if reply is not None:
                        try:
                            s.sendto(reply, addr)
                        except OSError:
                            refl.counters[name]["send_errors"] += 1
            if time.monotonic() >= next_report:
                next_report += 1.0
                _write_counters(counters_file, refl.counters)
    except _Stop:
        pass
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
