"""Identity and trust for the mesh: site certificates and revocation lists signed by an organisation's root.

An organisation has one root key (Ed25519). Its root certificate is self-signed; every site certificate is
signed by the root key and binds a site's id and name to its Ed25519 signing key, its X25519 (WireGuard)
public key and the prefixes it may announce, for a validity window. A signed revocation list names the
serials that are no longer trusted; a newer list (higher sequence) replaces an older one. The model is
Nebula's (a CA signs host certificates holding the host's key, IPs and subnets), in a format of our own.

What this module does not know: files, the clock, the network, key storage. It is sans-IO and pure: bytes
and values in, values or `IdentityError` out. `now` is always passed in. Random values (serials) are chosen
by the caller. It holds no state; nothing here changes after it is built (every value is frozen).

Decoders and verifiers take raw bytes, as they arrive from a file or the network, and never raise anything
but `IdentityError` (a `PeerError`) whose `reason` is one of `REASONS`:

  ======================  =====================================================================
  malformed               not a well-formed, canonical object of this format (any parse failure)
  unsupported_version     the magic is right but the format version is one this decoder does not know
  wrong_kind              a revocation list where a certificate was expected (or the reverse); a CA
                          certificate where a site certificate was expected (or the reverse)
  wrong_organisation      issued under another organisation (its root key's fingerprint or its name)
  bad_signature           the signature does not verify with the organisation's root key
  not_yet_valid           now < not_before (of the certificate or of the root)
  expired                 now >= not_after (of the certificate or of the root)
  revoked                 the certificate's serial is on the organisation's revocation list
  prefix_not_allowed      a prefix outside what the certificate (or, for a site, the root) allows
  stale                   a revocation list whose sequence is not newer than the one already held
  ======================  =====================================================================

The signature is checked before the times, the revocation list and the prefixes: only an authentic
certificate gets "expired" or "revoked"; a forged one is "bad_signature" (or "wrong_organisation").

Encoding: every object starts with the 4 bytes "PTID", one byte of format version and one byte of kind, and
ends with a 64-byte Ed25519 signature over every byte before it (header included, so a certificate's
signature can never pass for a revocation list's). Integers are unsigned big-endian. Texts are one length
byte then ASCII. The encoding is canonical: one value has exactly one encoding, and `decode` rejects every
other spelling ("malformed"): reserved flag bits set, prefixes with host bits or out of order, serials out
of order, trailing bytes. So `encode(decode(b)) == b` for every `b` that decodes.

Certificate (kind 1): 204 bytes, plus the two names and 18 bytes per prefix; at most 1,450 bytes.

  ======  ===========  ==========================================================================
  bytes   field        meaning
  ======  ===========  ==========================================================================
  4       magic        b"PTID"
  1       version      format version, 1
  1       kind         1 = certificate
  1       flags        bit 0: is_ca (the organisation's self-signed root); bits 1-7 must be 0
  16      serial       random 128-bit number chosen by the signer (revocation names it)
  8       not_before   Unix seconds; valid when not_before <= now < not_after
  8       not_after    Unix seconds, > not_before; both at most 253402300799 (year 9999)
  32      org_fp       SHA-256 of the organisation's root public key (for a root: of its own key)
  1+n     org_name     organisation name, 1-63 characters [a-z0-9.-], starting with a letter
  2       site_id      1..4000 (the site files' `site.id`); 0 for a root
  1+n     site_name    a site name (`NAME_RE`: [a-z][a-z0-9-]{0,30}); empty for a root
  32      signing_key  the subject's Ed25519 public key (a site's announcement key; a root's CA key)
  32      wg_key       the site's X25519 WireGuard public key (not all zero); 32 zero bytes for a root
  1       n_prefixes   0..64
  18 each prefixes     family (4 or 6), prefix length, address (16 bytes; an IPv4 address is in the
                       first 4, the other 12 are 0); no host bits; strictly ascending by
                       (family, address, length)
  64      signature    Ed25519 by the root key (for a root: by its own key) over all bytes above
  ======  ===========  ==========================================================================

A root's prefixes bound every site's: a site certificate whose prefixes are not each inside one of the
root's is "prefix_not_allowed" (an empty root list allows nothing; `0.0.0.0/0` and `::/0` allow all).

Revocation list (kind 2): 121 bytes, plus the name and 16 bytes per serial; at most 32,952 bytes.

  ======  ===========  ==========================================================================
  bytes   field        meaning
  ======  ===========  ==========================================================================
  4       magic        b"PTID"
  1       version      1
  1       kind         2 = revocation list
  32      org_fp       SHA-256 of the organisation's root public key
  1+n     org_name     organisation name
  8       sequence     the list's number; a list replaces a held one only with a higher sequence
  8       issued_at    Unix seconds (informational; ordering is by sequence, not by clock)
  2       count        0..2048
  16 each serials      revoked serials, strictly ascending
  64      signature    Ed25519 by the root key over all bytes above
  ======  ===========  ==========================================================================

Versions: the version byte is the format's major version, and there are no minor versions: the layout has no
optional or skippable fields, so any change to it (a new field, a longer key) takes a new version byte and
is never reused. A decoder rejects every version it does not know with "unsupported_version", never guesses.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import itertools
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from patronus.core.errors import ConfigError, RefusedError, show
from patronus.core.validate import NAME_RE

__all__ = [
    "FORMAT_VERSION", "MAX_CERT_BYTES", "MAX_PREFIXES", "MAX_REVOCATIONS_BYTES", "MAX_REVOKED", "MAX_SITE_ID",
    "MAX_TIME", "REASONS", "Certificate", "IPNetwork", "IdentityError", "Reason", "RevocationList", "allows",
    "decode", "decode_any", "decode_revocations", "encode", "encode_revocations", "fingerprint", "key_fingerprint",
    "org_name_problem", "public_key_bytes", "require_allowed", "self_sign_root", "sign_revocations", "sign_site",
    "verify", "verify_revocations", "verify_root",
]

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
SigningKey: TypeAlias = Ed25519PrivateKey | bytes

Reason = Literal["malformed", "unsupported_version", "wrong_kind", "wrong_organisation", "bad_signature",
                 "not_yet_valid", "expired", "revoked", "prefix_not_allowed", "stale"]
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))

MAGIC: Final = b"PTID"
FORMAT_VERSION: Final = 1
KIND_CERTIFICATE: Final = 1
KIND_REVOCATIONS: Final = 2
_KIND_NAMES: Final = {KIND_CERTIFICATE: "certificate", KIND_REVOCATIONS: "revocation list"}

KEY_LEN: Final = 32
SIG_LEN: Final = 64
FP_LEN: Final = 32
SERIAL_LEN: Final = 16
PREFIX_LEN: Final = 18
MAX_PREFIXES: Final = 64
MAX_REVOKED: Final = 2048          # 32 KiB of serials: a list still fits in one UDP datagram
MAX_SITE_ID: Final = 4000          # as `site.id` in patronus/agent/config.py
MAX_TIME: Final = 253402300799     # 9999-12-31T23:59:59Z: every time of ours is a printable date
MAX_SERIAL: Final = (1 << 128) - 1
MAX_SEQUENCE: Final = (1 << 64) - 1
ORG_RE: Final = re.compile(r"^[a-z][a-z0-9.-]{0,62}$")
_FLAG_CA: Final = 0x01

_HEADER: Final = len(MAGIC) + 2
MAX_CERT_BYTES: Final = (_HEADER + 1 + SERIAL_LEN + 8 + 8 + FP_LEN + 1 + 63 + 2 + 1 + 31 + 2 * KEY_LEN + 1
                         + MAX_PREFIXES * PREFIX_LEN + SIG_LEN)
MAX_REVOCATIONS_BYTES: Final = _HEADER + FP_LEN + 1 + 63 + 8 + 8 + 2 + MAX_REVOKED * SERIAL_LEN + SIG_LEN


class IdentityError(RefusedError[Reason]):
    """A certificate or revocation list refused: `reason` (one of `REASONS`) says why, `detail` says where."""


@dataclass(frozen=True)
class Certificate:
    """A decoded certificate (a site's, or the organisation's self-signed root when `is_ca`).

    `serial` is an int (128 bits); keys are raw 32-byte strings; `signature` is empty until signed."""

    org_name: str
    org_fingerprint: bytes
    is_ca: bool
    site_id: int
    site_name: str
    signing_key: bytes
    wg_public_key: bytes
    prefixes: tuple[IPNetwork, ...]
    not_before: int
    not_after: int
    serial: int
    signature: bytes = b""
    version: int = FORMAT_VERSION

    def valid_at(self, now: int) -> bool:
        return self.not_before <= now < self.not_after


@dataclass(frozen=True)
class RevocationList:
    """A decoded revocation list: the organisation's revoked serials, numbered by `sequence`."""

    org_name: str
    org_fingerprint: bytes
    sequence: int
    issued_at: int
    serials: tuple[int, ...]
    signature: bytes = b""
    version: int = FORMAT_VERSION

    def __contains__(self, serial: object) -> bool:
        if not isinstance(serial, int):
            return False
        at = bisect.bisect_left(self.serials, serial)       # the serials are in ascending order
        return at < len(self.serials) and self.serials[at] == serial


