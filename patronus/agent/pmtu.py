"""Packetization-layer path-MTU discovery (RFC 4821 style) over the probe protocol.

ICMP "fragmentation needed" / "packet too big" messages are routinely filtered, so the agent does not
trust them: it sends authenticated probe requests (`patronus.core.probe`) padded to an exact IP packet
size, with DF set, and a size *fits* when the reflector's reply of the same size comes back. The
reflector keeps the padding, so a reply proves the size both ways: the result is the MTU usable in both
directions, which is what a tunnel carrying both directions needs. That holds only if the reflector's
replies carry DF too (its socket opened with `df=True`): otherwise its own stack fragments a reply
bigger than its side's MTU, our kernel reassembles it (userspace cannot tell), and the search measures
the forward direction only. The netns test shows it: with a 1400-byte MTU on the reflector's veth, a
plain reflector socket made the search report 1404 (a veth accepts MTU + 4 bytes for a VLAN tag, and
the 1404-byte reply was fragmented on the way back); a DF reflector gives 1400.

Decisions:

* **Sizes are IP packet sizes**: IP header (20, or 40 for IPv6) + UDP 8 + probe 48 + padding, so the
  result compares directly with interface MTUs. The tunnel MTU is `path_mtu - 60` over an IPv4
  underlay, `- 80` over IPv6 (outer IP + UDP 8 + WireGuard 32).
* **The socket must be opened with `open_path_socket(..., df=True)`** (IP_PMTUDISC_PROBE): DF on every
  packet and the kernel's cached PMTU ignored. Without DF the kernel would fragment and every size
  would "fit"; with plain PMTUDISC_DO it would refuse sizes above a cached PMTU and the search would
  only rediscover the cache. `discover_path_mtu` checks this and refuses other sockets.
* **Local refusal is an answer**: a size above the outgoing interface's MTU fails at `sendto` with
  EMSGSIZE; that is "does not fit", known at once, without spending the timeout (so on a real 1500-byte
  uplink every size above 1500 costs nothing).
* **The search is a sans-IO state machine** (`PmtuSearch`): probe `lo` first (if even that fails
  there is no answer at all: the path is down or the reflector silent), then `hi` (one probe when the
  path takes the largest size), then bisect between the largest size that fitted and the smallest
  that did not, to the byte. About log2(hi - lo) + 2 steps: 15 for 1280-9000. A plain bisection is
  predictable and cheap here; a table of common plateaus (RFC 4821 7.2) would save a few steps on
  1500-byte paths but is not worth the extra state.
* **Loss is not a small MTU**: each size is tried `tries` times (each waiting `timeout_s`) and fits
  if any try is answered; a reply to an earlier try of the same size counts.
* **Its own sequence space**: the caller passes a session id of its own (never the regular probe
  stream's, whose reflector-side replay window a jump in seq would disturb). Sequence numbers have the
  top bit set and start from the wall clock in nanoseconds, so a later search under the same session
  never reuses a number the reflector's replay window has already seen, and a PMTU reply can never be
  taken for a regular one. Replies that do not decode with the key, or whose session, seq or size are
  not the ones outstanding, are ignored and counted.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

from patronus.agent.sockets import has_df, recvfrom_until
from patronus.core.errors import ConfigError, PeerError
from patronus.core.probe import BASE_LEN, MAX_PADDING, Probe, ProbeType, decode, encode

__all__ = [
    "PMTU_SEQ_FLAG",
    "UDP_HEADER",
    "WIREGUARD_OVERHEAD",
    "PmtuResult",
    "PmtuSearch",
    "discover_path_mtu",
    "ip_header_len",
    "tunnel_mtu",
]

UDP_HEADER: Final = 8
WIREGUARD_OVERHEAD: Final = 32          # WireGuard data header 16 + Poly1305 tag 16
PMTU_SEQ_FLAG: Final = 1 << 63           # marks PMTU probe sequence numbers
_SEQ_MASK: Final = PMTU_SEQ_FLAG - 1


def ip_header_len(ipv6: bool) -> int:
    return 40 if ipv6 else 20


def tunnel_mtu(path_mtu: int, ipv6: bool) -> int:
    """The WireGuard interface MTU for an underlay path MTU: minus 60 (IPv4) or 80 (IPv6)."""
    return path_mtu - ip_header_len(ipv6) - UDP_HEADER - WIREGUARD_OVERHEAD


class PmtuSearch:
    """Sans-IO search for the largest size in [lo, hi] that fits, assuming fitting is monotone.

    Usage: while (size := s.next_size()) is not None: probe it; s.result(size, fitted).
    State changes only in `result`; the module knows nothing of sockets or clocks.
    `path_mtu` is None until done, and stays None when `lo` itself did not fit."""

    __slots__ = ("_fail_min", "_fit_max", "_lo_failed", "hi", "history", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < lo <= hi, got lo={lo} hi={hi}")
        self.lo = lo
        self.hi = hi
        self._fit_max: int | None = None     # largest size known to fit
        self._fail_min = hi + 1              # smallest size known not to fit (hi + 1: none yet)
        self._lo_failed = False
        self.history: list[tuple[int, bool]] = []

    @property
    def done(self) -> bool:
        return self._lo_failed or (self._fit_max is not None and self._fail_min - self._fit_max <= 1)

    @property
    def path_mtu(self) -> int | None:
        return self._fit_max if self.done else None

    def next_size(self) -> int | None:
        """The size to probe next (the same until its result is given), or None when done."""
        if self.done:
            return None
        if self._fit_max is None:
            return self.lo
        if self._fail_min == self.hi + 1:
            return self.hi
        return (self._fit_max + self._fail_min) // 2

    def result(self, size: int, fitted: bool) -> None:
        expected = self.next_size()
        if size != expected:
            raise ValueError(f"result for size {size}, but the outstanding probe is {expected}")
        self.history.append((size, fitted))
        if fitted:
            self._fit_max = size
        elif size == self.lo:
            self._lo_failed = True
        else:
            self._fail_min = size


@dataclass(frozen=True, slots=True)
class PmtuResult:
    path_mtu: int | None          # largest IP packet size that fits both ways; None: no reply even at lo
    probes_sent: int              # probe datagrams put on the wire
    elapsed_s: float
    tunnel_mtu: int | None        # path_mtu minus the WireGuard overhead for this underlay family
    ipv6: bool
    local_refusals: int = 0       # sizes the kernel refused to send (EMSGSIZE: above the interface MTU)
    ignored_replies: int = 0      # datagrams that were not a reply to an outstanding probe
    steps: tuple[tuple[int, bool], ...] = ()   # (size, fitted) in search order

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [list(s) for s in self.steps]
        return d


def _seq_base() -> int:
    return PMTU_SEQ_FLAG | (time.time_ns() & _SEQ_MASK)


async def discover_path_mtu(sock: socket.socket, remote: tuple[str, int], key: bytes | None, session: int, *,
                            lo: int = 1280, hi: int = 9000, tries: int = 2, timeout_s: float = 0.3,
                            ipv6: bool | None = None) -> PmtuResult:
    """Find the path MTU towards the reflector at `remote` from `sock` (opened with df=True).

    `session`: a probe session id used only for PMTU searches. `ipv6`: underlay family; None takes it
    from the socket (it must agree with the socket when given). Raises ConfigError on bad arguments,
    OSError (other than EMSGSIZE) from sending."""
    sock_v6 = sock.family == socket.AF_INET6
    v6 = sock_v6 if ipv6 is None else ipv6
    overhead = ip_header_len(v6) + UDP_HEADER + BASE_LEN
    problems: list[tuple[str, str]] = []
    if v6 != sock_v6:
        problems.append(("ipv6", f"is {ipv6} but the socket is {'IPv6' if sock_v6 else 'IPv4'}"))
    if lo < overhead:
        problems.append(("lo", f"must be at least {overhead} (headers and an empty probe), got {lo}"))
    if hi > overhead + MAX_PADDING:
        problems.append(("hi", f"must be at most {overhead + MAX_PADDING} (largest probe), got {hi}"))
    if lo > hi:
        problems.append(("lo", f"must not exceed hi ({hi}), got {lo}"))
    if tries < 1:
        problems.append(("tries", f"must be at least 1, got {tries}"))
    if not timeout_s > 0:
        problems.append(("timeout_s", f"must be positive, got {timeout_s}"))
    if not 0 <= session <= 0xFFFF_FFFF:
        problems.append(("session", f"must be a u32, got {session}"))
    if sock.type != socket.SOCK_DGRAM or not has_df(sock):
        problems.append(("sock", "must be a UDP socket from open_path_socket(..., df=True)"))
    if problems:
        raise ConfigError(problems)

    loop = asyncio.get_running_loop()
    search = PmtuSearch(lo, hi)
    seq = _seq_base()
    sent = refused = ignored = 0
    t0 = loop.time()
    while (size := search.next_size()) is not None:
        padding = size - overhead
        reply_len = BASE_LEN + padding
        outstanding: set[int] = set()
        fitted = False
        for _ in range(tries):
            seq = (seq + 1) | PMTU_SEQ_FLAG
            wire = encode(Probe(ProbeType.REQUEST, session, seq, time.monotonic_ns(), padding=padding), key)
            try:
                await loop.sock_sendto(sock, wire, remote)
            except OSError as e:
                if e.errno != errno.EMSGSIZE:
                    raise OSError(e.errno, f"PMTU probe of {size} bytes to {remote}: {e.strerror}") from e
                refused += 1
                break
            sent += 1
            outstanding.add(seq)
            deadline = loop.time() + timeout_s
            while (got := await recvfrom_until(sock, deadline)) is not None:
                data = got[0]
                try:
                    reply = decode(data, key)
                except PeerError:
                    ignored += 1
                    continue
                if (reply.type is ProbeType.REPLY and reply.session == session and reply.seq in outstanding
                        and len(data) == reply_len):
                    fitted = True
                    break
                ignored += 1
            if fitted:
                break
        search.result(size, fitted)
    path_mtu = search.path_mtu
    return PmtuResult(
        path_mtu=path_mtu,
        probes_sent=sent,
        elapsed_s=loop.time() - t0,
        tunnel_mtu=None if path_mtu is None else tunnel_mtu(path_mtu, v6),
        ipv6=v6,
        local_refusals=refused,
        ignored_replies=ignored,
        steps=tuple(search.history),
    )
