"""The messages of SWIM membership (`patronus.core.swim`) and their canonical binary codec.

Sans-IO and pure: `encode(msg) -> bytes`, `decode(data) -> Message`. `decode` takes raw bytes as they
arrive from the network and never raises anything but `SwimError` (a `PeerError`) whose `reason` is one of
`REASONS`:

  ======================  =====================================================================
  malformed               not a well-formed, canonical message of this format (any parse failure)
  unsupported_version     the magic is right but the version is one this decoder does not know
  too_large               longer than `MAX_MESSAGE_BYTES`, or a count that cannot fit in what is left
  ======================  =====================================================================

Datagram authentication is NOT here: a message says who sent it (`sender`) and what it knows, and nothing
proves either. A later layer signs each datagram (and the `payload` of an alive or left record is, in
production, the member's own signed announcement, which `Swim`'s `admit` callable checks before believing
it); until then, anyone who can reach the port can claim anything a message can say.

Encoding: every message starts with the 4 bytes "PTSW", one byte of format version (1) and one byte of
type; integers are unsigned big-endian; a *text* is one length byte then ASCII. Then, by type:

  ========  ====  ================================================================================
  message   type  fields after the header
  ========  ====  ================================================================================
  Ping      1     seq (4), sender (text)
  Ack       2     seq (4), sender (text)
  PingReq   3     seq (4), sender (text), target_name (text), target_addr (text)
  Join      4     sender (text)
  Sync      5     sender (text), flags (1: bit 0 = reply, bits 1-7 must be 0), count (2), records
  Gossip    6     sender (text)
  ========  ====  ================================================================================

and every message ends with its piggybacked `updates`: count (2) then that many records. Nothing may
follow. A *record* (`Update`) is: status (1: 1 alive, 2 suspect, 3 dead, 4 left), name (text), addr (text),
incarnation (8, at least 1), payload length (2) and the payload (at most `MAX_PAYLOAD` bytes; must be
empty for suspect and dead). Names are site names ([a-z][a-z0-9-]{0,30}); addresses are 1-64 printable
ASCII characters without spaces (the driver's transport address, opaque here). A record is 13 bytes plus
its name, address and payload (`record_size`).

The encoding is canonical: one value has exactly one encoding and `decode` rejects any other spelling
(reserved flag bits, a payload on a suspect or dead record, trailing bytes), so `encode(decode(b)) == b`
for every `b` that decodes. Bounded: the whole message is at most `MAX_MESSAGE_BYTES` (a UDP datagram),
and every count is checked against the bytes left (at least 15 a record) before anything is allocated.
The version byte is the format's only version number; any change to the layout takes a new one.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

from patronus.core.errors import RefusedError
from patronus.core.validate import NAME_RE

__all__ = [
    "FORMAT_VERSION", "MAX_ADDR", "MAX_MESSAGE_BYTES", "MAX_PAYLOAD", "REASONS", "RECORD_FIXED", "Ack", "Gossip",
    "Join", "Message", "Ping", "PingReq", "Reason", "Status", "SwimError", "Sync", "Update", "base_size", "decode",
    "encode", "encoded_size", "record_size",
]

Reason = Literal["malformed", "unsupported_version", "too_large"]
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))

MAGIC: Final = b"PTSW"
FORMAT_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 65_000       # under the 65,507 bytes of a UDP datagram's payload over IPv4
MAX_PAYLOAD: Final = 8_192
MAX_ADDR: Final = 64
MAX_INCARNATION: Final = (1 << 64) - 1
MAX_SEQ: Final = (1 << 32) - 1
RECORD_FIXED: Final = 1 + 1 + 1 + 8 + 2     # status, two text lengths, incarnation, payload length
_HEADER: Final = len(MAGIC) + 2
_REPLY: Final = 0x01


class SwimError(RefusedError[Reason]):
    """A message refused: `reason` (one of `REASONS`) says why, `detail` says where."""


class Status(enum.IntEnum):
    """A member's state, as a record says it (and as `Swim` holds it)."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