# --- keys --------------------------------------------------------------------------------------------

def key_fingerprint(public_key: bytes) -> bytes:
    """SHA-256 of a raw public key: how a certificate names its organisation's root key."""
    return hashlib.sha256(public_key).digest()


def fingerprint(obj: Certificate | RevocationList) -> bytes:
    """SHA-256 of the object's encoding (signature included): what `ca show` prints to compare copies."""
    return hashlib.sha256(encode(obj) if isinstance(obj, Certificate) else encode_revocations(obj)).digest()


def _private(key: SigningKey, what: str) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, bytes) and len(key) == KEY_LEN:
        return Ed25519PrivateKey.from_private_bytes(key)
    raise ConfigError("expected an Ed25519 private key (a key object or its 32 raw bytes)", what)


def public_key_bytes(key: SigningKey) -> bytes:
    """The raw 32-byte Ed25519 public key of a private key (object or 32 raw bytes)."""
    return _private(key, "key").public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_signature(public_key: bytes, signature: bytes, signed: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed)
    except (InvalidSignature, ValueError) as exc:
        raise IdentityError("bad_signature", f"the {what}'s signature does not verify with the organisation's "
                                             "root key") from exc


# --- validation shared by the encoders, the decoders and the signers -----------------------------------

Problems: TypeAlias = list[tuple[str, str]]


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _bytes_of(value: object, n: int) -> bool:
    return isinstance(value, bytes) and len(value) == n


