"""The failover ledger: per edge that breaks or degrades a link, and per flow then on that link, when
each stage of the failover happened, relative to the moment the impairment took effect.

Stages (ms after the edge's `applied_at`, None when it did not happen within the edge's window, which
is [edge, next edge or end of run)):
  * impairment_applied     -- 0 by definition (timeline.csv applied_at);
  * first_probe_lost       -- the first ProbeLost event at the flow's source site for a candidate path:
                              the moment the agent gave up on the first unanswered probe of a run of
                              misses (its timeout; `sent_at` says when it left), exact to the agent's
                              clock. Runs written before that event existed have none: for them only,
                              the first path_metrics sample where a candidate's cumulative
                              probes_timed_out rose stands in (late by up to the sampling interval);
  * path_declared          -- the first PathStatusChanged at the source site making a candidate path
                              worse (to degraded or down); `declared` says which;
  * routing_decision       -- a FailoverTriggered at the source site whose from_path is a candidate.
                              The agent's router works per slot (an aggregate), so it is matched by path
                              and time, not by the flow's 5-tuple; when several slots move, the one
                              whose to_path the flow's packets were seen on wins, then the one whose
                              policy is named like the flow's class, then the earliest;
  * steering_changed       -- the first SteeringApplied at the source site at or after that decision
                              (naming its to_path, if it lists paths), at its `begun_at` (the kernel
                              transaction handed over: the switch happened between then and `at`, and a
                              packet may take the new path from the first instant; runs without it: `at`);
  * first_packet_new_path  -- the send time of the flow's first packet, at or after the edge, on a
                              path other than the one it was on (needs packets.csv's `path`);
  * sla_restored           -- the earliest of: the next SlaRestored at the source site for a
                              candidate path (subject `path` or `path/class`, class matching) and the
                              send time at which the flow's rolling SLA held again after breaking
                              (`sla_violated_ms` says when it first broke after the edge; both None:
                              it never broke).

Every row is in order: each stage is at or after the ones before it that happened. That is a matter of
matching each stage to its cause, not of adjusting times: the flow's move is matched first (its first
packet on a new path), and a decision or steering change after that packet did not put it there; a
declaration after the routing decision did not cause it (a score below the policy's threshold, or a
dead tunnel, moves flows off a path the monitor still calls Up), and a probe lost after the
declaration did not lead to it: the earlier stages are the first events no later than the first stage
after them that happened. The SLA restore is the first one at or after the declaration, decision,
steering and first packet (one before the flow moved ended an earlier break, not this one), and the
first probe lost is bounded by it too (a probe lost after the SLA came back did not break it).
`stage_order_problems` checks a ledger for this.

Candidate paths: the flow's path at the edge (the path of its last packet sent before it) when the
packets name paths; else every path of the source site toward the flow's destination on that link.
A flow is on the ledger for an edge when it is active then and a candidate path crosses the link --
and, when its path is unknown, when its site's router also moved a candidate path or the flow lost
packets in the window (otherwise every flow that *might* have used the link would be listed).

Also per entry: `gap_ms`, the longest interval between the flow's arrivals over the window (see
flows.longest_gap), and `lost_packets`, the flow's packets sent in the window and lost; both over the
window clipped to the flow's active time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emulation.measure.flows import NS, arrivals, longest_gap, lost_between
from emulation.measure.rundata import FlowSpec, RunData
from emulation.measure.sla import rolling_break_and_restores
from emulation.measure.timeline import Edge, edges, on_link, path_leads_to, site_paths, window_end

STAGES = ("impairment_applied", "first_probe_lost", "path_declared", "routing_decision", "steering_changed",
          "first_packet_new_path", "sla_restored")
STAGE_TITLES = {
    "impairment_applied": "impairment applied", "first_probe_lost": "first probe lost",
    "path_declared": "path declared down/degraded", "routing_decision": "routing decision",
    "steering_changed": "steering changed", "first_packet_new_path": "first packet on new path",
    "sla_restored": "SLA restored",
}
_RANK = {"up": 0, "degraded": 1, "down": 2}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    flow: str
    event: str                 # the edge's label, e.g. "cut hq.isp1"
    action: str
    link: str
    at_s: float                # scheduled scenario time of the edge
    applied_s: float           # scenario time it took effect
    window_end_s: float        # scenario time the window ends
    from_path: str | None
    to_path: str | None
    declared: str | None       # "down" / "degraded"
    stages_ms: dict[str, float | None]
    sla_violated_ms: float | None
    gap_ms: float | None
    lost_packets: int | None

    @property
    def detect_ms(self) -> float | None:
        return self.stages_ms["path_declared"]

    @property
    def recovered_ms(self) -> float | None:
        """When traffic flowed again: the first packet on the new path, else the routing decision."""
        s = self.stages_ms
        return s["first_packet_new_path"] if s["first_packet_new_path"] is not None else s["steering_changed"]


def _ms(t: float | None, ref: float) -> float | None:
    return None if t is None else (t - ref) * 1000.0


def _current_path(run: RunData, spec: FlowSpec, at_ns: int) -> str | None:
    if not spec.has_packets:
        return None
    a = arrivals(run, spec.name)
    sel = np.flatnonzero((a.sent_ns < at_ns) & (a.path != ""))
    return str(a.path[sel[-1]]) if len(sel) else None


def _first(df: pd.DataFrame) -> pd.Series | None:
    return None if df.empty else df.iloc[0]


def _candidates(run: RunData, spec: FlowSpec, edge: Edge, current: str | None) -> list[str]:
    if current is not None:
        return [current] if on_link(run, spec.src_site, current, edge.target) else []
    return [p for p in site_paths(run, spec.src_site)
            if path_leads_to(p, spec.dst_site) and on_link(run, spec.src_site, p, edge.target)]


def _entry(run: RunData, spec: FlowSpec, edge: Edge, end: float) -> LedgerEntry | None:
    t0 = run.run.t0
    applied_ns = run.t0_ns + round((edge.applied_at - t0) * NS)
    end_ns = run.t0_ns + round((end - t0) * NS)
    rel_applied = edge.applied_at - t0
    if not (spec.start_s <= rel_applied < spec.stop_s):
        return None
    current = _current_path(run, spec, applied_ns)
    cands = _candidates(run, spec, edge, current)
    if not cands:
        return None
    site = spec.src_site
    ref = edge.applied_at
    ev = run.events
    ev = ev[(ev["site"] == site) & (ev["at"] >= ref) & (ev["at"] < end)]
    new_path, first_new = _first_new_packet(run, spec, current, cands, applied_ns, end_ns, ref)
    decision = _decision(ev, spec, cands, new_path, first_new)
    decision_at = None if decision is None else float(decision["at"])
    steering = _steering(ev, decision, first_new)
    # the declaration: the first one no later than the first action that followed it
    action = next((t for t in (decision_at, steering, first_new) if t is not None), None)
    declared_row = _declaration(ev, cands, action)
    declared_at = None if declared_row is None else float(declared_row["at"])
    anchor = max([ref, *(t for t in (declared_at, decision_at, steering, first_new) if t is not None)])
    sla_back, sla_broke = _sla_restored(run, spec, ev, cands, anchor, applied_ns, end_ns)
    # the first probe lost: no later than the first stage after it
    bound = next((t for t in (declared_at, action, sla_back) if t is not None), None)
    probe_lost = _first_probe_lost(run, ev, site, cands, ref, end, bound)
    gap_ms: float | None = None
    lost: int | None = None
    if spec.has_packets:
        a = arrivals(run, spec.name)
        lo = max(applied_ns, a.ns(spec.start_s))
        hi = min(end_ns, a.ns(spec.stop_s))
        gap_ns, _ = longest_gap(a.arrival_times(), lo, hi)
        gap_ms = gap_ns / 1e6
        lost = lost_between(a, lo, hi)
    if current is None and decision is None and not lost:
        # the flow's path is unknown: count it in only when its site's router moved a candidate path
        # or it lost packets, rather than every flow that *might* have been on the link
        return None
    stages = {
        "impairment_applied": 0.0,
        "first_probe_lost": _ms(probe_lost, ref),
        "path_declared": _ms(declared_at, ref),
        "routing_decision": _ms(decision_at, ref),
        "steering_changed": _ms(steering, ref),
        "first_packet_new_path": _ms(first_new, ref),
        "sla_restored": _ms(sla_back, ref),
    }
    to_path = str(decision["to_path"]) if decision is not None else new_path
    from_path = current if current is not None else (
        str(decision["from_path"]) if decision is not None
        else str(declared_row["path_id"]) if declared_row is not None else None)
    return LedgerEntry(
        flow=spec.name, event=edge.label, action=edge.action, link=edge.target, at_s=edge.at_s,
        applied_s=rel_applied, window_end_s=end - t0, from_path=from_path, to_path=to_path,
        declared=None if declared_row is None else str(declared_row["new"]), stages_ms=stages,
        sla_violated_ms=_ms(sla_broke, ref), gap_ms=gap_ms, lost_packets=lost)


def _wall(run: RunData, ns: np.ndarray) -> np.ndarray:
    out: np.ndarray = run.run.t0 + (ns - run.t0_ns) / NS
    return out


def _first_new_packet(run: RunData, spec: FlowSpec, current: str | None, cands: list[str], applied_ns: int,
                      end_ns: int, ref: float) -> tuple[str | None, float | None]:
    """The flow's move: the path and send time of its first packet on another path."""
    if not spec.has_packets:
        return None, None
    a = arrivals(run, spec.name)
    other = (a.path != "") & ((a.path != current) if current is not None else ~np.isin(a.path, cands))
    sel = np.flatnonzero((a.sent_ns >= applied_ns) & (a.sent_ns < end_ns) & other)
    sel = sel[_wall(run, a.sent_ns[sel]) >= ref]
    if not len(sel):
        return None, None
    return str(a.path[sel[0]]), float(_wall(run, a.sent_ns[sel[:1]])[0])


