"""Probe sender and reflector on real UDP sockets (asyncio, `loop.add_reader` on raw sockets).

- **Reflector**, one socket per uplink bound to the uplink's address and the probe port (and to the
  uplink interface, with the uplink's mark, so the reply leaves the way the request came). It runs
  in its own process (`reflector.py`) so that no pause of the agent (GC, SQLite, API) delays a
  peer's measurement, and so that it keeps answering while the agent restarts;
  `ReflectorProcess` starts (or adopts) it and reads its counters.
- **Sender**, one per path: a socket bound to the uplink's address on an ephemeral port, to the
  uplink interface (SO_BINDTODEVICE) and marked with the uplink's fwmark, sending to the remote
  endpoint's reflector. So a path's probes go out of its own uplink whatever the main routing table
  says, and one dead uplink shows as one dead path.

Every received datagram is decoded with the site pair's key; anything short, forged, of the wrong
type or session, or replayed (per-stream `ReplayWindow`) is dropped and counted by reason, and never
reaches the monitor. The sender's clock is `time.monotonic_ns()` carried in `t_send`, so the RTT of an
authenticated reply is measured from the send instant (the HMAC protects it) to the kernel's receive
timestamp (SO_TIMESTAMPNS), not to when the loop got round to reading it. `drain()` reads every
waiting reply; the agent calls it before it lets any probe time out, so a pause of the agent's own
loop never turns an answered probe into a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patronus.agent.config import PathPlan, SiteConfig, probe_key
from patronus.agent.procs import alive, argv_of, start_ticks
from patronus.agent.procs import stop as stop_process
from patronus.agent.reflector import reject_reason
from patronus.agent.sockets import open_path_socket
from patronus.core.errors import PeerError
from patronus.core.model import PathId
from patronus.core.probe import Probe, ProbeType, ReplayWindow, decode, encode

log = logging.getLogger(__name__)

_MAX_DGRAM = 65535
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SCM_TIMESTAMPNS = _SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)




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


def _pair_keys(cfg: SiteConfig) -> dict[str, bytes | None]:
    """Each remote endpoint address's probe pair key (None: authentication off)."""
    return {ep.address: probe_key(cfg, r) for r in cfg.remotes for ep in r.endpoints}


