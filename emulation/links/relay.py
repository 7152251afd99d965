"""The userspace impairment relay, for kernels without `sch_netem`, and its handle.

    [X side] ── veth ── x ┐                      ┌ y ── veth ── [Y side]
                          └── relay process ─────┘   (both in one namespace, no addresses)

    python -m emulation.links.relay --x IF --y IF --seed N [--tag RUN] [--xy JSON] [--yx JSON]
                                    [--control stdin | unix:PATH] [--nice N] [--realtime PRIO]

The process bridges X and Y at L2 with two AF_PACKET raw sockets (ETH_P_ALL, each bound to its
ifindex, promiscuous, `PACKET_IGNORE_OUTGOING` plus a `sll_pkttype != PACKET_OUTGOING` check so its
own transmissions never come back in, `PACKET_QDISC_BYPASS` on the way out). Each direction has an
`ImpairmentModel`; frames waiting for their release time sit in one heap and are sent on time by a
`select` loop whose timeout is the next release (µs resolution, timer slack 1 ns; no
sleep-polling). Reads are batched until EAGAIN (or 64 frames) into one preallocated buffer; a
direction without impairment uses `recvfrom_into` and sends each frame straight from that buffer;
an impaired one uses `recvmsg_into` with `SO_TIMESTAMPNS` and gives the model the time the *kernel*
received the frame, so a relay that wakes up late (a busy CPU) does not add its lateness to the
emulated delay. Only frames that wait are copied. The garbage collector is off.

Timing on a busy host: `--realtime PRIO` (SCHED_FIFO; where the kernel refuses it, `--nice N`
instead; the ready line's `sched` says which took effect) keeps the relay ahead of ordinary work;
counters report how late held frames actually left (`late_us_hist`, the histogram of
`emulation.links.lateness`, and `late_max_us`) and the worst read lag (`read_lag_max_us`).

Offloads: the sockets carry virtio-net headers (`PACKET_VNET_HDR`, see `emulation.links.frames`), so
checksum-offloaded frames keep working and GSO super-frames from a TSO/GSO sender are cut into
wire-size packets before the model sees them (counted as `gso_frames` / `gso_segments`).

Control: JSON lines on stdin (replies on stdout; stdin closing stops the relay, so it dies with its
parent) or on a Unix stream socket (`--control unix:PATH`, one reply line per request line):

    {"set": {"dir": "xy"|"yx"|"both", "impairment": {...Impairment.to_dict()...}}}
        → {"ok": true, "applied_at": <CLOCK_REALTIME ns at which the model switched>}
    {"counters": true}  → {"ok": true, "counters": {"xy": {...}, "yx": {...}}, "held": N, "at": ns}
    {"stop": true}      → {"ok": true, "counters": {...}} and the process exits
    {"ping": true}      → {"ok": true}
    an "id" in a request is echoed in its reply; a bad request gets {"ok": false, "error": "..."}.

On start it prints one line `{"ready": true, "pid": ..., ...}` on stdout. The new impairment
applies to the next frame read; frames already waiting keep their release times (as netem keeps
its queue). Unless told `--no-quiet-ports` it disables IPv6 on X and Y, so the relay's namespace
never originates frames (router solicitations, DAD) into the link.

`RelayLink` starts and drives one relay process (`ip netns exec NS python -m ...`), records its
pid in a per-run registry, and `cleanup(tag)` kills (by recorded pid, after checking the process's
start time and command line) whatever relays a crashed run left.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import heapq
import json
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from emulation.links import lateness
from emulation.links.frames import VNET_LEN, corrupt_frame, segment_gso
from emulation.links.impairment import Action, Impairment, ImpairmentModel
from patronus.agent import sched
from patronus.core.errors import ConfigError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")
ANCBUF = socket.CMSG_SPACE(TIMESPEC.size)
BUF_SIZE = 1 << 18                       # GSO super-frames are up to 64 KB (+ headers); room to spare
BATCH = 64                               # frames read from one socket before looking at the heap again
RCVBUF = 8 << 20
DIRECTIONS = ("xy", "yx")
READY_TIMEOUT_S = 15.0
REPO = Path(__file__).resolve().parents[2]
TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# -- the relay process ---------------------------------------------------------------------------

def open_port(ifname: str) -> socket.socket:
    """A raw socket on `ifname` that sees every frame arriving there (none of ours going out)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)     # protocol 0: receives nothing until bound
    try:
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        with contextlib.suppress(OSError):                      # Linux ≥ 4.20; pkttype is checked anyway
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        with contextlib.suppress(OSError):
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((ifname, ETH_P_ALL))
        ifindex = socket.if_nametoindex(ifname)
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def realtime_minus_monotonic() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in seconds, from a pair of readings not split by a preemption
    (the tighter of three brackets), so kernel receive timestamps convert to monotonic time."""
    best_width, best = math.inf, 0.0
    for _ in range(3):
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        if m1 - m0 < best_width:
            best_width, best = m1 - m0, w - (m0 + m1) / 2
        if best_width < 20e-6:
            break
    return best


class _DirStats:
    __slots__ = ("frames_in", "gso_frames", "gso_segments", "late_hist", "late_max_s", "read_lag_max_s",
                 "send_errors", "sent")

    def __init__(self) -> None:
        self.frames_in = self.gso_frames = self.gso_segments = self.send_errors = self.sent = 0
        self.read_lag_max_s = 0.0
        self.late_max_s = 0.0
        self.late_hist = [0] * lateness.BUCKETS

    def as_dict(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "gso_frames": self.gso_frames, "gso_segments": self.gso_segments,
                "sent": self.sent, "send_errors": self.send_errors,
                "late_max_us": round(self.late_max_s * 1e6, 1),
                "late_us_hist": list(self.late_hist),
                "read_lag_max_us": round(self.read_lag_max_s * 1e6, 1)}


class Relay:
    """The event loop of one relay process: two ports, two models, one heap of waiting frames."""

    def __init__(self, if_x: str, if_y: str, models: tuple[ImpairmentModel, ImpairmentModel]) -> None:
        self.ifnames = (if_x, if_y)
        self.models = models
        self.socks: list[socket.socket] = []
        self.stats = (_DirStats(), _DirStats())
        self.heap: list[tuple[float, int, int, bytes | bytearray]] = []
        self.seq = 0
        self.buf = bytearray(BUF_SIZE)
        self.mv = memoryview(self.buf)
        self.stopping = False
        self.started = time.monotonic()

    def open(self) -> None:
        for name in self.ifnames:
            self.socks.append(open_port(name))

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()

    # data path ------------------------------------------------------------------------------------

    def drain(self, d: int) -> None:
        """Read frames arriving on port d (until EAGAIN or BATCH) and forward them to the other."""
        if self.models[d].impairment.is_identity:
            self._drain_fast(d)
        else:
            self._drain_timed(d)

    def _drain_fast(self, d: int) -> None:
        """No impairment: no timestamps needed, frames go out straight from the receive buffer."""
        sock = self.socks[d]
        out_send = self.socks[1 - d].send
        model = self.models[d]
        st = self.stats[d]
        buf, mv, heap = self.buf, self.mv, self.heap
        recv = sock.recvfrom_into
        mono = time.monotonic
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or n <= VNET_LEN:
                continue
            st.frames_in += 1
            now = mono()
            if heap and heap[0][0] <= now:
                self.flush()
            if buf[1]:                                  # gso_type: a super-frame
                self._gso(d, bytes(mv[:n]), now)
                continue
            if model.passthrough(now):
                try:
                    out_send(mv[:n])
                    st.sent += 1
                except OSError:
                    st.send_errors += 1
                continue
            self._impair(d, mv[:n], now)

    def _drain_timed(self, d: int) -> None:
        """Impaired: each frame's time is when the kernel received it (SO_TIMESTAMPNS), not when this
        process got round to reading it, so a late wake-up does not add to the emulated delay."""
        sock = self.socks[d]
        st = self.stats[d]
        buf, mv, heap = self.buf, self.mv, self.heap
        recv = sock.recvmsg_into
        bufs = [buf]
        unpack = TIMESPEC.unpack_from
        offset = realtime_minus_monotonic()
        for _ in range(BATCH):
            try:
                n, anc, _flags, addr = recv(bufs, ANCBUF)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or n <= VNET_LEN:
                continue
            st.frames_in += 1
            now = time.monotonic()
            if anc:
                sec, nsec = unpack(anc[0][2])
                arrived = sec + nsec * 1e-9 - offset
                if now - 1.0 < arrived <= now:
                    lag = now - arrived
                    if lag > st.read_lag_max_s:
                        st.read_lag_max_s = lag
                    now = arrived
            if heap and heap[0][0] <= now:
                self.flush()
            if buf[1]:
                self._gso(d, bytes(mv[:n]), now)
            else:
                self._impair(d, mv[:n], now)

    def _gso(self, d: int, frame: bytes, now: float) -> None:
        st = self.stats[d]
        st.gso_frames += 1
        segs = segment_gso(frame)
        if segs is None:
            segs = [frame]                              # a kind we do not cut: one packet
        else:
            st.gso_segments += len(segs)
        for seg in segs:
            self._impair(d, memoryview(seg), now)

    def _impair(self, d: int, frame: memoryview, now: float) -> None:
        model = self.models[d]
        st = self.stats[d]
        for release, action in model.on_packet(now, len(frame) - VNET_LEN):
            data: bytes | bytearray
            if action & Action.DELIVER_CORRUPTED:
                data = bytearray(frame)
                corrupt_frame(data, model.pick_corruption)
            else:
                data = bytes(frame)
            if release <= now and not (self.heap and self.heap[0][0] <= now):
                try:
                    self.socks[1 - d].send(data)
                    st.sent += 1
                except OSError:
                    st.send_errors += 1
            else:
                self.seq += 1
                heapq.heappush(self.heap, (release, self.seq, d, data))

    def flush(self) -> None:
        """Send every frame whose release time has come."""
        heap = self.heap
        now = time.monotonic()
        late_bucket = lateness.bucket
        while heap and heap[0][0] <= now:
            release, _, d, data = heapq.heappop(heap)
            st = self.stats[d]
            late = now - release
            if late > st.late_max_s:
                st.late_max_s = late
            st.late_hist[late_bucket(late * 1e6)] += 1
            try:
                self.socks[1 - d].send(data)
                st.sent += 1
            except OSError:
                st.send_errors += 1
            if not heap or heap[0][0] > now:
                now = time.monotonic()

    # control --------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        held = [0, 0]
        for _, _, d, _ in self.heap:
            held[d] += 1
        return {name: {**self.models[k].counters(), **self.stats[k].as_dict(), "held": held[k],
                       "impairment": self.models[k].impairment.to_dict()}
                for k, name in enumerate(DIRECTIONS)}

    def handle(self, line: bytes) -> dict[str, Any]:
        """One control request → its reply."""
        try:
            req = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "expected a JSON object"}
        reply: dict[str, Any]
        try:
            if "set" in req:
                spec = req["set"]
                if not isinstance(spec, dict):
                    raise ConfigError("expected {dir, impairment}", "set")
                direction = spec.get("dir", "both")
                if direction not in ("xy", "yx", "both"):
                    raise ConfigError(f"expected xy, yx or both, got {direction!r}", "set.dir")
                imp = Impairment.from_dict(spec.get("impairment", {}), "set.impairment")
                for k, name in enumerate(DIRECTIONS):
                    if direction in (name, "both"):
                        self.models[k].set(imp)
                reply = {"ok": True, "applied_at": time.time_ns()}
            elif req.get("counters"):
                reply = {"ok": True, "counters": self.counters(), "held": len(self.heap), "at": time.time_ns(),
                         "uptime_s": round(time.monotonic() - self.started, 3)}
            elif req.get("stop"):
                self.stopping = True
                reply = {"ok": True, "counters": self.counters(), "discarded": len(self.heap), "at": time.time_ns()}
            elif req.get("ping"):
                reply = {"ok": True, "at": time.time_ns()}
            else:
                reply = {"ok": False, "error": f"unknown request {sorted(req)}; expected set, counters, stop or ping"}
        except ConfigError as exc:
            reply = {"ok": False, "error": str(exc), "errors": exc.errors}
        if "id" in req:
            reply["id"] = req["id"]
        return reply

    # the loop -------------------------------------------------------------------------------------

    def run(self, control: _Control) -> None:
        heap = self.heap
        sx, sy = self.socks
        mono = time.monotonic
        while not self.stopping:
            fds: list[Any] = [sx, sy, *control.fds()]
            if heap:
                timeout: float | None = heap[0][0] - mono()
                if timeout is not None and timeout < 0:
                    timeout = 0
            else:
                timeout = None
            readable, _, _ = select.select(fds, [], [], timeout)
            for f in readable:
                if f is sx:
                    self.drain(0)
                elif f is sy:
                    self.drain(1)
                else:
                    control.on_readable(f, self)
            if heap and heap[0][0] <= mono():
                self.flush()


class _Control:
    """Control lines from stdin (replies to stdout) or a Unix stream socket."""

    def __init__(self, spec: str) -> None:
        self.stdin = spec == "stdin"
        self.listener: socket.socket | None = None
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self.inbuf = bytearray()
        self.path: str | None = None
        if self.stdin:
            os.set_blocking(0, False)
        elif spec.startswith("unix:"):
            self.path = spec[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.path)
            os.chmod(self.path, 0o600)
            self.listener.listen(8)
            self.listener.setblocking(False)
        else:
            raise ConfigError(f"expected stdin or unix:PATH, got {spec!r}", "--control")

    def _detach(self, line: bytes) -> dict[str, Any]:
        """{"detach": "unix:PATH"}: from now on take control on a Unix socket at PATH and no longer
        stop when stdin closes, so the relay outlives its parent (`patronus-lab run --keep`)."""
        try:
            spec = json.loads(line)["detach"]
            if not isinstance(spec, str) or not spec.startswith("unix:") or len(spec) <= 5:
                raise ValueError(f"expected unix:PATH, got {spec!r}")
            path = spec[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(8)
            listener.setblocking(False)
        except (ValueError, OSError) as exc:
            return {"ok": False, "error": f"detach: {exc}"}
        self.listener, self.path, self.stdin = listener, path, False
        return {"ok": True, "control": spec}

    def fds(self) -> list[Any]:
        if self.stdin:
            return [0]
        assert self.listener is not None
        return [self.listener, *(c for c, _ in self.clients.values())]

    def on_readable(self, f: Any, relay: Relay) -> None:
        if f == 0 and self.stdin:
            try:
                chunk = os.read(0, 65536)
            except BlockingIOError:
                return
            if not chunk:                              # parent gone: stop
                relay.stopping = True
                return
            self.inbuf += chunk
            for line in self._lines(self.inbuf):
                if self.stdin and line.startswith(b'{"detach"'):
                    _emit(self._detach(line))
                    continue
                _emit(relay.handle(line) if self.stdin else {"ok": False, "error": "detached: use the socket"})
            return
        if f is self.listener:
            assert self.listener is not None
            with contextlib.suppress(BlockingIOError):
                conn, _ = self.listener.accept()
                conn.setblocking(False)
                self.clients[conn.fileno()] = (conn, bytearray())
            return
        conn, buf = self.clients[f.fileno()]
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        if not chunk:
            del self.clients[conn.fileno()]
            conn.close()
            return
        buf += chunk
        for line in self._lines(buf):
            data = (json.dumps(relay.handle(line)) + "\n").encode()
            conn.setblocking(True)
            try:
                conn.sendall(data)
            finally:
                conn.setblocking(False)

    @staticmethod
    def _lines(buf: bytearray) -> list[bytes]:
        out = []
        while (i := buf.find(b"\n")) >= 0:
            line = bytes(buf[:i]).strip()
            del buf[:i + 1]
            if line:
                out.append(line)
        return out

    def close(self) -> None:
        for conn, _ in self.clients.values():
            conn.close()
        if self.listener is not None:
            self.listener.close()
            if self.path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _quiet(ifname: str) -> None:
    """No IPv6 on a relay port: the relay's namespace must not originate frames into the link."""
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1\n")


