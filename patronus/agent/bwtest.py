"""Authenticated UDP bulk bandwidth test between two agents (the seed's sprint 14, made trustworthy).

The seed measured bandwidth by counting what it *sent* for 5 s with a 100 µs sleep between 1 KB
packets: that measures the sender's sleep granularity (its own table computes 0.08 Mbit/s), never the
path, and nothing checks what arrived. Here the far agent's `BandwidthServer` counts what arrives and
reports it, and the client paces its offered rate:

Protocol (one UDP port, network byte order, magic "PB", version 1):

* control messages: header (magic u16, version u8, type u8, test_id u64, ctl_seq u32), a fixed body per
  type, then the full 32-byte HMAC-SHA-256 of everything before it under the site pair key.
  Client -> server: START (sender wall clock ns, duration ms, rate kbit/s or 0 for "max", payload
  size), END (packets and bytes sent). Server -> client: OK (granted duration ms), REJECT (reason),
  REPORT (expected, unique packets, bytes, lost, reordered, duplicates, first and last arrival ns on
  the server's monotonic clock). A reply echoes the ctl_seq of the request it answers.
* DATA: magic, version, type, test_id u64, seq u64, length u16, reserved u16, then an 8-byte keyed
  BLAKE2b tag of those 24 bytes under a per-test key (HMAC(pair key, "patronus-bwtest-data|" + id)),
  then zero padding up to `payload` bytes (the UDP payload size; goodput counts these bytes).
  A per-packet HMAC-SHA-256 would cost ~1.4 µs a packet on each side; the pre-keyed BLAKE2b tag costs
  ~0.6 µs, so injected or altered data (a wrong length included) cannot inflate a result, and data
  from an earlier test never counts in a later one.

Anti-abuse and anti-replay (the server never sends more than a small authenticated reply, so it cannot
be used as an amplifier): forged, truncated or otherwise malformed messages get no answer and are
counted; a START must carry a wall-clock time within `max_skew_s` of the server's and a test id not
seen in the last 2 x `max_skew_s` (the Kerberos authenticator scheme: no extra round trip, needs
clocks within minutes); within a test each control message needs a higher ctl_seq than the last one
accepted, so a retransmitted END (new ctl_seq) gets the cached report again while a replayed one is
refused. At most `max_tests` tests run at once, each for at most `max_duration_s` (the server grants
`min(requested, max)`), data after the test's deadline (+ `grace_s`) does not count, and per-test
state is bounded by `max_packets` (a duplicate bitmap of max_packets bits).

Client pacing: a token bucket on the loop clock, refilled at the requested rate, 10 ms of tokens
deep (with 4 ms, late wake-ups on a busy 2-core host cost a few per cent of a 100 Mbit/s rate); each
wake-up sends the whole batch the bucket allows and sleeps until the next packet is due, so no
per-packet sleep (the event loop wakes at best about once a millisecond). The "max" mode
(`rate_mbps=None`) sends batches of 64 back to back, yielding to the loop between batches so the
agent's other tasks (the prober above all) keep running. Python sends about 100-200 k datagrams/s
from one core and the server receives about as many (see `BandwidthServer`), so a test measures 1-2
Gbit/s at most with 1200-byte datagrams, half that on a busy host. `sender_limited` in the result
says when the client could not offer what was asked: then the figure is a lower bound, not the
path's capacity.

Goodput is UDP payload bits over the span between the first and last arrival at the server (minus one
average packet, since the span covers n - 1 inter-arrival gaps); loss counts each sequence number the
client sent that never arrived. The sans-IO `BandwidthServerState` holds all the server's logic
(datagram + time in, reply bytes out); `BandwidthServer` is the thin asyncio driver around it.
A server serves one pair key, i.e. one peer site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import errno
import hashlib
import hmac
import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Final, cast

from patronus.agent.sockets import recvfrom_until
from patronus.core.errors import ConfigError, PatronusError, PeerError

__all__ = [
    "DATA_HEADER_LEN",
    "MAGIC",
    "BandwidthResult",
    "BandwidthServer",
    "BandwidthServerState",
    "BandwidthTestRefused",
    "ControlRejected",
    "End",
    "MsgType",
    "Ok",
    "Reject",
    "RejectReason",
    "Report",
    "ServerCounters",
    "Start",
    "decode_control",
    "encode_control",
    "encode_data",
    "run_bandwidth_test",
]

MAGIC: Final = 0x5042                     # "PB"
VERSION: Final = 1
MAC_LEN: Final = 32
TAG_LEN: Final = 8
_CTL_HDR = struct.Struct("!HBBQI")        # magic, version, type, test_id, ctl_seq: 16 bytes
_DATA_HDR = struct.Struct("!HBBQQHH")     # magic, version, type, test_id, seq, length, reserved: 24 bytes
DATA_HEADER_LEN: Final = _DATA_HDR.size + TAG_LEN   # 32
MAX_PAYLOAD: Final = 65507                # largest UDP payload over IPv4
_MAGIC_BYTES: Final = MAGIC.to_bytes(2, "big")


class MsgType(enum.IntEnum):
    START = 1
    OK = 2
    REJECT = 3
    END = 4
    REPORT = 5
    DATA = 6


_DATA: Final = int(MsgType.DATA)


class RejectReason(enum.IntEnum):
    BUSY = 1            # too many tests at once (or too many recent test ids)
    BAD_REQUEST = 2     # payload size or duration out of range


@dataclass(frozen=True, slots=True)
class Start:
    test_id: int
    ctl_seq: int
    wall_ns: int
    duration_ms: int
    rate_kbps: int          # 0: as fast as possible
    payload: int


@dataclass(frozen=True, slots=True)
class Ok:
    test_id: int
    ctl_seq: int
    granted_ms: int


@dataclass(frozen=True, slots=True)
class Reject:
    test_id: int
    ctl_seq: int
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class End:
    test_id: int
    ctl_seq: int
    packets_sent: int
    bytes_sent: int


@dataclass(frozen=True, slots=True)
class Report:
    test_id: int
    ctl_seq: int
    expected: int           # packets the client said it sent
    packets: int            # distinct sequence numbers received
    bytes: int              # UDP payload bytes of those packets
    lost: int
    reordered: int          # arrivals behind the highest sequence number already seen
    duplicates: int
    first_ns: int           # server monotonic clock; only their difference means anything
    last_ns: int


Control = Start | Ok | Reject | End | Report

_LAYOUT: Final[dict[type[Any], tuple[MsgType, struct.Struct]]] = {
    Start: (MsgType.START, struct.Struct("!QIIH")),
    Ok: (MsgType.OK, struct.Struct("!I")),
    Reject: (MsgType.REJECT, struct.Struct("!B")),
    End: (MsgType.END, struct.Struct("!QQ")),
    Report: (MsgType.REPORT, struct.Struct("!8Q")),
}
_BY_TYPE: Final = {int(t): (cls, body) for cls, (t, body) in _LAYOUT.items()}


class ControlRejected(PeerError):
    """A control message that failed to parse (`kind` "malformed") or verify (`kind` "forged")."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        super().__init__(f"bandwidth-test control message {kind}: {reason}")


