"""Coasting (`PathMonitor.coast`): a steady path's probes sent and answered by the monitor itself, for a
flow-level simulation. Each test sets a coasting monitor beside one driven probe by probe over the same
constant-RTT link (the scripted network of test_monitor) and compares what a user of the core sees."""

from __future__ import annotations

import math

import pytest

from patronus.core.events import PathMetricsUpdated, PathStatusChanged, ProbeLost, SendProbe
from patronus.core.model import PathId, PathStatus
from patronus.core.monitor import PROFILES, MonitorProfile, PathMonitor
from patronus.core.quality import ProbeWindow
from patronus.core.sla import SlaMonitor
from tests.unit.test_monitor import P1, Net, constant, jittered, net_with

pytestmark = pytest.mark.unit

RTT = 0.0300288         # what the simulator's links give: not a round number in binary
FAST = PROFILES["fast"]
TENTH = MonitorProfile(name="tenth", interval_s=0.1)


def coasting_net(profile: MonitorProfile, rtt_s: float = RTT, start: float = 3.0,
                 until: float = math.inf) -> tuple[Net, list[tuple[PathId, float, list[float]]]]:
    """A net whose path coasts from `start` on (until `until`); returns it and what the sink got."""
    net = net_with(profile, constant(rtt_s))
    got: list[tuple[PathId, float, list[float]]] = []
    net.mon.coast_sink = lambda pid, ms, times: got.append((pid, ms, list(times)))
    net.run_until(start)
    assert net.mon.coast(P1, rtt_s, until, start)
    return net, got


def state(mon: PathMonitor, now: float) -> tuple[object, ...]:
    mon.sync(now)       # a driver hands the time in before it reads (the agent's API, the sim's sampler)
    c = mon.counters(P1)
    m = mon.metrics(P1, now)
    return (mon.status(P1), c.sent, c.received, c.timed_out, c.late, m.samples, mon.answered_sent_at(P1))


@pytest.mark.parametrize("profile", [TENTH, FAST], ids=["100ms", "fast"])
def test_a_coast_leaves_what_probing_every_probe_leaves(profile: MonitorProfile) -> None:
    plain = net_with(profile, constant(RTT))
    coast, got = coasting_net(profile)
    for t in (3.05, 3.5, 7.25, 20.0):
        plain.run_until(t)
        coast.run_until(t)
        assert state(coast.mon, t) == state(plain.mon, t)
        a, b = plain.mon.metrics(P1, t), coast.mon.metrics(P1, t)
        assert b.latency_ms == pytest.approx(a.latency_ms, rel=1e-9)
        assert b.jitter_ms == pytest.approx(a.jitter_ms, abs=1e-5) and b.loss_pct == a.loss_pct == 0.0
        assert b.score == pytest.approx(a.score, rel=1e-9)
        assert coast.mon.current_timeout_s(P1) == pytest.approx(plain.mon.current_timeout_s(P1), rel=1e-9)
    # no probe was asked for while coasting, yet as many were sent, answered and reported
    assert not [e for e in coast.sends() if e.at > 3.0 + RTT]
    assert len(coast.reports()) == len(plain.reports())
    assert not coast.changes(since=3.0) and not plain.changes(since=3.0)
    # the sink got every coasted reply, at the time the probe-by-probe run got it
    replies = [t for _, _, times in got for t in times]
    assert all(pid == P1 and ms == RTT * 1000.0 for pid, ms, _ in got)
    plain_replies = [t for t, _, _ in plain.answered if t > 3.0 + RTT]
    assert len(replies) == len(plain_replies)
    assert replies == pytest.approx(plain_replies, abs=1e-9)
    assert 0 <= coast.mon.coasted_probes - len(replies) <= math.ceil(RTT / profile.interval_s)   # still out
    assert coast.mon.coasting(P1)


def test_the_coast_ends_at_until_and_probes_are_asked_for_again() -> None:
    net, _ = coasting_net(TENTH, until=5.0)
    net.run_until(8.0)
    asked = [e.at for e in net.sends() if e.at > 3.0 + RTT]
    assert asked and asked[0] >= 5.0 and asked[0] < 5.0 + TENTH.interval_s
    assert asked == pytest.approx([asked[0] + 0.1 * i for i in range(len(asked))], abs=1e-9)
    assert not net.mon.coasting(P1)
    c = net.mon.counters(P1)
    assert c.sent - c.received <= 1 and c.timed_out == 0       # the schedule went on without a gap
    seqs = [e.seq for e in net.sends()]
    assert c.sent == seqs[-1] + 1                               # coasted probes took their seq numbers


