"""SWIM-style membership (issue 14): how sites discover each other and detect failures, sans-IO.

The protocol is SWIM (Das, Gupta, Motivala, 2002) with the practical details of HashiCorp's memberlist:
randomized round-robin probing, indirect probes, suspicion refuted by incarnation, piggybacked gossip
with a retransmit limit, and push-pull state sync on join (and now and then after). `Swim` is one
member's protocol state. It owns no socket, clock or thread: the driver (the asyncio agent over UDP, or a
simpy simulator) passes `now` in, feeds decoded messages (`on_message`), calls `on_timer(now)` at
`next_deadline()`, and performs the returned actions (`Send`) and publishes the `MemberEvent`s. Given the
same `Rand` and the same inputs it does exactly the same thing. The messages and their codec are in
`patronus.core.swimwire` (re-exported here); nothing in either authenticates a datagram: a later layer
signs them. Until then a peer that can reach the port can claim anything (see `swimwire`).

Members are keyed by name (a site name). Each has an `addr` (the driver's transport address, opaque
here), an `incarnation` (≥ 1, only ever raised by the member itself) and a `payload` (opaque bytes: in
production the member's signed announcement, whose sequence is the incarnation), and a status: alive,
suspect, dead (declared failed) or left (departed gracefully). The local member's incarnation and payload
come from `renew(min_incarnation, leaving)`, which returns `(incarnation ≥ min_incarnation, payload)`:
at `start`, to refute a suspicion, on `rotate` (a fresh payload, e.g. a rotated key) and on `leave` (the
departing payload). `admit(name, incarnation, payload)`, when given, must accept an alive or left record's
payload before it is believed (production: the announcement gate); refused records are dropped and counted
(`stats["rejected"]`).

The rules, exactly (n = the members alive or suspect, this one included; "period" = `probe_interval`):

* **Join.** `start(seeds, now)` sends `Join` (carrying this member's alive record) to every seed address
  but its own; a seed answers with its whole state in `Sync(reply=True)` messages, each within
  `max_message_bytes`. Until some `Sync` arrives, the Joins are sent again after `join_interval`, then
  twice as long each time, at most `join_max_backoff` apart (forever: a site alone keeps trying). With no
  seed, the member is its own cluster at once.
* **Probing.** Every period the member pings the next member of its probe list (every alive or suspect
  member, shuffled; a newcomer goes in at a random place; reshuffled after each full pass, dropping the
  dead and departed), so each member is probed by every other once per pass. With no `Ack` after
  `probe_timeout`, it sends `PingReq` to `indirect_probes` other alive members chosen at random; each
  pings the target and forwards its `Ack` (same seq) back. With no Ack, direct or forwarded, by the end
  of the period, the target is marked suspect at the incarnation it had.
* **Suspicion.** A member suspect at incarnation i is declared dead (`failed`) when `suspicion_timeout`
  = `suspicion_mult` × max(1, log10 n) × period has passed since this member first heard of it, unless
  an alive record with an incarnation > i arrives first. Every member runs its own timer from the moment
  it hears the suspicion. A member that hears itself suspected, declared dead or departed at incarnation
  ≥ its own (or alive at a higher one, or at its own with another payload) refutes: it takes
  `renew(that incarnation + 1)` and gossips the new alive record (`stats["refutations"]`), unless it is
  leaving.
* **Precedence** (of a record about a member held at incarnation j): alive(i) overrides alive or suspect
  iff i > j; suspect(i) overrides alive iff i ≥ j (and raises a suspect's incarnation iff i > j); dead(i)
  and left(i) override alive and suspect iff i ≥ j; a dead or departed member comes back only with an
  alive record at i > j. Once reaped (`reap_s` after it died or left) a member's last incarnation is
  still remembered (the newest `remember_dead` of them), so a stale alive record cannot bring it back.
  A suspect record about an unknown member is ignored (it carries no payload to admit), as is a dead
  one (which would otherwise let anyone bar a name that never joined); an unknown departed member's
  incarnation is remembered.
* **Gossip.** Each change a member makes or learns (one pending record per member: a newer one
  replaces it) rides on its next outgoing messages as `updates`, least-sent first and the most
  recently queued first among equals, as many as fit in `max_message_bytes`, each at most
  `retransmit_mult` × ceil(log10(n+1)) times in all. Besides piggybacking on probes, a member with
  records pending sends a `Gossip` message to `gossip_fanout` random members every `gossip_interval`,
  the suspect and the dead (until reaped) included, so that a member suspected by mistake hears it
  (memberlist's gossip rounds: without
  them a record would move one message a period, too slow for a refutation to beat a 4-period
  suspicion timeout; 0 turns them off). A record too big for the budget of an empty message rides
  alone (over the budget, within the codec's `MAX_MESSAGE_BYTES`): set `max_message_bytes` above the
  largest payload to keep datagrams unfragmented. `leave` and `rotate` also send the new record at once
  to `announce_fanout` random alive members.
* **Push-pull.** Every `sync_interval` (× (1 + ceil(log2(n / 32))) beyond 32 members, as memberlist
  scales it; 0 turns it off) the member sends its whole state to one random alive member, which answers
  with its own (only the request's first part has `reply` False: one request, one answer, however many
  parts); records are merged by the precedence above. This repairs what lossy gossip missed.

Events: `joined` (a new member, or a dead or departed one back at a higher incarnation), `updated` (an
alive member's new incarnation and payload: a rotation or a refutation not preceded by a suspicion
here), `suspected`, `alive` (a suspicion refuted; the incarnation is the new one), `failed` (declared
dead), `left`. They are about other members only.

Bounds (T = `probe_interval`; per-message delay d well under `probe_timeout` / 2; nothing lost):

* **Detection.** Every member probes every other once per pass of its probe list and reshuffles between
  passes, so two probes of one target by one member are at most 2(n - 1) - 1 periods apart: each
  member suspects a crashed one on its own within 2(n - 1) periods of the crash (its probe is judged at
  the end of the period) and declares it failed `suspicion_timeout` later, gossip or not; so every
  member has declared it failed within 2(n - 1)·T + `suspicion_timeout` + T. Gossip makes it far
  faster: with n - 1 probers, the first probe of the crashed member comes after about one period
  (SWIM's expected first detection is e / (e - 1) periods), and its suspicion and then its death reach
  everyone within a few gossip rounds.
* **Dissemination.** A record spreads like an epidemic with fanout `gossip_fanout` per
  `gossip_interval` (plus the probes it rides on), reaching all n members in O(log n) rounds with high
  probability, not with certainty; whatever gossip misses, push-pull repairs within a sync period.
* **A false suspicion** is refuted if the suspect hears of it and its refutation reaches the others
  within `suspicion_timeout` (at least 4 periods with the defaults), several gossip rounds.

What is left out of memberlist: the TCP fallback probe, Lifeguard (local health awareness, nacks,
suspicion timeouts shortened by independent confirmations), gossip to the recently dead, and a
rejoin through the seeds when every other member is gone.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Protocol, TypeAlias

from patronus.core import validate as val
from patronus.core.swimwire import (
    MAX_ADDR,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    RECORD_FIXED,
    Ack,
    Gossip,
    Join,
    Message,
    Ping,
    PingReq,
    Status,
    SwimError,
    Sync,
    Update,
    base_size,
    decode,
    encode,
    encoded_size,
    record_size,
)
from patronus.core.validate import NAME_RE

__all__ = [
    "Ack", "Action", "EventKind", "Gossip", "Join", "MemberEvent", "MemberView", "Message", "Out", "Ping", "PingReq",
    "Rand", "Send", "Status", "Swim", "SwimConfig", "SwimError", "Sync", "Update", "decode", "encode", "encoded_size",
]

_LIVE: Final = (Status.ALIVE, Status.SUSPECT)
_MIN_RECORD: Final = RECORD_FIXED + 2      # a record with one-character name and address, no payload
_MAX_SKIPPED: Final = 16
_IN: Final = {t: f"in.{t.__name__.lower()}" for t in (Ping, Ack, PingReq, Join, Sync, Gossip)}
_OUT: Final = {t: f"out.{t.__name__.lower()}" for t in (Ping, Ack, PingReq, Join, Sync, Gossip)}
_BYTES_OUT: Final = {t: f"bytes_out.{t.__name__.lower()}" for t in (Ping, Ack, PingReq, Join, Sync, Gossip)}
_GONE: Final = (Status.DEAD, Status.LEFT)


class Rand(Protocol):
    """The randomness a `Swim` draws, injected: `random.Random(seed)` is one."""

    def random(self) -> float: ...


def _below(rand: Rand, n: int) -> int:
    """A uniform integer in [0, n) from `rand.random()` (n ≥ 1)."""
    return min(int(rand.random() * n), n - 1)


def _sample(rand: Rand, items: list[str], k: int) -> list[str]:
    """Up to k distinct items at random (a partial Fisher-Yates shuffle of a copy)."""
    pool = list(items)
    k = min(k, len(pool))
    for i in range(k):
        j = i + _below(rand, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


class EventKind(enum.StrEnum):
    JOINED = "joined"
    UPDATED = "updated"
    SUSPECTED = "suspected"
    ALIVE = "alive"
    FAILED = "failed"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Send:
    """Send `msg` (encode it with `encode`) to `addr`; `size` is its encoded length."""

    addr: str
    msg: Message
    size: int


Action: TypeAlias = Send | MemberEvent
Out: TypeAlias = list[Action]


@dataclass(frozen=True, slots=True)
class MemberView:
    name: str
    addr: str
    incarnation: int
    payload: bytes
    status: Status


@dataclass(frozen=True)
class SwimConfig:
    """The protocol's settings (see the module's header for what each does); times in seconds."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_mult: float = 4.0
    retransmit_mult: int = 4
    reap_s: float = 30.0
    max_message_bytes: int = 1400
    join_interval: float = 1.0
    join_max_backoff: float = 30.0
    sync_interval: float = 30.0
    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    announce_fanout: int = 3
    remember_dead: int = 4096

    def __post_init__(self) -> None:
        ok = (0 < self.probe_timeout < self.probe_interval and self.indirect_probes >= 0
              and self.suspicion_mult > 0 and self.retransmit_mult >= 1 and self.reap_s >= 0
              and 256 <= self.max_message_bytes <= MAX_MESSAGE_BYTES and self.join_interval > 0
              and self.join_interval <= self.join_max_backoff and self.sync_interval >= 0
              and self.gossip_interval > 0 and self.gossip_fanout >= 0
              and self.announce_fanout >= 0 and self.remember_dead >= 0)
        if not ok:
            raise ValueError(f"inconsistent SWIM settings: {self}")


