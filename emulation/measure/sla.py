"""Per-flow SLA: compliance in 1-second steps over the target's window, and when a flow's rolling SLA
broke and came back.

A flow is judged against its class's target from run.json's `sla_targets`:
  * the flow's active time is cut in 1-second steps; each step is judged over the packets *sent* in the
    target's trailing window ending with it (`window_s`, the agent's SLA window; 1 s when run.json gives
    none, and then the step is its own window), so "loss ≤ 1 %" means 1 % of the window's packets, not
    one packet in a second's fifty;
  * a window is compliant when, over the packets *sent* in it, the delay at the target's percentile
    (p95 unless it says otherwise; nearest rank, over the delivered ones) ≤ latency_ms, loss ≤ loss_pct
    and the delay's population stdev ≤ jitter_ms; a
    metric with no target is not judged; a window where every packet was lost fails on loss (and on
    latency, having none delivered); a window in which nothing was sent is not observed;
  * compliance windows are [start_s + k, start_s + k + 1) of the flow's active time (the last one may
    be shorter); compliance_pct = 100 · compliant / observed windows, None with no target or no
    observed window;
  * the *rolling* SLA (used by the failover ledger) judges, at each packet's send time t, the packets
    sent in (t - 1 s, t], with the same rules, computed with prefix sums so it costs O(n).
HTTP flows are judged the same way from http.csv: each request is a "packet" sent at `at`, delivered
when ok, its latency the request latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emulation.measure.flows import NS, arrivals, percentiles, stdev
from emulation.measure.rundata import ClassTarget, FlowSpec, RunData

WINDOW_NS = NS


@dataclass(frozen=True, slots=True)
class Samples:
    """What the SLA judges: one entry per packet (or request), in send order."""

    t_ns: np.ndarray        # int64 send times
    delivered: np.ndarray   # bool
    delay_ms: np.ndarray    # float64, NaN when not delivered


def flow_samples(run: RunData, spec: FlowSpec) -> Samples | None:
    """The flow's samples, or None for a flow type without per-packet data (tcp_bulk, or http
    without http.csv)."""
    if spec.has_packets:
        a = arrivals(run, spec.name)
        delivered = ~a.lost & a.received
        keep = a.received | a.lost      # a lost duplicate row of a received seq is not a sample
        delay = np.where(a.received, (a.recv_ns - a.sent_ns) / 1e6, np.nan)
        return Samples(a.sent_ns[keep], delivered[keep], delay[keep])
    if spec.type == "http" and run.http is not None:
        h = run.http[run.http["flow"] == spec.name]
        t = np.round(h["at"].to_numpy(dtype=np.float64) * 1e9).astype(np.int64)
        ok = h["ok"].to_numpy(dtype=bool)
        lat = np.where(ok, h["latency_ms"].to_numpy(dtype=np.float64), np.nan)
        order = np.argsort(t, kind="stable")
        return Samples(t[order], ok[order], lat[order])
    return None


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    start_s: float
    sent: int
    lost: int
    loss_pct: float
    latency_ms: float | None      # at the target's percentile (p95 without a target)
    jitter_ms: float | None
    compliant: bool | None


def judge(target: ClassTarget | None, delay_ms: np.ndarray, sent: int, lost: int) -> WindowVerdict:
    delivered = delay_ms[~np.isnan(delay_ms)]
    loss = 100.0 * lost / sent if sent else 0.0
    lat = percentiles(delivered, (target.latency_percentile if target else 95,))[0]
    jit = stdev(delivered)
    if target is None or sent == 0:
        ok: bool | None = None
    elif len(delivered) == 0:
        ok = target.loss_pct is None and target.latency_ms is None and target.jitter_ms is None
    else:
        ok = target.meets(lat, loss, jit)
    return WindowVerdict(0.0, sent, lost, loss, lat, jit, ok)


def windows(run: RunData, spec: FlowSpec, samples: Samples, target: ClassTarget | None = None) -> list[WindowVerdict]:
    """The flow's active time in 1-second steps, each judged against `target` (default: the flow's class
    target) over the packets sent in the target's trailing window ending with the step (the agent's
    SLA definition: `window_s`; with a 1-s window, the step itself). `start_s` is the step's start."""
    target = target or run.run.target_for(spec.traffic_class)
    t0 = run.t0_ns
    start = t0 + round(spec.start_s * NS)
    stop = t0 + round(spec.stop_s * NS)
    n = max(1, math.ceil((stop - start) / WINDOW_NS))
    span_ns = max(WINDOW_NS, round(target.window_s * NS)) if target is not None else WINDOW_NS
    out: list[WindowVerdict] = []
    for k in range(n):
        step = start + k * WINDOW_NS
        hi = min(stop, step + WINDOW_NS)
        lo = max(start, step + WINDOW_NS - span_ns)      # the trailing window ending with this step
        i0, i1 = np.searchsorted(samples.t_ns, [lo, hi], side="left")
        sent = int(i1 - i0)
        if sent == 0:
            continue
        lost = int(np.count_nonzero(~samples.delivered[i0:i1]))
        v = judge(target, samples.delay_ms[i0:i1], sent, lost)
        out.append(WindowVerdict(spec.start_s + k, v.sent, v.lost, v.loss_pct, v.latency_ms, v.jitter_ms,
                                 v.compliant))
    return out