def _prefix_key(p: IPNetwork) -> tuple[int, int, int]:
    return p.version, int(p.network_address), p.prefixlen


def org_name_problem(org_name: object) -> str | None:
    """Why `org_name` is not an organisation name, or None if it is one."""
    if not isinstance(org_name, str) or not ORG_RE.match(org_name):
        return ("organisation names are 1-63 characters: lowercase letters, digits, '.' and '-', starting with a "
                f"letter; got {show(org_name)}")
    return None


def _common_problems(org_name: object, org_fp: object, signature: object, version: object) -> Problems:
    out: Problems = []
    if (why := org_name_problem(org_name)) is not None:
        out.append(("org_name", why))
    if not _bytes_of(org_fp, FP_LEN):
        out.append(("org_fingerprint", f"expected {FP_LEN} bytes"))
    if not (signature == b"" or _bytes_of(signature, SIG_LEN)):
        out.append(("signature", f"expected {SIG_LEN} bytes (or none before signing)"))
    if version != FORMAT_VERSION:
        out.append(("version", f"only format version {FORMAT_VERSION} is known, got {show(version)}"))
    return out


def _prefix_problems(prefixes: object) -> Problems:
    if not isinstance(prefixes, tuple) or len(prefixes) > MAX_PREFIXES:
        return [("prefixes", f"expected a tuple of at most {MAX_PREFIXES} prefixes")]
    if not all(isinstance(p, ipaddress.IPv4Network | ipaddress.IPv6Network) for p in prefixes):
        return [("prefixes", "expected IPv4Network or IPv6Network values")]
    keys = [_prefix_key(p) for p in prefixes]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        return [("prefixes", "prefixes must be unique and in ascending order (family, address, length)")]
    return []


