"""One site's place in the mesh (issue 14): who is in the organisation's mesh, proven, and whom this site
peers with. Sans-IO: the asyncio agent (UDP) and the simulator drive the same code.

A `MeshNode` puts together:

* the site's identity: its certificate (patronus/core/identity.py) and Ed25519 signing key, and the
  organisation's root certificate;
* an `AnnounceGate` (patronus/core/announce.py): every announcement is admitted there first, or refused
  and counted by reason;
* SWIM membership (patronus/core/swim.py): a member's payload is its signed announcement, and its
  incarnation the announcement's sequence, so only the site itself can raise it (refute a suspicion, say
  it leaves, rotate its key);
* the topology (patronus/core/mesh.py): the site's peers are `peers(site, live members, topology)`; a
  site's region is its announcement's capability `region-<name>`.

Datagrams. Every datagram is signed by its sender's key. Version 1:

  ======  ==========  ==========================================================================
  bytes   field       meaning
  ======  ==========  ==========================================================================
  4       magic       b"PTMD"
  1       version     1
  1       kind        1 membership message (swimwire), 2 revocation list (identity's format),
                      3 "send me your revocation list", 4 "who are you?" (the receiver does not
                      know the sender: it attaches its announcement to what it sends for a while)
  1       flags       bit 0: the sender's announcement is attached; bits 1-7 must be 0
  2       sender      the sender's site id
  8       rl_seq      the sequence of the revocation list the sender holds (0: none)
  2+n     attached    (flag bit 0 only) length, then the sender's announcement
  n       body        the message (kind 1), the list (kind 2), nothing (kinds 3 and 4)
  64      signature   Ed25519 by the sender's signing key over every byte before it
  ======  ==========  ==========================================================================

A datagram is verified with the key of the sender's announcement: the one held, or the one attached
(admitted through the gate first). A site attaches its announcement to everything it sends for
`introduce_s` after its announcement changes (start, refutation, rotation, leave), after it is asked
"who are you?", and to a site that introduced itself with a new announcement (it may be a new process of
a site that left: it knows nobody), so that a member that has not heard of it yet (gossip takes a few
periods) can still check its pings. "Who are you?" goes to the datagram's source at most once every
`WHO_EVERY_S` (5 s): it carries our announcement, ~460 bytes, in answer to what may be a spoofed datagram,
so it must not amplify a flood. Refused datagrams are counted in `rejected` by reason, before any state changes:

  ================  ===================================================================
  rate_limited      the transport source sent more than `rate_per_s` (burst `burst`)
  malformed         not a datagram of this format, or a body that does not decode
  unsupported_ver   a version this node does not know
  unknown_sender    a sender with no held announcement and none (admissible) attached
  bad_signature     the signature does not verify with the sender's key
  wrong_sender      the message names another sender than the signature's, or is our own
  ================  ===================================================================

An attached or gossiped announcement that the gate refuses is counted in `gate.rejected` by the gate's
reason (forged, expired, revoked, replayed, out-of-prefix, ...). Rate limiting is per datagram, before
any signature is checked; the gate's own per-sender limit is set out of the way (one push-pull message
legitimately carries many announcements).

Revocation lists spread like announcements: each datagram carries the sequence of the list its sender
holds, and a node that holds an older one asks for it (kind 3, at most once a second per sequence). A
newer list, verified against the root, drops every site whose certificate it revokes: out of the peer
set at once, and their announcements refused from then on.

Addresses. SWIM addresses are site names; a seed is whatever address the driver gives (the simulator
uses site names, the agent "ip:port"). `Transmit.to` is a site name (the driver sends to that site's
endpoints, `endpoints(name)`) or an address it gave (a seed, or the source of a datagram).

Clock: every call takes `now` in Unix seconds (announcements carry timestamps); the node re-announces
itself every third of `max_age_s` so that its announcement never goes stale.
"""

from __future__ import annotations

import base64
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from patronus.core import identity as ident
from patronus.core.announce import (
    Accepted,
    AnnounceGate,
    Announcement,
    Duplicate,
    Endpoint,
    RateLimiter,
    sign_announcement,
)
from patronus.core.errors import ConfigError
from patronus.core.events import Event, KeyRotated, SiteJoined, SiteLeft, SiteSuspected
from patronus.core.mesh import Member, MeshTopology, peers
from patronus.core.swim import EventKind, MemberEvent, Rand, Send, Swim, SwimConfig
from patronus.core.swimwire import Message, Status, SwimError, decode, encode