class _Member:
    __slots__ = ("addr", "deadline", "incarnation", "name", "payload", "since", "status")

    def __init__(self, u: Update, now: float) -> None:
        self.name, self.addr, self.incarnation, self.payload = u.name, u.addr, u.incarnation, u.payload
        self.status = u.status
        self.since = now
        self.deadline = 0.0           # the suspicion's, while suspect

    def record(self) -> Update:
        payload = self.payload if self.status in (Status.ALIVE, Status.LEFT) else b""
        return Update(self.status, self.name, self.addr, self.incarnation, payload)

    def view(self) -> MemberView:
        return MemberView(self.name, self.addr, self.incarnation, self.payload, self.status)


class _Gossip:
    """The pending broadcasts, one record per member, kept by how often each has been sent (a dict per
    count, in the order records came in), so that a message takes the least-sent records, the most
    recently queued first among equals, without sorting the queue."""

    def __init__(self) -> None:
        self._by_sent: list[dict[str, tuple[Update, int]]] = [{}]     # sent count → name → (record, size)
        self._sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, u: Update) -> None:
        old = self._sent.pop(u.name, None)
        if old is not None:
            del self._by_sent[old][u.name]
        self._by_sent[0][u.name] = (u, record_size(u))
        self._sent[u.name] = 0

    def take(self, budget: int, limit: int) -> tuple[Update, ...]:
        """The records for one message with `budget` bytes for updates (see the header's Gossip rule)."""
        if not self._sent:
            return ()
        chosen: list[tuple[str, int]] = []
        out: list[Update] = []
        skipped = 0
        for sent, bucket in enumerate(self._by_sent):
            for name in reversed(bucket):
                u, size = bucket[name]
                if size > budget and out:
                    skipped += 1            # too big for what is left: look at a few more, not at all
                    if skipped > _MAX_SKIPPED:
                        break
                    continue
                out.append(u)
                chosen.append((name, sent))
                budget -= size
                if budget < _MIN_RECORD:
                    break
            if budget < _MIN_RECORD or skipped > _MAX_SKIPPED:
                break
        for name, sent in reversed(chosen):
            entry = self._by_sent[sent].pop(name)
            if sent + 1 >= limit:
                del self._sent[name]
                continue
            if len(self._by_sent) <= sent + 1:
                self._by_sent.append({})
            self._by_sent[sent + 1][name] = entry
            self._sent[name] = sent + 1
        return tuple(out)