def _time_problems(not_before: object, not_after: object) -> Problems:
    if not (isinstance(not_before, int) and isinstance(not_after, int) and _int_in(not_before, 0, MAX_TIME)
            and _int_in(not_after, 0, MAX_TIME)):
        return [("not_after", f"validity times are integer Unix seconds in 0..{MAX_TIME}")]
    if not_before >= not_after:
        return [("not_after", f"not_after ({not_after}) must be after not_before ({not_before})")]
    return []


def _subject_problems(c: Certificate) -> Problems:
    """The fields that differ between a root and a site certificate."""
    out: Problems = []
    if not isinstance(c.is_ca, bool):
        return [("is_ca", "expected a bool")]
    if c.is_ca:
        if c.site_id != 0 or c.site_name != "":
            out.append(("site_id", "a root certificate has site id 0 and no site name"))
        if c.wg_public_key != bytes(KEY_LEN):
            out.append(("wg_public_key", "a root certificate has no WireGuard key (32 zero bytes)"))
        if _bytes_of(c.signing_key, KEY_LEN) and c.org_fingerprint != key_fingerprint(c.signing_key):
            out.append(("org_fingerprint", "a root certificate's organisation fingerprint is its own key's"))
        return out
    if not _int_in(c.site_id, 1, MAX_SITE_ID):
        out.append(("site_id", f"expected a site id in 1..{MAX_SITE_ID}, got {show(c.site_id)}"))
    if not isinstance(c.site_name, str) or not NAME_RE.match(c.site_name):
        out.append(("site_name", "site names are lowercase letters, digits and '-', starting with a letter, at "
                                 f"most 31 characters; got {show(c.site_name)}"))
    if not _bytes_of(c.wg_public_key, KEY_LEN) or c.wg_public_key == bytes(KEY_LEN):
        out.append(("wg_public_key", f"expected a WireGuard public key of {KEY_LEN} bytes, not all zero"))
    return out


def _certificate_problems(c: Certificate) -> Problems:
    out = _common_problems(c.org_name, c.org_fingerprint, c.signature, c.version) + _subject_problems(c)
    if not _bytes_of(c.signing_key, KEY_LEN):
        out.append(("signing_key", f"expected an Ed25519 public key of {KEY_LEN} bytes"))
    if not _int_in(c.serial, 0, MAX_SERIAL):
        out.append(("serial", "expected a 128-bit unsigned integer"))
    return out + _prefix_problems(c.prefixes) + _time_problems(c.not_before, c.not_after)


def _revocation_problems(r: RevocationList) -> Problems:
    out = _common_problems(r.org_name, r.org_fingerprint, r.signature, r.version)
    if not _int_in(r.sequence, 0, MAX_SEQUENCE):
        out.append(("sequence", "expected a 64-bit unsigned integer"))
    if not _int_in(r.issued_at, 0, MAX_TIME):
        out.append(("issued_at", f"expected integer Unix seconds in 0..{MAX_TIME}"))
    s = r.serials
    if not isinstance(s, tuple) or len(s) > MAX_REVOKED or not all(_int_in(x, 0, MAX_SERIAL) for x in s):
        out.append(("serials", f"expected a tuple of at most {MAX_REVOKED} 128-bit serials"))
    elif any(a >= b for a, b in itertools.pairwise(s)):
        out.append(("serials", "serials must be unique and in ascending order"))
    return out


# --- encoding ----------------------------------------------------------------------------------------

def _text(s: str) -> bytes:
    raw = s.encode("ascii")
    return bytes([len(raw)]) + raw


def _prefix_bytes(p: IPNetwork) -> bytes:
    return bytes([p.version, p.prefixlen]) + p.network_address.packed.ljust(16, b"\0")


