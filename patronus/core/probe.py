"""Probe wire format (in the spirit of STAMP, RFC 8762) and the anti-replay window, sans-IO.

Layout, network byte order, 48 bytes before optional padding:

  0      2   3   4        8                16               24               32                  48
  +------+---+---+--------+----------------+----------------+----------------+-------------------+
  |magic |ver|typ|session | seq (u64)      | t_send (ns)    | t_reflect (ns) | HMAC-SHA-256/128  |
  +------+---+---+--------+----------------+----------------+----------------+-------------------+
  then `padding` zero bytes (path-MTU probes), covered by the HMAC.

- magic 0x5054 ("PT"), version 1, type 1 = request, 2 = reply (high bit 0x80 set = authenticated).
- session: the sender's id for one path's probe stream (u32); seq counts up per session.
- t_send: sender clock when sent; t_reflect: reflector clock when it received the request (0 in a
  request). Nanoseconds, u64.
- HMAC: the first 16 bytes of HMAC-SHA-256 over everything else, keyed per site pair (RFC 8762's
  authenticated mode also truncates to 128 bits). Unauthenticated packets carry 16 zero bytes, and a
  decoder given a key refuses them.

`decode` never trusts a byte: anything short, long in the wrong way, of an unknown version or type,
or with a bad HMAC raises `PeerError` with the reason, which the agent counts and drops. The
`ReplayWindow` (a sliding bitmap as in RFC 6479 / IPsec) then refuses a sequence number seen before
or older than the window, so a captured probe replayed later cannot move a metric.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from patronus.core.errors import PeerError

MAGIC = 0x5054
VERSION = 1
HEADER = struct.Struct("!HBBIQQQ")        # magic, version, type, session, seq, t_send, t_reflect
MAC_LEN = 16
BASE_LEN = HEADER.size + MAC_LEN          # 48
MAX_PADDING = 9000
_AUTH = 0x80
_ZERO_MAC = bytes(MAC_LEN)


class ProbeType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True, slots=True)
class Probe:
    type: ProbeType
    session: int
    seq: int
    t_send_ns: int
    t_reflect_ns: int = 0
    padding: int = 0
    authenticated: bool = False

    @property
    def size(self) -> int:
        return BASE_LEN + self.padding


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def encode(p: Probe, key: bytes | None = None) -> bytes:
    """Bytes of `p`; authenticated (and `p.authenticated` ignored) when `key` is given."""
    if not 0 <= p.padding <= MAX_PADDING:
        raise ValueError(f"padding must be 0-{MAX_PADDING} bytes, got {p.padding}")
    typ = int(p.type) | (_AUTH if key is not None else 0)
    head = HEADER.pack(MAGIC, VERSION, typ, p.session, p.seq, p.t_send_ns, p.t_reflect_ns)
    pad = bytes(p.padding)
    mac = _mac(key, head + pad) if key is not None else _ZERO_MAC
    return head + mac + pad


def decode(data: bytes, key: bytes | None = None) -> Probe:
    """Parse and verify one probe. With `key`, only authenticated probes with a valid HMAC pass.

    Raises PeerError naming what is wrong; never anything else."""
    n = len(data)
    if n < BASE_LEN:
        raise PeerError(f"probe too short: {n} bytes, need at least {BASE_LEN}")
    if n > BASE_LEN + MAX_PADDING:
        raise PeerError(f"probe too long: {n} bytes")
    magic, version, typ, session, seq, t_send, t_reflect = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PeerError(f"not a Patronus probe (magic 0x{magic:04x})")
    if version != VERSION:
        raise PeerError(f"unsupported probe version {version}")
    authenticated = bool(typ & _AUTH)
    try:
        ptype = ProbeType(typ & ~_AUTH)
    except ValueError:
        raise PeerError(f"unknown probe type {typ & ~_AUTH}") from None
    mac = bytes(data[HEADER.size:BASE_LEN])
    pad = bytes(data[BASE_LEN:])
    if key is not None:
        if not authenticated:
            raise PeerError("unauthenticated probe where authentication is required")
        if not hmac.compare_digest(mac, _mac(key, bytes(data[:HEADER.size]) + pad)):
            raise PeerError("probe HMAC does not verify")
    elif authenticated:
        raise PeerError("authenticated probe but no key for it")
    elif mac != _ZERO_MAC:
        raise PeerError("unauthenticated probe with a non-zero HMAC field")
    if ptype is ProbeType.REQUEST and t_reflect != 0:
        raise PeerError("probe request with a reflect timestamp")
    return Probe(ptype, session, seq, t_send, t_reflect, len(pad), authenticated)


def reflect(request: Probe, t_reflect_ns: int) -> Probe:
    """The reply a reflector sends for `request` (same session, seq, send time and padding)."""
    if request.type is not ProbeType.REQUEST:
        raise PeerError("only requests are reflected")
    return Probe(ProbeType.REPLY, request.session, request.seq, request.t_send_ns, t_reflect_ns,
                 request.padding, request.authenticated)


def pair_key(secret: bytes, site_a: str, site_b: str) -> bytes:
    """The HMAC key of a site pair, derived from a shared secret; the same from either side."""
    lo, hi = sorted((site_a, site_b))
    return hmac.new(secret, f"patronus-probe-v1|{lo}|{hi}".encode(), hashlib.sha256).digest()


class ReplayWindow:
    """Accepts each sequence number once, and nothing older than `size` behind the newest seen."""

    __slots__ = ("_bits", "_top", "accepted", "rejected", "size")

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self._top = -1          # highest sequence number accepted
        self._bits = 0          # bit i set: seq (top - i) seen
        self.accepted = 0
        self.rejected = 0

    def check_and_update(self, seq: int) -> bool:
        top = self._top
        if seq > top:
            shift = seq - top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._top = seq
            self.accepted += 1
            return True
        back = top - seq
        if back >= self.size or (self._bits >> back) & 1:
            self.rejected += 1
            return False
        self._bits |= 1 << back
        self.accepted += 1
        return True