class BandwidthTestRefused(PatronusError):
    """The server answered START with REJECT."""


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def encode_control(msg: Control, key: bytes) -> bytes:
    mtype, body = _LAYOUT[type(msg)]
    values = [int(getattr(msg, f.name)) for f in dataclasses.fields(msg)]
    try:
        head = _CTL_HDR.pack(MAGIC, VERSION, mtype, values[0], values[1]) + body.pack(*values[2:])
    except struct.error as e:
        raise ValueError(f"{type(msg).__name__} field out of range: {e}") from None
    return head + _mac(key, head)


def decode_control(data: bytes, key: bytes) -> Control:
    """Parse and verify one control message; raises ControlRejected (a PeerError) and nothing else."""
    n = len(data)
    if n < _CTL_HDR.size + MAC_LEN:
        raise ControlRejected("malformed", f"{n} bytes is too short")
    magic, version, mtype, test_id, ctl_seq = _CTL_HDR.unpack_from(data)
    if magic != MAGIC:
        raise ControlRejected("malformed", f"magic 0x{magic:04x}")
    if version != VERSION:
        raise ControlRejected("malformed", f"unsupported version {version}")
    layout = _BY_TYPE.get(mtype)
    if layout is None:
        raise ControlRejected("malformed", f"unknown message type {mtype}")
    cls, body = layout
    if n != _CTL_HDR.size + body.size + MAC_LEN:
        want = _CTL_HDR.size + body.size + MAC_LEN
        raise ControlRejected("malformed", f"{cls.__name__} of {n} bytes, expected {want}")
    if not hmac.compare_digest(data[-MAC_LEN:], _mac(key, data[:-MAC_LEN])):
        raise ControlRejected("forged", f"{cls.__name__} HMAC does not verify")
    fields = body.unpack_from(data, _CTL_HDR.size)
    if cls is Reject:
        try:
            return Reject(test_id, ctl_seq, RejectReason(fields[0]))
        except ValueError:
            raise ControlRejected("malformed", f"unknown reject reason {fields[0]}") from None
    msg: Control = cls(test_id, ctl_seq, *fields)
    return msg