def test_a_cut_after_the_coast_is_detected_as_without_it() -> None:
    detect = []
    for coasting in (False, True):
        net = net_with(FAST, constant(RTT))
        net.run_until(3.0)
        if coasting:
            assert net.mon.coast(P1, RTT, 10.0 - RTT, 3.0)
        net.cut(P1, 10.0)
        net.run_until(12.0)
        downs = [e for e in net.changes() if e.new is PathStatus.DOWN]
        assert len(downs) == 1
        detect.append(downs[0].at)
    assert detect[1] == pytest.approx(detect[0], abs=1e-9)


@pytest.mark.parametrize("case", ["down", "jitter", "rtt_above_timeout", "until_passed", "another_rtt", "unknown"])
def test_coast_is_refused_unless_the_path_is_steady_at_that_rtt(case: str) -> None:
    net = net_with(TENTH, jittered(RTT, 0.002, seed=1) if case == "jitter" else constant(RTT))
    net.run_until(3.0)
    rtt, until, pid = RTT, math.inf, P1
    if case == "down":
        net.cut(P1, 3.0)
        net.run_until(6.0)
        assert net.mon.status(P1) is PathStatus.DOWN
    elif case == "rtt_above_timeout":
        rtt = 0.5                           # the window says 30 ms: not steady at 500 ms either
    elif case == "until_passed":
        until = 2.0
    elif case == "another_rtt":
        rtt = RTT * 1.001
    elif case == "unknown":
        pid = PathId("nope")
    before = state(net.mon, net.now)
    assert not net.mon.coast(pid, rtt, until, net.now)
    assert state(net.mon, net.now) == before
    assert not net.mon.coasting(P1)


def test_rtt_above_the_timeout_is_refused_even_with_a_steady_window() -> None:
    fixed = MonitorProfile(name="fixed", interval_s=0.1, timeout_s=0.025)
    net = net_with(fixed, constant(0.02))
    net.run_until(3.0)
    assert net.mon.coast(P1, 0.02, math.inf, 3.0)      # 20 ms under a 25 ms timeout: fine
    net2 = net_with(MonitorProfile(name="fixed", interval_s=0.1, timeout_s=0.02), constant(0.0199999))
    net2.run_until(3.0)
    assert not net2.mon.coast(P1, 0.021, math.inf, 3.0)


def test_a_broken_promise_ends_the_coast_and_the_path_is_judged_as_usual() -> None:
    """A reply with another RTT (or a timeout of a probe the driver vouched for) ends the coast: from
    then on, probes are asked for again and judged one by one."""
    net, _ = coasting_net(TENTH, start=3.0)
    net.run_until(4.0)
    assert net.mon.coasting(P1)
    # a probe outstanding from before the coast can only be answered by the driver: fake one now
    mon = net.mon
    st = mon._paths[P1]
    seq = st.next_seq
    st.next_seq += 1
    st.outstanding[seq] = (4.0, 4.0 + mon.current_timeout_s(P1))
    mon._arm(st)
    mon.on_probe_reply(P1, seq, 4.0, 4.0 + RTT * 3)          # three times the RTT: not what was vouched
    assert not mon.coasting(P1)
    net.run_until(5.0)
    assert [e for e in net.sends() if e.at > 4.0]            # asked for again
    assert mon.counters(P1).timed_out == 0


def test_a_vouched_for_probe_that_times_out_is_a_first_lost_probe_as_without_a_coast() -> None:
    """The driver vouched for the probe still out when the coast began; the network loses its reply
    (a cut): its timeout ends the coast and says `ProbeLost` with the probe's own times, once, before
    the Down, as a path that never coasted would."""
    got: list[tuple[int, float, float, float]] = []
    for coasting in (False, True):
        net = net_with(TENTH, constant(RTT))
        net.run_until(3.001)                     # the probe of 3.0 s is out
        if coasting:
            assert net.mon.coast(P1, RTT, math.inf, 3.001)
        net.cut(P1, 3.0 + RTT / 2)               # its reply never comes
        net.run_until(5.0)
        lost = [e for e in net.events if isinstance(e, ProbeLost)]
        downs = [e for e in net.changes() if e.new is PathStatus.DOWN]
        assert len(lost) == 1 and len(downs) == 1 and lost[0].at <= downs[0].at
        assert not net.mon.coasting(P1)
        got.append((lost[0].seq, lost[0].sent_at, lost[0].at, downs[0].at))
    assert got[0][1] == got[1][1] == pytest.approx(3.0)
    assert got[1][0] == got[0][0] and got[1][2] == pytest.approx(got[0][2], abs=1e-12)
    assert got[1][3] == pytest.approx(got[0][3], abs=1e-9)