@dataclass(frozen=True, slots=True)
class Update:
    """One member's state as gossiped: alive and left records carry the member's payload."""

    status: Status
    name: str
    addr: str
    incarnation: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Probe `target_name` at `target_addr` for `sender`, and forward its Ack (with `seq`) back."""

    seq: int
    sender: str
    target_name: str
    target_addr: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Join:
    """Ask a seed for its state; the joiner's own alive record is the first of `updates`."""

    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: `records` is (part of) the sender's whole state; one not a `reply` asks for the receiver's."""

    sender: str
    records: tuple[Update, ...]
    reply: bool
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """Nothing but `updates`: the gossip round's message (and `leave`'s and `rotate`'s announcement)."""

    sender: str
    updates: tuple[Update, ...] = ()


Message: TypeAlias = Ping | Ack | PingReq | Join | Sync | Gossip
_TYPES: Final[dict[type, int]] = {Ping: 1, Ack: 2, PingReq: 3, Join: 4, Sync: 5, Gossip: 6}


# --- sizes ----------------------------------------------------------------------------------------------

def record_size(u: Update) -> int:
    """The encoded size of one record (the addr is ASCII, so its length is its size)."""
    return RECORD_FIXED + len(u.name) + len(u.addr) + len(u.payload)


def _records_size(us: tuple[Update, ...]) -> int:
    return 2 + sum(RECORD_FIXED + len(u.name) + len(u.addr) + len(u.payload) for u in us)


def base_size(msg: Message) -> int:
    """The encoded size of `msg` without its `updates` (but with their count)."""
    n = _HEADER + 1 + len(msg.sender) + 2
    if isinstance(msg, Ping | Ack):
        return n + 4
    if isinstance(msg, PingReq):
        return n + 4 + 2 + len(msg.target_name) + len(msg.target_addr)
    if isinstance(msg, Sync):
        return n + 1 + _records_size(msg.records)
    return n


def encoded_size(msg: Message) -> int:
    """len(encode(msg)), computed without encoding."""
    return base_size(msg) + _records_size(msg.updates) - 2


# --- encoding -------------------------------------------------------------------------------------------

def _text(s: str, what: str, limit: int) -> bytes:
    raw = s.encode("ascii")
    if len(raw) > limit:
        raise ValueError(f"{what} longer than {limit} characters")
    return bytes((len(raw),)) + raw


def _record(u: Update) -> bytes:
    if u.status in (Status.SUSPECT, Status.DEAD) and u.payload:
        raise ValueError(f"a {u.status.name.lower()} record carries no payload")
    if not 1 <= u.incarnation <= MAX_INCARNATION or len(u.payload) > MAX_PAYLOAD:
        raise ValueError(f"incarnation or payload out of range in {u.name}'s record")
    return b"".join((bytes((u.status,)), _text(u.name, "name", 31), _text(u.addr, "addr", MAX_ADDR),
                     u.incarnation.to_bytes(8, "big"), len(u.payload).to_bytes(2, "big"), u.payload))


def _records(us: tuple[Update, ...]) -> bytes:
    return len(us).to_bytes(2, "big") + b"".join(_record(u) for u in us)


def encode(msg: Message) -> bytes:
    """The canonical encoding of `msg`. Raises ValueError for a value outside the format (a bug of the
    caller: `Swim` only builds messages that fit)."""
    parts = [MAGIC, bytes((FORMAT_VERSION, _TYPES[type(msg)]))]
    if isinstance(msg, Ping | Ack | PingReq):
        parts.append(struct.pack(">I", msg.seq))
    parts.append(_text(msg.sender, "sender", 31))
    if isinstance(msg, PingReq):
        parts += [_text(msg.target_name, "target_name", 31), _text(msg.target_addr, "target_addr", MAX_ADDR)]
    elif isinstance(msg, Sync):
        parts += [bytes((_REPLY if msg.reply else 0,)), _records(msg.records)]
    parts.append(_records(msg.updates))
    out = b"".join(parts)
    if len(out) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a message of {len(out)} bytes is over {MAX_MESSAGE_BYTES}")
    return out


