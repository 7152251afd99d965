"""Signed announcements: how a site tells the mesh who it is, where it can be reached and what it routes.

An announcement carries the site's certificate (patronus/core/identity.py) and is signed by the site's own
Ed25519 key, the certificate's `signing_key`: the root vouches for the key, the key vouches for the rest. So
the WireGuard key it carries is the site's current one, authoritative over the certificate's `wg_public_key`
(a site rotates its WireGuard key without a new certificate). Announcements of a site are ordered by their
`sequence`; a higher one replaces a lower one. One with the leaving flag says that the site leaves the mesh.

What this module does not know: files, the clock, the network, key storage. It is sans-IO and pure: `now` is
always passed in, and it draws no random value. `decode_announcement` takes raw bytes and raises only
`AnnounceError` (a `PeerError`); `AnnounceGate.admit` takes raw bytes from a sender and never raises: it
returns a verdict, `Accepted`, `Duplicate` (the announcement held for that site, byte for byte: gossip repeats
announcements, which is no offence) or `Rejected` with a `reason`, one of `REASONS`:

  ======================  =====================================================================
  malformed               not a well-formed, canonical announcement (or certificate inside it), or
                          longer than `MAX_ANNOUNCEMENT_BYTES`
  unsupported_version     the magic is right but the format version (the announcement's or its
                          certificate's) is one this decoder does not know
  wrong_kind              the certificate is the organisation's root, not a site certificate
  wrong_organisation      the certificate is issued under another organisation
  bad_signature           the certificate's signature does not verify with the root key, or the
                          announcement's does not verify with the certificate's signing key
  not_yet_valid           now < not_before (of the certificate or of the root)
  expired                 now >= not_after (of the certificate or of the root)
  revoked                 the certificate's serial is on the revocation list the gate holds
  prefix_not_allowed      an announced prefix is outside the certificate's (or the certificate's is
                          outside the root's)
  stale                   timestamp older than now - max_age_s
  future                  timestamp newer than now + max_future_s
  replayed                sequence lower than the one held for the site, or equal to it with other
                          bytes (a conflict: the first announcement of a sequence wins)
  rate_limited            the sender (the transport source) sent more than its token bucket allows
  ======================  =====================================================================

The first ten are identity's, with the same meaning (identity's "stale" is a revocation list's; here it is an
announcement's). `AnnounceError` carries only the first three: decoding knows nothing of keys or time.

Encoding: as identity's. Integers are unsigned big-endian, texts one length byte then ASCII, and the encoding
is canonical: one value has exactly one encoding, and `decode_announcement` rejects every other spelling
("malformed"): reserved flag bits, lists out of order or with repeats, an IPv4 address with non-zero padding,
a non-canonical certificate, trailing bytes. So `encode_announcement(decode_announcement(b)) == b` for every
`b` that decodes. The 64-byte Ed25519 signature covers every byte before it, header included (the magic
"PTAN" differs from a certificate's "PTID", so no signature of one can pass for the other's).

Announcement (version 1, kind 1): 124 bytes, plus the certificate, 20 bytes and the uplink name per endpoint,
1 byte and the name per capability, 18 bytes per prefix; at least 330 bytes (a certificate of 206), at most
3,798 bytes (`MAX_ANNOUNCEMENT_BYTES` = 124 + 1,450 + 16 x 35 + 16 x 32 + 64 x 18). A site with short names,
two uplinks, two prefixes (in its certificate and announced) and a capability is 458 bytes: one packet in any
IPv6 MTU (1,280); the largest is one UDP datagram but more than one packet.

  ======  ============  =========================================================================
  bytes   field         meaning
  ======  ============  =========================================================================
  4       magic         b"PTAN"
  1       version       format version, 1
  1       kind          1 = announcement
  1       flags         bit 0: leaving (the site leaves the mesh); bits 1-7 must be 0
  2+n     certificate   length (206..1,450), then the site certificate in identity's format
  32      wg_key        the site's current X25519 WireGuard public key (not all zero)
  8       timestamp_ms  Unix milliseconds when signed, at most 253402300799999 (year 9999)
  8       sequence      1..2^64-1; the site's announcements are ordered by it
  1       n_endpoints   0..16
  20+n    endpoints     each: uplink name (1 length byte + 1-15 characters [a-z][a-z0-9-]{0,14}),
                        family (4 or 6), address (16 bytes; an IPv4 address in the first 4, the
                        other 12 are 0), port (2 bytes, 1..65535); strictly ascending by uplink
                        name (one endpoint per uplink)
  1       n_caps        0..16
  1+n     capabilities  each 1-31 characters [a-z][a-z0-9-]{0,30}; strictly ascending
  1       n_prefixes    0..64
  18 each prefixes      as identity's: family, length, 16-byte address, no host bits; strictly
                        ascending by (family, address, length)
  64      signature     Ed25519 by the certificate's signing key over all bytes above
  ======  ============  =========================================================================

Versions: as identity's, the version byte is the format's major version, with no optional fields; a decoder
rejects every version it does not know ("unsupported_version").

The gate (`AnnounceGate`) checks in this order, cheap before expensive, and gives a time or replay verdict
only to an authentic announcement: the sender's token bucket ("rate_limited"); the size; a byte-identical
copy of the announcement held for a site (`Duplicate`, found by the SHA-256 digest of the held bytes: no
decoding, no signature check); decoding; the certificate against the root, the root's validity and the
revocation list (a certificate that verified once is cached, by digest, so repeated announcements do not
verify it again: the time and revocation checks are still made on every announcement); the announcement's
signature; its prefixes inside the certificate's; its timestamp ("stale", "future"); its sequence against the
highest admitted for the site ("replayed"). A site that left (its held announcement has the leaving flag)
stays left until an announcement with a higher sequence arrives.

Its state is bounded: one held announcement and one highest sequence per site id (site ids are at most
`identity.MAX_SITE_ID`), at most `max_senders` token buckets (the least recently seen sender is evicted, so a
flood from spoofed sources cannot grow memory; an evicted sender starts again with a full bucket), at most
`max_cached_certs` verified certificates (least recently used evicted). Held announcements are not aged out
by time: a copy of a held announcement is `Duplicate` however old its timestamp, unless its certificate (or the
root) is no longer valid, when it is checked again (and gets "expired"); dropping held state is the caller's
(`forget`). The token bucket comes first, so duplicates count against their sender's rate too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import math
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from patronus.core import identity as ident
from patronus.core.errors import ConfigError, RefusedError, show
from patronus.core.identity import (
    KEY_LEN,
    MAX_SEQUENCE,
    MAX_TIME,
    PREFIX_LEN,
    SIG_LEN,
    Certificate,
    IdentityError,
    IPNetwork,
    _bytes_of,
    _canonical_prefixes,
    _int_in,
    _prefix_bytes,
    _prefix_problems,
    _private,
    _read_prefix,
    _Reader,
    _text,
)
from patronus.core.validate import NAME_RE

__all__ = [
    "FORMAT_VERSION", "MAX_ANNOUNCEMENT_BYTES", "MAX_CAPABILITIES", "MAX_ENDPOINTS", "MAX_TIMESTAMP_MS",
    "MIN_ANNOUNCEMENT_BYTES", "REASONS", "Accepted", "AnnounceError", "AnnounceGate", "Announcement", "Duplicate",
    "Endpoint", "IPAddress", "RateLimiter", "Reason", "Rejected", "Verdict", "decode_announcement",
    "encode_announcement", "sign_announcement",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
SigningKey: TypeAlias = Ed25519PrivateKey | bytes

Reason = Literal["malformed", "unsupported_version", "wrong_kind", "wrong_organisation", "bad_signature",
                 "not_yet_valid", "expired", "revoked", "prefix_not_allowed", "stale", "future", "replayed",
                 "rate_limited"]
REASONS: Final[tuple[str, ...]] = get_args(Reason)

MAGIC: Final = b"PTAN"
FORMAT_VERSION: Final = 1
KIND_ANNOUNCEMENT: Final = 1
_FLAG_LEAVING: Final = 0x01
_HEADER: Final = len(MAGIC) + 2

MAX_ENDPOINTS: Final = 16
MAX_CAPABILITIES: Final = 16
MAX_PREFIXES: Final = ident.MAX_PREFIXES
MAX_TIMESTAMP_MS: Final = MAX_TIME * 1000 + 999
UPLINK_MAX: Final = 15
_ENDPOINT_FIXED: Final = 1 + 1 + 16 + 2           # name length, family, address, port
_FIXED: Final = _HEADER + 1 + 2 + KEY_LEN + 8 + 8 + 1 + 1 + 1 + SIG_LEN
MIN_CERT_BYTES: Final = 204 + 1 + 1               # identity's fixed part, a 1-character organisation and site
MAX_ANNOUNCEMENT_BYTES: Final = (_FIXED + ident.MAX_CERT_BYTES + MAX_ENDPOINTS * (_ENDPOINT_FIXED + UPLINK_MAX)
                                 + MAX_CAPABILITIES * (1 + 31) + MAX_PREFIXES * PREFIX_LEN)
MIN_ANNOUNCEMENT_BYTES: Final = _FIXED + MIN_CERT_BYTES


class AnnounceError(RefusedError[Reason]):
    """An announcement that does not decode: `reason` (one of `REASONS`) says why, `detail` says where."""


@dataclass(frozen=True)
class Endpoint:
    """Where a site can be reached on one of its uplinks: the uplink's name, an address and a UDP port."""

    uplink: str
    address: IPAddress
    port: int