def _decision(ev: pd.DataFrame, spec: FlowSpec, cands: list[str], new_path: str | None,
              first_new: float | None) -> Any:
    """The decision that moved the flow (a FailoverTriggered row): none after its first packet on the
    new path; the one to that path, else one of its policy, else the first."""
    fo = ev[(ev["kind"] == "FailoverTriggered") & ev["from_path"].isin(cands)]
    if first_new is not None:
        fo = fo[fo["at"] <= first_new]
    if fo.empty:
        return None
    for pick in (fo[fo["to_path"] == new_path] if new_path else fo.iloc[:0],
                 fo[fo["policy"] == spec.traffic_class], fo):
        if not pick.empty:
            return pick.iloc[0]
    return None


def _steering(ev: pd.DataFrame, decision: Any, first_new: float | None) -> float | None:
    """The kernel's change for the decision: at or after it, not after the packet it let through."""
    if decision is None:
        return None
    st = ev[ev["kind"] == "SteeringApplied"]
    st_at = st["begun_at"].where(st["begun_at"].notna(), st["at"])
    ok = (st_at >= float(decision["at"])).to_numpy(dtype=bool, copy=True)
    ok &= np.array([not paths or decision["to_path"] in paths for paths in st["paths"]], dtype=bool)
    if first_new is not None:
        ok &= (st_at <= first_new).to_numpy(dtype=bool)
    return float(st_at[ok].iloc[0]) if ok.any() else None