def _certificate_body(c: Certificate) -> bytes:
    return b"".join((
        MAGIC, bytes([c.version, KIND_CERTIFICATE, _FLAG_CA if c.is_ca else 0]),
        c.serial.to_bytes(SERIAL_LEN, "big"), struct.pack(">QQ", c.not_before, c.not_after),
        c.org_fingerprint, _text(c.org_name), struct.pack(">H", c.site_id), _text(c.site_name),
        c.signing_key, c.wg_public_key, bytes([len(c.prefixes)]), *(_prefix_bytes(p) for p in c.prefixes),
    ))


def _revocations_body(r: RevocationList) -> bytes:
    return b"".join((
        MAGIC, bytes([r.version, KIND_REVOCATIONS]), r.org_fingerprint, _text(r.org_name),
        struct.pack(">QQH", r.sequence, r.issued_at, len(r.serials)),
        *(s.to_bytes(SERIAL_LEN, "big") for s in r.serials),
    ))


def _require_valid(problems: Problems) -> None:
    if problems:
        raise ConfigError(problems)


def encode(cert: Certificate) -> bytes:
    """The canonical bytes of a signed certificate. ConfigError (every problem, by field) if it is invalid."""
    _require_valid(_certificate_problems(cert))
    if not cert.signature:
        raise ConfigError("the certificate is not signed", "signature")
    return _certificate_body(cert) + cert.signature


def encode_revocations(rl: RevocationList) -> bytes:
    """The canonical bytes of a signed revocation list. ConfigError if it is invalid."""
    _require_valid(_revocation_problems(rl))
    if not rl.signature:
        raise ConfigError("the revocation list is not signed", "signature")
    return _revocations_body(rl) + rl.signature


# --- decoding ----------------------------------------------------------------------------------------

