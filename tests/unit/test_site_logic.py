"""Unit tests of patronus.core.site.SiteLogic: the monitor → router step every driver runs per site,
with fate sharing between paths over one uplink and dead tunnels. Virtual time: a tiny network
answers every probe after a fixed RTT unless its uplink is cut."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patronus.core.events import FailoverTriggered, PathStatusChanged, ProbeLost
from patronus.core.model import EndpointId, FlowKey, Path, PathId, PathStatus, SiteId
from patronus.core.monitor import PROFILES, MonitorProfile
from patronus.core.site import SiteLogic, uplink_of

pytestmark = pytest.mark.unit

RTT = {"br:isp1-isp1": 0.020, "br:isp1-isp2": 0.120, "br:isp2-isp1": 0.150, "br:isp2-isp2": 0.180}


def _path(pid: str) -> Path:
    local, remote = pid.split(":")[1].split("-")
    return Path(id=PathId(pid), src_site=SiteId("hq"), dst_site=SiteId("br"),
                src_endpoint=EndpointId(f"hq:{local}"), dst_endpoint=EndpointId(f"br:{remote}"))


class Net:
    """Drives a SiteLogic like a driver would: probes come back after RTT unless their uplink is cut."""

    def __init__(self, profile: MonitorProfile = PROFILES["fast"]) -> None:
        self.logic = SiteLogic("hq", profile)
        self.now = 0.0
        self.cut: set[str] = set()
        self.rtt: dict[str, float | None] = dict(RTT)     # None: the path drops everything
        self.drop_every: dict[str, int] = {}               # path -> drop each probe whose seq % k == 0
        self.inflight: list[tuple[float, PathId, int, float]] = []
        self.events: list[object] = []
        for pid in RTT:
            self.logic.add_path(_path(pid), 0.0)
        self.logic.set_site_prefixes("br", ["10.2.0.0/24"])

    def run_until(self, t: float) -> None:
        while True:
            d = self.logic.next_deadline()
            nxt = min([d if d is not None else t] + [a for a, *_ in self.inflight])
            if nxt > t:
                self.now = t
                return
            self.now = max(self.now, nxt)
            due = [x for x in self.inflight if x[0] <= self.now]
            self.inflight = [x for x in self.inflight if x[0] > self.now]
            for _, pid, seq, sent in sorted(due):
                self.logic.on_probe_reply(pid, seq, sent, self.now)
            step = self.logic.pump(self.now)
            self.events += step.lost + step.status + step.router
            for p in step.probes:
                rtt = self.rtt[p.path_id]
                k = self.drop_every.get(p.path_id)
                if k and p.seq % k == 0:
                    continue
                if uplink_of(_path(p.path_id)) not in self.cut and rtt is not None:
                    self.inflight.append((self.now + rtt, p.path_id, p.seq, self.now))


def test_flows_leave_a_cut_uplink_for_the_other_uplink_not_a_sibling() -> None:
    net = Net()
    net.run_until(2.0)
    assert all(net.logic.status(PathId(p)) is PathStatus.UP for p in RTT)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    best = net.logic.router.select_path(flow, net.now)
    assert best == PathId("br:isp1-isp1")
    net.cut.add("isp1")
    net.run_until(2.5)
    moves = [e for e in net.events if isinstance(e, FailoverTriggered) and e.flow == flow]
    # one move, straight to a path over isp2: the sibling br:isp1-isp2 was suspected at once
    assert len(moves) == 1
    assert uplink_of(_path(moves[0].to_path)) == "isp2"
    assert net.logic.status(PathId("br:isp1-isp2")) is PathStatus.DOWN


def test_a_suspected_sibling_that_answers_is_cleared() -> None:
    net = Net()
    net.run_until(2.0)
    # one path's probes fail (its remote end), the sibling over the same uplink still works
    net.rtt["br:isp1-isp1"] = 10.0      # replies come far too late: the path goes Down
    sib = PathId("br:isp1-isp2")
    while net.logic.monitor.status(PathId("br:isp1-isp1")) is not PathStatus.DOWN:
        net.run_until(net.now + 0.001)
    # both kinds of sibling are suspected: the one over the same uplink, the one to the same endpoint
    assert net.logic.suspected(sib) and net.logic.router.is_suspect(sib)
    assert net.logic.suspected(PathId("br:isp2-isp1"))
    assert not net.logic.suspected(PathId("br:isp2-isp2"))
    assert net.logic.status(sib) is PathStatus.UP        # a guess changes no status
    net.run_until(net.now + 0.2)
    # cleared once a probe sent after the failure began answered
    assert not net.logic.suspected(sib) and not net.logic.router.is_suspect(sib)
    assert not net.logic.suspected(PathId("br:isp2-isp1"))


def test_dead_tunnel_is_down_for_routing_until_alive() -> None:
    net = Net()
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    assert net.logic.router.select_path(flow, net.now) == PathId("br:isp1-isp1")
    assert net.logic.set_tunnel_dead(PathId("br:isp1-isp1"), True, net.now)
    assert not net.logic.set_tunnel_dead(PathId("br:isp1-isp1"), True, net.now)   # no change
    net.logic.pump(net.now)
    assert net.logic.router.flow_path(flow) != PathId("br:isp1-isp1")
    assert net.logic.status(PathId("br:isp1-isp1")) is PathStatus.DOWN
    assert net.logic.monitor.status(PathId("br:isp1-isp1")) is PathStatus.UP   # probes still pass
    net.run_until(3.0)
    assert net.logic.status(PathId("br:isp1-isp1")) is PathStatus.DOWN         # stays down for routing
    net.logic.set_tunnel_dead(PathId("br:isp1-isp1"), False, net.now)
    assert net.logic.status(PathId("br:isp1-isp1")) is PathStatus.UP
    # and the flow returns to it after the failback hold
    net.run_until(net.now + net.logic.router.config.failback_hold_s + 1.0)
    assert net.logic.router.flow_path(flow) == PathId("br:isp1-isp1")


def test_a_sibling_that_answered_since_the_failure_began_is_not_suspected() -> None:
    net = Net()
    net.rtt["br:isp1-isp2"] = 0.010          # a short path over the same local uplink
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    assert net.logic.router.select_path(flow, net.now) == PathId("br:isp1-isp2")
    net.logic.router.remove_flow(flow, net.now)
    flow2 = FlowKey("10.1.0.2", "10.2.0.2", 4001, 5001, 17)
    net.logic.router.place(flow2, PathId("br:isp1-isp1"), net.now, site=SiteId("br"))
    # the remote endpoint br:isp1 fails: both paths to it drop everything
    net.rtt["br:isp1-isp1"] = net.rtt["br:isp2-isp1"] = None
    while net.logic.monitor.status(PathId("br:isp1-isp1")) is not PathStatus.DOWN:
        net.run_until(net.now + 0.001)
    # the local uplink is evidently fine (its short path answered since); the endpoint's other path is not
    assert not net.logic.suspected(PathId("br:isp1-isp2"))
    assert net.logic.suspected(PathId("br:isp2-isp1"))
    net.run_until(net.now + 0.2)
    assert net.logic.router.flow_path(flow2) == PathId("br:isp1-isp2")


def test_the_move_waits_for_the_siblings_to_tell_a_local_cut_from_a_remote_one() -> None:
    """At the Down neither sibling has had time to answer: the router is told only once one of them
    has (here the path to the same remote endpoint over the other uplink: the cut is local), and the
    flow goes to that better path rather than to the only path sharing nothing."""
    net = Net()
    net.rtt["br:isp2-isp1"] = 0.100
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    assert net.logic.router.select_path(flow, net.now) == PathId("br:isp1-isp1")
    net.cut.add("isp1")
    while net.logic.monitor.status(PathId("br:isp1-isp1")) is not PathStatus.DOWN:
        net.run_until(net.now + 0.001)
    down_at = net.now
    assert net.logic.router.flow_path(flow) == PathId("br:isp1-isp1")       # held: the router not told yet
    assert net.logic.next_deadline() is not None
    net.run_until(net.now + 0.2)
    moves = [e for e in net.events if isinstance(e, FailoverTriggered) and e.flow == flow]
    assert len(moves) == 1 and moves[0].to_path == PathId("br:isp2-isp1")
    assert moves[0].at - down_at <= 3 * 0.020 + 1e-9                        # at most multiplier × interval
    # the cut uplink's other path stayed suspected until its own probes took it Down
    sib = PathId("br:isp1-isp2")
    assert net.logic.suspected(sib) or net.logic.monitor.status(sib) is PathStatus.DOWN
    assert not net.logic.suspected(PathId("br:isp2-isp1"))


def test_sla_samples_a_late_reply_but_not_a_duplicate() -> None:
    """A reply after its probe's timeout is a delayed probe (an RTT sample for the SLA, and the loss
    counted at the timeout is netted out); a second copy of a reply is nothing."""
    net = Net()
    pid = PathId("br:isp1-isp1")
    logic, mon, sla = net.logic, net.logic.monitor, net.logic.sla
    net.run_until(2.0)
    net.rtt[pid] = None                       # from now on the path's probes get no reply in time
    seq = mon.counters(pid).sent              # the next probe's sequence number
    while mon.counters(pid).sent == seq:
        deadline = mon.next_deadline()
        assert deadline is not None
        net.run_until(deadline)
    sent_at = net.now
    while mon.counters(pid).timed_out == 0:
        deadline = mon.next_deadline()
        assert deadline is not None
        net.run_until(deadline)
    latency_samples = sla.measure(pid, net.now).latency_samples
    assert not logic.on_probe_reply(pid, seq, sent_at, net.now + 0.001)     # late: not "taken" ...
    assert (mon.counters(pid).late, mon.counters(pid).duplicates) == (1, 0)
    assert sla.measure(pid, net.now).latency_samples == latency_samples + 1  # ... but an RTT sample
    assert not logic.on_probe_reply(pid, seq, sent_at, net.now + 0.002)     # a second copy of it
    assert (mon.counters(pid).late, mon.counters(pid).duplicates) == (1, 1)
    assert sla.measure(pid, net.now).latency_samples == latency_samples + 1  # is nothing
    net.rtt[pid] = RTT[pid]
    net.run_until(net.now + 1.0)              # metrics reports count the timeouts as SLA losses
    c = mon.counters(pid)
    assert c.timed_out >= 1
    assert sla.measure(pid, net.now).packets_lost == c.timed_out - 1      # all but the late one


def test_a_held_down_is_told_even_when_the_path_comes_back_first() -> None:
    """A Down held while its siblings are suspected, whose path answers again before the hold ends: the
    router still hears the Down (the flow leaves, for the path that shares nothing with the failure)
    and the path's return afterwards; the flow comes back only after the failback hold. (Down after 5
    misses: the hold, up to 5 intervals, outlasts the 3 answers that bring the path back.)"""
    net = Net(replace(PROFILES["fast"], detect_multiplier=5))
    net.rtt["br:isp2-isp1"] = net.rtt["br:isp1-isp2"] = 0.300     # siblings that answer late: a long hold
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    pid = PathId("br:isp1-isp1")
    assert net.logic.router.select_path(flow, net.now) == pid
    net.rtt[pid] = None                               # only this path drops its probes, for a while ...
    start = net.now
    while net.logic.monitor.status(pid) is not PathStatus.DOWN and net.now < start + 1.0:
        net.run_until(net.now + 0.001)
    assert net.logic.router.flow_path(flow) == pid     # held
    net.rtt[pid] = RTT[pid]                           # ... and answers again at once
    down = net.now
    while net.logic.monitor.status(pid) is not PathStatus.UP and net.now < down + 1.0:
        net.run_until(net.now + 0.001)
    assert net.now - down < 5 * 0.020                  # back within the hold
    net.run_until(net.now + 0.3)
    assert net.logic.monitor.status(pid) is PathStatus.UP
    moves = [e for e in net.events if isinstance(e, FailoverTriggered) and e.flow == flow]
    assert len(moves) == 1 and moves[0].from_path == pid
    assert net.logic.router.flow_path(flow) != pid
    net.run_until(net.now + net.logic.router.config.failback_hold_s + 1.0)
    assert net.logic.router.flow_path(flow) == pid


def test_the_first_lost_probes_of_a_cut_reach_the_driver_before_the_verdicts_and_move_nothing() -> None:
    net = Net()
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    assert net.logic.router.select_path(flow, net.now) == PathId("br:isp1-isp1")
    n = len(net.events)
    net.cut.add("isp1")
    net.run_until(2.6)
    later = net.events[n:]
    lost = [e for e in later if isinstance(e, ProbeLost)]
    downs = [e for e in later if isinstance(e, PathStatusChanged) and e.new is PathStatus.DOWN]
    # one a path of the cut uplink, each before that path's Down; the other uplink lost nothing
    assert sorted(e.path_id for e in lost) == ["br:isp1-isp1", "br:isp1-isp2"]
    assert sorted(e.path_id for e in downs) == ["br:isp1-isp1", "br:isp1-isp2"]
    for e in lost:
        down = next(d for d in downs if d.path_id == e.path_id)
        assert 2.0 <= e.at <= down.at and later.index(e) < later.index(down)
    # a step with only a first miss in it asks the driver for nothing
    logic = Net().logic
    logic.monitor.on_probe_result(PathId("br:isp1-isp1"), None, 0.1)
    step = logic.pump(0.1)            # (before the first metrics report, at 0.5 s)
    assert [type(e) for e in step.lost] == [ProbeLost] and not step.routing_changed
# --- the steering hold of a restarted agent -----------------------------------------------------------

def test_the_steering_hold_ends_when_every_live_path_is_up() -> None:
    from patronus.core.site import steering_hold_s

    net = Net()
    logic = net.logic
    until = steering_hold_s(logic.monitor.profile)
    logic.hold_steering(until)
    assert logic.steering_held and logic.next_deadline() is not None
    released: list[float] = []
    while logic.steering_held:
        before = net.now
        net.run_until(net.now + 0.001)
        if not logic.steering_held:
            released.append(before)
    # every path came Up (3 replies each, the slowest RTT 180 ms), long before the cap
    assert all(logic.status(PathId(p)) is PathStatus.UP for p in RTT)
    assert 0.18 <= released[0] < 0.3 < until


def test_the_steering_hold_waits_for_a_dead_paths_verdict_not_for_the_cap() -> None:
    from patronus.core.site import steering_hold_s

    net = Net()
    net.rtt["br:isp2-isp2"] = None            # this one never answers
    logic = net.logic
    cap = steering_hold_s(logic.monitor.profile)
    logic.hold_steering(cap)
    while logic.steering_held:
        net.run_until(net.now + 0.001)
    dead = PathId("br:isp2-isp2")
    assert logic.monitor.judged(dead) and logic.status(dead) is PathStatus.DOWN
    # three probes 20 ms apart, the first probe's timeout before any RTT is known: 1 s
    assert 1.0 < net.now < cap


def test_the_step_that_ends_the_hold_says_so_and_counts_as_a_routing_change() -> None:
    net = Net()
    logic = net.logic
    logic.hold_steering(0.05)
    step = logic.pump(0.0)
    assert not step.released and logic.steering_held
    assert logic.next_deadline() is not None and logic.next_deadline() <= 0.05   # type: ignore[operator]
    step = logic.pump(0.05)                   # the cap: no path has a verdict yet
    assert step.released and step.routing_changed and not logic.steering_held
    assert not logic.pump(0.06).released


def test_a_sibling_that_loses_probes_too_is_part_of_the_failure() -> None:
    """A lossy uplink, not a cut: one path over it goes Down (three misses in a row), its sibling over
    the same uplink answers most probes but loses every third. The flows go to a path over the other
    uplink, not to the lossy sibling (which would move them again a moment later); a sibling over the
    other uplink that loses nothing is not suspected."""
    net = Net()
    failed, lossy = PathId("br:isp1-isp1"), PathId("br:isp1-isp2")
    net.rtt[lossy] = 0.025        # second best, and quick to answer: it has answered when the other goes Down
    net.run_until(2.0)
    flow = FlowKey("10.1.0.2", "10.2.0.2", 4000, 5001, 17)
    assert net.logic.router.select_path(flow, net.now) == failed
    net.rtt[failed] = None
    net.drop_every[lossy] = 3
    while net.logic.monitor.status(failed) is not PathStatus.DOWN:
        net.run_until(net.now + 0.001)
    net.run_until(net.now + 0.3)
    moves = [e for e in net.events if isinstance(e, FailoverTriggered) and e.flow == flow]
    assert len(moves) == 1 and uplink_of(_path(moves[0].to_path)) == "isp2"
    assert net.logic.suspected(lossy) and not net.logic.suspected(PathId("br:isp2-isp2"))
    assert net.logic.monitor.status(lossy) is PathStatus.UP      # a guess changes no status
    # it heals: once it has lost nothing for a whole probe window (fast: 50 × 20 ms), a reply clears it
    del net.drop_every[lossy]
    net.run_until(net.now + 1.2)
    assert not net.logic.suspected(lossy)