@dataclass(frozen=True)
class Announcement:
    """A decoded announcement. `cert_bytes` is the certificate as carried (what is verified and cached);
    `wg_key` is the site's current WireGuard key (it may differ from `cert.wg_public_key`)."""

    cert: Certificate
    cert_bytes: bytes
    leaving: bool
    wg_key: bytes
    timestamp_ms: int
    sequence: int
    endpoints: tuple[Endpoint, ...]
    capabilities: tuple[str, ...]
    prefixes: tuple[IPNetwork, ...]
    signature: bytes = b""

    @property
    def site_id(self) -> int:
        return self.cert.site_id

    @property
    def site_name(self) -> str:
        return self.cert.site_name


# --- validation shared by the encoder, the decoder and the signer --------------------------------------

Problems: TypeAlias = list[tuple[str, str]]


def _uplink_ok(name: object) -> bool:
    return isinstance(name, str) and len(name) <= UPLINK_MAX and NAME_RE.match(name) is not None


def _endpoint_problems(endpoints: object) -> Problems:
    if not isinstance(endpoints, tuple) or len(endpoints) > MAX_ENDPOINTS:
        return [("endpoints", f"expected a tuple of at most {MAX_ENDPOINTS} endpoints")]
    out: Problems = []
    for i, e in enumerate(endpoints):
        if not isinstance(e, Endpoint):
            out.append((f"endpoints[{i}]", f"expected an Endpoint, got {show(e)}"))
            continue
        if not _uplink_ok(e.uplink):
            out.append((f"endpoints[{i}].uplink", "uplink names are 1-15 characters: lowercase letters, digits and "
                                                  f"'-', starting with a letter; got {show(e.uplink)}"))
        if not isinstance(e.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            out.append((f"endpoints[{i}].address", f"expected an IPv4Address or IPv6Address, got {show(e.address)}"))
        if not _int_in(e.port, 1, 65535):
            out.append((f"endpoints[{i}].port", f"expected a port in 1..65535, got {show(e.port)}"))
    if not out and any(a.uplink >= b.uplink for a, b in itertools.pairwise(endpoints)):
        out.append(("endpoints", "one endpoint per uplink, in ascending order of uplink name"))
    return out


def _capability_problems(capabilities: object) -> Problems:
    if not isinstance(capabilities, tuple) or len(capabilities) > MAX_CAPABILITIES:
        return [("capabilities", f"expected a tuple of at most {MAX_CAPABILITIES} names")]
    bad = [c for c in capabilities if not (isinstance(c, str) and NAME_RE.match(c))]
    if bad:
        return [("capabilities", "capabilities are 1-31 characters: lowercase letters, digits and '-', starting "
                                 f"with a letter; got {show(bad[0])}")]
    if any(a >= b for a, b in itertools.pairwise(capabilities)):
        return [("capabilities", "capabilities must be unique and in ascending order")]
    return []


def _announcement_problems(a: Announcement) -> Problems:
    out: Problems = []
    if not isinstance(a.cert, Certificate) or not isinstance(a.cert_bytes, bytes):
        out.append(("cert", "expected the certificate and its bytes"))
    elif not MIN_CERT_BYTES <= len(a.cert_bytes) <= ident.MAX_CERT_BYTES:
        out.append(("cert", f"a certificate is {MIN_CERT_BYTES}..{ident.MAX_CERT_BYTES} bytes, got "
                            f"{len(a.cert_bytes)}"))
    if not isinstance(a.leaving, bool):
        out.append(("leaving", f"expected a bool, got {show(a.leaving)}"))
    if not _bytes_of(a.wg_key, KEY_LEN) or a.wg_key == bytes(KEY_LEN):
        out.append(("wg_key", f"expected a WireGuard public key of {KEY_LEN} bytes, not all zero"))
    if not _int_in(a.timestamp_ms, 0, MAX_TIMESTAMP_MS):
        out.append(("timestamp_ms", f"expected integer Unix milliseconds in 0..{MAX_TIMESTAMP_MS}, got "
                                    f"{show(a.timestamp_ms)}"))
    if not _int_in(a.sequence, 1, MAX_SEQUENCE):
        out.append(("sequence", f"expected an integer in 1..{MAX_SEQUENCE}, got {show(a.sequence)}"))
    out += _endpoint_problems(a.endpoints) + _capability_problems(a.capabilities) + _prefix_problems(a.prefixes)
    if not (a.signature == b"" or _bytes_of(a.signature, SIG_LEN)):
        out.append(("signature", f"expected {SIG_LEN} bytes (or none before signing)"))
    return out


# --- encoding ------------------------------------------------------------------------------------------

def _endpoint_bytes(e: Endpoint) -> bytes:
    return (_text(e.uplink) + bytes([e.address.version]) + e.address.packed.ljust(16, b"\0")
            + struct.pack(">H", e.port))


def _body(a: Announcement) -> bytes:
    return b"".join((
        MAGIC, bytes([FORMAT_VERSION, KIND_ANNOUNCEMENT, _FLAG_LEAVING if a.leaving else 0]),
        struct.pack(">H", len(a.cert_bytes)), a.cert_bytes, a.wg_key, struct.pack(">QQ", a.timestamp_ms, a.sequence),
        bytes([len(a.endpoints)]), *(_endpoint_bytes(e) for e in a.endpoints),
        bytes([len(a.capabilities)]), *(_text(c) for c in a.capabilities),
        bytes([len(a.prefixes)]), *(_prefix_bytes(p) for p in a.prefixes),
    ))


def encode_announcement(a: Announcement) -> bytes:
    """The canonical bytes of a signed announcement. ConfigError (every problem, by field) if it is invalid."""
    problems = _announcement_problems(a)
    if problems:
        raise ConfigError(problems)
    if not a.signature:
        raise ConfigError("the announcement is not signed", "signature")
    return _body(a) + a.signature


# --- decoding ------------------------------------------------------------------------------------------

def _read_endpoint(r: _Reader, i: int) -> Endpoint:
    uplink = r.text(f"endpoint {i} uplink")
    if not _uplink_ok(uplink):
        raise IdentityError("malformed", f"endpoint {i}: uplink name {show(uplink)} is not 1-15 characters "
                                         "[a-z][a-z0-9-]")
    family, addr = r.uint(1, f"endpoint {i} family"), r.take(16, f"endpoint {i} address")
    port = r.uint(2, f"endpoint {i} port")
    address: IPAddress
    if family == 4 and addr[4:] == bytes(12):
        address = ipaddress.IPv4Address(addr[:4])
    elif family == 6:
        address = ipaddress.IPv6Address(addr)
    else:
        raise IdentityError("malformed", f"endpoint {i}: unknown family {family} or non-zero padding")
    if port == 0:
        raise IdentityError("malformed", f"endpoint {i}: port 0")
    return Endpoint(uplink, address, port)


def _decode(data: bytes) -> Announcement:
    if data[:len(MAGIC)] != MAGIC:
        raise IdentityError("malformed", "not a Patronus announcement (no PTAN magic)")
    if len(data) < _HEADER:
        raise IdentityError("malformed", "truncated in the header")
    if data[4] != FORMAT_VERSION:
        raise IdentityError("unsupported_version", f"format version {data[4]}; this decoder knows {FORMAT_VERSION}")
    if data[5] != KIND_ANNOUNCEMENT:
        raise IdentityError("malformed", f"unknown kind {data[5]}")
    r = _Reader(data, "announcement")
    r.take(_HEADER, "header")
    flags = r.uint(1, "flags")
    if flags & ~_FLAG_LEAVING:
        raise IdentityError("malformed", f"reserved flag bits set ({flags:#04x})")
    cert_bytes = r.take(r.uint(2, "certificate length"), "certificate")
    cert = ident.decode(cert_bytes)
    wg_key, timestamp_ms, sequence = r.take(KEY_LEN, "wg_key"), r.uint(8, "timestamp_ms"), r.uint(8, "sequence")
    n = r.uint(1, "n_endpoints")
    if n > MAX_ENDPOINTS:
        raise IdentityError("malformed", f"{n} endpoints; at most {MAX_ENDPOINTS}")
    endpoints = tuple(_read_endpoint(r, i) for i in range(n))
    n = r.uint(1, "n_capabilities")
    if n > MAX_CAPABILITIES:
        raise IdentityError("malformed", f"{n} capabilities; at most {MAX_CAPABILITIES}")
    capabilities = tuple(r.text(f"capability {i}") for i in range(n))
    n = r.uint(1, "n_prefixes")
    if n > MAX_PREFIXES:
        raise IdentityError("malformed", f"{n} prefixes; at most {MAX_PREFIXES}")
    prefixes = tuple(_read_prefix(r, i) for i in range(n))
    signature = r.take(SIG_LEN, "signature")
    r.end()
    a = Announcement(cert=cert, cert_bytes=cert_bytes, leaving=bool(flags & _FLAG_LEAVING), wg_key=wg_key,
                     timestamp_ms=timestamp_ms, sequence=sequence, endpoints=endpoints, capabilities=capabilities,
                     prefixes=prefixes, signature=signature)
    problems = _announcement_problems(a)
    if problems:
        fld, why = problems[0]
        raise IdentityError("malformed", f"announcement {fld}: {why}")
    return a


def decode_announcement(data: bytes) -> Announcement:
    """Parse an announcement and the certificate in it (no signature, time or replay check: see
    `AnnounceGate`). Raises only `AnnounceError` ("malformed", "unsupported_version")."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AnnounceError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnounceError("malformed", f"{len(data)} bytes is longer than any announcement "
                                         f"({MAX_ANNOUNCEMENT_BYTES})")
    try:
        return _decode(bytes(data))
    except IdentityError as exc:        # the shared reader and the certificate's decoder speak identity's errors
        raise AnnounceError(exc.reason, exc.detail) from None


# --- signing (pure: a key and values in, bytes out) -----------------------------------------------------

def _canonical_endpoints(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    es = tuple(endpoints)
    if all(isinstance(e, Endpoint) and isinstance(e.uplink, str) for e in es):
        return tuple(sorted(es, key=lambda e: e.uplink))
    return es


def _canonical_names(names: Iterable[str]) -> tuple[str, ...]:
    ns = tuple(names)
    return tuple(sorted(set(ns))) if all(isinstance(n, str) for n in ns) else ns


def sign_announcement(site_key: SigningKey, cert_bytes: bytes, *, wg_key: bytes, endpoints: Iterable[Endpoint],
                      capabilities: Iterable[str], prefixes: Iterable[IPNetwork], timestamp_ms: int, sequence: int,
                      leaving: bool = False) -> bytes:
    """A site's announcement, signed with its key (the one `cert_bytes`'s certificate holds).

    Endpoints are sorted by uplink name (two on one uplink are an error), capabilities and prefixes sorted
    and without repeats; each prefix must be inside the certificate's. ConfigError (every problem, by
    field) on bad input."""
    key = _private(site_key, "site_key")
    try:
        cert = ident.decode(cert_bytes)
    except IdentityError as exc:
        raise ConfigError(f"not a certificate: {exc}", "cert_bytes") from None
    problems: Problems = []
    if cert.is_ca:
        problems.append(("cert_bytes", "the organisation's root certificate, not a site's"))
    elif ident.public_key_bytes(key) != cert.signing_key:
        problems.append(("site_key", f"not the signing key of the certificate of {cert.site_name!r}"))
    ps = _canonical_prefixes(prefixes)
    a = Announcement(cert=cert, cert_bytes=bytes(cert_bytes), leaving=leaving, wg_key=wg_key,
                     timestamp_ms=timestamp_ms, sequence=sequence, endpoints=_canonical_endpoints(endpoints),
                     capabilities=_canonical_names(capabilities), prefixes=ps)
    problems += _announcement_problems(a)
    if not problems:
        problems += [("prefixes", f"{p} is not inside the certificate's prefixes "
                                  f"({', '.join(map(str, cert.prefixes)) or 'none'})")
                     for p in a.prefixes if not ident.allows(cert, p)]
    if problems:
        raise ConfigError(problems)
    body = _body(a)
    return body + key.sign(body)


# --- the admission gate ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    """Admitted and now held for its site. `changed`: the first from this site, or a newer sequence."""

    announcement: Announcement
    changed: bool


@dataclass(frozen=True)
class Duplicate:
    """Byte for byte the announcement held for its site (gossip repeats them): nothing to do."""

    announcement: Announcement


@dataclass(frozen=True)
class Rejected:
    """Refused: `reason` is one of `REASONS`, `detail` says why (bounded: no input is printed whole)."""

    reason: Reason
    detail: str


Verdict: TypeAlias = Accepted | Duplicate | Rejected


@dataclass
class _Bucket:
    tokens: float
    last: float


class RateLimiter:
    """Token buckets per sender (a transport source): `rate_per_s` tokens a second, at most `burst` held; a
    new sender starts full. At most `max_senders` buckets are kept, the least recently seen evicted first, so
    a flood from spoofed sources cannot grow the table. A clock that steps back refills nothing."""

    def __init__(self, rate_per_s: float, burst: int, max_senders: int) -> None:
        self.rate_per_s, self.burst, self.max_senders = float(rate_per_s), burst, max_senders
        self._senders: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def take(self, sender: str, now: float) -> bool:
        """Whether `sender` may send one more at `now` (and, if so, the token is spent)."""
        b = self._senders.get(sender)
        if b is None:
            b = self._senders[sender] = _Bucket(float(self.burst), now)
            if len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)                 # the least recently seen sender
        else:
            self._senders.move_to_end(sender)
            b.tokens = min(float(self.burst), b.tokens + max(0.0, now - b.last) * self.rate_per_s)
            b.last = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


@dataclass(frozen=True)
class _Held:
    announcement: Announcement
    digest: bytes


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _positive(value: object, what: str, *, integer: bool = False) -> None:
    ok = (_int_in(value, 1, 1 << 62) if integer
          else isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0)
    if not ok:
        raise ConfigError(f"expected a positive {'integer' if integer else 'number'}, got {show(value)}", what)


class AnnounceGate:
    """Admits announcements of one organisation (its root certificate) and holds the newest per site.

    Stateful but sans-IO: every call gets `now` (Unix seconds) from the caller. See the module's docstring for
    the order of the checks and the bounds on the state."""

    def __init__(self, root: Certificate, *, max_age_s: float = 3600, max_future_s: float = 30,
                 rate_per_s: float = 20.0, burst: int = 40, max_senders: int = 4096,
                 max_cached_certs: int = 4096) -> None:
        if not isinstance(root, Certificate) or not root.is_ca:
            raise ConfigError("expected the organisation's root (CA) certificate", "root")
        for value, what in ((max_age_s, "max_age_s"), (max_future_s, "max_future_s"), (rate_per_s, "rate_per_s")):
            _positive(value, what)
        for value, what in ((burst, "burst"), (max_senders, "max_senders"), (max_cached_certs, "max_cached_certs")):
            _positive(value, what, integer=True)
        self.root = root
        self.max_age_s, self.max_future_s = float(max_age_s), float(max_future_s)
        self.rate_per_s, self.burst = float(rate_per_s), burst
        self.max_senders, self.max_cached_certs = max_senders, max_cached_certs
        self.revocations: ident.RevocationList | None = None
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.duplicates = 0
        self._limiter = RateLimiter(self.rate_per_s, burst, max_senders)
        self._certs: OrderedDict[bytes, Certificate] = OrderedDict()     # digest of verified bytes -> certificate
        self._held: dict[int, _Held] = {}
        self._by_digest: dict[bytes, int] = {}                           # digest of a held announcement -> site id
        self._highest: dict[int, int] = {}                               # site id -> highest sequence admitted

    # -- queries

    def held(self, site_id: int) -> Announcement | None:
        """The announcement held for a site (perhaps a leaving one: see `Announcement.leaving`), or None."""
        h = self._held.get(site_id)
        return h.announcement if h is not None else None

    def sites(self) -> tuple[int, ...]:
        """The ids of the sites with a held announcement (leaving ones included), ascending."""
        return tuple(sorted(self._held))

    def senders(self) -> int:
        """How many senders' token buckets are kept (at most `max_senders`)."""
        return len(self._limiter)

    # -- changes

    def forget(self, site_id: int) -> None:
        """Drop a site's held announcement and its highest sequence (so any sequence is admitted again)."""
        self._drop(site_id)
        self._highest.pop(site_id, None)

    def set_revocations(self, data: bytes) -> tuple[int, ...]:
        """Install a newer revocation list (raw bytes; `identity.verify_revocations` against the root and the
        list held: IdentityError if it is bad or not newer). Drops, and returns the ids of, the sites whose held
        announcement's certificate is now revoked."""
        rl = ident.verify_revocations(data, self.root, self.revocations)
        self.revocations = rl
        dropped = tuple(sorted(sid for sid, h in self._held.items() if h.announcement.cert.serial in rl))
        for sid in dropped:
            self._drop(sid)
        return dropped

    def _drop(self, site_id: int) -> None:
        h = self._held.pop(site_id, None)
        if h is not None:
            self._by_digest.pop(h.digest, None)

    # -- admission

    def admit(self, data: bytes, sender: str, now: float) -> Verdict:
        """The verdict on an announcement as received from `sender` (its transport source, e.g. "ip:port") at
        `now` (Unix seconds). Never raises for any `data`; ConfigError only for a `now` that is not finite."""
        if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
            raise ConfigError(f"expected finite Unix seconds, got {show(now)}", "now")
        if not self._limiter.take(sender, now):
            return self._reject("rate_limited", f"sender {show(sender)} is over {self.rate_per_s:g} announcements/s "
                                                f"(burst {self.burst})")
        if not isinstance(data, bytes | bytearray | memoryview):
            return self._reject("malformed", f"expected bytes, got {type(data).__name__}")
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            return self._reject("malformed", f"{len(data)} bytes is longer than any announcement "
                                             f"({MAX_ANNOUNCEMENT_BYTES})")
        data = bytes(data)
        digest = _digest(data)
        t = math.floor(now)
        dup = self._duplicate(digest, t)
        if dup is not None:
            self.duplicates += 1
            return Duplicate(dup)
        try:
            a = decode_announcement(data)
            self._verify_certificate(a, t)
            self._verify_signature(a, data)
            ident.require_allowed(a.cert, a.prefixes)
        except (AnnounceError, IdentityError) as exc:
            return self._reject(exc.reason, exc.detail)
        return self._admit_authentic(a, digest, now)

    def _still_valid(self, cert: Certificate, t: int) -> bool:
        """The checks of a cached (once verified) certificate that can change: time and revocation."""
        return (self.root.valid_at(t) and cert.valid_at(t)
                and (self.revocations is None or cert.serial not in self.revocations))

    def _duplicate(self, digest: bytes, t: int) -> Announcement | None:
        site_id = self._by_digest.get(digest)
        if site_id is None:
            return None
        a = self._held[site_id].announcement
        return a if self._still_valid(a.cert, t) else None

    def _verify_certificate(self, a: Announcement, t: int) -> None:
        key = _digest(a.cert_bytes)
        cached = self._certs.get(key)
        if cached is not None and self._still_valid(cached, t):
            self._certs.move_to_end(key)
            return
        ident.verify(a.cert_bytes, self.root, t, self.revocations)   # raises the reason (time, revoked, ...)
        self._certs[key] = a.cert
        self._certs.move_to_end(key)
        if len(self._certs) > self.max_cached_certs:
            self._certs.popitem(last=False)

    @staticmethod
    def _verify_signature(a: Announcement, data: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(a.cert.signing_key).verify(a.signature, data[:-SIG_LEN])
        except (InvalidSignature, ValueError):
            raise IdentityError("bad_signature", f"the announcement's signature does not verify with the signing "
                                                 f"key of {a.site_name!r}'s certificate") from None

    def _admit_authentic(self, a: Announcement, digest: bytes, now: float) -> Verdict:
        when = a.timestamp_ms / 1000
        if when < now - self.max_age_s:
            return self._reject("stale", f"announcement of {a.site_name!r} signed at {when:.3f}, more than "
                                         f"{self.max_age_s:g} s before now ({now:.3f})")
        if when > now + self.max_future_s:
            return self._reject("future", f"announcement of {a.site_name!r} signed at {when:.3f}, more than "
                                          f"{self.max_future_s:g} s after now ({now:.3f})")
        highest = self._highest.get(a.site_id)
        if highest is not None and a.sequence < highest:
            return self._reject("replayed", f"announcement {a.sequence} of {a.site_name!r} is older than the "
                                            f"admitted {highest}")
        if highest is not None and a.sequence == highest:      # the same bytes were `Duplicate` before decoding
            return self._reject("replayed", f"announcement {a.sequence} of {a.site_name!r} conflicts with the "
                                            "admitted one of the same sequence")
        self._drop(a.site_id)
        self._held[a.site_id] = _Held(a, digest)
        self._by_digest[digest] = a.site_id
        self._highest[a.site_id] = a.sequence
        self.accepted += 1
        return Accepted(a, changed=True)

    def _reject(self, reason: Reason, detail: str) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason, detail)
