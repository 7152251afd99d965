"""Per-flow arrival analysis: delay percentiles, jitter, loss, gaps between arrivals, path changes.

Definitions (shared with `patronus.core.sla`, so the test-bed judges flows the way the agent judges
paths):
  * one-way delay = recv_ns - sent_ns (all namespaces share one clock), in ms;
  * percentiles use the *nearest-rank* method: the p-th percentile of n sorted samples is the sample
    of rank ceil(p·n/100), always one of the samples;
  * `jitter_ms` is the population standard deviation of the one-way delay (the core's definition,
    which the SLA targets are written against); `jitter_rfc3550_ms` is also given: the mean over the
    flow of RFC 3550's interarrival jitter estimator J += (|D| - J)/16, D the transit difference of
    consecutive arrivals;
  * a packet is lost when its row has no recv_ns and no other row of the same seq was received;
    `sent` is max(run.json's `sent`, distinct sequence numbers in packets.csv);
  * a gap is the interval between two consecutive arrivals (receive order). The gap over a window
    [start, end] is the longest interval between consecutive arrivals that overlaps it, where the
    window's edges stand in for an arrival when none exists before the start / after the end; a
    window that opens before the flow's first packet was sent opens at that packet instead (the
    silence of a sender that had not started is not the network's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from emulation.measure.rundata import FlowSpec, RunData
from patronus.core.sla import nearest_rank as rank_of

NS = 1_000_000_000


def nearest_rank(sorted_values: np.ndarray, p: float) -> float | None:
    """The p-th percentile (nearest rank) of already sorted values; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    return float(sorted_values[rank_of(p, n) - 1])


def percentiles(values: np.ndarray, ps: tuple[float, ...] = (50, 95, 99)) -> tuple[float | None, ...]:
    v = np.sort(np.asarray(values, dtype=np.float64))
    return tuple(nearest_rank(v, p) for p in ps)


def stdev(values: np.ndarray) -> float | None:
    """Population standard deviation; 0.0 for one sample, None for none."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return None
    if len(v) == 1:
        return 0.0
    return float(np.std(v))


def rfc3550_jitter(sent_ns: np.ndarray, recv_ns: np.ndarray) -> float | None:
    """Mean of RFC 3550's running interarrival jitter over packets in arrival order, in ms."""
    if len(recv_ns) < 2:
        return None
    order = np.argsort(recv_ns, kind="stable")
    transit = (recv_ns[order] - sent_ns[order]).astype(np.float64) / 1e6
    d = np.abs(np.diff(transit))
    j = 0.0
    total = 0.0
    for x in d:
        j += (x - j) / 16.0
        total += j
    return float(total / len(d))


@dataclass(frozen=True, slots=True)
class Arrivals:
    """One packet flow as arrays, in send order (sent_ns ascending)."""

    flow: FlowSpec
    seq: np.ndarray        # int64
    sent_ns: np.ndarray    # int64
    recv_ns: np.ndarray    # int64, 0 where lost
    received: np.ndarray   # bool: this row was received
    lost: np.ndarray       # bool: lost (not received, and no other row of the seq was)
    path: np.ndarray       # object (str), "" when unknown
    t0_ns: int

    @property
    def delay_ms(self) -> np.ndarray:
        out: np.ndarray = (self.recv_ns[self.received] - self.sent_ns[self.received]).astype(np.float64) / 1e6
        return out

    def arrival_times(self) -> np.ndarray:
        """Receive times of every received row, ascending (ns)."""
        return np.sort(self.recv_ns[self.received], kind="stable")

    def ns(self, scenario_s: float) -> int:
        return self.t0_ns + round(scenario_s * NS)

    def gap_start_ns(self, scenario_s: float) -> int:
        """Where a gap window that opens at `scenario_s` begins: there, or at the flow's first packet
        sent after it if the sender had not sent yet (a sender that started late left a silence that
        no network made; from its first packet on, every silence counts)."""
        lo = self.ns(scenario_s)
        i = int(np.searchsorted(self.sent_ns, lo, side="left"))
        if i > 0 or i == len(self.sent_ns):
            return lo                   # the sender was already sending (or sent nothing in the window)
        return int(self.sent_ns[0])


def arrivals(run: RunData, flow: str) -> Arrivals:
    key = f"arrivals:{flow}"
    if key in run._cache:
        cached: Arrivals = run._cache[key]
        return cached
    pk = run.flow_packets(flow)
    seq = pk["seq"].to_numpy(dtype=np.int64)
    received = pk["received"].to_numpy(dtype=bool)
    recv = pk["recv_ns"].fillna(0).to_numpy(dtype=np.int64)
    got = np.unique(seq[received])
    lost = ~received & ~np.isin(seq, got)
    out = Arrivals(flow=run.run.flow(flow), seq=seq, sent_ns=pk["sent_ns"].to_numpy(dtype=np.int64), recv_ns=recv,
                   received=received, lost=lost, path=pk["path"].to_numpy(dtype=object), t0_ns=run.t0_ns)
    run._cache[key] = out
    return out


