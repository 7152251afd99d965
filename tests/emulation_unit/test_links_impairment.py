"""ImpairmentModel in virtual time: statistics with fixed seeds, rate and queue arithmetic, runtime
changes, determinism, validation, and the netem distribution tables."""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import pytest

from emulation.links.impairment import (
    DIST_TABLE_SIZE,
    Action,
    GilbertElliott,
    Impairment,
    ImpairmentModel,
    dist_table,
)
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit


def binomial_99(n: int, p: float) -> tuple[float, float]:
    """99 % interval of a Binomial(n, p) count (normal approximation, z = 2.576)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 2.576 * sd, n * p + 2.576 * sd


def feed(model: ImpairmentModel, n: int, interval_s: float, size: int = 100, t0: float = 0.0
         ) -> list[tuple[float, list[tuple[float, Action]]]]:
    return [(t0 + i * interval_s, model.on_packet(t0 + i * interval_s, size)) for i in range(n)]


def delays(results: list[tuple[float, list[tuple[float, Action]]]]) -> list[float]:
    return [out[0][0] - t for t, out in results if out]


# -- delay and jitter --------------------------------------------------------------------------------

def test_constant_delay_is_exact() -> None:
    m = ImpairmentModel(Impairment(delay_s=0.02), seed=1)
    d = delays(feed(m, 1000, 0.001))
    assert all(abs(x - 0.02) < 1e-12 for x in d)


def test_normal_jitter_mean_and_stdev() -> None:
    # packets 1 s apart, so the in-order clamp never touches them
    m = ImpairmentModel(Impairment(delay_s=0.020, jitter_s=0.005, jitter_distribution="normal"), seed=7)
    d = delays(feed(m, 20000, 1.0))
    n = len(d)
    assert n == 20000
    assert abs(statistics.fmean(d) - 0.020) < 3 * 0.005 / math.sqrt(n)
    assert statistics.pstdev(d) == pytest.approx(0.005, rel=0.03)
    # the table's range: within 4 sigma
    assert min(d) >= 0.020 - 4.01 * 0.005 and max(d) <= 0.020 + 4.01 * 0.005


def test_uniform_jitter_is_netem_default_plus_minus() -> None:
    m = ImpairmentModel(Impairment(delay_s=0.050, jitter_s=0.010, jitter_distribution="uniform"), seed=3)
    d = delays(feed(m, 20000, 1.0))
    assert min(d) >= 0.040 and max(d) <= 0.060
    assert statistics.pstdev(d) == pytest.approx(0.010 / math.sqrt(3), rel=0.03)
    assert statistics.fmean(d) == pytest.approx(0.050, abs=0.0003)


def test_pareto_jitter_is_right_skewed() -> None:
    m = ImpairmentModel(Impairment(delay_s=0.100, jitter_s=0.010, jitter_distribution="pareto"), seed=3)
    d = delays(feed(m, 20000, 1.0))
    j = [x - 0.100 for x in d]
    assert statistics.median(j) < statistics.fmean(j) < 0.001
    assert max(j) > 0.030                      # a long right tail...
    assert min(j) > -0.0068                    # ...and a short left one (-2/3 sigma)


def test_negative_jitter_never_releases_before_arrival() -> None:
    m = ImpairmentModel(Impairment(delay_s=0.001, jitter_s=0.010, jitter_distribution="uniform"), seed=5)
    for t, out in feed(m, 5000, 1.0):
        assert out and out[0][0] >= t


def test_jitter_keeps_packets_in_order() -> None:
    # 1 ms apart with 5 ms of jitter: many would overtake; none may
    m = ImpairmentModel(Impairment(delay_s=0.020, jitter_s=0.005), seed=11)
    rel = [out[0][0] for _, out in feed(m, 5000, 0.001)]
    assert all(b >= a for a, b in itertools.pairwise(rel))
    assert m.reordered == 0


# -- loss ---------------------------------------------------------------------------------------------

def test_random_loss_within_binomial_interval() -> None:
    n = 20000
    m = ImpairmentModel(Impairment(loss=0.10), seed=42)
    res = feed(m, n, 0.001)
    lost = sum(1 for _, out in res if not out)
    lo, hi = binomial_99(n, 0.10)
    assert lo <= lost <= hi
    assert m.dropped["loss"] == lost
    assert m.packets_in == n == m.delivered + sum(m.dropped.values())


def test_gilbert_elliott_burst_length_and_ratio() -> None:
    ge = GilbertElliott(p=0.01, r=0.25)          # simple Gilbert: h=1, k=0
    m = ImpairmentModel(Impairment(loss_model=ge), seed=9)
    lost_flags = [not out for _, out in feed(m, 200000, 0.001)]
    bursts, run = [], 0
    for lost in lost_flags:
        if lost:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    assert statistics.fmean(bursts) == pytest.approx(1 / ge.r, rel=0.06)
    assert sum(lost_flags) / len(lost_flags) == pytest.approx(ge.loss_ratio, rel=0.08)
    assert m.dropped["ge_loss"] == sum(lost_flags) and m.dropped["loss"] == 0
    # bursty: far more back-to-back losses than independent loss of the same ratio would give
    pairs = sum(1 for a, b in itertools.pairwise(lost_flags) if a and b)
    assert pairs > 10 * ge.loss_ratio**2 * len(lost_flags)


def test_gilbert_elliott_losses_in_good_and_partial_in_bad() -> None:
    ge = GilbertElliott(p=0.05, r=0.20, h=0.5, k=0.01)
    m = ImpairmentModel(Impairment(loss_model=ge), seed=2)
    n = 200000
    lost = sum(1 for _, out in feed(m, n, 0.001) if not out)
    assert lost / n == pytest.approx(ge.loss_ratio, rel=0.06)


# -- rate and queue -------------------------------------------------------------------------------------

def test_rate_spaces_departures_by_serialization_time() -> None:
    # 1 Mbit/s, 1250-byte packets: 10 ms each; a burst of 50 at t=0 leaves at 10, 20, ... 500 ms
    m = ImpairmentModel(Impairment(rate_bps=1e6), seed=0)
    rel = [m.on_packet(0.0, 1250)[0][0] for _ in range(50)]
    assert rel == pytest.approx([0.01 * (i + 1) for i in range(50)])
    assert m.queue_high_water == 50


def test_rate_idle_link_restarts_from_now() -> None:
    m = ImpairmentModel(Impairment(rate_bps=8e6, delay_s=0.005), seed=0)
    assert m.on_packet(0.0, 1000)[0][0] == pytest.approx(0.001 + 0.005)
    assert m.on_packet(10.0, 500)[0][0] == pytest.approx(10.0 + 0.0005 + 0.005)


def test_queue_limit_drops_and_recovers() -> None:
    m = ImpairmentModel(Impairment(rate_bps=1e6, queue_limit=10), seed=0)
    outs = [m.on_packet(0.0, 1250) for _ in range(25)]
    assert sum(1 for o in outs if o) == 10
    assert m.dropped["queue_full"] == 15 and m.queue_high_water == 10
    # 35 ms later three have left: three more fit
    later = [m.on_packet(0.035, 1250) for _ in range(5)]
    assert sum(1 for o in later if o) == 3
    assert later[0][0][0] == pytest.approx(0.11)


# -- reorder, duplicate, corrupt, cut -----------------------------------------------------------------

def test_reorder_picks_jump_the_queue() -> None:
    n = 20000
    m = ImpairmentModel(Impairment(delay_s=0.010, reorder=0.25), seed=4)
    res = feed(m, n, 0.001)
    picks = [(t, out[0][0]) for t, out in res if out[0][0] == t]
    lo, hi = binomial_99(n, 0.25)
    assert lo <= len(picks) <= hi
    # a pick counts as reordered when it overtakes a packet still held
    overtakes, last = 0, -1.0
    for t, out in res:
        if out[0][0] == t:
            overtakes += last > t
        else:
            last = out[0][0]
    assert m.reordered == overtakes > 0.9 * len(picks)
    held = [out[0][0] for t, out in res if out[0][0] != t]
    assert all(b >= a for a, b in itertools.pairwise(held))


def test_duplicate_rate_and_copies() -> None:
    n = 20000
    m = ImpairmentModel(Impairment(duplicate=0.05, delay_s=0.001), seed=8)
    res = feed(m, n, 0.001)
    dups = [out for _, out in res if len(out) == 2]
    lo, hi = binomial_99(n, 0.05)
    assert lo <= len(dups) <= hi and m.duplicated == len(dups)
    assert all(o[1][1] == Action.DUPLICATE and o[1][0] >= o[0][0] for o in dups)


def test_duplicate_and_loss_interact_as_netem() -> None:
    # duplicate 100 %, loss 50 %: the loss event takes one copy, the clone meets the loss again
    n = 20000
    m = ImpairmentModel(Impairment(duplicate=1.0, loss=0.5), seed=8)
    res = feed(m, n, 0.001)
    assert all(len(out) in (1, 2) for _, out in res)              # never both lost at once
    two = sum(1 for _, out in res if len(out) == 2)
    lo, hi = binomial_99(n, 0.25)                                  # neither loss event hit
    assert lo <= two <= hi
    assert m.packets_in == m.delivered + sum(m.dropped.values())


def test_corrupt_rate_and_pick() -> None:
    n = 20000
    m = ImpairmentModel(Impairment(corrupt=0.02), seed=6)
    res = feed(m, n, 0.001)
    bad = sum(1 for _, out in res if out[0][1] & Action.DELIVER_CORRUPTED)
    lo, hi = binomial_99(n, 0.02)
    assert lo <= bad <= hi and m.corrupted == bad
    picks = [m.pick_corruption(100) for _ in range(2000)]
    assert {i for i, _ in picks} == set(range(100))
    assert {mask for _, mask in picks} == {1 << b for b in range(8)}


def test_cut_drops_everything() -> None:
    m = ImpairmentModel(Impairment(cut=True, delay_s=0.01), seed=0)
    assert all(not out for _, out in feed(m, 1000, 0.001))
    assert m.dropped["cut"] == 1000 and m.delivered == 0


# -- runtime changes, fast path, determinism ---------------------------------------------------------

def test_set_takes_effect_for_the_next_packet() -> None:
    m = ImpairmentModel(Impairment(), seed=0)
    assert m.on_packet(1.0, 100) == [(1.0, Action.DELIVER)]
    m.set(Impairment(delay_s=0.05))
    ((at, action),) = m.on_packet(1.001, 100)
    assert at == pytest.approx(1.051) and action == Action.DELIVER
    m.set(Impairment(cut=True))
    assert m.on_packet(1.002, 100) == []
    m.set(Impairment())
    # still in order behind the delayed packet, then straight through once it has left
    assert m.on_packet(1.003, 100)[0][0] == pytest.approx(1.051)
    assert not m.passthrough(1.004)
    assert m.passthrough(1.06)
    assert m.counters()["dropped"]["cut"] == 1 and m.packets_in == 5 and m.delivered == 4


def test_same_seed_same_decisions_and_other_seed_differs() -> None:
    imp = Impairment(delay_s=0.02, jitter_s=0.004, loss=0.1, duplicate=0.05, reorder=0.1, corrupt=0.05)
    a = feed(ImpairmentModel(imp, seed=123), 3000, 0.001)
    b = feed(ImpairmentModel(imp, seed=123), 3000, 0.001)
    c = feed(ImpairmentModel(imp, seed=124), 3000, 0.001)
    assert a == b
    assert a != c


def test_loss_pattern_does_not_depend_on_jitter() -> None:
    lost_a = [not o for _, o in feed(ImpairmentModel(Impairment(loss=0.2), seed=5), 2000, 0.001)]
    lost_b = [not o for _, o in feed(ImpairmentModel(Impairment(loss=0.2, jitter_s=0.003, delay_s=0.01), seed=5),
                                     2000, 0.001)]
    assert lost_a == lost_b


# -- validation ---------------------------------------------------------------------------------------

def test_validation_lists_every_error_with_its_field() -> None:
    with pytest.raises(ConfigError) as ei:
        Impairment(delay_s=-1, loss=1.5, jitter_distribution="gamma", queue_limit=0,  # type: ignore[arg-type]
                   duplicate=float("nan"), rate_bps=-5)
    fields = {f for f, _ in ei.value.errors}
    assert fields == {"delay_s", "loss", "jitter_distribution", "queue_limit", "duplicate", "rate_bps"}


def test_validation_rules_between_fields() -> None:
    with pytest.raises(ConfigError, match="reorder"):
        Impairment(reorder=0.1)
    with pytest.raises(ConfigError, match="exclusive"):
        Impairment(loss=0.1, loss_model=GilbertElliott(0.1, 0.5))
    with pytest.raises(ConfigError, match=r"loss_model\.r"):
        GilbertElliott(p=0.1, r=2)


def test_from_dict_round_trip_and_errors() -> None:
    imp = Impairment(delay_s=0.02, jitter_s=0.001, jitter_distribution="pareto", loss_model=GilbertElliott(0.1, 0.3),
                     rate_bps=1e6, queue_limit=50, duplicate=0.01, reorder=0.02, corrupt=0.03, cut=True)
    assert Impairment.from_dict(imp.to_dict()) == imp
    with pytest.raises(ConfigError) as ei:
        Impairment.from_dict({"delay": "20ms", "loss": 3, "loss_model": {"p": 0.1, "x": 1}}, "set.impairment")
    fields = {f for f, _ in ei.value.errors}
    assert fields == {"set.impairment.delay", "set.impairment.loss", "set.impairment.loss_model.x",
                      "set.impairment.loss_model.r"}


def test_identity() -> None:
    assert Impairment().is_identity
    assert not Impairment(queue_limit=5, rate_bps=1).is_identity
    assert Impairment(queue_limit=5).is_identity


# -- distribution tables -------------------------------------------------------------------------------

TC_LIB = [Path("/usr/lib/x86_64-linux-gnu/tc"), Path("/usr/lib/tc"), Path("/usr/lib64/tc"), Path("/usr/share/tc")]


@pytest.mark.parametrize("name", ["normal", "pareto", "paretonormal"])
def test_tables_are_iproute2s(name: str) -> None:
    table = dist_table(name)
    assert len(table) == DIST_TABLE_SIZE and all(-32768 <= v <= 32767 for v in table)
    shipped = next((d / f"{name}.dist" for d in TC_LIB if (d / f"{name}.dist").exists()), None)
    if shipped is None:
        pytest.skip(f"iproute2's {name}.dist is not installed here")
    ref = [int(v) for line in shipped.read_text().splitlines() if not line.startswith("#") for v in line.split()]
    assert len(ref) == len(table)
    assert max(abs(a - b) for a, b in zip(ref, table, strict=True)) <= 1


def test_normal_table_is_unit_normal() -> None:
    t = [v / 8192 for v in dist_table("normal")]
    assert statistics.fmean(t) == pytest.approx(0, abs=0.002)
    assert statistics.pstdev(t) == pytest.approx(1, abs=0.01)