# --- decoding -------------------------------------------------------------------------------------------

class _Reader:
    """Reads fields from the front of a bounded byte string; any shortfall is "malformed"."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = _HEADER

    def take(self, n: int, field: str) -> bytes:
        if self.at + n > len(self.data):
            raise SwimError("malformed", f"truncated in {field} (at byte {self.at} of {len(self.data)})")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")

    def text(self, field: str, limit: int) -> str:
        n = self.uint(1, field)
        if n > limit:
            raise SwimError("malformed", f"{field} of {n} characters (at most {limit})")
        raw = self.take(n, field)
        if not all(0x21 <= b <= 0x7E for b in raw):
            raise SwimError("malformed", f"{field} is not printable ASCII")
        return raw.decode("ascii")

    def name(self, field: str) -> str:
        s = self.text(field, 31)
        if not NAME_RE.match(s):
            raise SwimError("malformed", f"{field} is not a site name")
        return s

    def addr(self, field: str) -> str:
        s = self.text(field, MAX_ADDR)
        if not s:
            raise SwimError("malformed", f"{field} is empty")
        return s

    def records(self, field: str) -> tuple[Update, ...]:
        count = self.uint(2, f"{field} count")
        if count * (RECORD_FIXED + 2) > len(self.data) - self.at:
            raise SwimError("too_large", f"{count} {field} cannot fit in the {len(self.data) - self.at} bytes left")
        return tuple(self.record(f"{field} {i}") for i in range(count))

    def record(self, field: str) -> Update:
        raw_status = self.uint(1, f"{field} status")
        if not Status.ALIVE <= raw_status <= Status.LEFT:
            raise SwimError("malformed", f"{field} has unknown status {raw_status}")
        status = Status(raw_status)
        name = self.name(f"{field} name")
        addr = self.addr(f"{field} addr")
        incarnation = self.uint(8, f"{field} incarnation")
        if incarnation < 1:
            raise SwimError("malformed", f"{field} has incarnation 0")
        n = self.uint(2, f"{field} payload length")
        if n > MAX_PAYLOAD:
            raise SwimError("too_large", f"{field} payload of {n} bytes (at most {MAX_PAYLOAD})")
        if n and status in (Status.SUSPECT, Status.DEAD):
            raise SwimError("malformed", f"{field} is {status.name.lower()} and carries a payload")
        return Update(status, name, addr, incarnation, self.take(n, f"{field} payload"))


def decode(data: bytes) -> Message:
    """The message in `data`; raises only `SwimError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SwimError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise SwimError("too_large", f"{len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
    data = bytes(data)
    if data[:len(MAGIC)] != MAGIC:
        raise SwimError("malformed", "not a Patronus SWIM message (no PTSW magic)")
    if len(data) < _HEADER:
        raise SwimError("malformed", "truncated in the header")
    if data[4] != FORMAT_VERSION:
        raise SwimError("unsupported_version", f"format version {data[4]}; this decoder knows {FORMAT_VERSION}")
    kind = data[5]
    r = _Reader(data)
    msg: Message
    if kind in (1, 2, 3):
        seq = r.uint(4, "seq")
        sender = r.name("sender")
        if kind == 3:
            target, target_addr = r.name("target_name"), r.addr("target_addr")
            msg = PingReq(seq, sender, target, target_addr, r.records("updates"))
        else:
            msg = (Ping if kind == 1 else Ack)(seq, sender, r.records("updates"))
    elif kind in (4, 6):
        msg = (Join if kind == 4 else Gossip)(r.name("sender"), r.records("updates"))
    elif kind == 5:
        sender = r.name("sender")
        flags = r.uint(1, "flags")
        if flags & ~_REPLY:
            raise SwimError("malformed", f"reserved flag bits set ({flags:#04x})")
        records = r.records("records")
        msg = Sync(sender, records, bool(flags & _REPLY), r.records("updates"))
    else:
        raise SwimError("malformed", f"unknown message type {kind}")
    if r.at != len(data):
        raise SwimError("malformed", f"{len(data) - r.at} trailing bytes after the message")
    return msg
