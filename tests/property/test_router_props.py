"""Hypothesis properties of patronus.core.router.

Two state machines drive a Router through new flows, packets of existing flows, path status and
metric changes, path removal and re-addition, flow removal, re-evaluation and the passing of time
(on_timer at the deadlines the router asks for). A shadow model, fed only by the router's events,
checks after every step that:

- no flow ever sits on a Down path while a usable path exists, and new flows never get a Down path
  (nor a Degraded one while an Up path exists);
- flows never move silently: the router's view of every flow equals the one its events describe;
- a flow never leaves a path that stays Up, unless its policy's failover threshold says so (first
  machine: policies without thresholds or requirements, so never);
- failback only returns a flow to its origin, after the origin has been acceptable to the flow's
  policy for the whole hold time, after the cooldown, and with the minimum improvement;
- flow-hash choices equal those of a fresh Router holding the same paths;
- idle flows expire after the idle timeout, not before and not much later.

Plain @given properties cover the selection rule and rendezvous hashing on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from patronus.core.events import (
    Event,
    Failback,
    FailoverReason,
    FailoverTriggered,
    FlowAssigned,
    FlowExpired,
    FlowStranded,
    FlowUnroutable,
)
from patronus.core.model import FlowKey, Path, PathId, PathMetrics, PathStatus, SiteId
from patronus.core.policy import LoadBalance, MatchRules, PortRange, Preference, RoutingPolicy, default_policies
from patronus.core.quality import quality_score, status_for
from patronus.core.router import Router, RouterConfig

pytestmark = pytest.mark.property

UP, DEGRADED, DOWN = PathStatus.UP, PathStatus.DEGRADED, PathStatus.DOWN
HQ, BRANCH = SiteId("hq"), SiteId("branch")
EPS = 1e-9


def m(latency_ms: float, jitter_ms: float, loss_pct: float, bandwidth_mbps: float = 100.0) -> PathMetrics:
    return PathMetrics(latency_ms=latency_ms, jitter_ms=jitter_ms, loss_pct=loss_pct,
                       score=quality_score(latency_ms, jitter_ms, loss_pct), measured_at=0.0,
                       bandwidth_mbps=bandwidth_mbps)


# Quality: 99.85, 96.8, 82.7, 66.8, 64.2 (all Up), 48.3 (Degraded); equal-preference twins for LB.
PROFILES = [m(10, 2, 0.1, 1000), m(50, 10, 1.0, 100), m(120, 20, 2.0, 300), m(180, 30, 5.0, 100),
            m(200, 30, 5.0, 50), m(100, 50, 11.0, 800), m(20, 2, 0.0, 200), m(20, 2, 0.0, 600)]
PATH_IDS = [PathId(f"p{i}") for i in range(1, 5)]

NO_THRESHOLDS = [
    RoutingPolicy("latency", 1, MatchRules(dst_ports=PortRange(1000, 1999)), Preference.LOWEST_LATENCY),
    RoutingPolicy("rr", 2, MatchRules(dst_ports=PortRange(2000, 2999)), Preference.HIGHEST_BANDWIDTH,
                  load_balance=LoadBalance.ROUND_ROBIN, lb_tolerance=60.0),
    RoutingPolicy("hash", 3, MatchRules(dst_ports=PortRange(3000, 3999)), Preference.LOWEST_LATENCY,
                  load_balance=LoadBalance.FLOW_HASH, lb_tolerance=30.0),
    RoutingPolicy("lc", 4, MatchRules(dst_ports=PortRange(4000, 4999)), Preference.LOWEST_LOSS,
                  load_balance=LoadBalance.LEAST_CONNECTIONS, lb_tolerance=2.0),
    RoutingPolicy("wrr", 5, MatchRules(dst_ports=PortRange(5000, 5999)), Preference.CUSTOM,
                  load_balance=LoadBalance.WEIGHTED_ROUND_ROBIN, lb_tolerance=20.0),
    RoutingPolicy("rest", 100, MatchRules(), Preference.CUSTOM),
]
CONFIG = RouterConfig(failback_hold_s=10.0, min_improvement=5.0, failover_cooldown_s=5.0, idle_timeout_s=90.0)
SWEEP_S = CONFIG.idle_timeout_s / 4.0
DT = st.sampled_from([0.0, 0.5, 1.0, 2.0])   # time passing before a path event


def fresh_router(policies: Iterable[RoutingPolicy], config: RouterConfig = CONFIG) -> Router:
    r = Router(config, policies)
    r.set_site_prefixes(HQ, ["10.1.0.0/16"])
    r.set_site_prefixes(BRANCH, ["10.2.0.0/16"])
    return r


@dataclass
class ModelFlow:
    path: PathId
    policy: str
    last_seen: float
    origin: PathId | None = None
    last_move: float | None = None
    stranded: bool = False


class RouterMachine(RuleBasedStateMachine):
    POLICIES: tuple[RoutingPolicy, ...] = tuple(NO_THRESHOLDS)
    PORTS: tuple[tuple[int, int], ...] = ((1000, 17), (2000, 17), (3000, 6), (3001, 17), (4000, 6), (5000, 6),
                                          (443, 6))

    def __init__(self) -> None:
        super().__init__()
        self.r = fresh_router(self.POLICIES)
        self.policies = {p.name: p for p in self.POLICIES}
        self.now = 0.0
        self.paths: dict[PathId, tuple[PathStatus, PathMetrics]] = {}
        # Since when each path has been acceptable to a failover threshold (None: no threshold, Up).
        self.ok_since: dict[PathId, dict[float | None, float]] = {}
        self.flows: dict[FlowKey, ModelFlow] = {}
        self.failbacks = 0
        self.in_timer = False

    # -- model helpers ----------------------------------------------------------------------------

    def thresholds(self) -> set[float | None]:
        return {p.failover_threshold for p in self.POLICIES} | {None}

    def set_model_path(self, pid: PathId, st_: PathStatus, met: PathMetrics) -> None:
        self.paths[pid] = (st_, met)
        since = self.ok_since.setdefault(pid, {})
        for thr in self.thresholds():
            ok = st_ is UP and (thr is None or met.score >= thr)
            if not ok:
                since.pop(thr, None)
            else:
                since.setdefault(thr, self.now)

    def usable(self) -> list[PathId]:
        return [p for p, (s, _) in self.paths.items() if s is not DOWN]

    def status(self, pid: PathId) -> PathStatus:
        return self.paths[pid][0] if pid in self.paths else DOWN

    def absorb(self) -> None:
        """Check the router's events against the model and apply them to it."""
        for e in self.r.drain_events():
            self.check_event(e)
        # A stranded flow whose own path is usable again resumes on it (no event).
        for f in self.flows.values():
            if f.stranded and self.status(f.path) is not DOWN:
                f.stranded = False
                if f.origin == f.path:
                    f.origin = None

    def check_event(self, e: Event) -> None:
        cfg = self.r.config
        event(f"{type(self).__name__}: {e.kind}" + (f" {e.reason.value}" if isinstance(e, FailoverTriggered) else ""))
        assert e.at <= self.now + EPS
        if isinstance(e, FlowAssigned):
            raise AssertionError(f"unexpected {e}")     # handled where the flow is created
        if isinstance(e, FlowExpired):
            f = self.flows.pop(e.flow)
            if self.in_timer:
                assert e.idle_s >= CONFIG.idle_timeout_s - EPS, "expired before the idle timeout"
            if e.path_id in self.paths:          # expired or ended (a removed path drops its flows)
                assert e.idle_s == pytest.approx(e.at - f.last_seen)
            return
        assert isinstance(e, FlowStranded | FailoverTriggered | Failback), f"unexpected {e}"
        f = self.flows[e.flow]
        policy = self.policies[f.policy]
        if isinstance(e, FlowStranded):
            assert e.from_path == f.path
            assert self.status(e.from_path) is DOWN
            assert self.usable() == [], "stranded although a usable path exists"
            f.stranded = True
            return
        if isinstance(e, FailoverTriggered):
            assert e.from_path == f.path and e.to_path != f.path
            assert self.status(e.to_path) is not DOWN
            if e.reason in (FailoverReason.PATH_DOWN, FailoverReason.PATH_REMOVED):
                # Never away from a path that is Up: only a Down (or removed) one.
                assert self.status(e.from_path) is DOWN
                assert (e.reason is FailoverReason.PATH_REMOVED) == (e.from_path not in self.paths)
            else:
                assert e.reason is FailoverReason.BELOW_THRESHOLD, e
                thr = policy.failover_threshold
                assert thr is not None, "a policy without a threshold moved a flow off a live path"
                assert self.paths[e.from_path][1].score < thr
                assert f.last_move is None or e.at - f.last_move >= cfg.failover_cooldown_s - EPS
                assert self.status(e.to_path) is UP
            if f.origin is None:
                f.origin = e.from_path
            elif f.origin == e.to_path:
                f.origin = None
            f.path, f.stranded, f.last_move = e.to_path, False, e.at
            return
        if isinstance(e, Failback):
            assert e.from_path == f.path
            assert e.to_path == f.origin, "failback to a path that is not the flow's origin"
            to_status, to_metrics = self.paths[e.to_path]
            thr = policy.failover_threshold
            since = self.ok_since[e.to_path].get(thr)
            assert to_status is UP and since is not None
            assert e.at - since >= cfg.failback_hold_s - EPS, "failback before the hold time"
            assert f.last_move is not None and e.at - f.last_move >= cfg.failover_cooldown_s - EPS
            gain = policy.score(to_metrics) - policy.score(self.paths[e.from_path][1])
            assert f.stranded or self.status(e.from_path) is DOWN or gain >= cfg.min_improvement - EPS
            f.path, f.origin, f.stranded, f.last_move = e.to_path, None, False, e.at
            self.failbacks += 1
            return
        raise AssertionError(f"unexpected event {e}")

    def flow_key(self, i: int, port: int) -> FlowKey:
        dport, proto = self.PORTS[port]
        return FlowKey(f"10.1.0.{i + 1}", "10.2.0.1", 20_000 + i, dport, proto)

    # -- rules ------------------------------------------------------------------------------------

    @initialize(profiles=st.lists(st.sampled_from(range(len(PROFILES))), min_size=4, max_size=4),
                down=st.lists(st.booleans(), min_size=4, max_size=4))
    def start(self, profiles: list[int], down: list[bool]) -> None:
        for pid, k, d in zip(PATH_IDS, profiles, down, strict=True):
            met = PROFILES[k]
            s = DOWN if d else status_for(met.score, met.loss_pct)
            self.r.add_path(Path(pid, HQ, BRANCH), self.now, s, met)
            self.set_model_path(pid, s, met)
        self.absorb()

    @rule(i=st.integers(0, 24), port=st.integers(0, 6))
    def packet(self, i: int, port: int) -> None:
        key = self.flow_key(i, port)
        known = self.flows.get(key)
        got = self.r.select_path(key, self.now)
        if known is not None:
            # Sticky: an existing flow is where its events put it (None while stranded).
            assert got == (None if known.stranded else known.path)
            known.last_seen = self.now
            assert self.r.drain_events() == []
            return
        ev = self.r.drain_events()
        usable = self.usable()
        if not usable:
            assert got is None
            assert len(ev) == 1 and isinstance(ev[0], FlowUnroutable)
            return
        assert got is not None, "no path although a usable one exists"
        assert self.status(got) is not DOWN
        if any(self.status(p) is UP for p in usable):
            assert self.status(got) is UP, "a Degraded path for a new flow while an Up one exists"
        assert len(ev) == 1 and isinstance(ev[0], FlowAssigned) and ev[0].path_id == got
        self.flows[key] = ModelFlow(got, ev[0].policy, self.now)
        policy = self.policies[ev[0].policy]
        if policy.load_balance in (LoadBalance.NONE, LoadBalance.FLOW_HASH):
            # Stateless choices: a fresh router with the same paths makes the same one.
            other = fresh_router(self.POLICIES)
            for pid in sorted(self.paths, reverse=True):
                s, met = self.paths[pid]
                other.add_path(Path(pid, HQ, BRANCH), self.now, s, met)
            assert other.select_path(key, self.now) == got

    def advance(self, dt: float) -> None:
        """The driver's part: on_timer at every deadline up to now + dt, in order."""
        target = self.now + dt
        for _ in range(10_000):
            d = self.r.next_deadline()
            if d is None or d > target:
                break
            self.now = max(self.now, d)
            self.in_timer = True
            self.r.on_timer(self.now)
            self.absorb()
            self.in_timer = False
        else:
            raise AssertionError("the deadline never moves")
        self.now = target
        # Not too late either: a flow idle for the timeout plus one sweep period is gone.
        for key, f in self.flows.items():
            assert self.now - f.last_seen < CONFIG.idle_timeout_s + SWEEP_S + EPS, key

    def change(self, pid: PathId, s: PathStatus, met: PathMetrics) -> None:
        self.set_model_path(pid, s, met)      # model first: events are judged against the new state
        self.r.update_path(pid, self.now, status=s, metrics=met)
        self.absorb()

    @rule(dt=DT, data=st.data())
    def path_goes_down(self, data: st.DataObject, dt: float) -> None:
        self.advance(dt)
        live = sorted(p for p, (s, _) in self.paths.items() if s is not DOWN)
        if live:
            pid = data.draw(st.sampled_from(live))
            self.change(pid, DOWN, self.paths[pid][1])

    @rule(dt=DT, data=st.data(), k=st.integers(0, len(PROFILES) - 1))
    def path_comes_back(self, data: st.DataObject, dt: float, k: int) -> None:
        self.advance(dt)
        dead = sorted(p for p, (s, _) in self.paths.items() if s is DOWN)
        if dead:
            met = PROFILES[k]
            self.change(data.draw(st.sampled_from(dead)), status_for(met.score, met.loss_pct), met)

    @rule(dt=DT, data=st.data(), k=st.sampled_from([0, 0, 1, 1, 2, 3, 4]))
    def origin_recovers(self, data: st.DataObject, dt: float, k: int) -> None:
        """The origin of a displaced flow comes back, or is measured again, Up and mostly with good
        metrics: what failback needs (and what a flapping origin does over and over)."""
        self.advance(dt)
        origins = sorted({f.origin for f in self.flows.values() if f.origin is not None and f.origin in self.paths})
        if origins:
            self.change(data.draw(st.sampled_from(origins)), UP, PROFILES[k])

    @rule(dt=DT, data=st.data(), k=st.integers(0, len(PROFILES) - 1))
    def path_measured(self, data: st.DataObject, dt: float, k: int) -> None:
        """New metrics for a live path (its status follows them, as the monitor's would)."""
        self.advance(dt)
        live = sorted(p for p, (s, _) in self.paths.items() if s is not DOWN)
        if live:
            met = PROFILES[k]
            self.change(data.draw(st.sampled_from(live)), status_for(met.score, met.loss_pct), met)

    @rule(dt=st.sampled_from([2.5, 5.0, 7.5, 10.0, 15.0, 30.0]))
    def time_passes(self, dt: float) -> None:
        self.advance(dt)

    @rule(i=st.integers(0, 24), port=st.integers(0, 6))
    def flow_ends(self, i: int, port: int) -> None:
        key = self.flow_key(i, port)
        assert self.r.remove_flow(key, self.now) == (key in self.flows)
        self.absorb()
        assert key not in self.flows

    @rule(pid=st.sampled_from(PATH_IDS), k=st.integers(0, len(PROFILES) - 1))
    def path_removed_or_added(self, pid: PathId, k: int) -> None:
        if pid in self.paths:
            del self.paths[pid]
            self.ok_since.pop(pid, None)
            self.r.remove_path(pid, self.now)
            self.absorb()
            for f in self.flows.values():     # a removed origin is forgotten
                if f.origin == pid:
                    f.origin = None
        else:
            met = PROFILES[k]
            s = status_for(met.score, met.loss_pct)
            self.set_model_path(pid, s, met)
            self.r.add_path(Path(pid, HQ, BRANCH), self.now, s, met)
        self.absorb()

    def teardown(self) -> None:
        target(float(self.failbacks), label="failbacks")   # steer generation toward failbacks

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def router_agrees_with_its_events(self) -> None:
        assert len(self.r) == len(self.flows)
        usable = self.usable()
        for key, f in self.flows.items():
            info = self.r.flow_info(key)
            assert info is not None
            assert info.stranded == f.stranded and info.origin == f.origin and info.policy == f.policy
            assert self.r.flow_path(key) == (None if f.stranded else f.path)
            if usable:
                # Never on a Down path while a usable one exists.
                assert not f.stranded and self.status(f.path) is not DOWN
        for pid in self.paths:
            assert self.r.path_status(pid) is self.paths[pid][0]
            assert sorted(self.r.flows_on(pid)) == sorted(k for k, f in self.flows.items() if f.path == pid)