def _data_key(key: bytes, test_id: int) -> bytes:
    return hmac.digest(key, b"patronus-bwtest-data|" + test_id.to_bytes(8, "big"), "sha256")


def _tagger(key: bytes, test_id: int) -> Any:
    return hashlib.blake2b(key=_data_key(key, test_id), digest_size=TAG_LEN)


def encode_data(key: bytes, test_id: int, seq: int, payload: int) -> bytes:
    """One DATA datagram of `payload` bytes (for tests and tools; the client fills one buffer in place)."""
    if not DATA_HEADER_LEN <= payload <= MAX_PAYLOAD:
        raise ValueError(f"payload must be {DATA_HEADER_LEN}-{MAX_PAYLOAD} bytes, got {payload}")
    buf = bytearray(payload)
    _DATA_HDR.pack_into(buf, 0, MAGIC, VERSION, _DATA, test_id, seq, payload, 0)
    h = _tagger(key, test_id)
    h.update(bytes(buf[:_DATA_HDR.size]))
    buf[_DATA_HDR.size:DATA_HEADER_LEN] = h.digest()
    return bytes(buf)


# ---------------------------------------------------------------------------------------------- server


@dataclass(slots=True)
class ServerCounters:
    datagrams: int = 0
    started: int = 0
    completed: int = 0          # reports sent for the first time
    expired: int = 0            # tests that reached their deadline without END
    forged: int = 0             # control messages whose HMAC did not verify
    malformed: int = 0          # truncated, wrong magic/version/type/length
    replayed: int = 0           # START id seen before, or ctl_seq not above the last one
    stale: int = 0              # START wall clock outside max_skew_s
    busy: int = 0               # START refused: max_tests running (or id table full)
    bad_request: int = 0
    unknown_test: int = 0       # authentic END for a test we do not know
    unexpected: int = 0         # authentic message of a server->client type
    data_forged: int = 0
    data_unknown: int = 0       # DATA for no running test
    data_late: int = 0          # DATA after END or after the test's deadline
    data_overflow: int = 0      # DATA with seq >= max_packets
    socket_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Test:
    __slots__ = ("addr", "bytes", "ctl_seq", "deadline_ns", "duplicates", "first_ns", "granted_ms", "last_ns",
                 "max_seq", "packets", "reordered", "report", "seen", "tagger", "test_id", "ttl_ns")

    def __init__(self, test_id: int, tagger: Any, ctl_seq: int, granted_ms: int, deadline_ns: int,
                 addr: Any) -> None:
        self.test_id = test_id
        self.tagger = tagger
        self.ctl_seq = ctl_seq
        self.granted_ms = granted_ms
        self.deadline_ns = deadline_ns
        self.addr = addr
        self.packets = 0
        self.bytes = 0
        self.max_seq = -1
        self.reordered = 0
        self.duplicates = 0
        self.first_ns = 0
        self.last_ns = 0
        self.seen = bytearray()
        self.report: Report | None = None
        self.ttl_ns = 0