def _fine_timers() -> None:
    """Timer slack 1 ns (default 50 µs): select() wakes up when asked."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)   # PR_SET_TIMERSLACK


def _terminate(*_: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.links.relay", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--x", required=True, help="interface X")
    ap.add_argument("--y", required=True, help="interface Y")
    ap.add_argument("--seed", default="0", help="seed of both directions' random choices")
    ap.add_argument("--tag", default="patronus", help="run tag (ownership; used by cleanup)")
    ap.add_argument("--xy", default="{}", help="impairment X→Y as JSON (Impairment.to_dict fields)")
    ap.add_argument("--yx", default="{}", help="impairment Y→X as JSON")
    ap.add_argument("--control", default="stdin", help="stdin (default) or unix:PATH")
    ap.add_argument("--no-quiet-ports", dest="quiet", action="store_false",
                    help="leave IPv6 enabled on X and Y")
    ap.add_argument("--nice", type=int, default=None,
                    help="scheduling niceness (e.g. -10: release times matter more than the rest of the host)")
    ap.add_argument("--realtime", type=int, default=None, metavar="PRIO",
                    help="run SCHED_FIFO at this priority (1-99): wakes on time however busy the CPU is "
                         "(the kernel's RT throttling still leaves others 5 %% of it)")
    a = ap.parse_args(argv)
    try:
        imps = [Impairment.from_dict(json.loads(getattr(a, k)), f"--{k}") for k in DIRECTIONS]
    except (ValueError, ConfigError) as exc:
        print(f"relay: bad impairment: {exc}", file=sys.stderr)
        return 2
    seed = a.seed
    relay = Relay(a.x, a.y, (ImpairmentModel(imps[0], f"{seed}:xy"), ImpairmentModel(imps[1], f"{seed}:yx")))
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    control: _Control | None = None
    ready = False
    try:
        if a.quiet:
            _quiet(a.x)
            _quiet(a.y)
        sched_class = sched.apply(realtime=a.realtime, nice=a.nice)
        relay.open()
        control = _Control(a.control)
        _fine_timers()
        gc.collect()
        gc.freeze()
        gc.disable()
        _emit({"ready": True, "pid": os.getpid(), "x": a.x, "y": a.y, "seed": seed, "tag": a.tag,
               "control": a.control, "sched": sched_class, "at": time.time_ns()})
        ready = True
        relay.run(control)
    except OSError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    finally:
        if control is not None:
            control.close()
        relay.close()
        if ready:
            with contextlib.suppress(Exception):
                print(json.dumps({"final_counters": relay.counters()}), file=sys.stderr)
    return 0


# -- the handle ----------------------------------------------------------------------------------

def registry_dir() -> Path:
    """Where running relays are recorded, one JSON file per relay (`<tag>.<pid>.json`)."""
    env = os.environ.get("PATRONUS_RELAY_DIR")
    candidates = [Path(env)] if env else [Path("/run/patronus-lab/relays"),
                                          Path(tempfile.gettempdir()) / f"patronus-lab-relays-{os.getuid()}"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            return d
        except OSError:
            continue
    raise RuntimeError(f"no writable directory for the relay registry (tried {', '.join(map(str, candidates))})")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _gone(pid: int) -> bool:
    """No such process, or only its zombie is left."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _is_our_relay(rec: dict[str, Any]) -> bool:
    pid = int(rec["pid"])
    if _start_time(pid) != rec.get("start_time"):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"emulation.links.relay" in cmd and f"--tag={rec['tag']}".encode() in cmd