class WithThresholds(RouterMachine):
    """The seed's default policies: voice and gaming leave paths below 70, default traffic below 50."""

    POLICIES = tuple(default_policies())
    PORTS = ((5060, 17), (5061, 6), (27015, 17), (21, 6), (443, 6), (80, 6), (53, 17))


SM_SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = SM_SETTINGS
TestWithThresholds = WithThresholds.TestCase
TestWithThresholds.settings = SM_SETTINGS


# --- plain properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=200, deadline=None)
statuses = st.sampled_from([UP, DEGRADED, DOWN])
policies = st.sampled_from(NO_THRESHOLDS + default_policies())
flows = st.builds(FlowKey, st.integers(0, 2**32 - 1).map(lambda n: f"10.1.{n >> 8 & 255}.{n & 255}"),
                  st.just("10.2.0.1"), st.integers(0, 65535), st.integers(0, 65535), st.sampled_from([6, 17]))


@SETTINGS
@given(st.lists(st.tuples(statuses, st.sampled_from(PROFILES)), min_size=1, max_size=6), policies, flows)
def test_never_a_down_path_while_a_usable_one_exists(paths: list[tuple[PathStatus, PathMetrics]],
                                                     policy: RoutingPolicy, key: FlowKey) -> None:
    r = fresh_router([policy])
    for i, (s, met) in enumerate(paths):
        r.add_path(Path(PathId(f"p{i}"), HQ, BRANCH), 0.0, s, met)
    got = r.select_path(key, 0.0)
    have = {s for s, _ in paths}
    if have == {DOWN}:
        assert got is None
    else:
        assert got is not None
        assert r.path_status(got) is (UP if UP in have else DEGRADED)