class BandwidthServerState:
    """Sans-IO server: `on_datagram(data, addr, now_ns, wall_ns)` returns the reply to send, if any.

    `now_ns` is a monotonic clock (arrival times, deadlines), `wall_ns` the wall clock (START
    freshness only). State changes only in the `_on_*` methods; no sockets, no clock reads here."""

    def __init__(self, key: bytes, *, max_tests: int = 4, max_duration_s: float = 30.0, grace_s: float = 5.0,
                 max_skew_s: float = 300.0, report_ttl_s: float = 60.0, max_packets: int = 1 << 22,
                 max_recent_ids: int = 4096) -> None:
        if not key:
            raise ValueError("a bandwidth server needs a pair key")
        if max_tests < 1 or max_duration_s <= 0 or max_packets < 1 or max_recent_ids < max_tests:
            raise ValueError("max_tests, max_duration_s and max_packets must be positive, "
                             "max_recent_ids at least max_tests")
        self.key = key
        self.max_tests = max_tests
        self.max_duration_ms = int(max_duration_s * 1000)
        self.grace_ns = int(grace_s * 1e9)
        self.max_skew_ns = int(max_skew_s * 1e9)
        self.report_ttl_ns = int(report_ttl_s * 1e9)
        self.max_packets = max_packets
        self.max_recent_ids = max_recent_ids
        self.counters = ServerCounters()
        self._active: dict[int, _Test] = {}
        self._finished: dict[int, _Test] = {}
        self._recent_ids: dict[int, int] = {}      # test id -> monotonic ns until which it is remembered

    @property
    def active_tests(self) -> int:
        return len(self._active)

    def on_datagram(self, data: bytes, addr: Any, now_ns: int, wall_ns: int) -> bytes | None:
        self.counters.datagrams += 1
        if len(data) >= DATA_HEADER_LEN and data[3] == _DATA:
            self._on_data(data, now_ns)
            return None
        try:
            msg = decode_control(data, self.key)
        except ControlRejected as e:
            if e.kind == "forged":
                self.counters.forged += 1
            else:
                self.counters.malformed += 1
            return None
        self._prune(now_ns)
        reply: Control | None
        if isinstance(msg, Start):
            reply = self._on_start(msg, addr, now_ns, wall_ns)
        elif isinstance(msg, End):
            reply = self._on_end(msg, now_ns)
        else:
            self.counters.unexpected += 1
            reply = None
        return None if reply is None else encode_control(reply, self.key)

    def _on_data(self, data: bytes, now_ns: int) -> None:
        c = self.counters
        magic, version, _, test_id, seq, length, _ = _DATA_HDR.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            c.malformed += 1
            return
        t = self._active.get(test_id)
        if t is None:
            if test_id in self._finished:
                c.data_late += 1
            else:
                c.data_unknown += 1
            return
        h = t.tagger.copy()
        h.update(data[:24])
        if length != len(data) or not hmac.compare_digest(h.digest(), data[24:32]):
            c.data_forged += 1
            return
        if now_ns > t.deadline_ns:
            c.data_late += 1
            return
        if seq >= self.max_packets:
            c.data_overflow += 1
            return
        seen = t.seen
        i = seq >> 3
        bit = 1 << (seq & 7)
        if i >= len(seen):
            seen.extend(bytes(max(i + 1 - len(seen), len(seen), 64)))
        elif seen[i] & bit:
            t.duplicates += 1
            return
        seen[i] |= bit
        if seq > t.max_seq:
            t.max_seq = seq
        else:
            t.reordered += 1
        if t.packets == 0:
            t.first_ns = now_ns
        t.last_ns = now_ns
        t.packets += 1
        t.bytes += length

    def _on_start(self, msg: Start, addr: Any, now_ns: int, wall_ns: int) -> Control | None:
        c = self.counters
        t = self._active.get(msg.test_id)
        if t is not None:
            # A retransmitted START (its OK was lost) carries a higher ctl_seq; the same one is a replay.
            if msg.ctl_seq <= t.ctl_seq:
                c.replayed += 1
                return None
            t.ctl_seq = msg.ctl_seq
            return Ok(msg.test_id, msg.ctl_seq, t.granted_ms)
        if msg.test_id in self._recent_ids:
            c.replayed += 1
            return None
        if abs(wall_ns - msg.wall_ns) > self.max_skew_ns:
            c.stale += 1
            return None
        if not DATA_HEADER_LEN <= msg.payload <= MAX_PAYLOAD or msg.duration_ms == 0:
            c.bad_request += 1
            return Reject(msg.test_id, msg.ctl_seq, RejectReason.BAD_REQUEST)
        if len(self._active) >= self.max_tests or len(self._recent_ids) >= self.max_recent_ids:
            c.busy += 1
            return Reject(msg.test_id, msg.ctl_seq, RejectReason.BUSY)
        granted_ms = min(msg.duration_ms, self.max_duration_ms)
        self._recent_ids[msg.test_id] = now_ns + 2 * self.max_skew_ns + self.grace_ns
        self._active[msg.test_id] = _Test(msg.test_id, _tagger(self.key, msg.test_id), msg.ctl_seq, granted_ms,
                                          now_ns + granted_ms * 1_000_000 + self.grace_ns, addr)
        c.started += 1
        return Ok(msg.test_id, msg.ctl_seq, granted_ms)

    def _on_end(self, msg: End, now_ns: int) -> Control | None:
        c = self.counters
        t = self._active.get(msg.test_id) or self._finished.get(msg.test_id)
        if t is None:
            c.unknown_test += 1
            return None
        if msg.ctl_seq <= t.ctl_seq:
            c.replayed += 1
            return None
        t.ctl_seq = msg.ctl_seq
        if t.report is None:
            expected = max(msg.packets_sent, t.max_seq + 1)
            t.report = Report(t.test_id, 0, expected, t.packets, t.bytes, expected - t.packets, t.reordered,
                              t.duplicates, t.first_ns, t.last_ns)
            t.seen = bytearray()
            t.ttl_ns = now_ns + self.report_ttl_ns
            del self._active[t.test_id]
            self._finished[t.test_id] = t
            c.completed += 1
        return dataclasses.replace(t.report, ctl_seq=msg.ctl_seq)

    def _prune(self, now_ns: int) -> None:
        for tid in [tid for tid, t in self._active.items() if now_ns > t.deadline_ns]:
            del self._active[tid]
            self.counters.expired += 1
        for tid in [tid for tid, t in self._finished.items() if now_ns > t.ttl_ns]:
            del self._finished[tid]
        for tid in [tid for tid, until in self._recent_ids.items() if now_ns > until]:
            del self._recent_ids[tid]