__all__ = [
    "REASONS", "MeshIdentity", "MeshNode", "MeshOptions", "Output", "PeerChanged", "PeerDown", "PeerUp", "Transmit",
]

MAGIC: Final = b"PTMD"
VERSION: Final = 1
KIND_SWIM, KIND_REVOCATIONS, KIND_WANT_REVOCATIONS, KIND_WHO = 1, 2, 3, 4
_FLAG_ATTACHED: Final = 0x01
_HEADER = struct.Struct("!4sBBBHQ")         # magic, version, kind, flags, sender, rl_seq
SIG_LEN: Final = 64
CERT_CHECK_S: Final = 1.0          # how often held certificates are checked for expiry
WHO_EVERY_S: Final = 5.0           # at most one "who are you?" per source this often
REASONS: Final = ("rate_limited", "malformed", "unsupported_ver", "unknown_sender", "bad_signature", "wrong_sender")
REGION_PREFIX: Final = "region-"


@dataclass(frozen=True)
class MeshIdentity:
    """The site's certificate and signing key (raw 32 bytes or a key object) and its organisation's root."""

    certificate: bytes
    signing_key: bytes | Ed25519PrivateKey = field(repr=False)
    root: ident.Certificate


@dataclass(frozen=True)
class MeshOptions:
    topology: MeshTopology = field(default_factory=MeshTopology)
    swim: SwimConfig = field(default_factory=SwimConfig)
    max_age_s: float = 3600.0        # an announcement older than this is refused; re-announced every third
    max_future_s: float = 30.0
    rate_per_s: float = 200.0        # datagrams a second per transport source
    burst: int = 400
    max_sources: int = 4096
    introduce_s: float | None = None  # None: 4 probe intervals plus the suspicion timeout's base


def kept_for(swim: SwimConfig) -> float:
    """How long a driver keeps the peers an earlier run of its site had (a graceful restart keeps their
    tunnels and steering) while its new node has not found them again: a push-pull sync period (by then
    the node has exchanged its whole membership with a peer), at least three join attempts. A kept peer
    not found by then is removed as a `PeerDown` would remove it."""
    return max(swim.sync_interval, 3 * swim.join_interval)


class SignedHere:
    """The datagram signatures the nodes of this process made, for a driver that runs many nodes in one
    process (the simulator: every datagram its nodes receive, one of them signed). A datagram whose exact
    bytes a node here signed, checked with the very key that signed them, would verify (an Ed25519
    signature made is one that verifies), so a receiving node skips that check. Anything else (forged,
    altered, foreign, or signed by another key than the one the sender's announcement names) is verified
    as always, and what follows the signature check (replays, senders) is unchanged. Bounded: the oldest
    are forgotten first; a datagram delivered after that is verified. An agent has no use for it (it never
    receives its own datagrams)."""

    def __init__(self, capacity: int = 32768) -> None:
        self.capacity = capacity
        self._made: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()   # signature -> (key, signed)
        self.vouched = 0

    def made(self, public_key: bytes, signed: bytes, signature: bytes) -> None:
        if len(self._made) >= self.capacity:
            self._made.popitem(last=False)
        self._made[signature] = (public_key, signed)

    def vouches(self, public_key: bytes, signed: bytes, signature: bytes) -> bool:
        """Whether a node here made `signature` over exactly `signed` with the key `public_key` names."""
        if self._made.get(signature) != (public_key, signed):
            return False
        self.vouched += 1
        return True


@dataclass(frozen=True)
class Transmit:
    """Send `data` to `to`: a site name (to its endpoints) or an address the driver gave."""

    to: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class PeerUp:
    """The topology says this site peers with `site` now: build its paths (local uplinks × its endpoints)."""

    site: str
    announcement: Announcement = field(repr=False)


@dataclass(frozen=True)
class PeerDown:
    """No longer a peer (it left, failed, was revoked, or the topology moved): remove its paths."""

    site: str