class _Reader:
    """Reads fields from the front of a bounded byte string; any shortfall is "malformed"."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.at = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.at + n > len(self.data):
            raise IdentityError("malformed", f"{self.what} truncated in {field} (at byte {self.at} of "
                                             f"{len(self.data)})")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")

    def text(self, field: str) -> str:
        raw = self.take(self.uint(1, field), field)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityError("malformed", f"{self.what}'s {field} is not ASCII") from None

    def end(self) -> None:
        if self.at != len(self.data):
            raise IdentityError("malformed", f"{len(self.data) - self.at} trailing bytes after the {self.what}")


def _as_bytes(data: object, limit: int, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IdentityError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise IdentityError("malformed", f"{len(data)} bytes is longer than any {what} ({limit})")
    return bytes(data)


def _kind(data: bytes) -> int:
    """The kind byte of an object of ours, after checking the magic and the version."""
    if data[:len(MAGIC)] != MAGIC:
        raise IdentityError("malformed", "not a Patronus identity object (no PTID magic)")
    if len(data) < _HEADER:
        raise IdentityError("malformed", "truncated in the header")
    if data[4] != FORMAT_VERSION:
        raise IdentityError("unsupported_version", f"format version {data[4]}; this decoder knows {FORMAT_VERSION}")
    if data[5] not in _KIND_NAMES:
        raise IdentityError("malformed", f"unknown kind {data[5]}")
    return data[5]


def _header(data: bytes, kind: int) -> None:
    got = _kind(data)
    if got != kind:
        raise IdentityError("wrong_kind", f"expected a {_KIND_NAMES[kind]}, got a {_KIND_NAMES[got]}")


def _read_prefix(r: _Reader, i: int) -> IPNetwork:
    raw = r.take(PREFIX_LEN, f"prefix {i}")
    family, length, addr = raw[0], raw[1], raw[2:]
    try:
        if family == 4 and addr[4:] == bytes(12):
            return ipaddress.IPv4Network((addr[:4], length), strict=True)
        if family == 6:
            return ipaddress.IPv6Network((addr, length), strict=True)
    except ValueError as exc:
        raise IdentityError("malformed", f"prefix {i}: {exc}") from None
    raise IdentityError("malformed", f"prefix {i}: unknown family {family} or non-zero padding")


def _check_decoded(problems: Problems, what: str) -> None:
    if problems:
        fld, reason = problems[0]
        raise IdentityError("malformed", f"{what} {fld}: {reason}")


def decode(data: bytes) -> Certificate:
    """Parse a certificate (no signature check: see `verify`). Raises only `IdentityError`."""
    data = _as_bytes(data, MAX_CERT_BYTES, "certificate")
    _header(data, KIND_CERTIFICATE)
    r = _Reader(data, "certificate")
    r.take(_HEADER, "header")
    flags = r.uint(1, "flags")
    if flags & ~_FLAG_CA:
        raise IdentityError("malformed", f"reserved flag bits set ({flags:#04x})")
    serial = r.uint(SERIAL_LEN, "serial")
    not_before, not_after = r.uint(8, "not_before"), r.uint(8, "not_after")
    org_fp = r.take(FP_LEN, "org_fingerprint")
    org_name = r.text("org_name")
    site_id = r.uint(2, "site_id")
    site_name = r.text("site_name")
    signing_key, wg_key = r.take(KEY_LEN, "signing_key"), r.take(KEY_LEN, "wg_key")
    n = r.uint(1, "n_prefixes")
    if n > MAX_PREFIXES:
        raise IdentityError("malformed", f"{n} prefixes; at most {MAX_PREFIXES}")
    prefixes = tuple(_read_prefix(r, i) for i in range(n))
    signature = r.take(SIG_LEN, "signature")
    r.end()
    cert = Certificate(org_name=org_name, org_fingerprint=org_fp, is_ca=bool(flags & _FLAG_CA), site_id=site_id,
                       site_name=site_name, signing_key=signing_key, wg_public_key=wg_key, prefixes=prefixes,
                       not_before=not_before, not_after=not_after, serial=serial, signature=signature)
    _check_decoded(_certificate_problems(cert), "certificate")
    return cert


def decode_revocations(data: bytes) -> RevocationList:
    """Parse a revocation list (no signature check: see `verify_revocations`). Raises only `IdentityError`."""
    data = _as_bytes(data, MAX_REVOCATIONS_BYTES, "revocation list")
    _header(data, KIND_REVOCATIONS)
    r = _Reader(data, "revocation list")
    r.take(_HEADER, "header")
    org_fp = r.take(FP_LEN, "org_fingerprint")
    org_name = r.text("org_name")
    sequence, issued_at, count = r.uint(8, "sequence"), r.uint(8, "issued_at"), r.uint(2, "count")
    if count > MAX_REVOKED:
        raise IdentityError("malformed", f"{count} serials; at most {MAX_REVOKED}")
    serials = tuple(r.uint(SERIAL_LEN, f"serial {i}") for i in range(count))
    signature = r.take(SIG_LEN, "signature")
    r.end()
    rl = RevocationList(org_name=org_name, org_fingerprint=org_fp, sequence=sequence, issued_at=issued_at,
                        serials=serials, signature=signature)
    _check_decoded(_revocation_problems(rl), "revocation list")
    return rl


def decode_any(data: bytes) -> Certificate | RevocationList:
    """A certificate or a revocation list, by its kind byte. Raises only `IdentityError`."""
    raw = _as_bytes(data, max(MAX_CERT_BYTES, MAX_REVOCATIONS_BYTES), "identity object")
    return decode(raw) if _kind(raw) == KIND_CERTIFICATE else decode_revocations(raw)


# --- verification ------------------------------------------------------------------------------------

def verify_root(data: bytes) -> Certificate:
    """An organisation's root certificate: a CA certificate signed by its own key. Raises only `IdentityError`.

    Trust in a root comes from how it was installed (a file the operator put there), not from this check;
    it only proves the root is intact and self-consistent. Its validity at a time is checked by `verify`."""
    cert = decode(data)
    if not cert.is_ca:
        raise IdentityError("wrong_kind", f"site certificate of {cert.site_name!r} where a root was expected")
    _check_signature(cert.signing_key, cert.signature, bytes(data[:-SIG_LEN]), "root certificate")
    return cert


def _check_organisation(org_name: str, org_fp: bytes, root: Certificate, what: str) -> None:
    if not root.is_ca:
        raise IdentityError("wrong_kind", "the trusted root is not a CA certificate")
    if org_fp != root.org_fingerprint or org_name != root.org_name:
        raise IdentityError("wrong_organisation", f"{what} of organisation {org_name!r} (root key "
                                                  f"{org_fp[:8].hex()}…), not of {root.org_name!r} "
                                                  f"({root.org_fingerprint[:8].hex()}…)")


def _check_time(c: Certificate, now: int, what: str) -> None:
    if now < c.not_before:
        raise IdentityError("not_yet_valid", f"{what} valid from {c.not_before}, now is {now}")
    if now >= c.not_after:
        raise IdentityError("expired", f"{what} expired at {c.not_after}, now is {now}")


def require_allowed(cert: Certificate, prefixes: Iterable[IPNetwork]) -> None:
    """Raise "prefix_not_allowed" for the first of `prefixes` that `cert` does not allow."""
    for p in prefixes:
        if not allows(cert, p):
            raise IdentityError("prefix_not_allowed", f"{p} is not inside the prefixes "
                                                      f"{cert.site_name or cert.org_name!r} may announce")


def verify(cert_bytes: bytes, root: Certificate, now: int, revoked: RevocationList | None = None) -> Certificate:
    """A site certificate, as received, checked against the organisation's root at `now` (Unix seconds).

    Checks, in order: well-formed, a site (not CA) certificate, of the root's organisation, signed by the root
    key, the root and the certificate valid at `now`, its serial not in `revoked` (which must be the root
    organisation's, already verified with `verify_revocations`), its prefixes inside the root's.
    Returns the certificate; raises only `IdentityError`."""
    cert = decode(cert_bytes)
    if cert.is_ca:
        raise IdentityError("wrong_kind", "a root certificate where a site certificate was expected")
    _check_organisation(cert.org_name, cert.org_fingerprint, root, "certificate")
    _check_signature(root.signing_key, cert.signature, bytes(cert_bytes[:-SIG_LEN]), "certificate")
    _check_time(root, now, "the organisation's root")
    _check_time(cert, now, f"certificate of {cert.site_name!r}")
    if revoked is not None:
        _check_organisation(revoked.org_name, revoked.org_fingerprint, root, "revocation list")
        if cert.serial in revoked:
            raise IdentityError("revoked", f"certificate of {cert.site_name!r} (serial {cert.serial:032x}) is "
                                           f"revoked (list {revoked.sequence})")
    require_allowed(root, cert.prefixes)
    return cert


def verify_revocations(data: bytes, root: Certificate, current: RevocationList | None = None) -> RevocationList:
    """A revocation list, as received, checked against the organisation's root and the list held now.

    Raises "stale" unless its sequence is higher than `current`'s (an equal sequence is stale too, even with
    other contents: the first list of a sequence wins). Raises only `IdentityError`."""
    rl = decode_revocations(data)
    _check_organisation(rl.org_name, rl.org_fingerprint, root, "revocation list")
    _check_signature(root.signing_key, rl.signature, bytes(data[:-SIG_LEN]), "revocation list")
    if current is not None and rl.sequence <= current.sequence:
        raise IdentityError("stale", f"revocation list {rl.sequence} is not newer than the held {current.sequence}")
    return rl


def allows(cert: Certificate, prefix: IPNetwork) -> bool:
    """Whether `prefix` is inside (equal to or more specific than) one of the certificate's prefixes."""
    for p in cert.prefixes:
        if isinstance(prefix, ipaddress.IPv4Network) and isinstance(p, ipaddress.IPv4Network):
            if prefix.subnet_of(p):
                return True
        elif (isinstance(prefix, ipaddress.IPv6Network) and isinstance(p, ipaddress.IPv6Network)
              and prefix.subnet_of(p)):
            return True
    return False