def _declaration(ev: pd.DataFrame, cands: list[str], action: float | None) -> Any:
    """The first PathStatusChanged of a candidate path for the worse, no later than `action`."""
    psc = ev[(ev["kind"] == "PathStatusChanged") & ev["path_id"].isin(cands)]
    worse = np.array([_RANK.get(n, -1) > _RANK.get(o, 3) and n in ("down", "degraded")
                      for o, n in zip(psc["old"], psc["new"], strict=True)], dtype=bool)
    psc = psc[worse] if len(psc) else psc
    if action is not None:
        psc = psc[psc["at"] <= action]
    return _first(psc)


def _sla_restored(run: RunData, spec: FlowSpec, ev: pd.DataFrame, cands: list[str], anchor: float,
                  applied_ns: int, end_ns: int) -> tuple[float | None, float | None]:
    """(SLA restored, SLA broken): the agent's SlaRestored for the path/class, or the flow's own
    rolling SLA, at or after the failover's stages (`anchor`); when the flow's rolling SLA broke."""
    restored: list[float] = []
    sr = ev[(ev["kind"] == "SlaRestored") & (ev["at"] >= anchor)]
    if not sr.empty:
        subj = sr["subject"]
        match = subj.isin(cands) | subj.isin([f"{c}/{spec.traffic_class}" for c in cands])
        cls_ok = (sr["traffic_class"] == "") | (sr["traffic_class"] == spec.traffic_class)
        hit = sr[match & cls_ok]
        if not hit.empty:
            restored.append(float(hit["at"].iloc[0]))
    broke_ns, backs_ns = rolling_break_and_restores(run, spec, applied_ns, end_ns)
    backs = _wall(run, backs_ns)
    backs = backs[backs >= anchor]
    if len(backs):
        restored.append(float(backs[0]))
    sla_broke = None if broke_ns is None else run.run.t0 + (broke_ns - run.t0_ns) / NS
    return (min(restored) if restored else None), sla_broke


def _first_probe_lost(run: RunData, ev: pd.DataFrame, site: str, cands: list[str], ref: float, end: float,
                      bound: float | None) -> float | None:
    """The first ProbeLost of a candidate path in `ev` (the site's events of the window), no later than
    `bound`. A run without any ProbeLost event (written before they existed) falls back on the first
    path_metrics sample in the window where a candidate's probes_timed_out rose."""
    if has_probe_lost(run):
        pl = ev[(ev["kind"] == "ProbeLost") & ev["path_id"].isin(cands)]
        if bound is not None:
            pl = pl[pl["at"] <= bound]
        return float(pl["at"].iloc[0]) if not pl.empty else None
    pm = run.path_metrics
    pm = pm[(pm["site"] == site) & pm["path"].isin(cands)]
    if pm.empty:
        return None
    inc = pm.groupby("path", sort=False)["probes_timed_out"].diff().fillna(0) > 0
    hit = pm[inc & (pm["at"] >= ref) & (pm["at"] < end)]
    if bound is not None:
        hit = hit[hit["at"] <= bound]
    return float(hit["at"].min()) if not hit.empty else None