class BandwidthServer(asyncio.DatagramProtocol):
    """asyncio driver of `BandwidthServerState`. Start with `await BandwidthServer.serve(sock, key)`.

    It is a DatagramProtocol (usable with `loop.create_datagram_endpoint`, and `serve(..., drain=False)`
    does exactly that), but by default `serve` reads the socket itself, up to `DRAIN` datagrams per
    wake-up: asyncio's datagram transport delivers one datagram per event-loop iteration, so when the
    loop has other work (in the agent: prober, reflector, API; in the tests: the client) the server
    gets one datagram per round of everything else. Measured here with client and server on one loop:
    300 Mbit/s lost 6 % through the transport and nothing drained; flat out, the transport took 50
    Mbit/s (97 % loss), draining about 1.3 Gbit/s without loss. Alone in its process both reach
    150-200 k datagrams/s. The measurement is only as good as the receiver, so draining is the default.
    """

    DRAIN: ClassVar[int] = 256

    def __init__(self, key: bytes, **limits: Any) -> None:
        self.state = BandwidthServerState(key, **limits)
        self.transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def serve(cls, sock: socket.socket, key: bytes, *, drain: bool = True, **limits: Any) -> BandwidthServer:
        """Serve on non-blocking `sock` (e.g. from `open_path_socket`); the server owns it from now on."""
        loop = asyncio.get_running_loop()
        server = cls(key, **limits)
        if drain:
            server._sock, server._loop = sock, loop
            loop.add_reader(sock.fileno(), server._drain)
        else:
            await loop.create_datagram_endpoint(lambda: server, sock=sock)
        return server

    @property
    def counters(self) -> ServerCounters:
        return self.state.counters

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is not None:
            name = self._sock.getsockname()
        else:
            assert self.transport is not None, "not serving"
            name = self.transport.get_extra_info("sockname")
        return name[0], name[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.state.on_datagram(data, addr, time.monotonic_ns(), time.time_ns())
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        self.state.counters.socket_errors += 1

    def _drain(self) -> None:
        sock = self._sock
        assert sock is not None
        on_datagram, mono, wall = self.state.on_datagram, time.monotonic_ns, time.time_ns
        for _ in range(self.DRAIN):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.state.counters.socket_errors += 1
                continue
            reply = on_datagram(data, addr, mono(), wall())
            if reply is not None:
                try:
                    sock.sendto(reply, addr)
                except OSError:             # a full buffer or an unreachable client: it will retry
                    self.state.counters.socket_errors += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


# ---------------------------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class BandwidthResult:
    test_id: int
    rate_mbps: float | None     # requested rate; None: "max" mode
    granted_s: float            # test duration the server granted
    duration_s: float           # span between first and last arrival at the server
    send_duration_s: float
    sent_packets: int
    sent_bytes: int
    received_packets: int
    received_bytes: int
    lost_packets: int
    reordered: int
    duplicates: int
    loss_pct: float
    goodput_mbps: float         # UDP payload rate that arrived
    offered_mbps: float         # UDP payload rate the client managed to send
    sender_limited: bool        # the client offered under 90 % of rate_mbps: goodput is a lower bound
    local_drops: int            # datagrams the local stack refused (ENOBUFS)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b


async def _wait_writable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


class _Client:
    """One client-side test: control exchanges and the paced data phase."""

    BATCH: ClassVar[int] = 64

    def __init__(self, sock: socket.socket, remote: tuple[str, int], key: bytes, control_timeout_s: float,
                 control_tries: int) -> None:
        self.sock = sock
        self.remote = remote
        self.key = key
        self.timeout_s = control_timeout_s
        self.tries = control_tries
        self.loop = asyncio.get_running_loop()
        self.test_id = secrets.randbits(64) or 1
        self.ctl_seq = 0
        self.sent_packets = 0
        self.sent_bytes = 0
        self.local_drops = 0

    async def exchange(self, make: Any, want: tuple[type[Any], ...]) -> Control:
        """Send `make(ctl_seq)` until an authentic reply of a `want` type for this test comes back."""
        for _ in range(self.tries):
            self.ctl_seq += 1
            await self.loop.sock_sendto(self.sock, encode_control(make(self.ctl_seq), self.key), self.remote)
            deadline = self.loop.time() + self.timeout_s
            while (got := await recvfrom_until(self.sock, deadline)) is not None:
                data, addr = got
                if addr[1] != self.remote[1] or not _same_host(addr[0], self.remote[0]):
                    continue
                if len(data) >= 4 and data[3] == _DATA:
                    continue
                try:
                    msg = decode_control(data, self.key)
                except PeerError:
                    continue
                if isinstance(msg, want) and msg.test_id == self.test_id and msg.ctl_seq <= self.ctl_seq:
                    answer: Control = msg
                    return answer
        raise TimeoutError(f"bandwidth test {self.test_id:#x}: no answer from {self.remote} "
                           f"after {self.tries} tries of {self.timeout_s} s")

    async def send_data(self, duration_s: float, rate_mbps: float | None, payload: int) -> float:
        """Send DATA for `duration_s`; returns the time spent sending."""
        loop, sock, remote = self.loop, self.sock, self.remote
        buf = bytearray(payload)
        head = memoryview(buf)[:_DATA_HDR.size]
        tagger = _tagger(self.key, self.test_id)
        pack_into, tid, hsize = _DATA_HDR.pack_into, self.test_id, _DATA_HDR.size
        rate_bps = None if rate_mbps is None else rate_mbps * 1e6 / 8       # bytes per second
        depth = 0.0 if rate_bps is None else max(4.0 * payload, rate_bps * 0.010)
        tokens = float(payload)
        seq = 0
        start = last = loop.time()
        end = start + duration_s
        while (now := loop.time()) < end:
            backoff = False
            if rate_bps is None:
                n = self.BATCH
            else:
                tokens = min(depth, tokens + (now - last) * rate_bps)
                last = now
                n = int(tokens // payload)
            for _ in range(n):
                pack_into(buf, 0, MAGIC, VERSION, _DATA, tid, seq, payload, 0)
                h = tagger.copy()
                h.update(head)
                buf[hsize:hsize + TAG_LEN] = h.digest()
                try:
                    sock.sendto(buf, remote)
                except (BlockingIOError, InterruptedError):
                    await _wait_writable(sock)
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:        # a full qdisc: the datagram never left; back off
                        self.local_drops += 1
                        backoff = True
                        break
                    raise OSError(e.errno, f"bandwidth test data of {payload} bytes to {remote}: "
                                           f"{e.strerror}") from e
                seq += 1
                tokens -= payload
            if backoff:
                await asyncio.sleep(0.001)
            elif rate_bps is None:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(max(0.0, (payload - tokens) / rate_bps))
        self.sent_packets = seq
        self.sent_bytes = seq * payload
        return loop.time() - start


async def run_bandwidth_test(sock: socket.socket, remote: tuple[str, int], key: bytes, *, duration_s: float = 2.0,
                             rate_mbps: float | None = 50.0, payload: int = 1200, control_timeout_s: float = 1.0,
                             control_tries: int = 3) -> BandwidthResult:
    """Measure the path to the `BandwidthServer` at `remote` from non-blocking UDP socket `sock`.

    `rate_mbps`: offered UDP payload rate in Mbit/s, or None to send as fast as this process can.
    `payload`: UDP payload bytes per datagram (at least DATA_HEADER_LEN). Raises ConfigError on bad
    arguments, BandwidthTestRefused on REJECT, TimeoutError when the server does not answer."""

    problems: list[tuple[str, str]] = []
    if not 0 < duration_s <= 3600:
        problems.append(("duration_s", f"must be in (0, 3600], got {duration_s}"))
    if rate_mbps is not None and not rate_mbps > 0:
        problems.append(("rate_mbps", f"must be positive or None (max), got {rate_mbps}"))
    if not DATA_HEADER_LEN <= payload <= MAX_PAYLOAD:
        problems.append(("payload", f"must be {DATA_HEADER_LEN}-{MAX_PAYLOAD} bytes, got {payload}"))
    if not key:
        problems.append(("key", "a pair key is required"))
    if control_tries < 1 or not control_timeout_s > 0:
        problems.append(("control_tries", "need at least one try and a positive control_timeout_s"))
    if problems:
        raise ConfigError(problems)

    client = _Client(sock, remote, key, control_timeout_s, control_tries)
    duration_ms = max(1, round(duration_s * 1000))
    rate_kbps = 0 if rate_mbps is None else max(1, min(0xFFFF_FFFF, round(rate_mbps * 1000)))
    answer = await client.exchange(
        lambda cs: Start(client.test_id, cs, time.time_ns(), duration_ms, rate_kbps, payload), (Ok, Reject))
    if isinstance(answer, Reject):
        raise BandwidthTestRefused(f"bandwidth test refused by {remote}: {answer.reason.name.lower()}")
    assert isinstance(answer, Ok)
    granted_s = answer.granted_ms / 1000
    send_s = await client.send_data(granted_s, rate_mbps, payload)
    rep = await client.exchange(lambda cs: End(client.test_id, cs, client.sent_packets, client.sent_bytes),
                                (Report,))
    assert isinstance(rep, Report)

    span_s = (rep.last_ns - rep.first_ns) / 1e9
    goodput = 0.0
    if rep.packets >= 2 and span_s > 0:
        goodput = rep.bytes * (rep.packets - 1) / rep.packets * 8 / span_s / 1e6
    offered = client.sent_bytes * 8 / send_s / 1e6 if send_s > 0 else 0.0
    sent = client.sent_packets
    return BandwidthResult(
        test_id=client.test_id,
        rate_mbps=rate_mbps,
        granted_s=granted_s,
        duration_s=span_s,
        send_duration_s=send_s,
        sent_packets=sent,
        sent_bytes=client.sent_bytes,
        received_packets=rep.packets,
        received_bytes=rep.bytes,
        lost_packets=rep.lost,
        reordered=rep.reordered,
        duplicates=rep.duplicates,
        loss_pct=100.0 * rep.lost / rep.expected if rep.expected else 0.0,
        goodput_mbps=goodput,
        offered_mbps=offered,
        sender_limited=rate_mbps is not None and offered < 0.9 * rate_mbps,
        local_drops=client.local_drops,
    )