@dataclass(frozen=True)
class PeerChanged:
    """A peer's WireGuard key, endpoints or prefixes changed: update its paths."""

    site: str
    announcement: Announcement = field(repr=False)


Output: TypeAlias = Transmit | PeerUp | PeerDown | PeerChanged | Event


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def region_of(a: Announcement) -> str | None:
    return next((c.removeprefix(REGION_PREFIX) for c in a.capabilities if c.startswith(REGION_PREFIX)), None)


class MeshNode:
    """One site's mesh membership (see the module's header)."""

    def __init__(self, identity: MeshIdentity, options: MeshOptions, *, wg_key: bytes, endpoints: Sequence[Endpoint],
                 prefixes: Iterable[ident.IPNetwork], rand: Rand, region: str | None = None,
                 capabilities: Iterable[str] = (), sequence_floor: int = 0, revocations: bytes | None = None,
                 signed_here: SignedHere | None = None) -> None:
        try:
            cert = ident.decode(identity.certificate)
        except ident.IdentityError as exc:
            raise ConfigError(f"not a site certificate: {exc}", "mesh.certificate") from None
        if cert.is_ca:
            raise ConfigError("the organisation's root certificate, not a site's", "mesh.certificate")
        self.identity, self.options, self.cert = identity, options, cert
        self.site, self.site_id = cert.site_name, cert.site_id
        self._key = identity.signing_key if isinstance(identity.signing_key, Ed25519PrivateKey) \
            else Ed25519PrivateKey.from_private_bytes(identity.signing_key)
        self._signed_here, self._public = signed_here, ident.public_key_bytes(self._key)
        self.gate = AnnounceGate(identity.root, max_age_s=options.max_age_s, max_future_s=options.max_future_s,
                                 rate_per_s=1e12, burst=1 << 40)
        self._rl_bytes = b""
        if revocations:
            try:
                self.gate.set_revocations(revocations)
            except ident.IdentityError as exc:
                raise ConfigError(f"the revocation list is refused: {exc}", "mesh.revocations") from None
            self._rl_bytes = bytes(revocations)
        self.limiter = RateLimiter(options.rate_per_s, options.burst, options.max_sources)
        # "who are you?" carries our announcement (~460 bytes) in answer to a datagram from a source that may
        # be spoofed: at most one per source every WHO_EVERY_S, so it cannot be used to amplify a flood
        self._who = RateLimiter(1.0 / WHO_EVERY_S, 1, options.max_sources)
        self.rejected: Counter[str] = Counter()
        self._wg_key, self._endpoints, self._prefixes = wg_key, tuple(endpoints), tuple(prefixes)
        caps = set(capabilities) | ({REGION_PREFIX + region} if region else set())
        self._caps = tuple(sorted(caps))
        self.region = region
        self._seq = sequence_floor
        self._now = 0.0
        self._src = ""
        self.announcement = b""                       # this site's, as last signed
        self._introduce_until = 0.0
        self._introduce_to: dict[str, float] = {}      # site -> until when what we send it carries ours
        self._refresh_at: float | None = None
        self._names: dict[str, int] = {}               # member name -> site id (admitted announcements)
        self._keys: dict[str, bytes] = {}              # member name -> its WireGuard key, as last admitted
        self._check_at = 0.0                           # when held certificates' validity is next checked
        self._peers: dict[str, Announcement] = {}
        self._dirty = False
        self._pending: list[Output] = []
        self._rl_asked: dict[tuple[str, int], float] = {}
        self.swim = Swim(self.site, self.site, options.swim, rand, renew=self._renew, admit=self._admit)
        swim = options.swim
        self._introduce_s = options.introduce_s if options.introduce_s is not None else \
            4 * swim.probe_interval + swim.suspicion_mult * swim.probe_interval

    # -- the driver's calls ------------------------------------------------------------------------------

    def start(self, seeds: Iterable[str], now: float) -> list[Output]:
        """Join through `seeds` (addresses; none: the first site of the mesh). ConfigError if this site's own
        certificate is not valid now (expired, revoked, another organisation's, ...)."""
        try:
            ident.verify(self.identity.certificate, self.identity.root, int(now), self.gate.revocations)
        except ident.IdentityError as exc:
            raise ConfigError(f"this site's certificate is refused: {exc}", "mesh.certificate") from None
        self._now = now
        return self._finish(self.swim.start(seeds, now), now)

    def on_datagram(self, src: str, data: bytes, now: float) -> list[Output]:
        """A datagram from transport source `src`. Never raises for any `data`."""
        self._now = now
        out: list[Output] = []
        reason = self._receive(src, data, now, out)
        if reason is not None:
            self.rejected[reason] += 1
        return self._finish_outputs(out)

    def on_timer(self, now: float) -> list[Output]:
        self._now = now
        out = self._wrap(self.swim.on_timer(now), now)
        if self._refresh_at is not None and now >= self._refresh_at:
            out += self._wrap(self.swim.rotate(now), now)     # the same key, a fresh timestamp
        if now >= self._check_at:
            self._check_at = now + CERT_CHECK_S
            t, root = int(now), self.identity.root
            gone = [n for n, sid in self._names.items()
                    if (a := self.gate.held(sid)) is not None and not (a.cert.valid_at(t) and root.valid_at(t))]
            self._drop(gone, "expired", now, out)
        return self._finish_outputs(out)

    def next_deadline(self) -> float | None:
        due = [t for t in (self.swim.next_deadline(), self._refresh_at, self._check_at if self._names else None)
               if t is not None]
        return min(due, default=None)

    def leave(self, now: float) -> list[Output]:
        """Say that this site leaves; afterwards it only answers. Its peers go (PeerDown each)."""
        self._now = now
        out = self._finish(self.swim.leave(now), now)
        for name in sorted(self._peers):
            out.append(PeerDown(name))
        self._peers.clear()
        self._refresh_at = None
        return out

    def rotate(self, wg_key: bytes, now: float) -> list[Output]:
        """A new WireGuard key for this site: announced at once (`KeyRotated` for this site)."""
        self._now = now
        self._wg_key = wg_key
        out = self._finish(self.swim.rotate(now), now)
        out.append(KeyRotated(at=now, member=self.site, key=_b64(wg_key)))
        return out

    def set_revocations(self, data: bytes, now: float) -> list[Output]:
        """Install a newer revocation list (IdentityError if it is refused); it spreads from here."""
        self._now = now
        dropped = self.gate.set_revocations(data)
        self._rl_bytes = bytes(data)
        out: list[Output] = []
        self._revoked(dropped, now, out)
        return self._finish_outputs(out)

    # -- queries -----------------------------------------------------------------------------------------

    def peers(self) -> dict[str, Announcement]:
        """The sites this one peers with now, and their announcements."""
        return dict(self._peers)

    def members(self) -> dict[str, Announcement]:
        """Every other site in the mesh now (alive or suspect, not leaving), and its announcement."""
        out = {}
        for name in self.swim.members():
            a = self._held(name)
            if a is not None and not a.leaving:
                out[name] = a
        return out

    def endpoints(self, name: str) -> tuple[Endpoint, ...]:
        """Where a site can be reached (its announcement's endpoints; none if it is unknown)."""
        a = self._held(name)
        return a.endpoints if a is not None else ()

    @property
    def rl_sequence(self) -> int:
        rl = self.gate.revocations
        return rl.sequence if rl is not None else 0

    # -- this site's announcement ---------------------------------------------------------------------------

    def _renew(self, minimum: int, leaving: bool) -> tuple[int, bytes]:
        seq = max(minimum, self._seq + 1)
        self._seq = seq
        self.announcement = sign_announcement(
            self._key, self.identity.certificate, wg_key=self._wg_key, endpoints=self._endpoints,
            capabilities=self._caps, prefixes=self._prefixes, timestamp_ms=int(self._now * 1000), sequence=seq,
            leaving=leaving)
        self._introduce_until = self._now + self._introduce_s
        self._refresh_at = None if leaving else self._now + self.options.max_age_s / 3
        return seq, self.announcement

    # -- admission ---------------------------------------------------------------------------------------

    def _held(self, name: str) -> Announcement | None:
        sid = self._names.get(name)
        a = self.gate.held(sid) if sid is not None else None
        return a if a is not None and a.site_name == name else None

    def _admit_bytes(self, data: bytes, name: str | None) -> Announcement | None:
        """Through the gate (which counts refusals); the announcement if it is admitted and of `name`."""
        v = self.gate.admit(data, self._src, self._now)
        if not isinstance(v, Accepted | Duplicate):
            return None
        a = v.announcement
        if (name is not None and a.site_name != name) or a.site_id == self.site_id:
            self.rejected["wrong_sender"] += 1
            return None
        known = self._names.get(a.site_name)
        if known is not None and known != a.site_id:       # a name is one site: a new id is a new certificate
            self.gate.forget(known)
        self._names[a.site_name] = a.site_id
        if isinstance(v, Accepted):
            self._dirty = True
            before = self._keys.get(a.site_name)
            if before is not None and before != a.wg_key:
                self._pending.append(KeyRotated(at=self._now, member=a.site_name, key=_b64(a.wg_key)))
            self._keys[a.site_name] = a.wg_key
        return a

    def _admit(self, name: str, incarnation: int, payload: bytes) -> bool:
        """SWIM's check of an alive or left record: its payload is that member's admitted announcement of
        that sequence."""
        a = self._admit_bytes(payload, name)
        return a is not None and a.sequence == incarnation

    # -- datagrams ---------------------------------------------------------------------------------------

    def _seal(self, kind: int, body: bytes, to: str = "", attach: bool | None = None) -> bytes:
        if attach is None:
            attach = self._now < self._introduce_until or self._now < self._introduce_to.get(to, 0.0)
        flags = _FLAG_ATTACHED if attach and self.announcement else 0
        head = _HEADER.pack(MAGIC, VERSION, kind, flags, self.site_id, self.rl_sequence)
        if flags:
            head += len(self.announcement).to_bytes(2, "big") + self.announcement
        data = head + body
        sig = self._key.sign(data)
        if self._signed_here is not None:
            self._signed_here.made(self._public, data, sig)
        return data + sig

    def _receive(self, src: str, data: bytes, now: float, out: list[Output]) -> str | None:
        """Check and take one datagram; the reason it is refused, or None."""
        if not self.limiter.take(src, now):
            return "rate_limited"
        if not isinstance(data, bytes | bytearray) or len(data) < _HEADER.size + SIG_LEN:
            return "malformed"
        data = bytes(data)
        magic, version, kind, flags, sender, rl_seq = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return "malformed"
        if version != VERSION:
            return "unsupported_ver"
        if kind not in (KIND_SWIM, KIND_REVOCATIONS, KIND_WANT_REVOCATIONS, KIND_WHO) or flags & ~_FLAG_ATTACHED:
            return "malformed"
        body, signed = data[_HEADER.size:-SIG_LEN], data[:-SIG_LEN]
        self._src = src
        held = self.gate.held(sender)          # before what is attached is admitted
        attached: Announcement | None = None
        if flags:
            if len(body) < 2 or len(body) < 2 + int.from_bytes(body[:2], "big"):
                return "malformed"
            n = int.from_bytes(body[:2], "big")
            attached = self._admit_bytes(body[2:2 + n], None)
            body = body[2 + n:]
        a = attached if attached is not None and attached.site_id == sender else self.gate.held(sender)
        if a is not None and (held is None or (a is attached and a.sequence > held.sequence)):
            # a site we had not heard of introduced itself, or one we knew with a newer announcement (it
            # restarted, say, after leaving): it may not know us (what answers a join does not wait for
            # gossip), so what we send it carries ours for a while
            if len(self._introduce_to) > 1024:
                self._introduce_to = {k: v for k, v in self._introduce_to.items() if v > now}
            self._introduce_to[a.site_name] = now + self._introduce_s
        if a is None:
            if kind != KIND_WHO and self._who.take(src, now):
                out.append(Transmit(src, self._seal(KIND_WHO, b"", src, attach=True)))
            return "unknown_sender"
        sig, memo = data[-SIG_LEN:], self._signed_here
        if memo is None or not memo.vouches(a.cert.signing_key, signed, sig):
            try:
                Ed25519PublicKey.from_public_bytes(a.cert.signing_key).verify(sig, signed)
            except (InvalidSignature, ValueError):
                return "bad_signature"
        if a.site_id == self.site_id:
            return "wrong_sender"
        return self._take(kind, body, a, rl_seq, now, out)

    def _take(self, kind: int, body: bytes, a: Announcement, rl_seq: int, now: float,
              out: list[Output]) -> str | None:
        """An authentic datagram from the site of announcement `a`."""
        name = a.site_name
        if kind == KIND_SWIM:
            try:
                msg: Message = decode(body)
            except SwimError:
                return "malformed"
            if msg.sender != name:
                return "wrong_sender"
            self._names.setdefault(name, a.site_id)
            out.extend(self._wrap(self.swim.on_message(name, msg, now), now))
        elif kind == KIND_REVOCATIONS:
            try:
                dropped = self.gate.set_revocations(body)
            except ident.IdentityError:
                return None           # not newer than ours (or not the root's): nothing to take
            self._rl_bytes = body
            self._revoked(dropped, now, out)
        elif kind == KIND_WANT_REVOCATIONS and self._rl_bytes:
            out.append(Transmit(name, self._seal(KIND_REVOCATIONS, self._rl_bytes, name)))
        elif kind == KIND_WHO:
            self._introduce_until = now + self._introduce_s
        if rl_seq > self.rl_sequence:
            asked = self._rl_asked.get((name, rl_seq))
            if asked is None or now - asked >= 1.0:
                if len(self._rl_asked) > 1024:
                    self._rl_asked.clear()
                self._rl_asked[(name, rl_seq)] = now
                out.append(Transmit(name, self._seal(KIND_WANT_REVOCATIONS, b"", name)))
        return None

    def _revoked(self, site_ids: Iterable[int], now: float, out: list[Output]) -> None:
        gone = set(site_ids)
        self._drop([n for n, sid in self._names.items() if sid in gone], "revoked", now, out)

    def _drop(self, names: Iterable[str], reason: str, now: float, out: list[Output]) -> None:
        """Sites whose certificate is no longer good: out of the peer set, their announcements forgotten."""
        for name in names:
            sid = self._names.pop(name)
            self.gate.forget(sid)
            self._keys.pop(name, None)
            out.append(SiteLeft(at=now, member=name, reason=reason))
            self._dirty = True

    # -- outputs -----------------------------------------------------------------------------------------

    def _wrap(self, actions: Iterable[Send | MemberEvent], now: float) -> list[Output]:
        out: list[Output] = []
        for act in actions:
            if isinstance(act, Send):
                out.append(Transmit(act.addr, self._seal(KIND_SWIM, encode(act.msg), act.addr)))
                continue
            self._dirty = True
            name = act.name
            if name not in self._names:
                continue            # dropped already (revoked, expired): its SiteLeft is out
            if act.kind is EventKind.JOINED:
                sid = self._names.get(name)
                out.append(SiteJoined(at=now, member=name, site_id=sid if sid is not None else 0))
            elif act.kind is EventKind.SUSPECTED:
                out.append(SiteSuspected(at=now, member=name))
            elif act.kind in (EventKind.FAILED, EventKind.LEFT):
                out.append(SiteLeft(at=now, member=name, reason="failed" if act.kind is EventKind.FAILED else "left"))
        return out

    def _finish(self, actions: Iterable[Send | MemberEvent], now: float) -> list[Output]:
        return self._finish_outputs(self._wrap(actions, now))

    def _finish_outputs(self, out: list[Output]) -> list[Output]:
        if self._pending:
            out = [*self._pending, *out]
            self._pending = []
        if self._dirty:
            self._dirty = False
            self._update_peers(out)
        return out

    def _update_peers(self, out: list[Output]) -> None:
        me = self.swim.member(self.site)
        if me is not None and me.status is Status.LEFT:
            return
        members = self.members()
        live = {self.site: Member(self.region)} | {n: Member(region_of(a)) for n, a in members.items()}
        want = peers(self.site, live, self.options.topology)
        for name in sorted(set(self._peers) - set(want)):
            del self._peers[name]
            out.append(PeerDown(name))
        for name in want:
            a = members[name]
            old = self._peers.get(name)
            self._peers[name] = a
            if old is None:
                out.append(PeerUp(name, a))
            elif (old.wg_key, old.endpoints, old.prefixes) != (a.wg_key, a.endpoints, a.prefixes):
                out.append(PeerChanged(name, a))