# --- signing (pure: keys and values in, signed objects out) -------------------------------------------

def _canonical_prefixes(prefixes: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Sorted and without duplicates (anything that is not a network is left for the checks to name)."""
    ps = tuple(prefixes)
    if all(isinstance(p, ipaddress.IPv4Network | ipaddress.IPv6Network) for p in ps):
        return tuple(sorted(set(ps), key=_prefix_key))
    return ps


def _canonical_serials(serials: Iterable[int]) -> tuple[int, ...]:
    ss = tuple(serials)
    return tuple(sorted(set(ss))) if all(_int_in(s, 0, MAX_SERIAL) for s in ss) else ss


def self_sign_root(ca_key: SigningKey, org_name: str, prefixes: Iterable[IPNetwork], *, not_before: int,
                   not_after: int, serial: int) -> Certificate:
    """The organisation's root certificate, signed by its own key. `prefixes` bound what sites may hold
    (give `0.0.0.0/0` and `::/0` for no bound). ConfigError (every problem, by field) on bad input."""
    key = _private(ca_key, "ca_key")
    pub = public_key_bytes(key)
    cert = Certificate(org_name=org_name, org_fingerprint=key_fingerprint(pub), is_ca=True, site_id=0,
                       site_name="", signing_key=pub, wg_public_key=bytes(KEY_LEN),
                       prefixes=_canonical_prefixes(prefixes), not_before=not_before, not_after=not_after,
                       serial=serial)
    _require_valid(_certificate_problems(cert))
    return _signed(cert, key)


def _signed(cert: Certificate, key: Ed25519PrivateKey) -> Certificate:
    body = _certificate_body(cert)
    return replace(cert, signature=key.sign(body))


def _root_key(ca_key: SigningKey, root: Certificate) -> Ed25519PrivateKey:
    key = _private(ca_key, "ca_key")
    if not root.is_ca:
        raise ConfigError("expected the organisation's root (CA) certificate", "root")
    if public_key_bytes(key) != root.signing_key:
        raise ConfigError("the CA key is not the key of this root certificate", "ca_key")
    return key


def sign_site(ca_key: SigningKey, root: Certificate, *, site_id: int, site_name: str, signing_key: bytes,
              wg_public_key: bytes, prefixes: Iterable[IPNetwork], not_before: int, not_after: int,
              serial: int) -> Certificate:
    """A site certificate signed by the organisation's CA key (which must be `root`'s).

    Its prefixes must lie inside the root's and its validity inside the root's. ConfigError (every problem,
    by field) on bad input."""
    key = _root_key(ca_key, root)
    cert = Certificate(org_name=root.org_name, org_fingerprint=root.org_fingerprint, is_ca=False,
                       site_id=site_id, site_name=site_name, signing_key=signing_key, wg_public_key=wg_public_key,
                       prefixes=_canonical_prefixes(prefixes), not_before=not_before, not_after=not_after,
                       serial=serial)
    problems = _certificate_problems(cert)
    if not problems:
        problems += [("prefixes", f"{p} is not inside the organisation's prefixes "
                                  f"({', '.join(map(str, root.prefixes)) or 'none'})")
                     for p in cert.prefixes if not allows(root, p)]
        if not (root.not_before <= not_before and not_after <= root.not_after):
            problems.append(("not_after", f"the validity {not_before}..{not_after} is not inside the root's "
                                          f"({root.not_before}..{root.not_after})"))
        if signing_key == root.signing_key:
            problems.append(("signing_key", "a site's signing key must not be the CA key"))
    _require_valid(problems)
    return _signed(cert, key)


def sign_revocations(ca_key: SigningKey, root: Certificate, *, sequence: int, issued_at: int,
                     serials: Iterable[int]) -> RevocationList:
    """A revocation list signed by the organisation's CA key (which must be `root`'s). ConfigError on bad input."""
    key = _root_key(ca_key, root)
    rl = RevocationList(org_name=root.org_name, org_fingerprint=root.org_fingerprint, sequence=sequence,
                        issued_at=issued_at, serials=_canonical_serials(serials))
    _require_valid(_revocation_problems(rl))
    return replace(rl, signature=key.sign(_revocations_body(rl)))