class _Prober:
    """The randomized round-robin probe list and the probe in flight."""

    def __init__(self, rand: Rand) -> None:
        self.rand = rand
        self.order: list[str] = []
        self.idx = 0
        self.target: str | None = None
        self.target_inc = 0
        self.seq = -1
        self.acked = True
        self.indirect_at: float | None = None

    def insert(self, name: str) -> None:
        pos = _below(self.rand, len(self.order) + 1)
        self.order.insert(pos, name)
        if pos < self.idx:
            self.idx += 1

    def next(self, live: Callable[[str], bool]) -> str | None:
        """The next member to probe, reshuffling after a full pass."""
        for _ in range(2):
            while self.idx < len(self.order):
                name = self.order[self.idx]
                self.idx += 1
                if live(name):
                    return name
            self.order = [s for s in dict.fromkeys(self.order) if live(s)]
            for i in range(len(self.order) - 1, 0, -1):
                j = _below(self.rand, i + 1)
                self.order[i], self.order[j] = self.order[j], self.order[i]
            self.idx = 0
        return None


Renew: TypeAlias = Callable[[int, bool], tuple[int, bytes]]
Admit: TypeAlias = Callable[[str, int, bytes], bool]


class _Table:
    """The other members, by the precedence rules: what is believed, the suspicion and reaping timers,
    the graveyard, and the gossip of every change."""

    def __init__(self, config: SwimConfig, admit: Admit | None, stats: Counter[str], probe: _Prober) -> None:
        self.config, self.admit, self.stats, self.probe = config, admit, stats, probe
        self.members: dict[str, _Member] = {}
        self.names: list[str] = []                     # the members' names, to draw from at random
        self._index: dict[str, int] = {}
        self.live = 1                                 # n: alive or suspect, the local member included
        self.buried: dict[str, int] = {}              # reaped members' last incarnations, oldest first
        self.gossip = _Gossip()
        self.suspicions: list[tuple[float, str]] = []
        self.reaps: list[tuple[float, str]] = []

    def suspicion_timeout(self) -> float:
        c = self.config
        return c.suspicion_mult * max(1.0, math.log10(self.live)) * c.probe_interval

    def retransmit_limit(self) -> int:
        return self.config.retransmit_mult * math.ceil(math.log10(self.live + 1))

    def pick(self, rand: Rand, k: int, gossip: bool = False, but: str | None = None) -> list[str]:
        """Up to k distinct members at random: alive ones, or (`gossip`) the targets of gossip rounds: the
        alive, the suspect (so that they hear it and refute) and the dead until reaped (so that one declared
        dead by mistake hears it and comes back), as memberlist does. Draws at random first, and scans
        the table only when that finds too few (so a round costs O(k), not O(n), in a large cluster)."""
        names, members = self.names, self.members

        def ok(name: str) -> bool:
            m = members[name]
            return name != but and (m.status is not Status.LEFT if gossip else m.status is Status.ALIVE)

        out: list[str] = []
        if len(names) > 4 * k:
            for _ in range(4 * k):
                name = names[_below(rand, len(names))]
                if ok(name) and name not in out:
                    out.append(name)
                    if len(out) == k:
                        return out
        rest = [n for n in names if ok(n) and n not in out]
        return out + _sample(rand, rest, k - len(out))

    def insert(self, m: _Member) -> None:
        self.members[m.name] = m
        self._index[m.name] = len(self.names)
        self.names.append(m.name)

    def remove(self, name: str) -> None:
        del self.members[name]
        i = self._index.pop(name)
        last = self.names.pop()
        if last != name:
            self.names[i] = last
            self._index[last] = i

    def next_deadline(self) -> float | None:
        due = [h[0][0] for h in (self.suspicions, self.reaps) if h]
        return min(due, default=None)

    def expire(self, now: float, out: Out) -> None:
        """Declare dead the suspects whose time is up; forget the dead and departed after `reap_s`."""
        while self.suspicions and self.suspicions[0][0] <= now:
            deadline, name = heapq.heappop(self.suspicions)
            m = self.members.get(name)
            if m is not None and m.status is Status.SUSPECT and m.deadline == deadline:
                self.apply(Update(Status.DEAD, name, m.addr, m.incarnation), now, out)
        while self.reaps and self.reaps[0][0] <= now:
            _, name = heapq.heappop(self.reaps)
            m = self.members.get(name)
            if m is not None and m.status in _GONE and m.since + self.config.reap_s <= now:
                self.remove(name)
                self.bury(name, m.incarnation)

    def admitted(self, u: Update) -> bool:
        if self.admit is None or self.admit(u.name, u.incarnation, u.payload):
            return True
        self.stats["rejected"] += 1
        return False

    def bury(self, name: str, incarnation: int) -> None:
        self.buried.pop(name, None)
        self.buried[name] = incarnation
        while len(self.buried) > self.config.remember_dead:
            del self.buried[next(iter(self.buried))]

    def apply(self, u: Update, now: float, out: Out) -> None:
        """Merge one record about another member; a change is gossiped on and may give an event."""
        m = self.members.get(u.name)
        if m is None:
            self._unknown(u, now, out)
            return
        old, inc = m.status, m.incarnation
        kind: EventKind | None
        if u.status is Status.ALIVE:
            if u.incarnation <= inc or not self.admitted(u):
                return
            kind = {Status.ALIVE: EventKind.UPDATED, Status.SUSPECT: EventKind.ALIVE}.get(old, EventKind.JOINED)
            m.addr, m.payload = u.addr, u.payload
            if old in _GONE:
                self.live += 1
                self.probe.insert(u.name)
        elif u.status is Status.SUSPECT:
            if old is Status.ALIVE and u.incarnation >= inc:
                kind = EventKind.SUSPECTED
                m.deadline = now + self.suspicion_timeout()
                heapq.heappush(self.suspicions, (m.deadline, u.name))
            elif old is Status.SUSPECT and u.incarnation > inc:
                kind = None
            else:
                return
        else:
            if old in _GONE:                 # already gone: only remember the higher incarnation
                if u.incarnation > inc or (u.status is Status.LEFT and old is Status.DEAD and u.incarnation == inc):
                    if u.status is Status.LEFT and not self.admitted(u):
                        return
                    m.incarnation, m.status = u.incarnation, u.status
                return
            if u.incarnation < inc or (u.status is Status.LEFT and not self.admitted(u)):
                return
            kind = EventKind.FAILED if u.status is Status.DEAD else EventKind.LEFT
            if u.status is Status.LEFT:
                m.payload = u.payload
            self.live -= 1
            heapq.heappush(self.reaps, (now + self.config.reap_s, u.name))
        m.incarnation, m.status = u.incarnation, u.status
        if m.status is not old:
            m.since = now
        self.gossip.add(m.record())
        if kind is not None:
            out.append(MemberEvent(kind, u.name, u.incarnation))

    def _unknown(self, u: Update, now: float, out: Out) -> None:
        buried = self.buried.get(u.name)
        if buried is not None and u.incarnation <= buried:
            return
        if u.status is Status.ALIVE:
            if not self.admitted(u):
                return
            self.buried.pop(u.name, None)
            self.insert(_Member(u, now))
            self.live += 1
            self.probe.insert(u.name)
            self.gossip.add(u)
            out.append(MemberEvent(EventKind.JOINED, u.name, u.incarnation))
        elif u.status is Status.LEFT and self.admitted(u):
            self.bury(u.name, u.incarnation)


