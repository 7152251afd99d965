"""The steering plan is computed per remote and each remote's part kept while nothing it reads changed
(`SiteRuntime._compute_plan`): a step at a hub costs what changed, not remotes × policies. Whatever
happens to the paths (RTTs, cuts, a remote that leaves and comes back, policies turned off and on),
every plan a step makes must equal the plan computed afresh from the same state, part by part. Virtual
time: a probe comes back after its path's RTT unless the path is cut."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronus.core.model import EndpointId, Path, PathId, SiteId
from patronus.core.monitor import PROFILES
from patronus.core.policy import LoadBalance, MatchRules, Preference, RoutingPolicy
from patronus.core.runtime import Actions, SiteRuntime
from tests.unit.virtualnet import VirtualNet

pytestmark = pytest.mark.unit

REMOTES = ["a", "b", "c"]
PAIRS = ["isp1-isp1", "isp1-isp2", "isp2-isp1"]
PATHS = [PathId(f"{r}:{p}") for r in REMOTES for p in PAIRS]
POLICIES = [
    RoutingPolicy(name="voice", priority=10, preference=Preference.LOWEST_LATENCY, failover_threshold=80,
                  match=MatchRules(protocol=17)),
    RoutingPolicy(name="bulk", priority=20, preference=Preference.LOWEST_LOSS, match=MatchRules(protocol=6),
                  load_balance=LoadBalance.FLOW_HASH, lb_tolerance=20),
    RoutingPolicy(name="cheap", priority=30, preference=Preference.LOWEST_COST, match=MatchRules(protocol=1),
                  load_balance=LoadBalance.WEIGHTED_ROUND_ROBIN, lb_tolerance=30),
]


def paths_to(remote: str) -> list[Path]:
    out = []
    for k, pair in enumerate(PAIRS):
        local, far = pair.split("-")
        out.append(Path(id=PathId(f"{remote}:{pair}"), src_site=SiteId("hq"), dst_site=SiteId(remote),
                        src_endpoint=EndpointId(f"hq:{local}"), dst_endpoint=EndpointId(f"{remote}:{far}"),
                        cost_per_gb=float(k), bandwidth_mbps=float(10 * (k + 1))))
    return out


class Net(VirtualNet):
    """Drives a SiteRuntime as a driver does, and checks every plan a step makes against a fresh one."""

    def __init__(self) -> None:
        super().__init__()
        self.rt = SiteRuntime("hq", [p for r in REMOTES for p in paths_to(r)],
                              {r: [f"10.{i + 2}.0.0/24"] for i, r in enumerate(REMOTES)},
                              profile=PROFILES["fast"], policies=POLICIES)
        self.rtt: dict[PathId, float] = {p: 0.010 + 0.020 * i for i, p in enumerate(PATHS)}
        self.cut: set[PathId] = set()
        self.replans = 0

    def deliver(self, pid: PathId, seq: int, sent: float) -> None:
        if pid in self.rt.paths:                 # a reply for a path since removed: nobody reads it
            super().deliver(pid, seq, sent)

    def perform(self, act: Actions) -> None:
        if act.replan:
            self.replans += 1
            made = self.rt.plan()
            fresh = self.rt._compute_plan(cached=False)
            assert made == fresh, f"at {self.now:.3f} s the plan kept a stale part"
        for p in act.probes:
            if p.path_id not in self.cut and p.path_id in self.rt.paths:
                self.inflight.append((self.now + self.rtt[p.path_id], p.path_id, p.seq, self.now))



op = st.one_of(
    st.tuples(st.just("rtt"), st.sampled_from(PATHS), st.floats(0.002, 0.400)),
    st.tuples(st.just("cut"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("leave"), st.sampled_from(REMOTES)),
    st.tuples(st.just("join"), st.sampled_from(REMOTES)),
    st.tuples(st.just("policy"), st.sampled_from([p.name for p in POLICIES]), st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(op, st.floats(0.05, 4.0)), min_size=1, max_size=25))
def test_every_plan_equals_one_computed_afresh(ops: list[tuple[tuple, float]]) -> None:
    net = Net()
    net.run_until(3.0)                              # every path Up, every slot placed
    enabled = {p.name: True for p in POLICIES}
    for o, dt in ops:
        kind, target = o[0], o[1]
        rt = net.rt
        if kind == "rtt":
            net.rtt[target] = o[2]
        elif kind == "cut":
            (net.cut.add if o[2] else net.cut.discard)(target)
        elif kind == "leave" and SiteId(target) in rt.remotes:
            rt.remove_remote(target, net.now)
        elif kind == "join" and SiteId(target) not in rt.remotes:
            rt.add_remote(target, [f"10.{REMOTES.index(target) + 2}.0.0/24"], paths_to(target), net.now)
        elif kind == "policy":
            enabled[target] = o[2]
            rt.set_policies([p for p in POLICIES if enabled[p.name]], net.now)
        net.perform(rt.pump(net.now))
        net.run_until(net.now + dt)
    assert net.replans > 0


def test_a_failover_recomputes_the_part_of_its_remote_only() -> None:
    """The saving itself: once settled, the step that fails a slot over toward one remote computes that
    remote's part and keeps the others' (the very dicts of the step before)."""
    net = Net()
    net.run_until(5.0)
    rt = net.rt
    computed: list[SiteId] = []
    real = rt._remote_plan

    def spy(remote, *args):  # type: ignore[no-untyped-def]
        computed.append(remote)
        return real(remote, *args)

    rt._remote_plan = spy  # type: ignore[method-assign]
    perform = net.perform
    moved: list[list[SiteId]] = []

    def watch(act: Actions) -> None:
        if act.moves:
            moved.append(list(computed))
        computed.clear()
        perform(act)

    net.perform = watch  # type: ignore[method-assign]
    net.cut.add(PathId("a:isp1-isp1"))
    net.run_until(6.0)
    assert moved and moved[0] == [SiteId("a")]
    slot = next(s for s in rt.plan().slots if s.origin == "a:isp1-isp1")
    assert rt.plan().slots[slot] != "a:isp1-isp1"