@dataclass(frozen=True, slots=True)
class SlaResult:
    flow: str
    traffic_class: str
    compliance_pct: float | None
    windows: int
    compliant_windows: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    jitter_ms: float | None
    loss_pct: float | None


def flow_sla(run: RunData, spec: FlowSpec) -> SlaResult | None:
    samples = flow_samples(run, spec)
    if samples is None:
        return None
    ws = windows(run, spec, samples)
    judged = [w for w in ws if w.compliant is not None]
    good = sum(1 for w in judged if w.compliant)
    delivered = samples.delay_ms[samples.delivered]
    p50, p95, p99 = percentiles(delivered)
    if spec.has_packets:
        a = arrivals(run, spec.name)
        got = len(np.unique(a.seq[a.received]))
        sent = max(spec.sent, len(np.unique(a.seq)))
        loss: float | None = 100.0 * (sent - got) / sent if sent else None
    else:
        n = len(samples.t_ns)
        loss = 100.0 * int(np.count_nonzero(~samples.delivered)) / n if n else None
    return SlaResult(flow=spec.name, traffic_class=spec.traffic_class,
                     compliance_pct=100.0 * good / len(judged) if judged else None, windows=len(judged),
                     compliant_windows=good, latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
                     jitter_ms=stdev(delivered), loss_pct=loss)


def rolling_violations(target: ClassTarget, samples: Samples) -> np.ndarray:
    """For each sample i, True when the packets sent in (t_i - 1 s, t_i] break the target."""
    t = samples.t_ns
    n = len(t)
    if n == 0:
        return np.zeros(0, dtype=bool)
    hi = np.searchsorted(t, t, side="right")              # includes ties at t_i
    lo = np.searchsorted(t, t - WINDOW_NS, side="right")  # excludes t_i - 1 s
    zero = np.zeros(1)
    delivered = samples.delivered.astype(np.float64)
    d = np.where(samples.delivered, samples.delay_ms, 0.0)
    c_del: np.ndarray = np.concatenate((zero, np.cumsum(delivered)))
    sent: np.ndarray = (hi - lo).astype(np.float64)
    m: np.ndarray = c_del[hi] - c_del[lo]
    bad = np.zeros(n, dtype=bool)
    if target.loss_pct is not None:
        bad |= 100.0 * (sent - m) / sent > target.loss_pct
    if target.latency_ms is not None:
        # nearest-rank p-th percentile ≤ target  ⇔  at least ceil(p·m/100) delivered delays ≤ target
        c_ok: np.ndarray = np.concatenate((zero, np.cumsum(samples.delivered & (d <= target.latency_ms))))
        need = np.maximum(1.0, np.ceil(target.latency_percentile * m / 100.0))   # flows.nearest_rank's rank
        bad |= (m == 0) | ((c_ok[hi] - c_ok[lo]) < need)
    if target.jitter_ms is not None:
        c1: np.ndarray = np.concatenate((zero, np.cumsum(d)))
        c2: np.ndarray = np.concatenate((zero, np.cumsum(d * d)))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean: np.ndarray = (c1[hi] - c1[lo]) / m
            var = np.maximum((c2[hi] - c2[lo]) / m - mean * mean, 0.0)
        jit = np.where(m >= 2, np.sqrt(np.where(m > 0, var, 0.0)), 0.0)
        bad |= (m > 0) & (jit > target.jitter_ms + 1e-9)
        if target.latency_ms is None:
            bad |= m == 0
    return bad


def rolling_break_and_restores(run: RunData, spec: FlowSpec, start_ns: int,
                               end_ns: int) -> tuple[int | None, np.ndarray]:
    """(when the flow's rolling SLA first broke at or after start_ns, the send times at which it held
    again after being broken), all send times in ns in [start_ns, end_ns): a restore is a sample that
    meets the target after one that did not, both in the window (a break in progress at start_ns counts
    from its first sample there). None and an empty array when it never broke (or no target / data)."""
    target = run.run.target_for(spec.traffic_class)
    samples = flow_samples(run, spec)
    none = np.zeros(0, dtype=np.int64)
    if target is None or samples is None or len(samples.t_ns) == 0:
        return None, none
    key = f"rolling:{spec.name}"
    if key not in run._cache:
        run._cache[key] = rolling_violations(target, samples)
    bad: np.ndarray = run._cache[key]
    t = samples.t_ns
    i0, i1 = np.searchsorted(t, [start_ns, end_ns], side="left")
    seg = bad[i0:i1]
    idx = np.flatnonzero(seg)
    if len(idx) == 0:
        return None, none
    back = np.flatnonzero(seg[:-1] & ~seg[1:]) + 1      # good after bad
    restores: np.ndarray = t[i0 + back]
    return int(t[i0 + int(idx[0])]), restores