class Swim:
    """One member's SWIM state (see the module's header). Call `start` once, then feed it."""

    def __init__(self, name: str, addr: str, config: SwimConfig, rand: Rand, *, renew: Renew,
                 admit: Admit | None = None) -> None:
        if not NAME_RE.match(name) or not 0 < len(addr) <= MAX_ADDR or not addr.isascii() or not addr.isprintable():
            raise ValueError(f"not a member name and address: {name!r} {addr!r}")
        self.name, self.addr, self.config, self.rand = name, addr, config, rand
        self._renew = renew
        self.incarnation = 0
        self.payload = b""
        self.stats: Counter[str] = Counter()
        self._probe = _Prober(rand)
        self._table = _Table(config, admit, self.stats, self._probe)
        self._gossip = self._table.gossip
        self._relays: dict[int, tuple[str, int, float]] = {}   # our seq → (requester addr, its seq, expiry)
        self._seq = 0
        self._seeds: tuple[str, ...] = ()
        self._joined = False
        self._join_at: float | None = None
        self._join_backoff = config.join_interval
        self._next_probe: float | None = None
        self._sync_at: float | None = None
        self._gossip_at: float | None = None
        self._started = False
        self._left = False

    # --- the driver's calls -------------------------------------------------------------------------------

    def start(self, seeds: Iterable[str], now: float) -> Out:
        """Take this member's first incarnation and ask every seed (an address) for the cluster's state."""
        if self._started:
            raise ValueError("start() is called once")
        self._started = True
        self._take_renewal(1, leaving=False)
        self._seeds = tuple(dict.fromkeys(s for s in seeds if s != self.addr))
        self._joined = not self._seeds
        out: Out = []
        if self._seeds:
            self._send_joins(out)
            self._join_at = now + self._join_backoff
        self._next_probe = now + self.rand.random() * self.config.probe_interval
        if self.config.sync_interval:            # at a random point of the period, as memberlist staggers it
            self._sync_at = now + self.rand.random() * self._sync_period()
        return out

    def on_message(self, src: str, msg: Message, now: float) -> Out:
        """A message arrived from transport address `src`."""
        out: Out = []
        if not self._started:
            return out
        self.stats[_IN[type(msg)]] += 1
        self.stats["bytes_in"] += encoded_size(msg)
        for u in msg.updates:
            self._apply(u, now, out)
        if isinstance(msg, Ping):
            self._send(out, src, Ack(msg.seq, self.name))
        elif isinstance(msg, Ack):
            self._on_ack(msg, out)
        elif isinstance(msg, PingReq):
            self._seq = (self._seq + 1) & MAX_SEQ
            self._relays[self._seq] = (src, msg.seq, now + self.config.probe_interval)
            self._send(out, msg.target_addr, Ping(self._seq, self.name))
        elif isinstance(msg, Join):
            self._send_state(out, src, reply=True)
        elif isinstance(msg, Sync):
            for u in msg.records:
                self._apply(u, now, out)
            if not msg.reply:
                self._send_state(out, src, reply=True)
            elif not self._joined:
                self._joined = True
                self._join_at = None
                if self.config.sync_interval:     # now the cluster's size is known: a random point of its period
                    self._sync_at = now + self.rand.random() * self._sync_period()
        self._arm_gossip(now)
        return out

    def next_deadline(self) -> float | None:
        """When `on_timer` is next due (None: nothing pending)."""
        due = [t for t in (self._next_probe, self._probe.indirect_at, self._join_at, self._sync_at, self._gossip_at,
                           self._table.next_deadline()) if t is not None]
        return min(due, default=None)

    def on_timer(self, now: float) -> Out:
        """Fire whatever is due at `now`."""
        out: Out = []
        if self._join_at is not None and now >= self._join_at:
            self._send_joins(out)
            self._join_backoff = min(2 * self._join_backoff, self.config.join_max_backoff)
            self._join_at = now + self._join_backoff
        self._table.expire(now, out)
        probe = self._probe
        if probe.indirect_at is not None and now >= probe.indirect_at:
            probe.indirect_at = None
            self._probe_indirectly(out)
        if self._next_probe is not None and now >= self._next_probe:
            self._probe_tick(now, out)
        if self._sync_at is not None and now >= self._sync_at:
            self._sync_at = now + self._sync_period()
            for name in self._table.pick(self.rand, 1):
                self._send_state(out, self._table.members[name].addr, reply=False)
        if self._gossip_at is not None and now >= self._gossip_at:
            self._gossip_at = None
            for name in self._table.pick(self.rand, self.config.gossip_fanout, gossip=True):
                if self._gossip:
                    self._send(out, self._table.members[name].addr, Gossip(self.name))
        self._arm_gossip(now)
        return out

    def leave(self, now: float) -> Out:
        """Depart gracefully: take the departing payload and tell `announce_fanout` members at once. After
        this the member only answers and gossips (it probes, joins and syncs no more)."""
        out: Out = []
        if self._left or not self._started:
            return out
        self._take_renewal(self.incarnation + 1, leaving=True)
        self._left = True
        self._next_probe = self._join_at = self._sync_at = self._probe.indirect_at = None
        self._table.suspicions.clear()
        self._announce(out)
        self._arm_gossip(now)
        return out

    def rotate(self, now: float) -> Out:
        """Take a fresh payload (`renew(incarnation + 1)`, e.g. after a key rotation) and gossip it."""
        out: Out = []
        if self._left or not self._started:
            return out
        self._take_renewal(self.incarnation + 1, leaving=False)
        self._announce(out)
        self._arm_gossip(now)
        return out

    def members(self) -> Mapping[str, MemberView]:
        """The other members alive or suspect, by name."""
        return {n: m.view() for n, m in self._table.members.items() if m.status in _LIVE}

    def member(self, name: str) -> MemberView | None:
        """What is known of `name` (this member too; a dead or departed one until it is reaped)."""
        if name == self.name:
            return MemberView(self.name, self.addr, self.incarnation, self.payload,
                              Status.LEFT if self._left else Status.ALIVE)
        m = self._table.members.get(name)
        return m.view() if m is not None else None

    @property
    def joined(self) -> bool:
        """A seed (or any member) has answered with its state, or there was no seed."""
        return self._joined

    def pending_broadcasts(self) -> int:
        """How many records still wait to be gossiped (a driver may let them drain after `leave`)."""
        return len(self._gossip)

    def cluster_size(self) -> int:
        """n: the members alive or suspect, this one included."""
        return self._table.live

    def suspicion_timeout(self) -> float:
        return self._table.suspicion_timeout()

    def retransmit_limit(self) -> int:
        return self._table.retransmit_limit()

    # --- this member's record -----------------------------------------------------------------------------

    def _self_record(self) -> Update:
        return Update(Status.LEFT if self._left else Status.ALIVE, self.name, self.addr, self.incarnation,
                      self.payload)

    def _take_renewal(self, minimum: int, *, leaving: bool) -> None:
        inc, payload = self._renew(minimum, leaving)
        if inc < minimum:
            raise ValueError(f"renew({minimum}) gave incarnation {inc}")
        self.incarnation, self.payload = inc, payload
        self._gossip.add(self._self_record())

    def _apply(self, u: Update, now: float, out: Out) -> None:
        if u.name != self.name:
            self._table.apply(u, now, out)
            return
        if self._left:
            return
        if u.status is Status.ALIVE:       # another claim to our incarnation, or a higher one: refute it too
            stale = u.incarnation < self.incarnation or (u.incarnation == self.incarnation
                                                          and u.payload == self.payload and u.addr == self.addr)
        else:
            stale = u.incarnation < self.incarnation
        if not stale:
            self.stats["refutations"] += 1
            self._take_renewal(max(u.incarnation, self.incarnation) + 1, leaving=False)

    # --- sending ------------------------------------------------------------------------------------------

    def _send(self, out: Out, addr: str, msg: Ping | Ack | PingReq | Gossip) -> None:
        """Send `msg` with as much gossip as fits."""
        base = base_size(msg)
        ups = self._gossip.take(self.config.max_message_bytes - base, self._table.retransmit_limit())
        if ups:
            msg = replace(msg, updates=ups)
        size = base + sum(record_size(u) for u in ups)
        self._count_out(msg, size)
        out.append(Send(addr, msg, size))

    def _send_plain(self, out: Out, addr: str, msg: Message) -> None:
        """Send `msg` as it is."""
        size = encoded_size(msg)
        self._count_out(msg, size)
        out.append(Send(addr, msg, size))

    def _count_out(self, msg: Message, size: int) -> None:
        self.stats[_OUT[type(msg)]] += 1
        self.stats[_BYTES_OUT[type(msg)]] += size
        self.stats["bytes_out"] += size

    def _arm_gossip(self, now: float) -> None:
        if self._gossip_at is None and self._gossip and self.config.gossip_fanout:
            self._gossip_at = now + self.config.gossip_interval

    def _send_joins(self, out: Out) -> None:
        for seed in self._seeds:
            self._send_plain(out, seed, Join(self.name, (self._self_record(),)))

    def _send_state(self, out: Out, addr: str, *, reply: bool) -> None:
        """Our whole state to `addr`, in as many Sync messages as `max_message_bytes` takes (a request
        asks for the receiver's state in its first part only: the others are marked `reply`)."""
        room = self.config.max_message_bytes - base_size(Sync(self.name, (), reply))
        part: list[Update] = []
        used = 0
        for u in (self._self_record(), *(m.record() for m in self._table.members.values())):
            size = record_size(u)
            if part and used + size > room:
                self._send_plain(out, addr, Sync(self.name, tuple(part), reply))
                part, used, reply = [], 0, True         # only a request's first part asks for an answer
            part.append(u)
            used += size
        self._send_plain(out, addr, Sync(self.name, tuple(part), reply))

    def _announce(self, out: Out) -> None:
        """Send this member's new record now to `announce_fanout` random alive members."""
        me = (self._self_record(),)
        for name in self._table.pick(self.rand, self.config.announce_fanout):
            self._send_plain(out, self._table.members[name].addr, Gossip(self.name, me))

    def _sync_period(self) -> float:
        live = self._table.live
        return self.config.sync_interval * (1 + math.ceil(math.log2(live / 32)) if live > 32 else 1)

    # --- probing ------------------------------------------------------------------------------------------

    def _on_ack(self, msg: Ack, out: Out) -> None:
        probe = self._probe
        if probe.target is not None and msg.seq == probe.seq:
            probe.acked = True
            probe.indirect_at = None
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(out, relay[0], Ack(relay[1], msg.sender))

    def _probe_tick(self, now: float, out: Out) -> None:
        """The end of one protocol period and the start of the next: suspect an unanswered target, ping
        the next one."""
        probe, cfg, members = self._probe, self.config, self._table.members
        assert self._next_probe is not None
        self._next_probe = max(self._next_probe + cfg.probe_interval, now)
        if probe.target is not None and not probe.acked:
            m = members.get(probe.target)
            if m is not None and m.status is Status.ALIVE and m.incarnation == probe.target_inc:
                self._table.apply(Update(Status.SUSPECT, m.name, m.addr, m.incarnation), now, out)
        self._relays = {s: r for s, r in self._relays.items() if r[2] > now}
        target = probe.next(lambda s: s in members and members[s].status in _LIVE)
        probe.target, probe.indirect_at, probe.acked = target, None, True
        if target is None:
            return
        m = members[target]
        self._seq = (self._seq + 1) & MAX_SEQ
        probe.seq, probe.target_inc, probe.acked = self._seq, m.incarnation, False
        probe.indirect_at = now + cfg.probe_timeout
        self._send(out, m.addr, Ping(self._seq, self.name))

    def _probe_indirectly(self, out: Out) -> None:
        probe, members = self._probe, self._table.members
        if probe.acked or probe.target is None or probe.target not in members:
            return
        target = members[probe.target]
        for name in self._table.pick(self.rand, self.config.indirect_probes, but=target.name):
            self._send(out, members[name].addr, PingReq(probe.seq, self.name, target.name, target.addr))


