"""A synthetic run directory with known ground truth, for tests, the notebook and report previews.

    truth = write_synthetic_run(tmp_path / "run")                       # the default: a hard cut
    truth = write_synthetic_run(d, SyntheticSpec(action="flap"))         # variants

Two sites (hq, br), two uplinks each (isp1, isp2), the agents' four paths per site named as the agent
names them (`remote:local-remote_uplink`). Flows: `cbr`, a 1000-packet/s UDP flow hq → br on
`br:isp1-isp1`; `voip`, 50 packets/s br → hq on `hq:isp2-isp2` (never touched by the events); `web`, one
HTTP request a second hq → br (http.csv, no packets).

The default timeline: a cut of hq.isp1 at 20 s (taking effect 0.3 ms late), detected 60 ms later (the
first probe lost, sent at 20.02 s, given up on at 20.05 s: `ProbeLost`, one per run of lost probes of
every path, as the agents say it); the
router moves the flow's slot to `br:isp2-isp2` at detection and steering is applied 2 ms after that,
so every cbr packet sent between the cut and the steering change is lost (62 packets, a gap of 66 ms
with the default delays); restore at 40 s, paths up 0.5 s later, failback after a 10 s hold without
loss. Variants (`SyntheticSpec`): `action="impair"` (a brownout: +80 ms and 30 % loss, the path
degraded, failover on threshold), `action="flap"` (down 1 s every 2 s, 3 times: the flow moves once
and stays), `failover=False` (the agent never moves the flow), `path_column=False` (packets.csv
without paths), `lost_send_times=False` (lost packets without sent_ns, as a receiver knows them),
`jitter_ms` (a deterministic delay pattern), `probe_lost_events=False` (a run written before the agents
said when a probe was lost: the ledger falls back on path_metrics.csv), custom expectations.

Everything is deterministic: delays follow a fixed pattern, random losses (impair) come from a
generator seeded with `seed`. `SyntheticTruth` gives what was injected, computed here independently of
emulation.measure.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulation.rawfiles import (
    PACKET_COLUMNS,
    PATH_METRIC_COLUMNS,
    TIMELINE_COLUMNS,
    write_csv,
    write_events,
    write_json,
)

NS = 1_000_000_000
P1 = "br:isp1-isp1"          # cbr's path at hq before the event (crosses hq.isp1 and br.isp1)
P2 = "br:isp2-isp2"          # where it fails over to
VOIP_PATH = "hq:isp2-isp2"   # voip's path at br
UPLINK_DELAY_MS = {"isp1": 6.0, "isp2": 7.5}   # one way, per uplink; a path adds both ends
SITES = ("hq", "br")
UPLINKS = ("isp1", "isp2")

DEFAULT_EXPECTATIONS: tuple[dict[str, Any], ...] = (
    {"type": "failover_gap", "flow": "cbr", "max": 0.3, "text": "cbr: failover gap <= 300 ms"},
    {"type": "lost_packets", "flow": "cbr", "max": 100, "text": "cbr: at most 100 packets lost"},
    {"type": "sla_compliance", "flow": "cbr", "min": 0.95, "text": "cbr: voice SLA met >= 95 % of the time"},
    {"type": "path_changes", "flow": "cbr", "max": 2, "text": "cbr: at most 2 path changes"},
    {"type": "detect_time", "link": "hq.isp1", "max": 0.1, "text": "hq.isp1 failure detected within 100 ms"},
    {"type": "flow_stays", "flow": "voip", "text": "voip stays on its path"},
)


def path_delay_ms(path: str) -> float:
    local, remote = path.split(":", 1)[1].split("-")
    return UPLINK_DELAY_MS[local] + UPLINK_DELAY_MS[remote]


@dataclass(frozen=True)
class SyntheticSpec:
    scenario: str = "synthetic-failover"
    seed: int = 7
    t0: float = 1_700_000_000.0
    duration_s: float = 60.0
    rate_pps: int = 1000
    flow_start_s: float = 1.0
    flow_stop_s: float = 59.0
    action: str = "cut"                 # cut | impair | flap
    link: str = "hq.isp1"
    event_at_s: float = 20.0
    apply_lag_ms: float = 0.3
    restore_at_s: float = 40.0          # cut / impair
    flap_period_s: float = 2.0
    flap_count: int = 3
    flap_down_s: float = 1.0
    detect_ms: float = 60.0
    steer_ms: float = 2.0
    up_detect_s: float = 0.5
    hold_s: float = 10.0
    failover: bool = True
    impair_delay_ms: float = 80.0
    impair_loss: float = 0.3
    jitter_ms: float = 0.0
    path_column: bool = True
    lost_send_times: bool = True        # False: lost packets' rows have no sent_ns (receiver-side data)
    sample_interval_s: float = 0.2
    probe_interval_s: float = 0.02
    probe_timeout_ms: float = 30.0      # a lost probe is given up on this long after it left
    probe_lost_events: bool = True      # False: no ProbeLost events (a run written before they existed)
    expectations: Sequence[dict[str, Any]] = DEFAULT_EXPECTATIONS
    sla_targets: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "voice": {"latency_ms": 50.0, "loss_pct": 1.0, "jitter_ms": 5.0},
        "default": {"latency_ms": 200.0, "loss_pct": 5.0, "jitter_ms": 50.0},
    })


@dataclass(frozen=True)
class SyntheticTruth:
    """What was injected (wall times unless _s / _ms; ms relative to the first breaking edge)."""

    spec: SyntheticSpec
    applied_at: float                 # the first breaking edge took effect
    detect_ms: float | None
    decision_ms: float | None
    steering_ms: float | None
    first_new_packet_ms: float | None
    first_probe_lost_ms: float | None
    lost_in_first_window: int         # cbr packets sent in the first edge's window and lost
    gap_first_window_ms: float        # cbr's longest gap over the first edge's window
    cbr_lost: int
    cbr_sent: int
    cbr_max_gap_ms: float
    down_intervals: tuple[tuple[float, float], ...]   # wall (applied down, applied up)


def _delay_pattern(n: int, jitter_ms: float) -> np.ndarray:
    """0..jitter_ms, deterministic."""
    return ((np.arange(n) * 37) % 11) / 10.0 * jitter_ms


@dataclass(frozen=True)
class _Injected:
    """When the scripted edges happen and what the agents do about them (wall times)."""

    timeline: list[tuple[float, float, str, str, dict[str, Any]]]
    down: tuple[tuple[float, float], ...]     # (applied down, applied up) of each bad interval
    bad_status: str
    applied: float          # the first breaking edge took effect
    detect: float
    steer: float
    up_again: float
    failback: float
    failback_steer: float


@dataclass(frozen=True)
class _Cbr:
    """The cbr flow's packets: send times (ns and wall), which rode the second path, which were lost."""

    sent: np.ndarray
    sent_wall: np.ndarray
    on_p2: np.ndarray
    lost: np.ndarray
    recv: np.ndarray