class Prober:
    """Owns the probe sockets of one agent. `on_reply(path_id, seq, sent_at_s, now_s)` is called for
    each authentic reply; times are `time.monotonic()` seconds."""

    def __init__(self, cfg: SiteConfig, on_reply: Callable[[PathId, int, float, float], None]) -> None:
        self.cfg = cfg
        self.on_reply = on_reply
        self.senders: dict[PathId, _Sender] = {}
        self._peer_key = _pair_keys(cfg)                      # remote endpoint address -> pair key
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        try:
            for p in self.cfg.paths:
                self.open_sender(p)
        except Exception:
            self.close()
            raise

    def retarget(self, cfg: SiteConfig) -> None:
        """The site's remotes changed (mesh discovery): senders for the new paths, none for the gone."""
        self.cfg = cfg
        self._peer_key = _pair_keys(cfg)
        want = {p.id: p for p in cfg.paths}
        for pid in [pid for pid in self.senders if pid not in want]:
            s = self.senders.pop(pid)
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(s.sock.fileno())
            s.sock.close()
        for pid, p in want.items():
            if pid not in self.senders or self.senders[pid].plan != p:
                self.open_sender(p)

    def open_sender(self, p: PathPlan) -> None:
        assert self._loop is not None
        old = self.senders.pop(p.id, None)
        if old is not None:
            self._loop.remove_reader(old.sock.fileno())
            old.sock.close()
        sock = open_path_socket(p.uplink.address, p.uplink.interface, p.uplink.mark, 0)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        s = _Sender(p, self._peer_key.get(p.endpoint.address), self.cfg.probe_port, sock)
        self.senders[p.id] = s
        self._loop.add_reader(sock.fileno(), self._on_sender_readable, s)

    def close(self) -> None:
        socks = [s.sock for s in self.senders.values()]
        for sock in socks:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self.senders.clear()

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

    def drain(self) -> None:
        """Read every reply waiting on any sender socket (each with its kernel arrival time)."""
        for s in list(self.senders.values()):
            self._on_sender_readable(s)

    def _on_sender_readable(self, s: _Sender) -> None:
        while True:
            try:
                data, anc, _flags, _addr = s.sock.recvmsg(_MAX_DGRAM, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return      # e.g. ICMP port unreachable reported on the socket: the probe is lost
            mono = time.monotonic()
            now = mono
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    # the kernel stamped CLOCK_REALTIME; carry it over to the monotonic clock
                    arrived = mono - (time.time() - (sec + nsec / 1e9))
                    now = min(mono, max(arrived, mono - 5.0))
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


# Popen objects of reflectors this process started and left running (a graceful stop): kept so that
# Popen does not reap-warn about a child it lost track of; the process itself outlives us.
_KEPT: list[subprocess.Popen[bytes]] = []


class ReflectorProcess:
    """The reflector process (`python -m patronus.agent.reflector`): started, or adopted from an earlier
    agent of the site, and its latest counters.

    It runs in a session of its own and outlives the agent: `close(keep=True)` (a graceful stop) leaves
    it answering the peers' probes, `close(keep=False)` stops it. `state_dir/reflector.pid` records it
    (pid, start time, the digest of its spec); `start` adopts the recorded process when it is still
    that process (pid and start time) and serves the same spec (ports, uplinks, peers and keys: the
    digest), and otherwise replaces it (stops the recorded one, when it is a reflector, and starts one).
    Its counters come from `state_dir/reflector-counters.json`, which it rewrites every second."""

    PID_FILE = "reflector.pid"
    COUNTERS_FILE = "reflector-counters.json"
    PEERS_FILE = "reflector-peers.json"       # a mesh site's: its peers change while it runs (SIGHUP)

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_ticks: int | None = None
        self.adopted = False

    @property
    def pid_file(self) -> Path:
        return self.cfg.state_dir / self.PID_FILE

    @property
    def counters_file(self) -> Path:
        return self.cfg.state_dir / self.COUNTERS_FILE

    @property
    def peers_file(self) -> Path:
        return self.cfg.state_dir / self.PEERS_FILE

    def peers(self) -> dict[str, str | None]:
        return {a: k.hex() if k is not None else None for a, k in _pair_keys(self.cfg).items()}

    def spec(self) -> dict[str, Any]:
        peers = {} if self.cfg.mesh is not None else self.peers()
        return {"port": self.cfg.probe_port, "peers": peers, "counters_file": str(self.counters_file),
                "peers_file": str(self.peers_file) if self.cfg.mesh is not None else None,
                "realtime": self.cfg.probe_realtime,
                "uplinks": [{"name": u.name, "address": u.address, "interface": u.interface, "mark": u.mark}
                            for u in self.cfg.uplinks]}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()

    @staticmethod
    def is_reflector(pid: int, start: int | None) -> bool:
        return b"patronus.agent.reflector" in argv_of(pid) and alive(pid, start)

    def recorded(self) -> dict[str, Any] | None:
        """The pid file's record ({pid, start, digest, owner}), None when there is none or it is unreadable."""
        try:
            rec = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int):
            return None
        return rec

    def set_peers(self, cfg: SiteConfig) -> None:
        """A mesh site's remotes changed: the reflector answers theirs from now on (its peers file,
        replaced atomically, then SIGHUP)."""
        self.cfg = cfg
        self._write_peers()
        if self.pid is not None and self.alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGHUP)

    def _write_peers(self) -> None:
        if self.cfg.mesh is None:
            return
        self.cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.peers_file.with_name(f".{self.PEERS_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"peers": self.peers()}))
        os.replace(tmp, self.peers_file)

    def start(self, timeout_s: float = 10.0) -> str:
        """Adopt the recorded reflector or start one; returns "adopted", "started" or "replaced"."""
        digest = self.digest()
        self._write_peers()
        rec = self.recorded()
        how = "started"
        if rec is not None:
            pid, start = int(rec["pid"]), rec.get("start")
            if self.is_reflector(pid, start):
                if rec.get("digest") == digest and rec.get("owner") == self.cfg.owner:
                    self.pid, self.start_ticks, self.adopted = pid, start, True
                    self.set_peers(self.cfg)        # a mesh site's: the peers it knows now
                    return "adopted"
                # another spec (keys, uplinks, port changed): its sockets are in the way of the new one
                stop_process(pid, lambda p: self.is_reflector(p, start))
                how = "replaced"
        self._spawn(digest, timeout_s)
        return how

    def _spawn(self, digest: str, timeout_s: float) -> None:
        self.cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "patronus.agent.reflector"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(self.spec()) + "\n").encode())
            proc.stdin.flush()
            # the first line says whether every socket is bound (a blocking read with a deadline)
            out = proc.stdout
            ready, _, _ = select.select([out], [], [], timeout_s)
            line = out.readline() if ready else b""
            try:
                msg = json.loads(line) if line else {"error": f"no answer within {timeout_s:g} s"}
            except ValueError:
                msg = {"error": f"unexpected output {line[:200]!r}"}
            if not msg.get("ready"):
                raise OSError(f"probe reflector did not start: {msg.get('error')}")
        except BaseException:
            self.proc = None
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            raise
        finally:
            for f in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    f.close()
        self.pid, self.start_ticks = proc.pid, start_ticks(proc.pid)
        tmp = self.pid_file.with_name(f".{self.PID_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": self.pid, "start": self.start_ticks, "digest": digest,
                                   "owner": self.cfg.owner}) + "\n")
        os.replace(tmp, self.pid_file)

    def alive(self) -> bool:
        return self.pid is not None and self.is_reflector(self.pid, self.start_ticks)

    @property
    def counters(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.counters_file.read_text())
        except (OSError, ValueError):
            return {}
        c = doc.get("counters") if isinstance(doc, dict) else None
        return c if isinstance(c, dict) else {}

    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for c in self.counters.values():
            total.update(c.get("rejected", {}))
        return total

    def close(self, keep: bool = False) -> None:
        """Forget the reflector, leaving it running (`keep`: a graceful stop), or stop it and remove its
        files."""
        p, self.proc = self.proc, None
        pid, start, self.pid = self.pid, self.start_ticks, None
        if keep:
            if p is not None and p.poll() is None:
                _KEPT.append(p)
            return
        if pid is not None:
            stop_process(pid, lambda q: self.is_reflector(q, start))
        if p is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for f in (self.pid_file, self.counters_file, self.peers_file):
            f.unlink(missing_ok=True)


def stop_recorded_reflector(state_dir: Path) -> bool:
    """Stop the reflector recorded in `state_dir`, if it still runs, and remove its files (`patronus
    cleanup`). True if a process was stopped."""
    pid_file = state_dir / ReflectorProcess.PID_FILE
    stopped = False
    try:
        rec = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        rec = None
    if isinstance(rec, dict) and isinstance(rec.get("pid"), int):
        start = rec.get("start")
        stopped = stop_process(rec["pid"], lambda q: ReflectorProcess.is_reflector(q, start))
    for f in (pid_file, state_dir / ReflectorProcess.COUNTERS_FILE):
        f.unlink(missing_ok=True)
    return stopped