def longest_gap(arrival_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[int, int]:
    """(gap, where it starts), both ns, over [start_ns, end_ns] as defined in the module docstring.

    `arrival_ns` must be sorted ascending."""
    if end_ns <= start_ns:
        return 0, start_ns
    i0 = int(np.searchsorted(arrival_ns, start_ns, side="right"))   # first arrival after start
    i1 = int(np.searchsorted(arrival_ns, end_ns, side="left"))      # first arrival at/after end
    pre = int(arrival_ns[i0 - 1]) if i0 > 0 else start_ns
    post = int(arrival_ns[i1]) if i1 < len(arrival_ns) else end_ns
    points = np.concatenate(([pre], arrival_ns[i0:i1], [post])).astype(np.int64)
    gaps = np.diff(points)
    k = int(np.argmax(gaps))
    return int(gaps[k]), int(points[k])


def lost_between(a: Arrivals, start_ns: int, end_ns: int) -> int:
    """Packets sent in [start_ns, end_ns) and lost."""
    sel = (a.sent_ns >= start_ns) & (a.sent_ns < end_ns)
    return int(np.count_nonzero(a.lost & sel))


def path_runs(a: Arrivals, start_ns: int | None = None, end_ns: int | None = None) -> list[str]:
    """The paths the flow's packets took, in send order, one entry per run of equal paths (unknown
    paths skipped): ["p1", "p2", "p1"] is two changes."""
    sel = a.path != ""
    if start_ns is not None:
        sel &= a.sent_ns >= start_ns
    if end_ns is not None:
        sel &= a.sent_ns < end_ns
    seq = a.path[sel]
    if len(seq) == 0:
        return []
    change = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    return [str(seq[0])] + [str(seq[i]) for i in change]


def has_path_data(a: Arrivals) -> bool:
    return bool(np.any(a.path != ""))


@dataclass(frozen=True, slots=True)
class FlowStats:
    flow: str
    type: str
    traffic_class: str
    src_site: str
    dst_site: str
    sent: int
    received: int
    lost: int
    loss_pct: float
    duplicates: int
    reordered: int
    latency_min_ms: float | None
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    jitter_ms: float | None
    jitter_rfc3550_ms: float | None
    max_gap_ms: float | None
    max_gap_at_s: float | None
    path_changes: int
    paths: tuple[str, ...]


def flow_stats(run: RunData, flow: str) -> FlowStats:
    spec = run.run.flow(flow)
    a = arrivals(run, flow)
    distinct_seq = len(np.unique(a.seq))
    got = len(np.unique(a.seq[a.received]))
    sent = max(spec.sent, distinct_seq)
    lost = sent - got
    delay = a.delay_ms
    p50, p95, p99 = percentiles(delay)
    # reordering: received packets whose seq is below the highest seq received before them
    order = np.argsort(a.recv_ns[a.received], kind="stable")
    rseq = a.seq[a.received][order]
    reordered = int(np.count_nonzero(rseq[1:] < np.maximum.accumulate(rseq)[:-1])) if len(rseq) > 1 else 0
    gap: float | None = None
    gap_at: float | None = None
    if got:
        g, at = longest_gap(a.arrival_times(), a.gap_start_ns(spec.start_s), a.ns(spec.stop_s))
        gap, gap_at = g / 1e6, (at - a.t0_ns) / 1e9
    runs = path_runs(a)
    return FlowStats(
        flow=flow, type=spec.type, traffic_class=spec.traffic_class, src_site=spec.src_site, dst_site=spec.dst_site,
        sent=sent, received=got, lost=lost, loss_pct=100.0 * lost / sent if sent else 0.0,
        duplicates=int(np.count_nonzero(a.received)) - got, reordered=reordered,
        latency_min_ms=float(delay.min()) if len(delay) else None,
        latency_mean_ms=float(delay.mean()) if len(delay) else None,
        latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
        latency_max_ms=float(delay.max()) if len(delay) else None,
        jitter_ms=stdev(delay), jitter_rfc3550_ms=rfc3550_jitter(a.sent_ns[a.received], a.recv_ns[a.received]),
        max_gap_ms=gap, max_gap_at_s=gap_at, path_changes=max(0, len(runs) - 1),
        paths=tuple(dict.fromkeys(runs)),
    )


def latency_series(run: RunData, flow: str) -> pd.DataFrame:
    """sent_s, delay_ms (NaN when lost), path: one row per packet in send order, for plots."""
    a = arrivals(run, flow)
    delay = np.where(a.received, (a.recv_ns - a.sent_ns) / 1e6, np.nan)
    return pd.DataFrame({"sent_s": (a.sent_ns - a.t0_ns) / 1e9, "delay_ms": delay, "path": a.path.astype(str)})


def latency_cdf(run: RunData, flow: str) -> pd.DataFrame:
    """delay_ms ascending and `fraction` (i/n): the empirical CDF of the flow's one-way delay."""
    d = np.sort(arrivals(run, flow).delay_ms)
    n = len(d)
    return pd.DataFrame({"delay_ms": d, "fraction": np.arange(1, n + 1) / n if n else np.array([], dtype=float)})


def gaps_frame(run: RunData, flow: str) -> pd.DataFrame:
    """Every interval between consecutive arrivals: at_s (the earlier arrival, scenario time), gap_ms."""
    a = arrivals(run, flow)
    t = a.arrival_times()
    return pd.DataFrame({"at_s": (t[:-1] - a.t0_ns) / 1e9 if len(t) else np.array([], dtype=float),
                         "gap_ms": np.diff(t) / 1e6 if len(t) else np.array([], dtype=float)})