def write_synthetic_run(directory: str | Path, spec: SyntheticSpec | None = None) -> SyntheticTruth:
    spec = spec or SyntheticSpec()
    if spec.action not in ("cut", "impair", "flap"):
        raise ValueError(f"action: expected cut, impair or flap, got {spec.action!r}")
    inj = _injected(spec)
    cbr = _cbr(spec, inj, np.random.default_rng(spec.seed))
    packets, nv = _packet_rows(spec, cbr)
    metric_rows, probe_lost, first_probe_lost = _probe_samples(spec, inj)
    events: list[dict[str, Any]] = list(probe_lost) if spec.probe_lost_events else []
    events += _agent_events(spec, inj)
    events.sort(key=lambda e: (e["at"], e["site"], e["kind"]))
    d = write_raw_dir(directory, _run_doc(spec, len(cbr.sent), nv), timeline=inj.timeline, packets=packets,
                      path_metrics=metric_rows, events=events)
    with (d / "raw" / "http.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["flow", "at", "latency_ms", "ok"])
        k = 0
        t = spec.flow_start_s + 0.5
        while t < spec.flow_stop_s:
            w.writerow(["web", repr(spec.t0 + t), repr(30.0 + (k % 3)), "true"])
            k += 1
            t += 1.0
    return _truth(spec, inj, cbr, probe_lost, first_probe_lost)


def _injected(spec: SyntheticSpec) -> _Injected:
    t0 = spec.t0
    lag = spec.apply_lag_ms / 1000.0
    timeline: list[tuple[float, float, str, str, dict[str, Any]]] = []
    if spec.action == "flap":
        first = t0 + spec.event_at_s + lag
        down = tuple((first + k * spec.flap_period_s, first + k * spec.flap_period_s + spec.flap_down_s)
                     for k in range(spec.flap_count))
        timeline.append((spec.event_at_s, first, "flap", spec.link,
                         {"period_s": spec.flap_period_s, "count": spec.flap_count, "down_s": spec.flap_down_s}))
    else:
        params: dict[str, Any] = ({"delay": f"{spec.impair_delay_ms:g}ms", "loss": f"{spec.impair_loss * 100:g}%"}
                                  if spec.action == "impair" else {})
        down = ((t0 + spec.event_at_s + lag, t0 + spec.restore_at_s + lag),)
        timeline.append((spec.event_at_s, down[0][0], spec.action, spec.link, params))
        timeline.append((spec.restore_at_s, down[0][1], "restore", spec.link, {}))
    applied = down[0][0]
    detect = applied + spec.detect_ms / 1000.0
    up_again = down[-1][1] + spec.up_detect_s
    failback = up_again + spec.hold_s
    return _Injected(timeline=timeline, down=down, bad_status="degraded" if spec.action == "impair" else "down",
                     applied=applied, detect=detect, steer=detect + spec.steer_ms / 1000.0, up_again=up_again,
                     failback=failback, failback_steer=failback + 0.001)


def _link_paths(spec: SyntheticSpec, site: str) -> list[str]:
    """The paths of `site` that cross the impaired link."""
    lsite, uplink = spec.link.split(".")
    other = "br" if site == "hq" else "hq"
    paths = [f"{other}:{u}-{v}" for u in UPLINKS for v in UPLINKS]
    return [p for p in paths if (site == lsite and p.split(":")[1].split("-")[0] == uplink)
            or (other == lsite and p.split("-")[1] == uplink)]


def _cbr(spec: SyntheticSpec, inj: _Injected, rng: np.random.Generator) -> _Cbr:
    t0, t0_ns = spec.t0, round(spec.t0 * NS)
    n = round((spec.flow_stop_s - spec.flow_start_s) * spec.rate_pps)
    sent = t0_ns + round(spec.flow_start_s * NS) + np.round(np.arange(n) * (NS / spec.rate_pps)).astype(np.int64)
    sent_wall = (sent - t0_ns) / NS + t0
    on_p2 = spec.failover & (sent_wall >= inj.steer) & (sent_wall < inj.failback_steer)
    delay_ms = np.where(on_p2, path_delay_ms(P2), path_delay_ms(P1)) + _delay_pattern(n, spec.jitter_ms)
    in_bad = np.zeros(n, dtype=bool)
    for a, b in inj.down:
        in_bad |= (sent_wall >= a) & (sent_wall < b)
    hit = in_bad & ~on_p2
    if spec.action == "impair":
        lost = hit & (rng.random(n) < spec.impair_loss)
        delay_ms = np.where(hit, delay_ms + spec.impair_delay_ms, delay_ms)
    else:
        lost = hit
    recv = sent + np.round(delay_ms * 1e6).astype(np.int64)
    return _Cbr(sent=sent, sent_wall=sent_wall, on_p2=on_p2, lost=lost, recv=recv)


def _packet_rows(spec: SyntheticSpec, cbr: _Cbr) -> tuple[list[tuple[str, int, Any, int | None, str]], int]:
    """packets.csv rows: the cbr flow (hq -> br, over the impaired link), and a voip call br -> hq at 50
    pps, untouched. Returns the rows and how many voip packets were sent."""
    rows: list[tuple[str, int, Any, int | None, str]] = []
    path = np.where(cbr.on_p2, P2, P1).astype(object)
    for i in range(len(cbr.sent)):
        lost = bool(cbr.lost[i])
        p = str(path[i]) if spec.path_column and not lost else ""
        sent = int(cbr.sent[i]) if spec.lost_send_times or not lost else ""
        rows.append(("cbr", i, sent, None if lost else int(cbr.recv[i]), p))
    t0_ns = round(spec.t0 * NS)
    nv = round((spec.flow_stop_s - spec.flow_start_s) * 50)
    vsent = t0_ns + round(spec.flow_start_s * NS) + np.arange(nv, dtype=np.int64) * (NS // 50)
    vrecv = vsent + np.round((path_delay_ms(VOIP_PATH) + _delay_pattern(nv, spec.jitter_ms)) * 1e6).astype(np.int64)
    for i in range(nv):
        rows.append(("voip", i, int(vsent[i]), int(vrecv[i]), VOIP_PATH if spec.path_column else ""))
    return rows, nv


def _probe_samples(spec: SyntheticSpec,
                   inj: _Injected) -> tuple[list[list[Any]], list[dict[str, Any]], float | None]:
    """path_metrics.csv rows of every path at both sites, the agents' ProbeLost events (the first miss
    of each run), and when hq's samples first showed a probe of P1 lost (runs without ProbeLost)."""
    probe_t = np.arange(0.0, spec.duration_s, spec.probe_interval_s) + spec.t0
    metric_rows: list[list[Any]] = []
    first_probe_lost: float | None = None
    probe_lost: list[dict[str, Any]] = []
    for si, site in enumerate(SITES):
        other = "br" if site == "hq" else "hq"
        affected = set(_link_paths(spec, site))
        for u in UPLINKS:
            for v in UPLINKS:
                pid = f"{other}:{u}-{v}"
                lost_probe = _lost_probes(spec, inj, probe_t) if pid in affected else np.zeros(len(probe_t), bool)
                starts = np.flatnonzero(lost_probe & ~np.concatenate(([False], lost_probe[:-1])))
                for i in starts.tolist():
                    probe_lost.append({"kind": "ProbeLost", "at": float(probe_t[i]) + spec.probe_timeout_ms / 1000.0,
                                       "site": site, "path_id": pid, "seq": i, "sent_at": float(probe_t[i])})
                first = _path_samples(spec, inj, site, si, pid, pid in affected, probe_t, lost_probe, metric_rows)
                if site == "hq" and pid == P1 and first_probe_lost is None:
                    first_probe_lost = first
    return metric_rows, probe_lost, first_probe_lost


def _lost_probes(spec: SyntheticSpec, inj: _Injected, probe_t: np.ndarray) -> np.ndarray:
    lost = np.zeros(len(probe_t), dtype=bool)
    for a, b in inj.down:
        inside = (probe_t >= a) & (probe_t < b)
        lost |= inside if spec.action != "impair" else inside & (
            (np.arange(len(probe_t)) % 10) < round(spec.impair_loss * 10))
    return lost


def _path_samples(spec: SyntheticSpec, inj: _Injected, site: str, si: int, pid: str, affected: bool,
                  probe_t: np.ndarray, lost_probe: np.ndarray, out: list[list[Any]]) -> float | None:
    """One path's samples into `out`; returns the first sample at or after the first edge whose
    timed-out count rose (None: none did)."""
    t0 = spec.t0
    base = path_delay_ms(pid)
    first_lost: float | None = None
    prev_to = 0
    k = 0
    while True:
        ts = t0 + k * spec.sample_interval_s + (0.1 if si else 0.0)
        if ts > t0 + spec.duration_s:
            break
        k += 1
        sent_n = int(np.count_nonzero(probe_t <= ts))
        timed_out = int(np.count_nonzero(lost_probe & (probe_t + spec.probe_interval_s <= ts)))
        status = "up"
        if affected:
            for a, b in inj.down:
                if a + spec.detect_ms / 1000.0 <= ts < b + spec.up_detect_s:
                    status = inj.bad_status
        if status == "down":
            lat: float | None = None
            loss, score = 100.0, 0.0
        elif status == "degraded":
            lat, loss, score = base + spec.impair_delay_ms, spec.impair_loss * 100.0, 40.0
        else:
            lat, loss, score = base, 0.0, 95.0
        if first_lost is None and ts >= inj.applied and timed_out > prev_to:
            first_lost = ts
        prev_to = timed_out
        out.append([site, pid, repr(ts), status, "" if lat is None else repr(lat), "0.3",
                    repr(loss), repr(score), sent_n, timed_out])
    return first_lost


def _agent_events(spec: SyntheticSpec, inj: _Injected) -> list[dict[str, Any]]:
    """Status changes of the impaired link's paths at both sites, hq's failover and failback of the
    cbr flow (when `spec.failover`), the SLA verdicts, and the agent's start."""
    events: list[dict[str, Any]] = []
    fk = {"src_ip": "10.1.0.10", "dst_ip": "10.2.0.10", "src_port": 40001, "dst_port": 5001, "protocol": 17}
    bad = inj.bad_status
    for a, b in inj.down:
        for si, site in enumerate(SITES):
            for pid in _link_paths(spec, site):
                events.append({"kind": "PathStatusChanged", "at": a + spec.detect_ms / 1000.0 + 0.005 * si,
                               "site": site, "path_id": pid, "old": "up", "new": bad,
                               "reason": "3 consecutive probes unanswered" if bad == "down"
                               else "score below threshold"})
                events.append({"kind": "PathStatusChanged", "at": b + spec.up_detect_s + 0.005 * si, "site": site,
                               "path_id": pid, "old": bad, "new": "up", "reason": "probes answered"})
    if spec.failover:
        reason = "path_down" if bad == "down" else "below_threshold"
        # two slots leave the path; the flow's packets show which one it is in
        events.append({"kind": "FailoverTriggered", "at": inj.detect, "site": "hq", "flow": fk, "from_path": P1,
                       "to_path": "br:isp2-isp1", "reason": reason, "policy": "Bulk"})
        events.append({"kind": "FailoverTriggered", "at": inj.detect, "site": "hq", "flow": fk, "from_path": P1,
                       "to_path": P2, "reason": reason, "policy": "Realtime"})
        events.append({"kind": "SteeringApplied", "at": inj.steer, "site": "hq", "moves": 2,
                       "latency_ms": spec.steer_ms, "paths": sorted(["br:isp2-isp1", P2])})
        events.append({"kind": "Failback", "at": inj.failback, "site": "hq", "flow": fk, "from_path": P2,
                       "to_path": P1, "policy": "Realtime"})
        events.append({"kind": "SteeringApplied", "at": inj.failback_steer, "site": "hq", "moves": 1,
                       "latency_ms": 1.0, "paths": [P1]})
    events.append({"kind": "SlaViolated", "at": inj.detect, "site": "hq", "subject": P1, "traffic_class": "voice",
                   "violations": ["loss"], "latency_ms": 0.0, "loss_pct": 100.0, "jitter_ms": 0.0})
    events.append({"kind": "SlaRestored", "at": inj.up_again + 1.0, "site": "hq", "subject": P1,
                   "traffic_class": "voice", "violated_for_s": inj.up_again + 1.0 - inj.detect})
    events.append({"kind": "AgentStarted", "at": spec.t0 - 1.0, "site": "hq", "paths": 4})
    return events


def _run_doc(spec: SyntheticSpec, cbr_sent: int, nv: int) -> dict[str, Any]:
    t0 = spec.t0
    return {
        "scenario": spec.scenario, "backend": "sim", "impairment_backend": "model", "seed": spec.seed,
        "started_at": t0 - 2.0, "t0": t0, "duration_s": spec.duration_s,
        "flows": [
            {"name": "cbr", "type": "udp_cbr", "class": "voice", "src_site": "hq", "dst_site": "br",
             "dst_port": 5001, "rate_pps": spec.rate_pps, "start_s": spec.flow_start_s,
             "stop_s": spec.flow_stop_s, "sent": cbr_sent},
            {"name": "voip", "type": "voip", "class": "voice", "src_site": "br", "dst_site": "hq",
             "dst_port": 5004, "rate_pps": 50, "start_s": spec.flow_start_s, "stop_s": spec.flow_stop_s,
             "sent": nv},
            {"name": "web", "type": "http", "class": "default", "src_site": "hq", "dst_site": "br",
             "dst_port": 80, "rate_pps": None, "start_s": spec.flow_start_s, "stop_s": spec.flow_stop_s,
             "sent": 0},
        ],
        "links": [{"link": f"{s}.{u}", "paths": [f"{s2}/{p}" for s2 in SITES for p in _paths_on(s, u, s2)]}
                  for s in SITES for u in UPLINKS],
        "sla_targets": spec.sla_targets,
        "expectations": [dict(e) for e in spec.expectations],
    }


def _truth(spec: SyntheticSpec, inj: _Injected, cbr: _Cbr, probe_lost: list[dict[str, Any]],
           first_probe_lost: float | None) -> SyntheticTruth:
    """What the analysis should find, computed from what was generated."""
    t0, t0_ns = spec.t0, round(spec.t0 * NS)
    applied, lost = inj.applied, cbr.lost
    window_end = _next_edge_after(inj.timeline, inj.down, applied, t0 + spec.duration_s)
    lo = max(applied, t0 + spec.flow_start_s)
    hi = min(window_end, t0 + spec.flow_stop_s)
    lost_in_first = int(np.count_nonzero(lost & (cbr.sent_wall >= lo) & (cbr.sent_wall < hi)))
    arr = np.sort(cbr.recv[~lost])
    gap_first = _gap(arr, round((lo - t0) * NS) + t0_ns, round((hi - t0) * NS) + t0_ns)
    whole = _gap(arr, t0_ns + round(spec.flow_start_s * NS), t0_ns + round(spec.flow_stop_s * NS))
    # the ledger's first probe lost: the first at or after the edge that came no later than the declaration
    bound = applied + spec.detect_ms / 1000.0
    if spec.probe_lost_events:
        at_p1 = sorted(e["at"] for e in probe_lost if e["site"] == "hq" and e["path_id"] == P1 and e["at"] >= applied)
        lost_at = at_p1[0] if at_p1 else None
    else:
        lost_at = first_probe_lost
    if lost_at is not None and lost_at > bound:
        lost_at = None
    moved = spec.failover
    first_new = None
    if moved and spec.path_column:
        idx = np.flatnonzero(cbr.on_p2 & ~lost)
        first_new = ((int(cbr.sent[idx[0]]) - t0_ns) / NS + t0 - applied) * 1000.0 if len(idx) else None
    return SyntheticTruth(
        spec=spec, applied_at=applied, detect_ms=spec.detect_ms,
        decision_ms=spec.detect_ms if moved else None, steering_ms=spec.detect_ms + spec.steer_ms if moved else None,
        first_new_packet_ms=first_new,
        first_probe_lost_ms=None if lost_at is None else (lost_at - applied) * 1000.0,
        lost_in_first_window=lost_in_first, gap_first_window_ms=gap_first / 1e6, cbr_lost=int(lost.sum()),
        cbr_sent=len(cbr.sent), cbr_max_gap_ms=whole / 1e6, down_intervals=inj.down)


def _paths_on(site: str, uplink: str, at_site: str) -> list[str]:
    """Paths of `at_site` that cross site.uplink (two sites)."""
    other = "br" if at_site == "hq" else "hq"
    out = []
    for u in UPLINKS:
        for v in UPLINKS:
            if (at_site == site and u == uplink) or (other == site and v == uplink):
                out.append(f"{other}:{u}-{v}")
    return out


def _next_edge_after(timeline: list[tuple[float, float, str, str, dict[str, Any]]],
                     down: tuple[tuple[float, float], ...], applied: float, end: float) -> float:
    times = [t for _, t, *_ in timeline] + [t for pair in down for t in pair]
    later = [t for t in times if t > applied]
    return min(later) if later else end


def _gap(arrivals: np.ndarray, start: int, end: int) -> int:
    """Longest interval between consecutive arrivals overlapping [start, end] (plain Python)."""
    before = [int(x) for x in arrivals if x <= start]
    inside = [int(x) for x in arrivals if start < x < end]
    after = [int(x) for x in arrivals if x >= end]
    points = [before[-1] if before else start, *inside, after[0] if after else end]
    return max(b - a for a, b in itertools.pairwise(points)) if len(points) > 1 else 0


def write_raw_dir(directory: str | Path, run: dict[str, Any], *,
                  timeline: Sequence[tuple[float, float, str, str, dict[str, Any]]] = (),
                  packets: Sequence[tuple[str, int, int, int | None, str]] = (),
                  path_metrics: Sequence[Sequence[Any]] = (),
                  events: Sequence[dict[str, Any]] = ()) -> Path:
    """Write a raw directory from plain rows (for hand-made cases): timeline rows are
    (at_s, applied_at, action, target, params), packets (flow, seq, sent_ns, recv_ns or None, path),
    path metrics in PATH_METRIC_COLUMNS order. Returns DIR."""
    d = Path(directory)
    raw = d / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_json(raw / "run.json", run)
    write_csv(raw / "timeline.csv", TIMELINE_COLUMNS,
              ([repr(at_s), repr(app), action, target, json.dumps(prm, sort_keys=True)]
               for at_s, app, action, target, prm in timeline))
    write_csv(raw / "packets.csv", PACKET_COLUMNS,
              ([flow, seq, sent, "" if recv is None else recv, path] for flow, seq, sent, recv, path in packets))
    write_csv(raw / "path_metrics.csv", PATH_METRIC_COLUMNS, path_metrics)
    write_events(raw / "events.jsonl", [(None, list(events))])
    return d