def has_probe_lost(run: RunData) -> bool:
    """Whether the run's agents said when probes were lost (ProbeLost events): every run written since
    the event exists does, as soon as any probe of any path went unanswered."""
    key = "ledger:has_probe_lost"
    if key not in run._cache:
        run._cache[key] = bool((run.events["kind"] == "ProbeLost").any())
    out: bool = run._cache[key]
    return out


def ledger(run: RunData) -> list[LedgerEntry]:
    """The ledger of the whole run, ordered by edge then flow name."""
    out: list[LedgerEntry] = []
    for edge in edges(run):
        if not edge.breaking:
            continue
        end = window_end(run, edge)
        for spec in sorted(run.run.flows, key=lambda f: f.name):
            entry = _entry(run, spec, edge, end)
            if entry is not None:
                out.append(entry)
    return out


def stage_order_problems(entries: Iterable[LedgerEntry]) -> list[str]:
    """Every place a ledger row goes back in time: a stage earlier than a stage before it (stages that
    did not happen are skipped). Empty for a sound ledger."""
    out: list[str] = []
    for e in entries:
        prev: tuple[str, float] | None = None
        for s in STAGES:
            v = e.stages_ms[s]
            if v is None:
                continue
            if prev is not None and v < prev[1]:
                out.append(f"{e.event} · {e.flow}: {s} at {v:.3f} ms is before {prev[0]} at {prev[1]:.3f} ms")
            if prev is None or v >= prev[1]:
                prev = (s, v)
    return out


@dataclass(frozen=True, slots=True)
class Detection:
    """How long the agents took to notice a breaking edge, on any site: the first PathStatusChanged
    making a path on the link worse (`detect_ms`; `site`, `path`, `declared` say which), and the first
    declaring one Down (`down_ms`), within the edge's window."""

    event: str
    action: str
    link: str
    at_s: float
    detect_ms: float | None
    site: str | None
    path: str | None
    declared: str | None
    down_ms: float | None


def detections(run: RunData) -> list[Detection]:
    ev = run.events[run.events["kind"] == "PathStatusChanged"]
    out: list[Detection] = []
    for edge in edges(run):
        if not edge.breaking:
            continue
        end = window_end(run, edge)
        cand = ev[(ev["at"] >= edge.applied_at) & (ev["at"] < end)]
        hit = None
        down_at: float | None = None
        for row in cand.itertuples(index=False):
            if (row.new in ("down", "degraded") and _RANK.get(row.new, -1) > _RANK.get(row.old, 3)
                    and on_link(run, row.site, row.path_id, edge.target)):
                hit = hit or row
                if row.new == "down":
                    down_at = float(row.at)
                    break
        out.append(Detection(
            event=edge.label, action=edge.action, link=edge.target, at_s=edge.at_s,
            detect_ms=None if hit is None else (float(hit.at) - edge.applied_at) * 1000.0,
            site=None if hit is None else str(hit.site), path=None if hit is None else str(hit.path_id),
            declared=None if hit is None else str(hit.new),
            down_ms=None if down_at is None else (down_at - edge.applied_at) * 1000.0))
    return out


def ledger_frame(entries: Iterable[LedgerEntry]) -> pd.DataFrame:
    """One row per ledger entry: flow, event, link, at_s, from_path, to_path, declared, gap_ms,
    lost_packets, detect_ms, sla_violated_ms and one `<stage>_ms` column per stage."""
    rows = []
    for e in entries:
        rows.append({"flow": e.flow, "event": e.event, "link": e.link, "at_s": e.at_s, "applied_s": e.applied_s,
                     "window_end_s": e.window_end_s, "from_path": e.from_path, "to_path": e.to_path,
                     "declared": e.declared, "gap_ms": e.gap_ms, "lost_packets": e.lost_packets,
                     "detect_ms": e.detect_ms, "sla_violated_ms": e.sla_violated_ms,
                     **{f"{s}_ms": e.stages_ms[s] for s in STAGES}})
    cols = ["flow", "event", "link", "at_s", "applied_s", "window_end_s", "from_path", "to_path", "declared",
            "gap_ms", "lost_packets", "detect_ms", "sla_violated_ms", *[f"{s}_ms" for s in STAGES]]
    df = pd.DataFrame(rows, columns=cols)
    df["lost_packets"] = df["lost_packets"].astype("Int64")
    return df