def test_queries_account_for_coasted_probes_up_to_the_latest_time_handed_in() -> None:
    net, got = coasting_net(TENTH)
    mon = net.mon
    sent0 = mon.counters(P1).sent
    mon.sync(4.0)
    assert mon.counters(P1).sent == sent0 + 10                     # 3.1 … 4.0 (3.0 was asked for)
    assert mon.answered_sent_at(P1) == pytest.approx(3.9, abs=1e-9)  # 4.0's reply is not back yet
    assert [t for _, _, ts in got for t in ts][-1] == pytest.approx(3.9 + RTT, abs=1e-9)


def test_window_add_run_is_adding_one_by_one() -> None:
    for prior in ([], [12.0, None, 30.0], [30.02880000000001] * 10, [None] * 10):
        for count in (1, 4, 9, 10, 25, 4096 + 7):
            a, b = ProbeWindow(10), ProbeWindow(10)
            for x in prior:
                a.add(x)
                b.add(x)
            for _ in range(count):
                a.add(30.0288)
            b.add_run(30.0288, count)
            assert a.samples() == b.samples() and len(a) == len(b) and a.received == b.received
            assert a.last_serial == b.last_serial and a.last_rtt_ms == b.last_rtt_ms
            assert a.rfc3550_jitter_ms == b.rfc3550_jitter_ms
            assert b.mean_ms == pytest.approx(a.mean_ms, rel=1e-12) and a.loss_pct == b.loss_pct
            assert b.stdev_ms == pytest.approx(a.stdev_ms, abs=1e-5)
            b.add_run(30.0288, 3)            # once uniform, a run changes nothing but the counters
            for _ in range(3):
                a.add(30.0288)
            assert a.samples() == b.samples() and a.last_serial == b.last_serial


def test_sla_record_probe_run_is_recording_one_by_one() -> None:
    a, b = SlaMonitor(), SlaMonitor()
    for m in (a, b):
        for i in range(30):
            m.record_probe("p", 20.0 + i % 3, i * 0.5)
        m.record_probe("p", None, 15.2)
    times = [15.3 + 0.1 * i for i in range(700)]
    for t in times:
        a.record_probe("p", 31.5, t)
    for i in range(0, 700, 9):
        b.record_probe_run("p", 31.5, times[i:i + 9])
    for now in (times[-1], times[-1] + 30.0):
        ma, mb = a.measure("p", now), b.measure("p", now)
        assert (ma.samples, ma.loss_pct, ma.latency_p50_ms, ma.latency_p95_ms, ma.latency_p99_ms) == \
               (mb.samples, mb.loss_pct, mb.latency_p50_ms, mb.latency_p95_ms, mb.latency_p99_ms)
        assert mb.jitter_ms == pytest.approx(ma.jitter_ms, abs=1e-9)
        assert mb.latency_mean_ms == pytest.approx(ma.latency_mean_ms, rel=1e-12)
    with pytest.raises(ValueError, match="latency"):
        b.record_probe_run("p", -1.0, [times[-1] + 1])


def test_site_logic_gives_coasted_replies_to_the_sla_and_suspects_do_not_coast() -> None:
    from tests.unit.test_site_logic import Net as SiteNet  # hq with two uplinks to br's two, fast profile

    net = SiteNet()
    logic = net.logic
    net.run_until(3.0)
    pid = PathId("br:isp1-isp1")
    assert logic.coast(pid, 0.020, math.inf, net.now)
    net.run_until(70.0)
    logic.sync(net.now)
    m = logic.sla.measure(str(pid), net.now)
    c = logic.monitor.counters(pid)
    assert abs(m.samples - 3000) <= 1 and m.loss_pct == 0.0 and m.jitter_ms == 0.0   # a full 60 s window, 50/s
    assert m.latency_p95_ms == pytest.approx(20.0)
    assert c.sent - c.received <= 1 and c.timed_out == 0
    other = PathId("br:isp2-isp1")
    logic._suspect[other] = net.now         # as if a sibling had just gone Down
    assert not logic.coast(other, 0.150, math.inf, net.now)


def test_events_of_a_coasting_monitor_carry_their_decision_times() -> None:
    net, _ = coasting_net(FAST)
    net.run_until(6.0)          # Net asserts every drained event is decided at the time it is drained
    kinds = {type(e) for e in net.events if e.at > 3.0 + RTT}
    assert kinds == {PathMetricsUpdated}
    assert not [e for e in net.events if isinstance(e, PathStatusChanged) and e.at > 3.0]
    assert not [e for e in net.events if isinstance(e, SendProbe) and e.at > 3.0 + RTT]