TIMER_KEYS: Final = ("probe_interval", "probe_timeout", "suspicion_mult", "sync_interval", "join_interval")
MAX_TIMER_S: Final = 3600.0


def read_timers(raw: object, path: str, errs: val.Errors) -> dict[str, float] | None:
    """A `timers:` mapping of a mesh (site file or scenario): the `SwimConfig` fields it sets, each checked
    under `path.<key>` (durations like "1s", `suspicion_mult` a number); None after recording errors.
    probe_timeout must stay below probe_interval (each defaulting to `SwimConfig`'s)."""
    if raw is None:
        return {}
    m = val.mapping(raw, path, errs, TIMER_KEYS)
    if m is None:
        return None
    n = len(errs)
    out: dict[str, float] = {}
    for key in TIMER_KEYS:
        if m.get(key) is None:
            continue
        at = f"{path}.{key}"
        v = val.number(m[key], at, errs, 0.5, 100.0) if key == "suspicion_mult" else \
            val.duration(m[key], at, errs, positive=True, at_most=MAX_TIMER_S)
        if v is not None:
            out[key] = float(v)
    if len(errs) > n:
        return None
    interval = out.get("probe_interval", SwimConfig.probe_interval)
    timeout = out.get("probe_timeout", SwimConfig.probe_timeout)
    if not timeout < interval:
        errs.add(f"{path}.probe_timeout", f"must be shorter than probe_interval ({interval:g}s), got {timeout:g}s")
        return None
    return out
