"""Unit tests of patronus.core.quality: score pieces, composite, status rule, probe window."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from patronus.core.model import PathStatus
from patronus.core.quality import (
    ProbeWindow,
    jitter_score,
    latency_score,
    loss_score,
    quality_score,
    status_for,
)

pytestmark = pytest.mark.unit

UP, DEGRADED, DOWN = PathStatus.UP, PathStatus.DEGRADED, PathStatus.DOWN


# --- score pieces, at and around every breakpoint ---------------------------------------------------

@pytest.mark.parametrize(("latency_ms", "expected"), [
    (0.0, 100.0),
    (10.0, 100.0),
    (49.999, 100.0),
    (50.0, 100.0),                                  # the linear part starts at 100: continuous at 50
    (50.001, 100.0 - 0.001 / 150.0 * 50.0),
    (80.0, 90.0),
    (125.0, 75.0),
    (170.0, 60.0),
    (199.999, 100.0 - 149.999 / 150.0 * 50.0),
    (200.0, 50.0),                                  # inclusive upper end of the linear part
    (200.001, 0.0),                                 # then a cliff to 0
    (1_000.0, 0.0),
    (math.inf, 0.0),
])
def test_latency_score(latency_ms: float, expected: float) -> None:
    assert latency_score(latency_ms) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("jitter_ms", "expected"), [
    (0.0, 100.0),
    (4.999, 100.0),
    (5.0, 100.0),
    (5.001, 100.0 - 0.001 / 45.0 * 50.0),
    (14.0, 90.0),
    (27.5, 75.0),
    (41.0, 60.0),
    (50.0, 50.0),
    (50.001, 0.0),
    (500.0, 0.0),
    (math.inf, 0.0),
])
def test_jitter_score(jitter_ms: float, expected: float) -> None:
    assert jitter_score(jitter_ms) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("loss_pct", "expected"), [
    (0.0, 100.0),
    (0.0999, 100.0),
    (0.1, 99.5),                                    # the seed's formula is loss/10·50, not (loss−0.1)/…
    (1.0, 95.0),
    (5.0, 75.0),
    (9.999, 100.0 - 9.999 / 10.0 * 50.0),
    (10.0, 50.0),
    (10.001, 0.0),
    (50.0, 0.0),
    (100.0, 0.0),
])
def test_loss_score(loss_pct: float, expected: float) -> None:
    assert loss_score(loss_pct) == pytest.approx(expected, abs=1e-12)


def test_pieces_are_exact_where_the_arithmetic_is() -> None:
    assert latency_score(125.0) == 75.0
    assert jitter_score(27.5) == 75.0
    assert loss_score(5.0) == 75.0
    assert latency_score(200.0) == 50.0
    assert jitter_score(50.0) == 50.0
    assert loss_score(10.0) == 50.0


# --- composite --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("latency_ms", "jitter_ms", "loss_pct", "expected"), [
    (0.0, 0.0, 0.0, 100.0),
    (125.0, 27.5, 5.0, 75.0),
    (200.0, 50.0, 10.0, 50.0),
    (250.0, 60.0, 20.0, 0.0),
    (100.0, 0.0, 10.0, 0.4 * (100.0 - 50.0 / 150.0 * 50.0) + 30.0 + 15.0),     # 78.33…
    (250.0, 0.0, 0.0, 60.0),                      # latency alone can cost 40 points
    (0.0, 60.0, 0.0, 70.0),                       # jitter alone 30
    (0.0, 0.0, 11.0, 70.0),                       # loss alone 30
    (180.0, 40.0, 0.0, 0.4 * (100.0 - 130.0 / 150.0 * 50.0) + 0.3 * (100.0 - 35.0 / 45.0 * 50.0) + 30.0),
    (250.0, 40.0, 0.0, 0.3 * (100.0 - 35.0 / 45.0 * 50.0) + 30.0),             # 48.33…: Degraded
])
def test_quality_score(latency_ms: float, jitter_ms: float, loss_pct: float, expected: float) -> None:
    got = quality_score(latency_ms, jitter_ms, loss_pct)
    assert got == pytest.approx(expected, abs=1e-9)
    assert got == pytest.approx(
        0.4 * latency_score(latency_ms) + 0.3 * jitter_score(jitter_ms) + 0.3 * loss_score(loss_pct), abs=1e-12)


def test_quality_score_extremes_are_exact() -> None:
    assert quality_score(0.0, 0.0, 0.0) == 100.0
    assert quality_score(1e9, 1e9, 100.0) == 0.0


@pytest.mark.parametrize("args", [
    (math.nan, 0.0, 0.0), (0.0, math.nan, 0.0), (0.0, 0.0, math.nan), (math.nan, math.nan, math.nan),
])
def test_quality_score_nan_is_worst(args: tuple[float, float, float]) -> None:
    assert quality_score(*args) == 0.0


# --- status rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("score", "loss_pct", "expected"), [
    (100.0, 0.0, UP),
    (50.0, 0.0, UP),                   # score ≥ 50 → Up
    (49.999, 0.0, DEGRADED),           # score < 50 → Degraded
    (0.0, 0.0, DEGRADED),
    (100.0, 49.999, UP),               # loss just under 50 % is not Down
    (100.0, 50.0, DOWN),               # loss ≥ 50 % → Down, whatever the score
    (0.0, 50.0, DOWN),
    (49.0, 49.9, DEGRADED),
    (70.0, 100.0, DOWN),
])
def test_status_for(score: float, loss_pct: float, expected: PathStatus) -> None:
    assert status_for(score, loss_pct) is expected


def test_status_from_composite_scores() -> None:
    assert status_for(quality_score(180.0, 40.0, 0.0), 0.0) is UP         # 71: a slow jittery path is Up
    assert status_for(quality_score(250.0, 40.0, 0.0), 0.0) is DEGRADED   # 48.3
    assert status_for(quality_score(10.0, 1.0, 20.0), 20.0) is UP         # 70: loss 20 % alone is Up
    assert status_for(quality_score(10.0, 1.0, 60.0), 60.0) is DOWN


# --- probe window -----------------------------------------------------------------------------------

def naive(samples: list[float | None]) -> tuple[float, float, float, int]:
    """(mean, population stdev, loss %, received) recomputed from scratch."""
    got = [x for x in samples if x is not None]
    mean = statistics.fmean(got) if got else 0.0
    sd = statistics.pstdev(got) if len(got) >= 2 else 0.0
    loss = (len(samples) - len(got)) * 100.0 / len(samples) if samples else 0.0
    return mean, sd, loss, len(got)


def assert_matches(w: ProbeWindow, model: list[float | None], tol: float = 1e-9) -> None:
    mean, sd, loss, received = naive(model)
    assert w.samples() == model
    assert len(w) == len(model)
    assert w.received == received
    assert w.loss_pct == pytest.approx(loss, abs=1e-12)
    assert w.mean_ms == pytest.approx(mean, rel=1e-12, abs=tol)
    assert w.stdev_ms == pytest.approx(sd, rel=1e-9, abs=tol)


def test_window_rejects_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProbeWindow(0)


def test_empty_window() -> None:
    w = ProbeWindow()
    assert w.size == 10
    assert (len(w), w.received, w.mean_ms, w.stdev_ms, w.loss_pct) == (0, 0, 0.0, 0.0, 0.0)
    assert w.samples() == []
    assert w.last_rtt_ms is None
    assert w.rfc3550_jitter_ms == 0.0


def test_window_known_values() -> None:
    w = ProbeWindow(10)
    for x in (10.0, 20.0, None, 30.0, 40.0):
        w.add(x)
    assert len(w) == 5
    assert w.received == 4
    assert w.mean_ms == 25.0
    assert w.stdev_ms == pytest.approx(math.sqrt(125.0))     # population: Σ(x−25)²/4 = 500/4
    assert w.loss_pct == 20.0
    assert w.last_rtt_ms == 40.0


def test_single_sample_and_all_lost() -> None:
    w = ProbeWindow(4)
    w.add(7.0)
    assert (w.mean_ms, w.stdev_ms, w.loss_pct) == (7.0, 0.0, 0.0)
    for _ in range(4):
        w.add(None)
    assert (w.received, w.mean_ms, w.stdev_ms, w.loss_pct) == (0, 0.0, 0.0, 100.0)
    assert w.last_rtt_ms == 7.0   # the last received RTT is remembered across losses


def test_identical_samples_have_zero_stdev() -> None:
    w = ProbeWindow(10)
    for _ in range(25):
        w.add(0.1)
    # Σx²/n − mean² cancels to rounding level; √ of that is picoseconds, not exactly 0
    assert w.stdev_ms == pytest.approx(0.0, abs=1e-6)
    assert w.mean_ms == pytest.approx(0.1)


def test_ring_wraps_around() -> None:
    w = ProbeWindow(3)
    model: list[float | None] = []
    for x in (1.0, 2.0, 3.0, 4.0, None, 6.0, 7.0, None, None, None, 11.0):
        w.add(x)
        model = [*model, x][-3:]
        assert_matches(w, model)
    assert w.samples() == [None, None, 11.0]
    assert w.loss_pct == pytest.approx(200.0 / 3.0)


def test_size_one_window() -> None:
    w = ProbeWindow(1)
    w.add(5.0)
    assert (w.samples(), w.mean_ms, w.loss_pct) == ([5.0], 5.0, 0.0)
    w.add(None)
    assert (w.samples(), w.mean_ms, w.loss_pct) == ([None], 0.0, 100.0)
    w.add(9.0)
    assert (w.samples(), w.mean_ms, w.stdev_ms, w.loss_pct) == ([9.0], 9.0, 0.0, 0.0)


@pytest.mark.parametrize("size", [1, 2, 3, 10, 17])
def test_window_matches_naive_recomputation(size: int) -> None:
    rng = random.Random(size)
    w = ProbeWindow(size)
    model: list[float | None] = []
    for _ in range(500):
        x = None if rng.random() < 0.25 else round(rng.uniform(0.0, 300.0), 3)
        w.add(x)
        model = [*model, x][-size:]
        assert_matches(w, model)


def test_keep_last() -> None:
    w = ProbeWindow(5)
    for x in (1.0, None, 3.0, 4.0, None, 6.0, 8.0):      # window: [3, 4, None, 6, 8]
        w.add(x)
    jit, last = w.rfc3550_jitter_ms, w.last_rtt_ms
    w.keep_last(3)
    assert_matches(w, [None, 6.0, 8.0])
    assert (w.rfc3550_jitter_ms, w.last_rtt_ms) == (jit, last)   # the estimator is not replayed
    # the window still works as a ring of the same size afterwards
    model: list[float | None] = [None, 6.0, 8.0]
    for x in (9.0, 10.0, None, 12.0):
        w.add(x)
        model = [*model, x][-5:]
        assert_matches(w, model)
    assert w.size == 5


def test_keep_last_more_than_held_and_zero() -> None:
    w = ProbeWindow(4)
    for x in (2.0, None):
        w.add(x)
    w.keep_last(10)
    assert_matches(w, [2.0, None])
    w.keep_last(0)
    assert_matches(w, [])
    assert w.last_rtt_ms == 2.0


def test_rfc3550_estimator_on_a_known_sequence() -> None:
    # J += (|D| − J)/16 over consecutive received RTTs; a loss does not reset the pairing.
    w = ProbeWindow(10)
    expected = 0.0
    steps: list[tuple[float | None, float | None]] = [
        (10.0, None), (12.0, 2.0), (11.0, 1.0), (15.0, 4.0), (None, None), (13.0, 2.0)]
    for x, d in steps:
        w.add(x)
        if d is not None:
            expected += (d - expected) / 16.0
        assert w.rfc3550_jitter_ms == pytest.approx(expected, abs=1e-15)
    # by hand: 2/16 = 0.125; +(1 − 0.125)/16 = 0.1796875; +(4 − …)/16 = 0.41845703125; +(2 − …)/16
    assert w.rfc3550_jitter_ms == 0.517303466796875
    assert w.last_rtt_ms == 13.0


def test_rfc3550_estimator_converges_to_mean_abs_difference() -> None:
    w = ProbeWindow(10)
    for i in range(400):
        w.add(100.0 if i % 2 else 110.0)    # |D| is always 10
    assert w.rfc3550_jitter_ms == pytest.approx(10.0, rel=1e-9)
    assert w.stdev_ms == pytest.approx(5.0)


def fast_naive(samples: list[float | None]) -> tuple[float, float]:
    """Two-pass mean and population stdev with exact summation (faster than `statistics`)."""
    got = [x for x in samples if x is not None]
    if not got:
        return 0.0, 0.0
    mean = math.fsum(got) / len(got)
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in got) / len(got))


def test_no_drift_after_many_updates() -> None:
    """Over far more updates than the window holds, the error stays at rounding level, not growing."""
    rng = random.Random(42)
    w = ProbeWindow(10)
    model: list[float | None] = []
    worst_mean = worst_sd = 0.0
    for i in range(30_000):
        r = rng.random()
        if r < 0.1:
            x: float | None = None
        elif r < 0.2:
            x = rng.uniform(1_000.0, 2_000.0)     # large values leave residue in Σx² when they leave
        else:
            x = rng.uniform(0.0, 5.0) + (i % 7) * 1e-3
        w.add(x)
        model = [*model, x][-10:]
        mean, sd = fast_naive(model)
        got = [v for v in model if v is not None]
        assert w.received == len(got)
        assert w.loss_pct == pytest.approx((len(model) - len(got)) * 100.0 / len(model), abs=1e-12)
        worst_mean = max(worst_mean, abs(w.mean_ms - mean))
        worst_sd = max(worst_sd, abs(w.stdev_ms - sd))
        if i % 997 == 0:   # spot-check against the textbook definition too
            assert w.stdev_ms == pytest.approx(statistics.pstdev(got) if len(got) > 1 else 0.0, abs=1e-6)
    # milliseconds: both stay many orders of magnitude below a microsecond
    assert worst_mean < 1e-9
    assert worst_sd < 1e-6


def test_periodic_rebuild_removes_rounding_residue() -> None:
    """An absurd outlier leaves residue in the running Σx² after it leaves the window; the periodic
    rebuild (every 4096 updates) must wipe it, so the error cannot persist or accumulate."""
    w = ProbeWindow(10)
    w.add(1e8)
    for i in range(4_200):
        w.add(1.0 + (i % 3) * 0.5)
    got = [x for x in w.samples() if x is not None]
    assert w.stdev_ms == pytest.approx(statistics.pstdev(got), abs=1e-12)
    assert w.mean_ms == pytest.approx(statistics.fmean(got), abs=1e-12)


def test_window_revise_turns_a_held_loss_into_a_sample_only() -> None:
    w = ProbeWindow(4)
    w.add(10.0)
    w.add(None)
    lost = w.last_serial
    w.add(12.0)
    assert w.loss_pct == pytest.approx(100 / 3)
    assert w.revise(lost, 30.0)
    assert w.loss_pct == 0.0 and w.mean_ms == pytest.approx(52 / 3)
    assert not w.revise(lost, 30.0)                  # no longer a loss
    w.add(None)
    gone = w.last_serial
    for _ in range(4):
        w.add(11.0)                                  # the loss has left the window
    assert not w.revise(gone, 30.0)
    assert w.samples() == [11.0] * 4
    w.add(None)
    kept = w.last_serial
    w.keep_last(2)                                   # re-laid out: old serials mean nothing now
    assert not w.revise(kept, 30.0)
    assert w.samples() == [11.0, None]
