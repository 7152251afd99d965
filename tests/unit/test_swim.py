"""SWIM membership (patronus/core/swim.py, patronus/core/swimwire.py), driven by `Net`, a tiny deterministic
network: one heap of (time, action), a fixed delay per link drawn once from the seed, seeded loss, and every
message encoded and decoded on the way (so the codec is in every exchange). Nodes are named s0, s1, ...
with the address "sN:7946"; `renew` gives the payload b"sN/<incarnation>" (b"sN/<incarnation>/left" when
leaving).

The bounds the tests hold the protocol to (T = probe_interval = 1 s; delays here are 5-25 ms, far under
probe_timeout / 2):

* **Detection** (`detect_bound`): every live member probes every other once per pass of its probe list,
  and the list is reshuffled between passes, so two probes of one target by one member are at most
  2(n - 1) - 1 periods apart; a crashed member is thus suspected by *each* member on its own within
  2(n - 1) periods of the crash (the unanswered probe is judged at the end of its period), and declared
  failed by it `suspicion_timeout` later, with no help from gossip: a hard bound when nothing is lost.
  Gossip makes it much faster in practice (the first prober is found within ~e/(e-1) periods).
* **Dissemination** (`gossip_bound`): a record is sent `retransmit_limit` = 4 × ceil(log10(n + 1))
  times by each member that learns it, and a member with records pending sends at least one message a
  period (its probe) and `gossip_fanout` (3) every `gossip_interval` (0.2 s): an epidemic that reaches
  all n members in O(log n) gossip rounds with high probability (measured for n = 10, seeds 1-5: a
  rotation or a leave reaches everyone in 0.24-0.44 s, the last of 10 joins in 1.1-1.4 s). We hold a join,
  a leave and a rotation to `retransmit_limit` periods (8 s for n = 10), the time one member keeps
  sending a record even if it only sent it on its probes: a generous margin, not a certainty, but these
  tests are deterministic (seeded network, seeded members), so a failure is a change of behaviour and
  never chance. Push-pull (every 30 s) repairs what gossip misses: that is the property tests' bound
  (tests/property/test_swim_props.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable

import pytest

from patronus.core.errors import PeerError
from patronus.core.swim import (
    EventKind,
    MemberEvent,
    Out,
    Send,
    Status,
    Swim,
    SwimConfig,
    Update,
)
from patronus.core.swimwire import (
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD,
    REASONS,
    Ack,
    Gossip,
    Join,
    Message,
    Ping,
    PingReq,
    SwimError,
    Sync,
    decode,
    encode,
    encoded_size,
)

pytestmark = pytest.mark.unit

CFG = SwimConfig()
Drop = Callable[[float, str, str, Message], bool]     # (now, src name, dst name, msg) → drop it


def addr_of(name: str) -> str:
    return f"{name}:7946"


def name_of(addr: str) -> str:
    return addr.split(":")[0]


def payload_of(name: str, incarnation: int, leaving: bool = False) -> bytes:
    return f"{name}/{incarnation}{'/left' if leaving else ''}".encode()


class Net:
    """N Swim instances over a simulated network (see the module's header); deterministic for a seed."""

    def __init__(self, seed: int, *, loss: float = 0.0, config: SwimConfig = CFG, wire: bool = True,
                 admit: Callable[[str, int, bytes], bool] | None = None) -> None:
        self.rng = random.Random(seed)
        self.seed, self.loss, self.config, self.wire, self.admit = seed, loss, config, wire, admit
        self.now = 0.0
        self.nodes: dict[str, Swim] = {}
        self.down: set[str] = set()                       # crashed: sends, hears and fires nothing
        self.drop: Drop | None = None
        self.events: list[tuple[float, str, MemberEvent]] = []    # (time, observer, event)
        self.sent: list[tuple[float, str, Send]] = []             # kept when `keep_sends`
        self.keep_sends = False
        self.keep_event: Callable[[MemberEvent], bool] = lambda e: True
        self.messages = 0
        self.bytes = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._n = itertools.count()
        self._armed: dict[str, float | None] = {}
        self._delay: dict[tuple[str, str], float] = {}

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._n), fn))

    def add(self, name: str, seeds: Iterable[str] = (), at: float = 0.0, *,
            admit: Callable[[str, int, bytes], bool] | None = None,
            payload: Callable[[str, int, bool], bytes] = payload_of) -> Swim:
        def renew(minimum: int, leaving: bool) -> tuple[int, bytes]:
            return minimum, payload(name, minimum, leaving)

        node = Swim(name, addr_of(name), self.config, random.Random(f"{self.seed}/{name}"), renew=renew,
                    admit=admit or self.admit)
        self.nodes[name] = node
        seeds = [addr_of(s) for s in seeds]
        self.at(at, lambda: self.handle(name, node.start(seeds, self.now)))
        return node

    def call(self, name: str, fn: Callable[[float], Out], at: float) -> None:
        """Run `fn(now)` (a method of node `name`, like `leave`) at time `at`."""
        self.at(at, lambda: self.handle(name, fn(self.now)))

    def link_delay(self, src: str, dst: str) -> float:
        key = (src, dst)
        if key not in self._delay:
            self._delay[key] = 0.005 + 0.02 * self.rng.random()
        return self._delay[key]

    def handle(self, name: str, out: Out) -> None:
        node = self.nodes[name]
        for a in out:
            if isinstance(a, MemberEvent):
                if self.keep_event(a):
                    self.events.append((self.now, name, a))
                continue
            self.messages += 1
            self.bytes += a.size
            if self.keep_sends:
                self.sent.append((self.now, name, a))
            dst = name_of(a.addr)
            if self.wire:
                data = encode(a.msg)
                assert len(data) == a.size
                msg = decode(data)
                assert msg == a.msg
            else:
                msg = a.msg
            if self.loss and self.rng.random() < self.loss:
                continue
            if self.drop is not None and self.drop(self.now, name, dst, msg):
                continue
            self.at(self.now + self.link_delay(name, dst), lambda dst=dst, msg=msg: self.deliver(name, dst, msg))
        self.arm(name, node)

    def deliver(self, src: str, dst: str, msg: Message) -> None:
        if dst in self.down or src in self.down or dst not in self.nodes:
            return
        self.handle(dst, self.nodes[dst].on_message(addr_of(src), msg, self.now))

    def arm(self, name: str, node: Swim) -> None:
        due = node.next_deadline()
        if due is not None and due != self._armed.get(name):
            self._armed[name] = due
            self.at(due, lambda: self.fire(name, due))

    def fire(self, name: str, due: float) -> None:
        if self._armed.get(name) != due or name in self.down:
            return
        self._armed[name] = None
        self.handle(name, self.nodes[name].on_timer(self.now))

    def run(self, until: float, check: Callable[[], bool] | None = None, every: float = 0.1) -> float | None:
        """Run to `until`; with `check`, stop at the first multiple of `every` where it holds and return that
        time (None if it never did)."""
        next_check = self.now if check is not None else math.inf
        while True:
            t = self._heap[0][0] if self._heap else math.inf
            if next_check <= min(t, until):
                self.now = next_check
                assert check is not None
                if check():
                    return self.now
                next_check += every
                continue
            if t > until:
                self.now = until
                return None
            _, _, fn = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            fn()

    # --- what the members see ---------------------------------------------------------------------------

    def live(self) -> list[str]:
        """The members neither crashed nor departed."""
        return [n for n, s in self.nodes.items() if n not in self.down and s.member(n).status is Status.ALIVE]  # type: ignore[union-attr]

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every live member (or each of `names`) has joined and sees exactly the others, alive, at their
        current incarnation."""
        live = list(names) if names is not None else self.live()
        want = {n: self.nodes[n].incarnation for n in live}
        for n in live:
            if not self.nodes[n].joined:
                return False
            view = self.nodes[n].members()
            got = {m: v.incarnation for m, v in view.items() if v.status is Status.ALIVE}
            if got != {m: i for m, i in want.items() if m != n}:
                return False
        return True

    def seen_by_all(self, kind: EventKind, about: str, since: float = 0.0) -> float | None:
        """When the last live member (but `about`) got a `kind` event about `about` (None: not all did)."""
        times = {}
        for t, observer, ev in self.events:
            if ev.kind is kind and ev.name == about and t >= since and observer not in times:
                times[observer] = t
        others = [n for n in self.nodes if n != about and n not in self.down]
        if any(n not in times for n in others):
            return None
        return max(times[n] for n in others)


def cluster(n: int, seed: int = 1, *, stagger: float = 0.1, **kw: object) -> Net:
    net = Net(seed, **kw)      # type: ignore[arg-type]
    for i in range(n):
        net.add(f"s{i}", seeds=["s0"] if i else [], at=i * stagger)
    return net


def detect_bound(n: int, cfg: SwimConfig = CFG) -> float:
    """From a crash to every member's own `failed` event, with nothing lost (the module's header)."""
    timeout = cfg.suspicion_mult * max(1.0, math.log10(n)) * cfg.probe_interval
    return 2 * (n - 1) * cfg.probe_interval + timeout + cfg.probe_interval


def gossip_bound(n: int, cfg: SwimConfig = CFG) -> float:
    """The periods a record spreads by gossip alone (the module's header)."""
    return cfg.retransmit_mult * math.ceil(math.log10(n + 1)) * cfg.probe_interval


# --- the protocol -------------------------------------------------------------------------------------------

def test_ten_sites_join_via_one_seed_and_see_all() -> None:
    net = cluster(10)
    last_start = 0.9
    bound = last_start + 2 * 0.05 + gossip_bound(10)     # the last Join's round trip, then gossip
    t = net.run(60.0, net.converged)
    assert t is not None and t <= bound, (t, bound)
    joined = {(obs, ev.name) for _, obs, ev in net.events if ev.kind is EventKind.JOINED}
    assert joined == {(a, b) for a in net.nodes for b in net.nodes if a != b}
    net.run(120.0)
    assert net.converged() and not [e for e in net.events if e[2].kind is not EventKind.JOINED]


def test_a_crashed_member_is_suspected_then_failed_by_everyone_within_the_bound() -> None:
    net = cluster(10, seed=2)
    assert net.run(30.0, net.converged) is not None
    crash = 30.0
    net.run(crash)
    net.down.add("s7")
    net.run(crash + 60)
    done = net.seen_by_all(EventKind.FAILED, "s7", since=crash)
    assert done is not None and done - crash <= detect_bound(10), (done, detect_bound(10))
    first_suspicion = min(t for t, _, e in net.events if e.kind is EventKind.SUSPECTED and e.name == "s7")
    assert first_suspicion - crash <= 2 * 9 + 1
    survivors = [n for n in net.nodes if n != "s7"]
    assert net.converged(survivors)
    assert all(net.nodes[n].member("s7") is None for n in survivors)         # reaped after reap_s


def test_a_graceful_leave_is_seen_by_all_within_a_few_periods() -> None:
    net = cluster(10, seed=3)
    assert net.run(30.0, net.converged) is not None
    net.call("s4", net.nodes["s4"].leave, at=31.0)
    net.run(70.0)
    done = net.seen_by_all(EventKind.LEFT, "s4", since=31.0)
    assert done is not None and done - 31.0 <= gossip_bound(10), done
    assert not [e for e in net.events if e[2].kind is EventKind.FAILED]
    assert all(net.nodes[n].member("s4") is None for n in net.nodes if n != "s4")   # reaped
    assert net.nodes["s4"].pending_broadcasts() == 0           # what a driver waits for before it exits
    left = net.nodes["s4"].member("s4")
    assert left is not None and left.status is Status.LEFT and left.payload == b"s4/2/left"


def test_a_falsely_suspected_member_refutes_and_is_never_declared_dead() -> None:
    net = cluster(10, seed=4)
    assert net.run(30.0, net.converged) is not None
    # s3's Acks (direct, and through the helpers of indirect probes) are lost for 6 s: longer than the
    # suspicion timeout (4 s), so only its refutations keep it alive.
    net.drop = lambda now, src, dst, msg: 31.0 <= now < 37.0 and src == "s3" and isinstance(msg, Ack)
    net.run(80.0)
    about = [e for _, _, e in net.events if e.name == "s3"]
    assert any(e.kind is EventKind.SUSPECTED for e in about)
    assert any(e.kind is EventKind.ALIVE for e in about)
    assert not any(e.kind is EventKind.FAILED for e in about)
    assert net.nodes["s3"].stats["refutations"] >= 1 and net.nodes["s3"].incarnation > 1
    assert net.converged()


def test_a_stale_alive_record_never_resurrects_a_dead_member() -> None:
    net = cluster(6, seed=5)
    assert net.run(30.0, net.converged) is not None
    net.down.add("s5")
    net.run(30.0 + detect_bound(6))
    assert net.seen_by_all(EventKind.FAILED, "s5") is not None
    stale = Update(Status.ALIVE, "s5", addr_of("s5"), 1, payload_of("s5", 1))
    node = net.nodes["s1"]

    def inject(at: float, u: Update) -> None:
        net.at(at, lambda: net.handle("s1", node.on_message(addr_of("s2"), Ping(7, "s2", (u,)), net.now)))

    inject(net.now + 1, stale)                     # before the reap: held dead at incarnation 1
    net.run(net.now + 40)                          # after the reap: remembered in the graveyard
    assert node.member("s5") is None
    inject(net.now + 1, stale)
    net.run(net.now + 10)
    assert "s5" not in node.members()
    assert not [e for _, obs, e in net.events if e.name == "s5" and e.kind is EventKind.JOINED and e.incarnation == 1
                and obs == "s1" and _ > 30]
    inject(net.now + 1, Update(Status.ALIVE, "s5", addr_of("s5"), 2, payload_of("s5", 2)))     # a restart
    net.run(net.now + 2)
    assert node.members()["s5"].incarnation == 2


def test_rotate_spreads_a_new_payload_everywhere() -> None:
    net = cluster(10, seed=6)
    assert net.run(30.0, net.converged) is not None
    net.call("s2", net.nodes["s2"].rotate, at=31.0)
    net.run(31.0 + gossip_bound(10) + 1)
    done = net.seen_by_all(EventKind.UPDATED, "s2", since=31.0)
    assert done is not None and done - 31.0 <= gossip_bound(10)
    for n, node in net.nodes.items():
        if n != "s2":
            assert node.members()["s2"].payload == b"s2/2" and node.members()["s2"].incarnation == 2


def test_payloads_that_admit_refuses_are_never_believed() -> None:
    def admit(name: str, incarnation: int, payload: bytes) -> bool:
        return not payload.startswith(b"forged")

    net = Net(7, admit=admit)
    for i in range(6):
        net.add(f"s{i}", seeds=["s0"] if i else [], at=i * 0.1)
    net.add("evil", seeds=["s0"], at=0.5, payload=lambda name, inc, leaving: b"forged")
    net.run(60.0)
    for n, node in net.nodes.items():
        if n != "evil":
            assert "evil" not in node.members() and node.member("evil") is None
    assert not [e for e in net.events if e[2].name == "evil"]
    assert sum(node.stats["rejected"] for node in net.nodes.values()) >= 1
    assert net.converged([f"s{i}" for i in range(6)])
    assert len(net.nodes["evil"].members()) == 6          # it believes the others: their payloads pass


def test_no_seed_is_a_cluster_of_one_and_join_retries_back_off() -> None:
    net = Net(8)
    alone = net.add("s0")
    net.keep_sends = True
    waiting = net.add("s1", seeds=["s9"])                 # a seed that never answers
    net.run(100.0)
    assert alone.joined and not waiting.joined
    joins = [t for t, src, s in net.sent if src == "s1" and isinstance(s.msg, Join)]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(joins)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and set(gaps[5:]) == {30.0}


def test_sync_is_split_within_max_message_bytes_and_carries_everything() -> None:
    cfg = SwimConfig(max_message_bytes=600)
    net = Net(9, config=cfg)
    big = lambda name, inc, leaving: name.encode() * 40       # noqa: E731 (about 100 bytes a record)
    for i in range(25):
        net.add(f"s{i}", seeds=["s0"] if i else [], at=i * 0.05, payload=big)
    assert net.run(60.0, net.converged) is not None
    net.keep_sends = True
    net.add("late", seeds=["s0"], at=net.now + 0.01, payload=big)
    net.run(net.now + 1)
    parts = [s.msg for _, src, s in net.sent if src == "s0" and isinstance(s.msg, Sync) and s.addr == addr_of("late")]
    assert len(parts) > 3
    assert all(encoded_size(p) <= cfg.max_message_bytes for p in parts)
    assert {r.name for p in parts for r in p.records} == {f"s{i}" for i in range(25)} | {"late"}
    assert all(s.size <= cfg.max_message_bytes for _, _, s in net.sent)
    assert [p.reply for p in parts] == [True] * len(parts)
    # a push-pull request of many parts is answered once (in as many parts as the answerer's state takes)
    net.sent.clear()
    net.run(net.now + 400)                       # push-pull every 30 × 1 s (26 members: not scaled)
    syncs = [(t, src, s.addr, s.msg) for t, src, s in net.sent if isinstance(s.msg, Sync)]
    requests = [(t, src, dst) for t, src, dst, m in syncs if not m.reply]
    assert len(requests) >= 26 * 10
    for t, src, dst in requests:
        asked = [m for t2, a, b, m in syncs if t2 == t and a == src and b == dst]
        answer = [m for t2, a, b, m in syncs if t < t2 < t + 0.2 and a == name_of(dst) and b == addr_of(src)]
        assert [m.reply for m in asked] == [False] + [True] * (len(asked) - 1) and len(asked) > 3
        assert len(answer) == len(asked) and all(m.reply for m in answer)


def test_no_loss_no_crash_means_no_suspicion_and_steady_gossip_is_small() -> None:
    net = cluster(12, seed=10)
    net.run(120.0)
    assert net.converged()
    assert [e[2].kind for e in net.events] == [EventKind.JOINED] * (12 * 11)
    assert all(node.cluster_size() == 12 for node in net.nodes.values())
    stats = net.nodes["s5"].stats
    assert stats["in.ping"] >= 100 and stats["out.ack"] == stats["in.ping"] and stats["bytes_out"] > 0
    assert sum(v for k, v in stats.items() if k.startswith("bytes_out.")) == stats["bytes_out"]
    # push-pull every 30 s: about 4 requests of one part and as many answers in 120 s, never a storm
    assert 2 <= stats["out.sync"] <= 20 and stats["out.gossip"] <= 60


def test_settings_and_names_are_checked() -> None:
    with pytest.raises(ValueError):
        SwimConfig(probe_timeout=2.0)
    with pytest.raises(ValueError):
        SwimConfig(max_message_bytes=100)
    with pytest.raises(ValueError):
        Swim("Bad Name", "x", CFG, random.Random(1), renew=lambda i, left: (i, b""))
    node = Swim("ok", "x:1", CFG, random.Random(1), renew=lambda i, left: (i - 1, b""))
    with pytest.raises(ValueError):
        node.start([], 0.0)


# --- the codec ----------------------------------------------------------------------------------------------

UPS = (Update(Status.ALIVE, "a", "10.0.0.1:7946", 3, b"pay"), Update(Status.SUSPECT, "b-2", "h", 1),
       Update(Status.DEAD, "c", "c", (1 << 64) - 1), Update(Status.LEFT, "d", "d:1", 9, b"x" * MAX_PAYLOAD))
MESSAGES: list[Message] = [
    Ping(0, "a"), Ping((1 << 32) - 1, "abc", UPS), Ack(5, "z9", UPS[:1]), PingReq(1, "a", "b", "1.2.3.4:5", UPS[1:]),
    Join("j", UPS[:1]), Sync("s", UPS, True), Sync("s", (), False, UPS[:2]), Gossip("g", UPS), Gossip("g"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_codec_round_trip_is_canonical(msg: Message) -> None:
    data = encode(msg)
    assert len(data) == encoded_size(msg)
    assert decode(data) == msg and encode(decode(data)) == data
    assert decode(bytearray(data)) == msg


def _reason(data: object) -> str:
    with pytest.raises(SwimError) as e:
        decode(data)         # type: ignore[arg-type]
    assert isinstance(e.value, PeerError) and e.value.reason in REASONS
    return e.value.reason


def test_malformed_messages_are_refused_with_a_reason() -> None:
    good = encode(Ping(1, "a", UPS[:2]))
    assert _reason(b"") == "malformed"
    assert _reason("text") == "malformed"
    assert _reason(b"XXXX" + good[4:]) == "malformed"
    assert _reason(good[:5]) == "malformed"
    assert _reason(good[:4] + b"\x02" + good[5:]) == "unsupported_version"
    assert _reason(good[:5] + b"\x09" + good[6:]) == "malformed"                      # unknown type
    assert _reason(good + b"\x00") == "malformed"                                     # trailing
    assert _reason(good[:-1]) == "malformed"                                          # truncated
    assert _reason(encode(Ping(1, "a")).replace(b"\x01a", b"\x01A")) == "malformed"   # not a name
    assert _reason(b"x" * (MAX_MESSAGE_BYTES + 1)) == "too_large"
    empty = encode(Ping(1, "a"))
    assert _reason(empty[:-2] + b"\xff\xff") == "too_large"                           # count beyond the bytes
    suspect = encode(Ping(1, "a", (Update(Status.SUSPECT, "b", "b", 1),)))
    assert _reason(suspect[:-2] + b"\x00\x01z") == "malformed"                        # a suspect with a payload
    assert _reason(suspect.replace(b"\x00" * 7 + b"\x01", b"\x00" * 8)) == "malformed"  # incarnation 0
    assert _reason(suspect.replace(b"\x02\x01b", b"\x07\x01b")) == "malformed"          # unknown status
    assert _reason(suspect.replace(b"\x01b\x00", b"\x00\x01b")) == "malformed"         # empty addr
    sync = encode(Sync("s", (), True))
    assert _reason(sync.replace(b"\x01\x00\x00\x00\x00", b"\x03\x00\x00\x00\x00")) == "malformed"   # flags
    with pytest.raises(ValueError):
        encode(Ping(1, "a", (Update(Status.DEAD, "b", "b", 1, b"no"),)))


def test_mutated_messages_decode_canonically_or_raise_swim_error() -> None:
    rng = random.Random(14)
    seen = set()
    for _ in range(3000):
        data = bytearray(encode(rng.choice(MESSAGES)))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(data) + 1)
            if op < 0.5 and data:
                data[min(i, len(data) - 1)] = rng.randrange(256)
            elif op < 0.75:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            msg = decode(bytes(data))
        except SwimError as e:
            seen.add(e.reason)
            continue
        assert encode(msg) == bytes(data)
    assert seen == {"malformed", "too_large", "unsupported_version"}
