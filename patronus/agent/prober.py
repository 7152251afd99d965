"""Probe sender and reflector on real UDP sockets (asyncio, `loop.add_reader` on raw sockets).

- **Reflector**, one per uplink: a socket bound to the uplink's address and the probe port (and to
  the uplink interface, with the uplink's mark, so the reply leaves the way the request came). It
  answers every valid request with `reflect()`, same size (path-MTU probes rely on that).
- **Sender**, one per path: a socket bound to the uplink's address on an ephemeral port, to the
  uplink interface (SO_BINDTODEVICE) and marked with the uplink's fwmark, sending to the remote
  endpoint's reflector. So a path's probes go out of its own uplink whatever the main routing table
  says, and one dead uplink shows as one dead path.

Every received datagram is decoded with the site pair's key; anything short, forged, of the wrong
type or session, or replayed (per-stream `ReplayWindow`) is dropped and counted by reason, and never
reaches the monitor. The sender's clock is `time.monotonic_ns()` carried in `t_send`, so the RTT of an
authenticated reply is measured from the send instant (the HMAC protects it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from patronus.agent.config import PathPlan, SiteConfig, UplinkConfig, probe_key
from patronus.agent.sockets import open_path_socket
from patronus.core.errors import PeerError
from patronus.core.model import PathId
from patronus.core.probe import Probe, ProbeType, ReplayWindow, decode, encode, reflect

log = logging.getLogger(__name__)

_MAX_DGRAM = 65535
_REFLECTOR_STREAMS = 4096        # replay windows kept per reflector (least recently used dropped)


def reject_reason(exc: PeerError) -> str:
    msg = str(exc)
    if "HMAC" in msg or "authenticat" in msg or "key" in msg:
        return "auth"
    if "short" in msg or "long" in msg:
        return "truncated"
    return "malformed"


@dataclass
class StreamCounters:
    sent: int = 0
    send_errors: int = 0
    replies: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class _Sender:
    def __init__(self, plan: PathPlan, key: bytes | None, port: int, sock: socket.socket) -> None:
        self.plan = plan
        self.key = key
        self.dest = (plan.endpoint.address, port)
        self.sock = sock
        self.session = int.from_bytes(os.urandom(4), "big") or 1
        self.window = ReplayWindow(4096)
        self.counters = StreamCounters()


class Prober:
    """Owns the probe sockets of one agent. `on_reply(path_id, seq, sent_at_s, now_s)` is called for
    each authentic reply; times are `time.monotonic()` seconds."""

    def __init__(self, cfg: SiteConfig, on_reply: Callable[[PathId, int, float, float], None]) -> None:
        self.cfg = cfg
        self.on_reply = on_reply
        self.senders: dict[PathId, _Sender] = {}
        self.reflectors: dict[str, socket.socket] = {}
        self.reflector_counters: dict[str, StreamCounters] = {}
        self._peer_key: dict[str, bytes | None] = {}          # remote endpoint address -> pair key
        self._reflector_windows: dict[str, OrderedDict[tuple[str, int, int], ReplayWindow]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        for r in cfg.remotes:
            k = probe_key(cfg, r)
            for ep in r.endpoints:
                self._peer_key[ep.address] = k

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        try:
            for up in self.cfg.uplinks:
                self._open_reflector(up)
            for p in self.cfg.paths:
                self.open_sender(p)
        except Exception:
            self.close()
            raise

    def _open_reflector(self, up: UplinkConfig) -> None:
        assert self._loop is not None
        # DF on replies: a path-MTU probe's reply must not be fragmented on the way back (else a too-big
        # probe would look like a fit)
        sock = open_path_socket(up.address, up.interface, up.mark, self.cfg.probe_port, df=True)
        self.reflectors[up.name] = sock
        self.reflector_counters[up.name] = StreamCounters()
        self._reflector_windows[up.name] = OrderedDict()
        self._loop.add_reader(sock.fileno(), self._on_reflector_readable, up.name, sock)

    def open_sender(self, p: PathPlan) -> None:
        assert self._loop is not None
        old = self.senders.pop(p.id, None)
        if old is not None:
            self._loop.remove_reader(old.sock.fileno())
            old.sock.close()
        sock = open_path_socket(p.uplink.address, p.uplink.interface, p.uplink.mark, 0)
        s = _Sender(p, self._peer_key.get(p.endpoint.address), self.cfg.probe_port, sock)
        self.senders[p.id] = s
        self._loop.add_reader(sock.fileno(), self._on_sender_readable, s)

    def close(self) -> None:
        socks = [s.sock for s in self.senders.values()] + list(self.reflectors.values())
        for sock in socks:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self.senders.clear()
        self.reflectors.clear()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, path_id: PathId, seq: int) -> None:
        s = self.senders.get(path_id)
        if s is None:
            return
        data = encode(Probe(ProbeType.REQUEST, s.session, seq, time.monotonic_ns()), s.key)
        try:
            s.sock.sendto(data, s.dest)
            s.counters.sent += 1
        except OSError as exc:
            # an uplink that is down (ENETUNREACH, ENODEV...) is a lost probe, not an agent failure
            s.counters.send_errors += 1
            if s.counters.send_errors in (1, 10, 100) or s.counters.send_errors % 1000 == 0:
                log.info("probe send on %s failed (%d so far): %s", path_id, s.counters.send_errors, exc)

    # -- receiving -------------------------------------------------------------------------------

    def _on_sender_readable(self, s: _Sender) -> None:
        while True:
            try:
                data, _addr = s.sock.recvfrom(_MAX_DGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return      # e.g. ICMP port unreachable reported on the socket: the probe is lost
            now = time.monotonic()
            try:
                p = decode(data, s.key)
            except PeerError as exc:
                s.counters.rejected[reject_reason(exc)] += 1
                continue
            if p.type is not ProbeType.REPLY or p.session != s.session:
                s.counters.rejected["unexpected"] += 1
                continue
            if not s.window.check_and_update(p.seq):
                s.counters.rejected["replay"] += 1
                continue
            s.counters.replies += 1
            self.on_reply(s.plan.id, p.seq, p.t_send_ns / 1e9, now)

    def _on_reflector_readable(self, uplink: str, sock: socket.socket) -> None:
        c = self.reflector_counters[uplink]
        windows = self._reflector_windows[uplink]
        while True:
            try:
                data, addr = sock.recvfrom(_MAX_DGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            t_ns = time.time_ns()
            host = addr[0]
            if host not in self._peer_key:
                c.rejected["unknown_peer"] += 1
                continue
            try:
                req = decode(data, self._peer_key[host])
            except PeerError as exc:
                c.rejected[reject_reason(exc)] += 1
                continue
            if req.type is not ProbeType.REQUEST:
                c.rejected["unexpected"] += 1
                continue
            stream = (host, addr[1], req.session)
            w = windows.get(stream)
            if w is None:
                w = windows[stream] = ReplayWindow(4096)
                if len(windows) > _REFLECTOR_STREAMS:
                    windows.popitem(last=False)
            else:
                windows.move_to_end(stream)
            if not w.check_and_update(req.seq):
                c.rejected["replay"] += 1
                continue
            try:
                sock.sendto(encode(reflect(req, t_ns), self._peer_key[host]), addr)
                c.replies += 1
            except OSError:
                c.send_errors += 1

    # -- reporting -------------------------------------------------------------------------------

    def rejected_total(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.senders.values():
            total.update(s.counters.rejected)
        for c in self.reflector_counters.values():
            total.update(c.rejected)
        return total
