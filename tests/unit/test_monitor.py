"""Unit tests of patronus.core.monitor, driven in virtual time by a tiny scripted network.

The network is a heap of pending replies. Each step picks t = min(next deadline, next reply),
delivers the replies due at t, calls `on_timer(t)`, and turns every `SendProbe` into a reply at
t + rtt unless the path is cut (or the script drops that probe). Nothing sleeps.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from patronus.core.errors import ConfigError
from patronus.core.events import Event, PathMetricsUpdated, PathStatusChanged, ProbeLost, SendProbe
from patronus.core.model import PathId, PathStatus
from patronus.core.monitor import MIN_INTERVAL_S, PROFILES, MonitorProfile, PathMonitor, Reply
from patronus.core.quality import quality_score

pytestmark = pytest.mark.unit

UP, DEGRADED, DOWN = PathStatus.UP, PathStatus.DEGRADED, PathStatus.DOWN
FAST = PROFILES["fast"]
DEFAULT = PROFILES["default"]
P1 = PathId("p1")
P2 = PathId("p2")
INF = math.inf

RttFn = Callable[[int, float], float | None]     # (seq, send time) → RTT in seconds, or None: lost


def constant(rtt_s: float) -> RttFn:
    return lambda seq, t: rtt_s


def jittered(rtt_s: float, spread_s: float, seed: int) -> RttFn:
    rng = random.Random(seed)
    return lambda seq, t: rtt_s + rng.uniform(-spread_s, spread_s)


def alternating(a_s: float, b_s: float) -> RttFn:
    return lambda seq, t: a_s if seq % 2 else b_s


@dataclass
class Net:
    """A scripted network around one PathMonitor, in virtual time."""

    mon: PathMonitor
    rtt: dict[PathId, RttFn] = field(default_factory=dict)
    kill_in_flight: bool = True             # a cut also loses replies already on their way
    now: float = 0.0
    events: list[Event] = field(default_factory=list)
    sent_at: dict[tuple[PathId, int], float] = field(default_factory=dict)
    timeout_at_send: dict[tuple[PathId, int], float] = field(default_factory=dict)
    answered: list[tuple[float, PathId, int]] = field(default_factory=list)
    _heap: list[tuple[float, int, PathId, int]] = field(default_factory=list)
    _tie: int = 0
    _cuts: dict[PathId, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, path_id: PathId, rtt: RttFn, profile: MonitorProfile | None = None) -> None:
        self.rtt[path_id] = rtt
        self.mon.add_path(path_id, self.now, profile=profile)

    def cut(self, path_id: PathId, start: float, end: float = INF) -> None:
        self._cuts.setdefault(path_id, []).append((start, end))

    def is_cut(self, path_id: PathId, t: float) -> bool:
        return any(a <= t < b for a, b in self._cuts.get(path_id, ()))

    def step_to(self, t: float) -> None:
        mon = self.mon
        assert t >= self.now, "virtual time went backwards"
        while self._heap and self._heap[0][0] <= t:
            arrival, _, pid, seq = heapq.heappop(self._heap)
            if self.kill_in_flight and self.is_cut(pid, arrival):
                continue
            if mon.on_probe_reply(pid, seq, None, arrival):
                self.answered.append((arrival, pid, seq))
        mon.on_timer(t)
        self.now = t
        nd = mon.next_deadline()
        assert nd is None or nd > t, f"busy loop: next_deadline {nd} <= now {t}"
        for ev in mon.drain_events():
            assert ev.at == t, f"{ev} decided at {t}"
            self.events.append(ev)
            if isinstance(ev, SendProbe):
                key = (ev.path_id, ev.seq)
                self.sent_at[key] = t
                self.timeout_at_send[key] = mon.current_timeout_s(ev.path_id)
                fn = self.rtt.get(ev.path_id)
                if fn is None or self.is_cut(ev.path_id, t):
                    continue
                rtt = fn(ev.seq, t)
                if rtt is not None:
                    self._tie += 1
                    heapq.heappush(self._heap, (t + rtt, self._tie, ev.path_id, ev.seq))

    def run_until(self, t_end: float) -> None:
        while True:
            nd = self.mon.next_deadline()
            nr = self._heap[0][0] if self._heap else INF
            t = min(INF if nd is None else nd, nr)
            if t > t_end:
                break
            self.step_to(t)
        self.now = t_end

    def changes(self, path_id: PathId = P1, since: float = -INF) -> list[PathStatusChanged]:
        return [e for e in self.events
                if isinstance(e, PathStatusChanged) and e.path_id == path_id and e.at >= since]

    def reports(self, path_id: PathId = P1) -> list[PathMetricsUpdated]:
        return [e for e in self.events if isinstance(e, PathMetricsUpdated) and e.path_id == path_id]

    def sends(self, path_id: PathId = P1, since: float = -INF) -> list[SendProbe]:
        return [e for e in self.events if isinstance(e, SendProbe) and e.path_id == path_id and e.at >= since]


def net_with(profile: MonitorProfile, rtt: RttFn, **kw: object) -> Net:
    net = Net(PathMonitor(profile), **kw)  # type: ignore[arg-type]
    net.add(P1, rtt)
    return net


class Script:
    """Per-probe outcomes by send order after `start`: True answered, False lost; afterwards `rest`."""

    def __init__(self, start: float, outcomes: Iterable[bool], rtt_s: float, rest: bool = True) -> None:
        self.start = start
        self.outcomes = list(outcomes)
        self.rtt_s = rtt_s
        self.rest = rest
        self.i = 0
        self.log: list[tuple[int, float, bool]] = []

    def __call__(self, seq: int, t: float) -> float | None:
        if t < self.start:
            return self.rtt_s
        ok = self.outcomes[self.i] if self.i < len(self.outcomes) else self.rest
        self.i += 1
        self.log.append((seq, t, ok))
        return self.rtt_s if ok else None


# --- coming up --------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [FAST, DEFAULT, MonitorProfile(interval_s=0.05, up_count=5)],
                         ids=["fast", "default", "up_count=5"])
def test_starts_down_and_comes_up_after_exactly_up_count_answers(profile: MonitorProfile) -> None:
    net = net_with(profile, constant(0.001))
    assert net.mon.status(P1) is DOWN
    net.run_until(profile.interval_s * (profile.up_count + 3))
    changes = net.changes()
    assert [(c.old, c.new) for c in changes] == [(DOWN, UP)]
    up = changes[0]
    answers_before = [a for a in net.answered if a[0] <= up.at]
    assert len(answers_before) == profile.up_count
    assert up.at == answers_before[-1][0]          # decided by the up_count-th answer, at its arrival
    assert up.at == pytest.approx((profile.up_count - 1) * profile.interval_s + 0.001)
    assert str(profile.up_count) in up.reason
    assert up.metrics is not None and up.metrics.samples == profile.up_count
    assert up.metrics.loss_pct == 0.0


def test_never_answered_path_stays_down_without_events() -> None:
    net = net_with(FAST, lambda seq, t: None)
    net.run_until(5.0)
    assert net.mon.status(P1) is DOWN
    assert net.changes() == []
    c = net.mon.counters(P1)
    assert c.received == 0 and c.late == 0 and c.timed_out > 0
    # before any RTT is known a probe waits up to a second: those sent in the last second are pending
    assert c.sent - c.timed_out <= 1.0 / FAST.interval_s + 1
    assert all(r.metrics.loss_pct == 100.0 and r.status is DOWN for r in net.reports())


# --- detection --------------------------------------------------------------------------------------

def detection_time(profile: MonitorProfile, rtt_s: float, cut_offset: float, kill_in_flight: bool) -> float:
    """Bring a path up, cut it `cut_offset` after a probe-grid point, return cut → Down (s)."""
    i = profile.interval_s
    net = net_with(profile, constant(rtt_s), kill_in_flight=kill_in_flight)
    warm = 50 * i
    net.run_until(warm)
    assert net.mon.status(P1) is UP
    t_cut = warm + cut_offset
    net.cut(P1, t_cut)
    net.run_until(t_cut + 10 * i)
    downs = [c for c in net.changes(since=t_cut) if c.new is DOWN]
    assert len(downs) == 1, net.changes()
    assert str(profile.detect_multiplier) in downs[0].reason
    assert net.mon.status(P1) is DOWN
    return downs[0].at - t_cut


OFFSETS = [0.0, 0.0005, 0.001, 0.0011, 0.25, 0.5, 0.75, 0.95, 0.9999]   # fractions of the interval


@pytest.mark.parametrize("kill_in_flight", [True, False], ids=["cut-both-ways", "cut-forward"])
@pytest.mark.parametrize("frac", OFFSETS)
def test_fast_profile_detects_a_cut_within_interval_times_multiplier(frac: float, kill_in_flight: bool) -> None:
    i, m, rtt = FAST.interval_s, FAST.detect_multiplier, 0.001
    assert (i, m) == (0.020, 3)
    d = detection_time(FAST, rtt, frac * i, kill_in_flight)
    small = rtt + 0.1 * i        # the RTT itself, plus a margin of a tenth of the interval
    assert (m - 1) * i - 1e-9 <= d <= m * i + small, f"detection {d * 1e3:.2f} ms"


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.7, 0.999])
def test_default_profile_detects_a_cut_within_three_seconds(frac: float) -> None:
    i, m, rtt = DEFAULT.interval_s, DEFAULT.detect_multiplier, 0.001
    assert (i, m) == (1.0, 3)
    d = detection_time(DEFAULT, rtt, frac * i, kill_in_flight=True)
    assert (m - 1) * i - 1e-9 <= d <= m * i + rtt + 0.1 * i, f"detection {d:.3f} s"


def test_fast_profile_worst_case_detection_is_about_60ms() -> None:
    worst = max(detection_time(FAST, 0.001, f * FAST.interval_s, True) for f in OFFSETS)
    assert worst <= 0.060 + 0.003
    assert FAST.detection_time_s == pytest.approx(0.060)
    assert DEFAULT.detection_time_s == 3.0


def test_long_rtt_healthy_path_has_no_false_down_and_detection_adds_the_adaptive_timeout() -> None:
    i = FAST.interval_s
    net = net_with(FAST, jittered(0.040, 0.005, seed=7), kill_in_flight=False)
    net.run_until(20.0)                                   # 1000 probes with 40 ± 5 ms RTT
    assert [(c.old, c.new) for c in net.changes()] == [(DOWN, UP)]
    c = net.mon.counters(P1)
    # the RFC 6298 timeout may still call the odd jitter peak late, but never three in a row
    assert c.timed_out <= 0.01 * c.sent and c.late == c.timed_out and c.unexpected == 0
    assert c.received >= 990
    tau = net.mon.current_timeout_s(P1)
    assert 0.045 <= tau <= 0.100                          # adaptive: above the RTT, below max
    metrics = net.mon.metrics(P1, net.now)
    assert metrics.latency_ms == pytest.approx(40.0, abs=5.0)
    assert metrics.loss_pct == 0.0

    t_cut = 20.0 + 0.37 * i                               # probes sent from here on are lost
    net.cut(P1, t_cut)
    net.run_until(t_cut + 1.0)
    downs = [c for c in net.changes(since=t_cut) if c.new is DOWN]
    assert len(downs) == 1
    lost = net.sends(since=t_cut)[:FAST.detect_multiplier]
    third = (P1, lost[-1].seq)
    # Down exactly when the third unanswered probe's own deadline passes…
    assert downs[0].at == net.sent_at[third] + net.timeout_at_send[third]
    # …so detection ≈ (multiplier − 1)·interval + phase + adaptive timeout
    tau = net.timeout_at_send[third]
    d = downs[0].at - t_cut
    assert 2 * i + tau - 1e-9 <= d <= 3 * i + tau + 1e-9
    assert d > 3 * i                                      # a long RTT really adds itself


@pytest.mark.parametrize(("profile", "rtt_s", "spread_s"), [
    (FAST, 0.001, 0.0005), (FAST, 0.005, 0.004), (FAST, 0.015, 0.010), (FAST, 0.080, 0.020),
    (DEFAULT, 0.001, 0.0), (DEFAULT, 0.030, 0.020), (DEFAULT, 0.600, 0.300),
], ids=lambda v: v.name if isinstance(v, MonitorProfile) else f"{v * 1e3:g}ms")
def test_healthy_jittery_paths_never_go_down(profile: MonitorProfile, rtt_s: float, spread_s: float) -> None:
    net = net_with(profile, jittered(rtt_s, spread_s, seed=11))
    net.run_until(600 * profile.interval_s)
    changes = net.changes()
    assert changes and changes[0].old is DOWN
    assert all(DOWN not in (c.old, c.new) for c in changes[1:])      # slow or jittery is not dead
    c = net.mon.counters(P1)
    assert c.timed_out <= 0.01 * c.sent, c


# --- the first lost probe of a run (ProbeLost) ------------------------------------------------------

def _lost(net: Net, path_id: PathId = P1) -> list[ProbeLost]:
    return [e for e in net.events if isinstance(e, ProbeLost) and e.path_id == path_id]


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9])
def test_a_cut_says_its_first_lost_probe_once_with_its_exact_times(frac: float) -> None:
    net = net_with(FAST, constant(0.004))
    net.run_until(2.0)
    assert _lost(net) == []
    t_cut = 2.0 + frac * FAST.interval_s
    net.cut(P1, t_cut)
    net.run_until(t_cut + 5.0)                  # 250 probes lost in a row: one event
    (lost,) = _lost(net)
    (down,) = [c for c in net.changes(since=t_cut) if c.new is DOWN]
    # the first probe whose reply the cut took: the last one sent before it, or the first one after
    first = min((seq for (pid, seq), t in net.sent_at.items() if pid == P1 and t + 0.004 > t_cut))
    assert lost.seq == first and lost.sent_at == net.sent_at[(P1, first)]
    assert lost.at == pytest.approx(lost.sent_at + net.timeout_at_send[(P1, first)], abs=1e-12)
    assert t_cut <= lost.at <= down.at
    # published before the verdict it led to
    assert net.events.index(lost) < net.events.index(down)
    assert lost.as_dict() == {"kind": "ProbeLost", "at": lost.at, "path_id": "p1", "seq": first,
                              "sent_at": lost.sent_at}


def test_every_run_of_misses_starts_with_one_probe_lost_event() -> None:
    script = Script(2.0, [True, False, False, True, False, True, True, False, False, False, False, True], 0.002)
    net = net_with(FAST, script)
    net.run_until(3.0)
    outcomes = script.log[:12]
    starts = [(seq, t) for k, (seq, t, ok) in enumerate(outcomes) if not ok and outcomes[k - 1][2]]
    assert len(starts) == 3
    assert [(e.seq, e.sent_at) for e in _lost(net)] == starts


def test_a_path_whose_first_probe_is_lost_says_so_once() -> None:
    net = net_with(FAST, lambda seq, t: None)
    net.run_until(3.0)
    (lost,) = _lost(net)
    assert lost.seq == 0 and lost.sent_at == 0.0
    assert lost.at == pytest.approx(max(FAST.interval_s, min(1.0, FAST.max_timeout_s)))   # no RTT known yet


def test_a_late_reply_ends_the_run_and_the_next_miss_starts_another() -> None:
    net = net_with(FAST, constant(0.001))
    net.run_until(1.0)
    mon = net.mon
    net.rtt[P1] = lambda seq, t: None
    nd = mon.next_deadline()
    assert nd is not None
    net.step_to(nd)
    pending = net.sends()[-1]
    net.run_until(net.sent_at[(P1, pending.seq)] + net.timeout_at_send[(P1, pending.seq)])
    assert [e.seq for e in _lost(net)] == [pending.seq]
    assert mon.take_reply(P1, pending.seq, None, net.now + 0.001) is Reply.LATE
    net.run_until(net.now + 0.5)       # nothing answers now: the next timeout starts a new run
    assert len(_lost(net)) == 2 and _lost(net)[1].seq > pending.seq


def test_probe_results_fed_directly_say_the_first_miss_of_a_run_too() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0, schedule=False)
    for k, c in enumerate("GGGLLLGLG"):
        mon.on_probe_result(P1, 0.001 if c == "G" else None, 0.02 * (k + 1))
    lost = [e for e in mon.drain_events() if isinstance(e, ProbeLost)]
    assert [(e.seq, e.at) for e in lost] == [(3, pytest.approx(0.08)), (7, pytest.approx(0.16))]
    assert mon.counters(P1).timed_out == 4


# --- hysteresis -------------------------------------------------------------------------------------

def test_recovery_needs_up_count_consecutive_answers() -> None:
    i = FAST.interval_s
    t0 = 1.0
    # lose 3 (Down), then single answers between losses, then pairs, then 3 in a row (Up)
    pattern = "LLL" + "GL" * 4 + "GGL" * 3 + "GGG" + "G" * 5
    script = Script(t0, [c == "G" for c in pattern], rtt_s=0.001)
    net = net_with(FAST, script)
    net.run_until(t0 + (len(pattern) + 10) * i)
    changes = [(c.old, c.new) for c in net.changes(since=t0)]
    assert changes == [(UP, DOWN), (DOWN, UP)]
    down, up = net.changes(since=t0)
    # the Down came from the third loss; the Up from the third answer of the first GGG run
    seqs = [s for s, _, _ in script.log]
    first_ggg = pattern.index("GGG", 3)
    up_seq = seqs[first_ggg + 2]
    assert up.at == net.sent_at[(P1, up_seq)] + 0.001
    third_loss = seqs[2]
    assert down.at == net.sent_at[(P1, third_loss)] + net.timeout_at_send[(P1, third_loss)]
    # between them the monitor saw answers, but never up_count in a row
    between = [a for a in net.answered if down.at < a[0] < up.at]
    assert len(between) == 4 + 2 * 3 + 2
    assert up.metrics is not None
    assert up.metrics.loss_pct == 0.0 and up.metrics.samples == FAST.up_count   # outage forgotten


def test_on_probe_result_hysteresis_after_liveness_down() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0, schedule=False)
    t = 0.0
    statuses = []
    for c in "GGG" + "LLL" + "GLGGLGLLG" + "GG":
        t += 0.02
        mon.on_probe_result(P1, 0.002 if c == "G" else None, t)
        statuses.append(mon.status(P1))
    assert statuses[2] is UP and statuses[5] is DOWN
    assert all(s is DOWN for s in statuses[5:-1])     # no run of 3 answers until the very last
    assert statuses[-1] is UP


# --- loss and quality -------------------------------------------------------------------------------

def test_loss_based_down_without_three_consecutive_misses() -> None:
    t0 = 2.0
    rng = random.Random(3)
    outcomes: list[bool] = []
    while len(outcomes) < 200:                        # ~60 % loss, never 3 losses in a row
        lose = rng.random() < 0.6 and outcomes[-2:] != [False, False]
        outcomes.append(not lose)
    script = Script(t0, outcomes, rtt_s=0.001)
    net = net_with(FAST, script)
    net.run_until(t0 + 210 * FAST.interval_s)
    after = net.changes(since=t0)
    assert after, "no transition"
    assert after[0].old is UP and after[0].new is DOWN
    assert "loss" in after[0].reason and "consecutive" not in after[0].reason
    assert after[0].metrics is not None and after[0].metrics.loss_pct >= 50.0
    for ch in after:                                  # any recovery needs up_count answers in a row
        if ch.old is DOWN:
            recent = [ok for _, t, ok in script.log if t + 0.001 <= ch.at][-FAST.up_count:]
            assert recent == [True] * FAST.up_count, ch


def test_loss_down_is_not_left_on_a_single_answer() -> None:
    """Hysteresis applies to every Down, also one decided by the loss rule (no flapping at 50 %)."""
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0, schedule=False)
    t = 0.0
    seen: list[PathStatus] = []
    pattern = "GGG" + "LLGLL" + "GL" * 6 + "GG" + "L" + "GGG"
    for c in pattern:
        t += 0.02
        mon.on_probe_result(P1, 0.001 if c == "G" else None, t)
        seen.append(mon.status(P1))
    first_down = seen.index(DOWN, 2)          # after coming up on the third answer
    changes = [e for e in mon.drain_events() if isinstance(e, PathStatusChanged)]
    assert first_down == 7 and "loss" in changes[1].reason     # 4 of 8 lost
    assert all(s is DOWN for s in seen[first_down:-1]), seen
    assert seen[-1] is UP


def test_degraded_and_back() -> None:
    """250 ms ± 40 ms scores 48.3 (Degraded); 180 ms steady scores 82.7 (Up). Default profile: RTT
    steps of a few hundred ms are far below (multiplier − 1) × interval, so they never look like a cut."""
    state = {"rtt": constant(0.001)}
    net = net_with(DEFAULT, lambda seq, t: state["rtt"](seq, t))
    net.run_until(20.0)
    assert net.mon.status(P1) is UP
    state["rtt"] = alternating(0.210, 0.290)           # mean 250 ms, population stdev 40 ms
    net.run_until(50.0)
    assert net.mon.status(P1) is DEGRADED
    m = net.mon.metrics(P1, net.now)
    assert m.latency_ms == pytest.approx(250.0, abs=1e-6)
    assert m.jitter_ms == pytest.approx(40.0, abs=1e-6)
    assert m.loss_pct == 0.0                              # the adaptive timeout has followed the RTT up
    assert m.score == pytest.approx(quality_score(250.0, 40.0, 0.0))
    assert m.score == pytest.approx(48.33, abs=0.01)
    state["rtt"] = constant(0.180)
    net.run_until(70.0)
    assert net.mon.status(P1) is UP
    assert net.mon.metrics(P1, net.now).score == pytest.approx(quality_score(180.0, 0.0, 0.0))
    changes = net.changes()
    assert (changes[0].old, changes[0].new) == (DOWN, UP)
    assert all(c.new is not DOWN and c.old is not DOWN for c in changes[1:])    # slow is not dead
    to_degraded = [c for c in changes if c.new is DEGRADED]
    assert to_degraded and all("score" in c.reason for c in to_degraded)
    assert all(c.metrics is not None and c.metrics.score < 50.0 for c in to_degraded)
    assert (changes[-1].old, changes[-1].new) == (DEGRADED, UP)
    assert 50.0 < changes[-1].at < 70.0


def test_comes_up_degraded() -> None:
    net = net_with(FAST, alternating(0.210, 0.290))
    net.run_until(5.0)
    changes = net.changes()
    # replies of 210 and 290 ms overtake each other, so the first small windows hover around 50
    assert (changes[0].old, changes[0].new) == (DOWN, DEGRADED)
    assert all(DOWN not in (c.old, c.new) for c in changes[1:])
    assert net.mon.status(P1) is DEGRADED
    assert net.mon.counters(P1).timed_out == 0
    assert net.mon.metrics(P1, 5.0).score == pytest.approx(48.33, abs=0.01)


def test_slow_jittery_path_180ms_40ms_is_still_up() -> None:
    net = net_with(FAST, alternating(0.140, 0.220))       # mean 180, stdev 40: score 71
    net.run_until(3.0)
    assert net.mon.status(P1) is UP
    m = net.mon.metrics(P1, net.now)
    assert m.score == pytest.approx(quality_score(180.0, 40.0, 0.0))
    assert m.score == pytest.approx(71.0, abs=0.01)


def test_degraded_by_latency_jitter_and_some_loss() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0, schedule=False)
    t = 0.0
    for k in range(10):
        t += 0.02
        mon.on_probe_result(P1, 0.140 if k % 2 else 0.220, t)
    assert mon.status(P1) is UP
    for _ in range(2):                                   # 2 of 10 lost: 20 %, loss score 0
        t += 0.02
        mon.on_probe_result(P1, None, t)
    assert mon.status(P1) is DEGRADED
    ev = [e for e in mon.drain_events() if isinstance(e, PathStatusChanged)]
    assert (ev[-1].old, ev[-1].new, ev[-1].at) == (UP, DEGRADED, t)


def test_rfc3550_jitter_option() -> None:
    prof = MonitorProfile(interval_s=0.02, jitter="rfc3550")
    mon = PathMonitor(prof)
    mon.add_path(P1, 0.0, schedule=False)
    for k, rtt in enumerate((0.010, 0.012, 0.011, 0.015)):
        mon.on_probe_result(P1, rtt, 0.02 * (k + 1))
    m = mon.metrics(P1, 1.0)
    # RTT differences 2, 1, 4 ms through J += (|D| − J)/16; the window was reset to the last 3 on Up
    j = 0.0
    for d in (2.0, 1.0, 4.0):
        j += (d - j) / 16.0
    assert m.jitter_ms == pytest.approx(j)
    assert m.jitter_ms < 1.0 < m.latency_ms


# --- bad and odd replies ----------------------------------------------------------------------------

def snapshot(mon: PathMonitor, now: float) -> tuple[object, ...]:
    return (mon.status(P1), mon.metrics(P1, now), mon.next_deadline())


def test_bad_replies_are_counted_and_change_nothing() -> None:
    net = net_with(FAST, constant(0.001))
    net.run_until(1.0)
    mon = net.mon
    sends = net.sends()
    # leave one probe outstanding: step to the next send and do not answer it
    net.rtt[P1] = lambda seq, t: None
    nd = mon.next_deadline()
    assert nd is not None
    net.step_to(nd)
    pending = net.sends()[-1]
    assert pending.at == nd
    base_counters = mon.counters(P1)
    before = snapshot(mon, nd)
    timeout_before = mon.current_timeout_s(P1)
    n_events = len(net.events)

    answered_seq = sends[-1].seq
    assert not mon.on_probe_reply(P1, answered_seq, None, nd)          # duplicate
    assert not mon.on_probe_reply(P1, sends[0].seq, None, nd)          # very late duplicate
    assert not mon.on_probe_reply(P1, 10**9, None, nd)                 # never sent
    assert not mon.on_probe_reply(P1, -5, None, nd)                    # never sent
    assert not mon.on_probe_reply(PathId("nope"), pending.seq, None, nd)   # unknown path
    assert not mon.on_probe_reply(P1, pending.seq, nd + 0.5, nd)       # negative RTT
    assert not mon.on_probe_reply(P1, pending.seq, nd - 10.0, nd)      # forged, impossibly early

    c = mon.counters(P1)
    assert c.duplicates == base_counters.duplicates + 2 and c.late == base_counters.late
    assert c.unexpected == base_counters.unexpected + 4
    assert (c.sent, c.received, c.timed_out) == (base_counters.sent, base_counters.received,
                                                 base_counters.timed_out)
    assert snapshot(mon, nd) == before
    assert mon.current_timeout_s(P1) == timeout_before
    assert mon.drain_events() == [] and len(net.events) == n_events
    # the probe is still outstanding: a genuine reply is still accepted
    assert mon.on_probe_reply(P1, pending.seq, None, nd + 0.0015)
    assert mon.counters(P1).received == base_counters.received + 1


def _time_out_one_probe(net: Net) -> SendProbe:
    """Let the next probe of P1 time out (its reply held back); returns it."""
    mon = net.mon
    net.rtt[P1] = lambda seq, t: None
    nd = mon.next_deadline()
    assert nd is not None
    net.step_to(nd)
    probe = net.sends()[-1]
    deadline = net.sent_at[(P1, probe.seq)] + net.timeout_at_send[(P1, probe.seq)]
    net.run_until(deadline)                                    # the probe times out
    assert probe.seq not in mon._paths[P1].outstanding
    return probe


def test_reply_after_timeout_is_late() -> None:
    net = net_with(FAST, constant(0.001))
    net.run_until(1.0)
    mon = net.mon
    before = mon.metrics(P1, net.now)
    judged_before = mon.losses(P1)
    probe = _time_out_one_probe(net)
    timed_out = mon.counters(P1).timed_out
    assert timed_out >= 1
    # timed out (the liveness deadline), but not judged lost: no later probe was answered yet, so
    # nothing a loss would move (the score, the loss rule, an SLA class) sees one
    pending = mon.metrics(P1, net.now)
    assert pending.loss_pct == 0.0 and pending.samples == before.samples
    assert mon.losses(P1) == judged_before
    late_rtt_s = net.now + 0.001 - net.sent_at[(P1, probe.seq)]
    assert mon.take_reply(P1, probe.seq, None, net.now + 0.001) is Reply.LATE
    assert mon.counters(P1).late == 1
    assert mon.counters(P1).timed_out == timed_out     # the timeout happened; the counter says so
    assert mon.losses(P1) == judged_before             # and it was never a loss
    after = mon.metrics(P1, net.now)
    assert after.loss_pct == 0.0
    # the delayed probe is the newest sample of the (full) window: it replaced the oldest 1 ms one
    assert after.latency_ms * after.samples == pytest.approx(before.latency_ms * before.samples - 1.0
                                                             + late_rtt_s * 1000)
    assert mon.status(P1) is PathStatus.UP
    # (a late reply only teaches the RTT estimator; a second copy is a plain duplicate)
    tau = mon.current_timeout_s(P1)
    assert mon.take_reply(P1, probe.seq, None, net.now + 0.002) is Reply.IGNORED
    assert mon.counters(P1).late == 1 and mon.counters(P1).duplicates == 1
    assert mon.current_timeout_s(P1) == tau
    assert mon.metrics(P1, net.now) == after


def test_timed_out_probe_is_lost_once_a_later_one_is_answered() -> None:
    net = net_with(FAST, constant(0.001))
    net.run_until(1.0)
    mon = net.mon
    lost_before, revived_before = mon.losses(P1)
    probe = _time_out_one_probe(net)
    net.rtt[P1] = constant(0.001)
    net.run_until(net.now + FAST.interval_s + 0.0015)         # the next probe is answered
    m = mon.metrics(P1, net.now)
    assert m.loss_pct == pytest.approx(100.0 / m.samples)     # now it is a loss
    assert mon.losses(P1) == (lost_before + 1, revived_before)
    # its reply after that judgement undoes it in the window, and says so (revived)
    assert mon.take_reply(P1, probe.seq, None, net.now + 0.0001) is Reply.LATE
    assert mon.metrics(P1, net.now).loss_pct == 0.0
    assert mon.losses(P1) == (lost_before + 1, revived_before + 1)


def test_pending_probes_are_lost_when_the_path_goes_down() -> None:
    net = net_with(FAST, constant(0.001))
    net.run_until(1.0)
    mon = net.mon
    lost_before = mon.losses(P1)[0]
    net.rtt[P1] = lambda seq, t: None
    net.run_until(1.0 + FAST.detection_time_s + 0.01)
    assert mon.status(P1) is PathStatus.DOWN
    assert mon.losses(P1)[0] >= lost_before + FAST.detect_multiplier
    assert not mon._paths[P1].pending
    downs = [e for e in net.events if isinstance(e, PathStatusChanged) and e.new is PathStatus.DOWN]
    assert downs[-1].metrics.loss_pct >= 100.0 * FAST.detect_multiplier / FAST.window - 1e-9


def test_a_delay_spike_past_the_timeout_is_never_a_loss() -> None:
    """Three probes in a row delayed 5 ms past the (tight) timeout of a steady path, replies in order:
    a run of misses starts and ends (the first late reply teaches the estimator, so the next ones
    may be on time), and not one loss is judged, so an SLA class of loss <= 1 % never breaks."""
    net = net_with(FAST, constant(0.010))
    net.run_until(2.0)
    mon = net.mon
    lost_before = mon.losses(P1)[0]
    tau = mon.current_timeout_s(P1)
    spike = range(mon._paths[P1].next_seq, mon._paths[P1].next_seq + 3)
    net.rtt[P1] = lambda seq, t: tau + 0.005 if seq in spike else 0.010
    seen = 0.0
    t = net.now
    while t < 3.0:
        t += 0.001
        net.run_until(t)
        seen = max(seen, mon.metrics(P1, net.now).loss_pct)
    assert mon.counters(P1).late >= 1 and mon.counters(P1).timed_out >= 1
    assert mon.losses(P1)[0] == lost_before
    assert seen == 0.0
    assert mon.status(P1) is PathStatus.UP


def test_sent_at_from_the_probe_is_used_for_rtt() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0)
    mon.on_timer(0.0)
    (send,) = mon.drain_events()
    assert isinstance(send, SendProbe) and send.seq == 0
    assert mon.on_probe_reply(P1, 0, 0.0005, 0.0035)          # carried send time 0.5 ms later
    assert mon.metrics(P1, 0.0035).latency_ms == pytest.approx(3.0)


# --- reports, timing, events ------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [FAST, DEFAULT, MonitorProfile(interval_s=0.02, report_interval_s=0.25)],
                         ids=["fast", "default", "custom"])
def test_metrics_report_cadence(profile: MonitorProfile) -> None:
    net = Net(PathMonitor(profile))
    net.now = 0.3
    net.add(P1, constant(0.001))
    ri = profile.report_interval_s
    net.run_until(0.3 + 10.0 + ri / 2)
    reports = net.reports()
    assert len(reports) == round(10.0 / ri)
    (up,) = net.changes()
    for k, r in enumerate(reports, start=1):
        assert r.at == pytest.approx(0.3 + k * ri, abs=1e-9)
        assert r.metrics.measured_at == r.at
        assert r.metrics.latency_ms == pytest.approx(1.0)
        assert r.status is (UP if r.at >= up.at else DOWN)
    assert reports[-1].status is UP
    assert FAST.report_interval_s == 0.5 and DEFAULT.report_interval_s == 1.0


def test_no_report_before_any_outcome() -> None:
    mon = PathMonitor(DEFAULT)
    mon.add_path(P1, 0.0, schedule=False)
    for t in (1.0, 2.0, 3.0):
        assert mon.next_deadline() == t
        mon.on_timer(t)
    assert mon.drain_events() == []
    mon.on_probe_result(P1, 0.01, 3.5)
    mon.on_timer(4.0)
    (rep,) = mon.drain_events()
    assert isinstance(rep, PathMetricsUpdated) and rep.at == 4.0


def test_events_carry_the_decision_time() -> None:
    # (the Net harness also asserts ev.at == t for every event it drains)
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0, schedule=False)
    for k, t in enumerate((0.013, 0.027, 0.031)):
        mon.on_probe_result(P1, 0.001, t)
        if k < 2:
            assert mon.drain_events() == []
    (ev,) = mon.drain_events()
    assert isinstance(ev, PathStatusChanged) and ev.at == 0.031 and ev.metrics is not None
    assert ev.metrics.measured_at == 0.031
    for t in (0.1, 0.2, 0.3):
        mon.on_probe_result(P1, None, t)
    lost, ev = mon.drain_events()      # the first miss of the run, said once; then the verdict
    assert isinstance(lost, ProbeLost) and lost.at == lost.sent_at == 0.1 and lost.seq == 3
    assert isinstance(ev, PathStatusChanged) and ev.new is DOWN and ev.at == 0.3
    assert ev.as_dict()["new"] == "down" and ev.as_dict()["kind"] == "PathStatusChanged"


def test_next_deadline_never_before_previous_now() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 0.0)
    mon.add_path(P2, 0.005, profile=DEFAULT)
    assert mon.next_deadline() == 0.0
    mon.on_timer(0.0)
    nd = mon.next_deadline()
    assert nd is not None and nd > 0.0
    # calling early does nothing and does not move the deadline earlier
    mon.on_timer(nd / 2)
    assert mon.next_deadline() == nd
    # a driver that wakes very late: one probe per path, no burst, and the deadline is after now
    mon.drain_events()
    mon.on_timer(100.0)
    sends = [e for e in mon.drain_events() if isinstance(e, SendProbe)]
    assert sorted(e.path_id for e in sends) == [P1, P2]
    nd = mon.next_deadline()
    assert nd is not None and nd > 100.0
    # replies do not pull the deadline before now either
    for e in sends:
        mon.on_probe_reply(e.path_id, e.seq, None, 100.001)
    nd2 = mon.next_deadline()
    assert nd2 is not None and nd2 > 100.0
    # and with no paths there is nothing to wait for
    mon.remove_path(P1)
    mon.remove_path(P2)
    assert mon.next_deadline() is None


def test_first_probe_is_due_at_add_time() -> None:
    mon = PathMonitor(FAST)
    mon.add_path(P1, 5.0)
    assert mon.next_deadline() == 5.0
    mon.on_timer(5.0)
    (ev,) = mon.drain_events()
    assert ev == SendProbe(at=5.0, path_id=P1, seq=0)


def test_remove_path_stops_its_events() -> None:
    net = Net(PathMonitor(FAST))
    net.add(P1, constant(0.001))
    net.add(P2, constant(0.002))
    net.run_until(1.0)
    assert net.mon.status(P1) is UP and net.mon.status(P2) is UP
    net.mon.remove_path(P1)
    assert net.mon.path_ids == [P2]
    n = len(net.events)
    net.run_until(3.0)
    later = net.events[n:]
    assert later and all(getattr(e, "path_id", None) == P2 for e in later)
    with pytest.raises(ConfigError, match="unknown path"):
        net.mon.counters(P1)
    with pytest.raises(ConfigError, match="unknown path"):
        net.mon.on_probe_result(P1, 0.001, 3.0)
    assert not net.mon.on_probe_reply(P1, 0, None, 3.0)
    net.mon.remove_path(P1)                 # idempotent
    net.mon.remove_path(P2)
    assert net.mon.next_deadline() is None
    net.mon.add_path(P1, 3.0)               # can be added again, fresh
    assert net.mon.status(P1) is DOWN and net.mon.next_deadline() == 3.0


def test_duplicate_add_is_refused() -> None:
    mon = PathMonitor()
    mon.add_path(P1, 0.0)
    with pytest.raises(ConfigError, match="already monitored") as exc:
        mon.add_path(P1, 1.0)
    assert exc.value.errors[0][0] == "path_id"


def test_seq_numbers_are_unique_and_increasing_per_path() -> None:
    net = Net(PathMonitor(FAST, start_seq=1000))
    net.add(P1, constant(0.001))
    net.add(P2, constant(0.001))
    net.run_until(1.0)
    for pid in (P1, P2):
        seqs = [e.seq for e in net.sends(pid)]
        assert seqs == list(range(1000, 1000 + len(seqs)))
    c = net.mon.counters(P1)
    assert c.sent == len(net.sends(P1)) and c.sent - 1 <= c.received <= c.sent


# --- profiles ---------------------------------------------------------------------------------------

def fields_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [f for f, _ in exc.value.errors]


def test_builtin_profiles() -> None:
    assert (FAST.interval_s, FAST.detect_multiplier, FAST.up_count, FAST.window) == (0.020, 3, 3, 50)
    assert (DEFAULT.interval_s, DEFAULT.detect_multiplier, DEFAULT.up_count, DEFAULT.window) == (1.0, 3, 3, 10)
    assert MonitorProfile() == DEFAULT
    assert PathMonitor().profile is DEFAULT
    assert MIN_INTERVAL_S == 0.010


@pytest.mark.parametrize(("kwargs", "fields"), [
    ({"interval_s": 0.009}, ["monitor.interval"]),
    ({"interval_s": 0.0}, ["monitor.interval"]),
    ({"interval_s": -1.0}, ["monitor.interval"]),
    ({"interval_s": math.nan}, ["monitor.interval"]),
    ({"detect_multiplier": 0}, ["monitor.detect_multiplier"]),
    ({"up_count": 0}, ["monitor.up_count"]),
    ({"window": 0}, ["monitor.window"]),
    ({"window": 3, "up_count": 4}, ["monitor.up_count"]),
    ({"timeout_s": 0.0}, ["monitor.timeout"]),
    ({"max_timeout_s": -1.0}, ["monitor.max_timeout"]),
    ({"report_interval_s": 0.0}, ["monitor.report_interval"]),
    ({"jitter": "mad"}, ["monitor.jitter"]),
    ({"interval_s": 0.001, "detect_multiplier": 0, "jitter": "x"},
     ["monitor.interval", "monitor.detect_multiplier", "monitor.jitter"]),
])
def test_profile_validation_names_fields(kwargs: dict[str, object], fields: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        MonitorProfile(**kwargs)  # type: ignore[arg-type]
    assert fields_of(exc) == fields


def test_interval_error_message() -> None:
    with pytest.raises(ConfigError, match=r"monitor\.interval: must be at least 10ms, got 5ms"):
        MonitorProfile(interval_s=0.005)


def test_custom_intervals_down_to_10ms_are_accepted() -> None:
    p = MonitorProfile(name="x", interval_s=0.010)
    assert p.detection_time_s == pytest.approx(0.030)
    assert MonitorProfile(interval_s=0.5, detect_multiplier=5).detection_time_s == 2.5


def test_from_config_names() -> None:
    assert MonitorProfile.from_config("fast") is FAST
    assert MonitorProfile.from_config("default") is DEFAULT
    assert MonitorProfile.from_config(FAST) is FAST
    with pytest.raises(ConfigError) as exc:
        MonitorProfile.from_config("turbo", "sites.hq.monitor")
    assert fields_of(exc) == ["sites.hq.monitor"]
    assert "turbo" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        MonitorProfile.from_config(20, "m")
    assert fields_of(exc) == ["m"]


def test_from_config_mappings() -> None:
    p = MonitorProfile.from_config({"profile": "fast", "interval": "20ms", "multiplier": 4})
    assert (p.interval_s, p.detect_multiplier, p.report_interval_s, p.name) == (0.020, 4, 0.5, "custom")
    p = MonitorProfile.from_config({"interval": "50ms", "detect_multiplier": 5, "up_count": 2, "window": 20,
                                    "timeout": "30ms", "max_timeout": "1s", "report_interval": "250ms",
                                    "jitter": "rfc3550"})
    assert p == MonitorProfile(name="custom", interval_s=0.050, detect_multiplier=5, up_count=2, window=20,
                               timeout_s=0.030, max_timeout_s=1.0, report_interval_s=0.25, jitter="rfc3550")
    assert MonitorProfile.from_config({"profile": "fast"}) == FAST
    assert MonitorProfile.from_config({"interval": "10ms"}).interval_s == pytest.approx(0.010)
    assert MonitorProfile.from_config({"interval": 0.25}).interval_s == 0.25


@pytest.mark.parametrize(("value", "fields"), [
    ({"interval": "5ms"}, ["monitor.interval"]),
    ({"interval": "fast"}, ["monitor.interval"]),
    ({"bogus": 1}, ["monitor.bogus"]),
    ({"profile": "turbo"}, ["monitor.profile"]),
    ({"multiplier": "3"}, ["monitor.multiplier"]),
    ({"up_count": True}, ["monitor.up_count"]),
    ({"window": 2.5}, ["monitor.window"]),
    ({"jitter": "mad"}, ["monitor.jitter"]),
    ({"bogus": 1, "interval": "x", "window": "y"}, ["monitor.bogus", "monitor.interval", "monitor.window"]),
    ({"interval": "5ms", "detect_multiplier": 0}, ["monitor.interval", "monitor.detect_multiplier"]),
])
def test_from_config_errors_name_fields(value: dict[str, object], fields: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        MonitorProfile.from_config(value)
    assert sorted(fields_of(exc)) == sorted(fields)


def test_from_config_errors_use_the_callers_field_path() -> None:
    with pytest.raises(ConfigError) as exc:
        MonitorProfile.from_config({"interval": "5ms"}, "sites.hq.monitor")
    assert fields_of(exc) == ["sites.hq.monitor.interval"]
    assert "10ms" in str(exc.value)


def test_from_config_lists_every_error_at_once() -> None:
    """Convention 7: validation lists every error with its path, not only the first kind found."""
    with pytest.raises(ConfigError) as exc:
        MonitorProfile.from_config({"interval": "5ms", "nope": 1, "up_count": 0}, "sites.hq.monitor")
    assert sorted(fields_of(exc)) == ["sites.hq.monitor.interval", "sites.hq.monitor.nope",
                                      "sites.hq.monitor.up_count"]


def test_per_path_profile_and_set_profile() -> None:
    net = Net(PathMonitor(DEFAULT))
    net.add(P1, constant(0.001))
    net.add(P2, constant(0.001), profile=FAST)
    net.run_until(2.0)
    assert len(net.sends(P2)) > 10 * len(net.sends(P1))
    net.mon.set_profile(P1, FAST, net.now)
    n = len(net.sends(P1))
    net.run_until(3.0)
    assert len(net.sends(P1)) - n == pytest.approx(50, abs=2)