def running(tag: str | None = None) -> list[dict[str, Any]]:
    """Recorded relays (of `tag`, or all) whose process is still the one recorded."""
    out = []
    for f in sorted(registry_dir().glob(f"{tag + '.' if tag else ''}*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads(f.read_text())
            if (tag is None or rec["tag"] == tag) and _is_our_relay(rec):
                out.append(rec)
    return out


def _kill(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.02)          # bounded poll for the process to go
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def cleanup(tag: str, timeout_s: float = 3.0) -> list[str]:
    """Stop every relay recorded under `tag` (only those: start time and command line are checked
    before a signal is sent) and forget them. Returns what was done."""
    if not TAG_RE.match(tag):
        raise ConfigError(f"expected letters, digits, '.', '_' or '-', got {tag!r}", "tag")
    done = []
    for f in sorted(registry_dir().glob(f"{tag}.*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("tag") != tag:
            continue
        if _is_our_relay(rec):
            _kill(int(rec["pid"]), timeout_s)
            done.append(f"relay pid {rec['pid']} ({rec.get('ns')}: {rec.get('x')}<->{rec.get('y')})")
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
        with contextlib.suppress(FileNotFoundError):
            f.with_suffix(".sock").unlink()      # a detached relay's control socket
    return done


class RelayError(RuntimeError):
    """The relay process failed (did not start, died, or refused a request for a reason not ours)."""


class RelayLink:
    """One relay process bridging `if_x` and `if_y` inside namespace `ns` (None: this namespace).

    `start()` waits for the ready line (bounded); `set()` returns the CLOCK_REALTIME ns at which
    the relay switched; `counters()`; `stop()` returns the final counters. Use as a context manager
    to have it stopped whatever happens. Thread-safe (one request at a time)."""

    backend = "relay"

    def __init__(self, ns: str | None, if_x: str, if_y: str, seed: int | str = 0,
                 impairment_xy: Impairment | None = None, impairment_yx: Impairment | None = None, *,
                 tag: str = "patronus", log_path: Path | None = None, python: str | None = None,
                 nice: int | None = None, realtime: int | None = None) -> None:
        if not TAG_RE.match(tag):
            raise ConfigError(f"expected letters, digits, '.', '_' or '-', got {tag!r}", "tag")
        self.ns, self.if_x, self.if_y, self.seed, self.tag = ns, if_x, if_y, seed, tag
        self.impairments = {"xy": impairment_xy or Impairment(), "yx": impairment_yx or Impairment()}
        self.python = python or sys.executable
        self.nice = nice
        self.realtime = realtime
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_text = ""
        self._out = bytearray()
        self._lock = threading.Lock()
        self._record: Path | None = None
        self.final_counters: dict[str, Any] | None = None
        self.detached: subprocess.Popen[bytes] | None = None
        self.sched = "default"        # the scheduling class the relay got (its ready line)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        cmd = [self.python, "-m", "emulation.links.relay", f"--x={self.if_x}", f"--y={self.if_y}",
               f"--seed={self.seed}", f"--tag={self.tag}", "--control=stdin",
               "--xy=" + json.dumps(self.impairments["xy"].to_dict()),
               "--yx=" + json.dumps(self.impairments["yx"].to_dict())]
        if self.nice is not None:
            cmd.append(f"--nice={self.nice}")
        if self.realtime is not None:
            cmd.append(f"--realtime={self.realtime}")
        return (["ip", "netns", "exec", self.ns] if self.ns else []) + cmd

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> RelayLink:
        if self.proc is not None:
            raise RelayError("relay already started")
        if self.log_path is not None:
            self._log = open(self.log_path, "w+b")  # noqa: SIM115 - kept open for the process's life
        else:
            self._log = tempfile.TemporaryFile(prefix="patronus-relay-")  # noqa: SIM115 - as above
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, cwd=REPO, env=env)
        try:
            self._register()
            msg = self._read_reply(time.monotonic() + timeout_s, "the relay's ready line")
            if not msg.get("ready"):
                raise RelayError(f"unexpected first line from the relay: {msg}")
            self.sched = str(msg.get("sched", "default"))
        except BaseException:
            self._reap(kill=True)
            raise
        return self

    def set(self, direction: str, impairment: Impairment) -> int:
        """Apply `impairment` to direction `xy`, `yx` or `both`; the time (CLOCK_REALTIME ns) it took
        effect in the relay."""
        if direction not in ("xy", "yx", "both"):
            raise ConfigError(f"expected xy, yx or both, got {direction!r}", "direction")
        if not isinstance(impairment, Impairment):
            raise ConfigError(f"expected an Impairment, got {impairment!r}", "impairment")
        reply = self.request({"set": {"dir": direction, "impairment": impairment.to_dict()}})
        for name in DIRECTIONS:
            if direction in (name, "both"):
                self.impairments[name] = impairment
        return int(reply["applied_at"])

    def counters(self) -> dict[str, Any]:
        return dict(self.request({"counters": True})["counters"])

    def request(self, req: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        with self._lock:
            proc = self._alive()
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps(req) + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError as exc:
                raise RelayError(f"the relay (pid {proc.pid}) is gone: {self._log_tail()}") from exc
            reply = self._read_reply(time.monotonic() + timeout_s, f"the relay's reply to {sorted(req)}")
        if not reply.get("ok"):
            if reply.get("errors"):
                raise ConfigError([tuple(e) for e in reply["errors"]])
            raise RelayError(f"the relay refused {req}: {reply.get('error')}")
        return reply

    def stop(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """Stop the relay (ask, then SIGTERM, then SIGKILL, by pid); the final counters if it answered."""
        if self.proc is None:
            return self.final_counters
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(RelayError, OSError, TimeoutError, ValueError):
                    self.final_counters = self.request({"stop": True}, timeout_s)["counters"]
        finally:
            self._reap(kill=False, timeout_s=timeout_s)
        return self.final_counters

    def detach(self) -> str:
        """Let the relay outlive this process: it moves its control to a Unix socket (returned) in
        the registry directory and no longer stops when our end of its stdin closes. After this the
        relay is stopped only through that socket, or by `patronus-lab clean` (its registry record)."""
        proc = self.proc
        assert proc is not None
        path = str(registry_dir() / f"{self.tag}.{proc.pid}.sock")
        self.request({"detach": f"unix:{path}"})
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.detached = proc        # no longer ours to stop: stop() and the registry record leave it be
        self.proc = None
        self._record = None
        return path

    def __enter__(self) -> RelayLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # internals ------------------------------------------------------------------------------------

    def _alive(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RelayError("relay not started")
        if self.proc.poll() is not None:
            raise RelayError(f"the relay exited with {self.proc.returncode}: {self._log_tail()}")
        return self.proc

    def _read_reply(self, deadline: float, what: str) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        while (i := self._out.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what} (relay pid {proc.pid}): {self._log_tail()}")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait(5)
                raise RelayError(f"the relay exited with {proc.returncode} before {what}: {self._log_tail()}")
            self._out += chunk
        line = bytes(self._out[:i])
        del self._out[:i + 1]
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise RelayError(f"the relay wrote something that is not JSON: {line[:200]!r}") from exc
        if not isinstance(msg, dict):
            raise RelayError(f"the relay wrote {msg!r}")
        return msg

    def _register(self) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        rec = {"pid": pid, "tag": self.tag, "ns": self.ns, "x": self.if_x, "y": self.if_y,
               "start_time": _start_time(pid), "started_at": time.time()}
        path = registry_dir() / f"{self.tag}.{pid}.json"
        path.write_text(json.dumps(rec))
        self._record = path

    def _reap(self, kill: bool, timeout_s: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()                  # in stdin mode the relay stops on EOF
            if kill and proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            if self._record is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._record.unlink()
                self._record = None
            if self._log is not None:
                self._log_text = self._log_tail(1 << 20)
                self._log.close()
                self._log = None

    def _log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return self._log_text[-n:] if self._log_text else "(no log)"
        with contextlib.suppress(OSError):
            self._log.flush()
            self._log.seek(0)
            data = self._log.read()
            return data[-n:].decode(errors="replace").strip() or "(empty log)"
        return "(log unreadable)"

    def log(self) -> str:
        """Everything the relay wrote to stderr so far."""
        return self._log_tail(1 << 20)


if __name__ == "__main__":
    sys.exit(main())
