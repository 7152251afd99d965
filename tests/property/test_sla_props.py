"""Hypothesis properties of patronus.core.sla."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronus.core.sla import SlaMonitor, SlaTarget

pytestmark = pytest.mark.property

SETTINGS = settings(max_examples=150, deadline=None)

latency = st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False, allow_infinity=False)
outcome = st.one_of(st.none(), latency)
targets = st.builds(
    SlaTarget,
    latency_ms=st.floats(min_value=0.1, max_value=1000.0),
    loss_pct=st.floats(min_value=0.0, max_value=100.0),
    jitter_ms=st.floats(min_value=0.0, max_value=500.0),
    window_s=st.floats(min_value=1.0, max_value=100.0),
    min_samples=st.integers(min_value=1, max_value=20),
    latency_percentile=st.sampled_from([50, 95, 99]),
)


def monitor_with(target: SlaTarget, outcomes: list[float | None], subject: str = "p") -> SlaMonitor:
    mon = SlaMonitor(target)
    for i, o in enumerate(outcomes):
        mon.record_probe(subject, o, i * 0.01)
    return mon


@SETTINGS
@given(targets, st.lists(outcome, max_size=60), st.floats(min_value=0.0, max_value=200.0))
def test_score_in_range(target: SlaTarget, outcomes: list[float | None], now: float) -> None:
    m = monitor_with(target, outcomes).measure("p", now)
    assert 0.0 <= m.score <= 100.0
    assert m.compliant is None or m.compliant == (m.violations == ())
    if m.compliant is True:
        assert m.score == 100.0


@SETTINGS
@given(st.lists(latency, min_size=1, max_size=200))
def test_percentiles_ordered_and_within_samples(values: list[float]) -> None:
    mon = SlaMonitor()
    for v in values:
        mon.record_latency("p", v, 0.0)
    m = mon.measure("p", 0.0)
    lo, hi = min(values), max(values)
    assert lo <= m.latency_p50_ms <= m.latency_p95_ms <= m.latency_p99_ms <= hi
    assert lo <= m.latency_mean_ms <= hi
    assert m.jitter_ms >= 0.0
    assert {m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms} <= set(values)


@SETTINGS
@given(targets, st.lists(outcome, min_size=1, max_size=60), st.floats(min_value=0.0, max_value=5000.0))
def test_shifting_every_latency_up_never_raises_the_score(
        target: SlaTarget, outcomes: list[float | None], delta: float) -> None:
    # A uniform shift raises every percentile and keeps the jitter (a standard deviation) unchanged.
    before = monitor_with(target, outcomes).measure("p", 1.0).score
    shifted = [None if o is None else o + delta for o in outcomes]
    after = monitor_with(target, shifted).measure("p", 1.0).score
    assert after <= before + 1e-9   # allow rounding in the standard deviation of shifted floats


@SETTINGS
@given(st.lists(st.tuples(latency, latency), min_size=1, max_size=60), st.sampled_from([50, 95, 99]),
       st.floats(min_value=0.1, max_value=1000.0))
def test_raising_latencies_never_raises_the_score_when_jitter_is_within_target(
        pairs: list[tuple[float, float]], pct: int, latency_target: float) -> None:
    # With a jitter target no sample set can exceed, only latency (and loss) move the score.
    target = SlaTarget(latency_ms=latency_target, jitter_ms=1e6, latency_percentile=pct, min_samples=1)
    low = [a for a, _ in pairs]
    high = [a + b for a, b in pairs]
    before = monitor_with(target, list(low)).measure("p", 1.0).score
    after = monitor_with(target, list(high)).measure("p", 1.0).score
    assert after <= before


requirement = st.one_of(st.none(), st.floats(min_value=0.0, max_value=2000.0))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.lists(outcome, max_size=30),
                       max_size=5),
       requirement, st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)), requirement,
       st.integers(min_value=1, max_value=10))
def test_select_best_path_never_violates_a_requirement(
        data: dict[str, list[float | None]], max_latency: float | None, max_loss: float | None,
        max_jitter: float | None, min_samples: int) -> None:
    mon = SlaMonitor(SlaTarget(min_samples=min_samples))
    for subject, outcomes in data.items():
        for i, o in enumerate(outcomes):
            mon.record_probe(subject, o, i * 0.01)
    cands = [*sorted(data), "ghost"]
    best = mon.select_best_path(cands, 1.0, max_latency_ms=max_latency, max_loss_pct=max_loss,
                                max_jitter_ms=max_jitter)
    measured = {s: mon.measure(s, 1.0) for s in cands}

    def qualifies(s: str) -> bool:
        m = measured[s]
        return (m.compliant is not None
                and (max_latency is None or (m.latency_samples > 0 and m.latency_ms <= max_latency))
                and (max_loss is None or (m.packets_sent > 0 and m.loss_pct <= max_loss))
                and (max_jitter is None or (m.latency_samples > 0 and m.jitter_ms <= max_jitter)))

    ok = [s for s in cands if qualifies(s)]
    if best is None:
        assert ok == []
    else:
        assert best in ok
        assert all(measured[s].score <= measured[best].score for s in ok)
        assert all(not (measured[s].score == measured[best].score and s < best) for s in ok)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.5), latency), min_size=1, max_size=400),
       st.floats(min_value=0.5, max_value=20.0), st.floats(min_value=0.0, max_value=1e4))
def test_running_mean_and_jitter_match_two_passes_over_the_window(
        steps: list[tuple[float, float]], window_s: float, offset: float) -> None:
    # The window's mean and standard deviation come from running sums (recomputed now and then); they
    # must agree with the plain two-pass computation over the samples still in the window, however
    # samples come and go, also far from 0 (offset) where a naive Σv² would cancel.
    import math

    mon = SlaMonitor(SlaTarget(window_s=window_s, min_samples=1))
    now = 0.0
    kept: list[tuple[float, float]] = []
    for dt, v in steps:
        now += dt
        mon.record_latency("p", v + offset, now)
        kept.append((now, v + offset))
        if len(kept) % 7 == 0:      # measure along the way too (it may recompute the sums)
            mon.measure("p", now)
    m = mon.measure("p", now)
    vals = [v for t, v in kept if t >= now - window_s]
    mean = math.fsum(vals) / len(vals)
    stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / len(vals))
    spread = max(vals) - min(vals)
    assert m.latency_samples == len(vals)
    assert m.latency_mean_ms == pytest.approx(mean, rel=1e-12, abs=1e-9 * (spread + 1.0))
    assert m.jitter_ms == pytest.approx(stdev, rel=1e-6, abs=1e-6 * (spread + 1.0))
    if spread == 0.0:
        assert m.jitter_ms == 0.0