@SETTINGS
@given(st.sets(st.integers(0, 30), min_size=2, max_size=8), st.lists(flows, min_size=1, max_size=30, unique=True),
       st.data())
def test_flow_hash_is_rendezvous(ids: set[int], keys: list[FlowKey], data: st.DataObject) -> None:
    hashing = [RoutingPolicy("h", 1, load_balance=LoadBalance.FLOW_HASH, lb_tolerance=100.0)]
    pids = [PathId(f"path-{i}") for i in sorted(ids)]
    order = data.draw(st.permutations(pids))
    gone = data.draw(st.sampled_from(pids))

    def build(with_ids: list[PathId]) -> Router:
        r = fresh_router(hashing)
        for pid in with_ids:
            r.add_path(Path(pid, HQ, BRANCH), 0.0, UP, PROFILES[0])
        return r

    a, b, c = build(pids), build(order), build([p for p in pids if p != gone])
    for key in keys:
        chosen = a.select_path(key, 0.0)
        assert chosen is not None
        assert b.select_path(key, 0.0) == chosen                  # same paths, any order
        assert a.select_path(key, 1.0) == chosen                  # sticky, of course
        a.remove_flow(key, 1.0)
        assert a.select_path(key, 2.0) == chosen                  # and the same choice when new again
        if chosen != gone:
            assert c.select_path(key, 0.0) == chosen              # losing another path moves nothing
        else:
            assert c.select_path(key, 0.0) != gone
