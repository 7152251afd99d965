"""Hypothesis properties of patronus.core.quality and the liveness rules of patronus.core.monitor."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from patronus.core.events import PathStatusChanged, SendProbe
from patronus.core.model import PathId, PathStatus
from patronus.core.monitor import UP_HYSTERESIS, UP_SCORE, MonitorProfile, PathMonitor
from patronus.core.quality import (
    ProbeWindow,
    jitter_score,
    latency_score,
    loss_score,
    quality_score,
    status_for,
)

pytestmark = pytest.mark.property

SETTINGS = settings(max_examples=300, deadline=None)
FEW = settings(max_examples=150, deadline=None)

UP, DEGRADED, DOWN = PathStatus.UP, PathStatus.DEGRADED, PathStatus.DOWN
P = PathId("p")

metric = st.one_of(st.floats(min_value=-10.0, max_value=1e6), st.just(math.inf))
latency = st.one_of(metric, st.sampled_from([49.999, 50.0, 125.0, 199.999, 200.0, 200.001]))
jitter = st.one_of(metric, st.sampled_from([4.999, 5.0, 27.5, 49.999, 50.0, 50.001]))
loss = st.one_of(st.floats(min_value=0.0, max_value=100.0),
                 st.sampled_from([0.0999, 0.1, 5.0, 9.999, 10.0, 10.001, 49.999, 50.0]))


# --- score ------------------------------------------------------------------------------------------

@SETTINGS
@given(latency, jitter, loss)
def test_score_is_in_range(latency_ms: float, jitter_ms: float, loss_pct: float) -> None:
    s = quality_score(latency_ms, jitter_ms, loss_pct)
    assert 0.0 <= s <= 100.0
    for piece in (latency_score(latency_ms), jitter_score(jitter_ms), loss_score(loss_pct)):
        assert 0.0 <= piece <= 100.0


@SETTINGS
@given(st.one_of(st.floats(), latency), st.one_of(st.floats(), jitter), st.one_of(st.floats(), loss))
def test_score_is_in_range_for_any_float(latency_ms: float, jitter_ms: float, loss_pct: float) -> None:
    s = quality_score(latency_ms, jitter_ms, loss_pct)
    assert 0.0 <= s <= 100.0                       # NaN and ±inf included
    if any(map(math.isnan, (latency_ms, jitter_ms, loss_pct))):
        assert s == 0.0                            # unknown counts as worst


def ordered(a: float, b: float) -> tuple[float, float]:
    return (a, b) if a <= b else (b, a)


@SETTINGS
@given(latency, latency, jitter, loss)
def test_score_never_rises_with_latency(a: float, b: float, jitter_ms: float, loss_pct: float) -> None:
    lo, hi = ordered(a, b)
    assert latency_score(hi) <= latency_score(lo)
    assert quality_score(hi, jitter_ms, loss_pct) <= quality_score(lo, jitter_ms, loss_pct)


@SETTINGS
@given(jitter, jitter, latency, loss)
def test_score_never_rises_with_jitter(a: float, b: float, latency_ms: float, loss_pct: float) -> None:
    lo, hi = ordered(a, b)
    assert jitter_score(hi) <= jitter_score(lo)
    assert quality_score(latency_ms, hi, loss_pct) <= quality_score(latency_ms, lo, loss_pct)


@SETTINGS
@given(loss, loss, latency, jitter)
def test_score_never_rises_with_loss(a: float, b: float, latency_ms: float, jitter_ms: float) -> None:
    lo, hi = ordered(a, b)
    assert loss_score(hi) <= loss_score(lo)
    assert quality_score(latency_ms, jitter_ms, hi) <= quality_score(latency_ms, jitter_ms, lo)


@SETTINGS
@given(latency, jitter, loss, st.floats(min_value=0.0, max_value=1e3), st.sampled_from(["l", "j", "p"]))
def test_raising_one_metric_by_any_amount_never_helps(latency_ms: float, jitter_ms: float, loss_pct: float,
                                                      delta: float, which: str) -> None:
    base = quality_score(latency_ms, jitter_ms, loss_pct)
    if which == "l":
        worse = quality_score(latency_ms + delta, jitter_ms, loss_pct)
    elif which == "j":
        worse = quality_score(latency_ms, jitter_ms + delta, loss_pct)
    else:
        worse = quality_score(latency_ms, jitter_ms, min(100.0, loss_pct + delta))
    assert worse <= base


# --- status rule ------------------------------------------------------------------------------------

@SETTINGS
@given(st.floats(min_value=0.0, max_value=100.0), st.floats(min_value=0.0, max_value=100.0))
def test_status_follows_its_rule(score: float, loss_pct: float) -> None:
    s = status_for(score, loss_pct)
    assert (s is DOWN) == (loss_pct >= 50.0)
    assert (s is DEGRADED) == (loss_pct < 50.0 and score < 50.0)
    assert (s is UP) == (loss_pct < 50.0 and score >= 50.0)


@SETTINGS
@given(latency, jitter, loss, loss)
def test_status_never_improves_with_more_loss(latency_ms: float, jitter_ms: float, a: float, b: float) -> None:
    lo, hi = ordered(a, b)
    s_lo = status_for(quality_score(latency_ms, jitter_ms, lo), lo)
    s_hi = status_for(quality_score(latency_ms, jitter_ms, hi), hi)
    assert s_hi.rank >= s_lo.rank


# --- probe window vs a naive model ------------------------------------------------------------------

rtt_ms = st.one_of(st.floats(min_value=0.0, max_value=5_000.0),
                   st.sampled_from([0.0, 0.1, 1.0, 20.0, 1_000.0]))
op = st.one_of(st.none(), rtt_ms, st.tuples(st.just("keep"), st.integers(min_value=0, max_value=12)))


@SETTINGS
@given(st.integers(min_value=1, max_value=12), st.lists(op, max_size=120))
def test_window_matches_naive_model(size: int, ops: list[object]) -> None:
    w = ProbeWindow(size)
    model: list[float | None] = []
    last: float | None = None
    j = 0.0
    biggest = 1.0
    for o in ops:
        if isinstance(o, tuple):
            k = o[1]
            w.keep_last(k)
            model = model[-k:] if k > 0 else []
        else:
            x: float | None = o  # type: ignore[assignment]
            w.add(x)
            model = [*model, x][-size:]
            if x is not None:
                if last is not None:
                    j += (abs(x - last) - j) / 16.0
                last = x
                biggest = max(biggest, x)
        got = [x for x in model if x is not None]
        assert w.samples() == model
        assert len(w) == len(model) and w.received == len(got)
        assert w.loss_pct == ((len(model) - len(got)) * 100.0 / len(model) if model else 0.0)
        assert w.mean_ms == pytest.approx(statistics.fmean(got) if got else 0.0, rel=1e-12, abs=1e-12 * biggest)
        sd = statistics.pstdev(got) if len(got) > 1 else 0.0
        # running Σx, Σx² cancel to rounding: compare variances at the scale of the largest value seen
        assert w.stdev_ms ** 2 == pytest.approx(sd ** 2, rel=1e-9, abs=1e-12 * biggest ** 2)
        assert w.stdev_ms >= 0.0
        assert w.last_rtt_ms == last
        assert w.rfc3550_jitter_ms == pytest.approx(j, rel=1e-12, abs=1e-12)


# --- monitor liveness under arbitrary outcome sequences ---------------------------------------------

profiles = st.builds(
    lambda m, w, u_frac: MonitorProfile(name="p", interval_s=0.02, detect_multiplier=m, window=w,
                                        up_count=max(1, min(w, round(u_frac * w)))),
    st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=12),
    st.floats(min_value=0.0, max_value=1.0),
)
outcome = st.one_of(st.none(), st.sampled_from([0.001, 0.030, 0.120, 0.260]),
                    st.floats(min_value=0.0, max_value=2.0))


@SETTINGS
@given(profiles, st.lists(outcome, max_size=150))
def test_liveness_and_hysteresis(profile: MonitorProfile, outcomes: list[float | None]) -> None:
    m, u = profile.detect_multiplier, profile.up_count
    mon = PathMonitor(profile)
    mon.add_path(P, 0.0, schedule=False)
    history: list[float | None] = []
    status = DOWN
    been_up = False
    t = 0.0
    for o in outcomes:
        t += 0.02
        mon.on_probe_result(P, o, t)
        history.append(o)
        new = mon.status(P)
        events = [e for e in mon.drain_events() if isinstance(e, PathStatusChanged)]
        # a status change is always announced, once, at the time it was decided
        if new is status:
            assert events == []
        else:
            assert [(e.old, e.new, e.at) for e in events] == [(status, new, t)]
        # Down whenever the last `multiplier` outcomes were all losses (once the path has been up)
        if been_up and len(history) >= m and all(x is None for x in history[-m:]):
            assert new is DOWN, history
        # leaving Down (whatever put it there) needs `up_count` consecutive answers
        if status is DOWN and new is not DOWN:
            assert len(history) >= u and all(x is not None for x in history[-u:]), history
        # while not Down, the status is the seed's rule over the window, except that a Degraded path
        # stays Degraded until its score clears the line by the hysteresis
        if new is not DOWN:
            met = mon.metrics(P, t)
            rule = status_for(met.score, met.loss_pct)
            if status is DEGRADED and rule is UP and met.score < UP_SCORE + UP_HYSTERESIS:
                assert new is DEGRADED
            else:
                assert new is rule
            assert met.score == pytest.approx(quality_score(met.latency_ms, met.jitter_ms, met.loss_pct))
        been_up = been_up or new is not DOWN
        status = new
    c = mon.counters(P)
    assert c.sent == len(outcomes) == c.received + c.timed_out


# --- the scheduled monitor as a state machine -------------------------------------------------------

class ScheduledMonitor(RuleBasedStateMachine):
    """Drive a PathMonitor through its own schedule: the driver advances to the next deadline and the
    network answers (in time or late), drops, duplicates or forges replies. The monitor's status must
    follow the probe outcomes in the order it settled them."""

    LOST, GOOD, LATE = "lost", "good", "late"

    @initialize(fast=st.booleans(), m=st.integers(min_value=1, max_value=4),
                u=st.integers(min_value=1, max_value=4))
    def setup(self, fast: bool, m: int, u: int) -> None:
        self.profile = MonitorProfile(name="sm", interval_s=0.02 if fast else 0.5, detect_multiplier=m,
                                      up_count=u, report_interval_s=0.25)
        self.mon = PathMonitor(self.profile)
        self.mon.add_path(P, 0.0)
        self.now = 0.0
        self.pending: list[int] = []          # seqs sent and neither answered nor dropped
        self.answered: list[int] = []
        self.status = DOWN
        self.been_up = False
        self.settled: list[str] = []          # outcomes in the order the monitor settled them

    def _drain(self) -> None:
        m, u = self.profile.detect_multiplier, self.profile.up_count
        for ev in self.mon.drain_events():
            assert ev.at == self.now
            if isinstance(ev, SendProbe):
                self.pending.append(ev.seq)
            elif isinstance(ev, PathStatusChanged):
                assert ev.old is self.status
                if ev.old is DOWN:   # a late reply settles nothing new: it only ends a run of misses
                    assert [x for x in self.settled if x != self.LATE][-u:] == [self.GOOD] * u, self.settled
                self.status = ev.new
                self.been_up = self.been_up or ev.new is not DOWN
        assert self.mon.status(P) is self.status
        if self.been_up and self.settled[-m:] == [self.LOST] * m:
            assert self.status is DOWN, self.settled

    @rule()
    def tick(self) -> None:
        nd = self.mon.next_deadline()
        assert nd is not None
        self.now = max(self.now, nd)          # a reply may have been handled after a deadline passed
        before = self.mon.counters(P).timed_out
        self.mon.on_timer(self.now)
        self.settled += [self.LOST] * (self.mon.counters(P).timed_out - before)
        self._drain()
        nd2 = self.mon.next_deadline()
        assert nd2 is not None and nd2 > self.now          # never a busy loop

    @precondition(lambda self: bool(self.pending))
    @rule(delay_frac=st.floats(min_value=0.0, max_value=0.5), which=st.integers(min_value=0, max_value=3))
    def reply(self, delay_frac: float, which: int) -> None:
        seq = self.pending.pop(min(which, len(self.pending) - 1))
        before = self.mon.counters(P)
        self.now += delay_frac * self.profile.interval_s
        ok = self.mon.on_probe_reply(P, seq, None, self.now)
        after = self.mon.counters(P)
        assert (after.received + after.late + after.duplicates
                == before.received + before.late + before.duplicates + 1)
        assert after.unexpected == before.unexpected
        assert ok == (after.received == before.received + 1)
        if ok:
            self.answered.append(seq)
        self.settled.append(self.GOOD if ok else self.LATE)
        self._drain()

    @precondition(lambda self: bool(self.answered))
    @rule()
    def duplicate(self) -> None:
        before = (self.mon.counters(P), self.mon.metrics(P, self.now), self.mon.status(P))
        assert not self.mon.on_probe_reply(P, self.answered[-1], None, self.now)
        assert self.mon.counters(P).duplicates == before[0].duplicates + 1
        assert self.mon.counters(P).late == before[0].late
        assert (self.mon.metrics(P, self.now), self.mon.status(P)) == before[1:]
        assert self.mon.drain_events() == []

    @rule(seq=st.integers(min_value=10**6, max_value=10**7))
    def forged(self, seq: int) -> None:
        before = self.mon.counters(P)
        assert not self.mon.on_probe_reply(P, seq, None, self.now)
        assert self.mon.counters(P).unexpected == before.unexpected + 1
        assert self.mon.drain_events() == []

    @precondition(lambda self: bool(self.pending))
    @rule()
    def drop(self) -> None:
        self.pending.pop(0)

    @invariant()
    def counters_add_up(self) -> None:
        if hasattr(self, "mon"):
            c = self.mon.counters(P)
            assert c.received + c.timed_out <= c.sent
            assert c.sent - c.received - c.timed_out <= len(self.pending) + 1 + c.sent   # sanity
            assert self.mon.status(P) is self.status


ScheduledMonitor.TestCase.settings = settings(max_examples=80, stateful_step_count=80, deadline=None)
test_scheduled_monitor = ScheduledMonitor.TestCase
