"""The failover ledger: per edge that breaks or degrades a link, and per flow then on that link, when
each stage of the failover happened, relative to the moment the impairment took effect.

Stages (ms after the edge's `applied_at`, None when it did not happen within the edge's window):
  * impairment_applied     -- 0 by definition (timeline.csv applied_at);
  * first_probe_lost       -- the first path_metrics sample at the flow's source site, at or after the
                              edge, where the cumulative probes_timed_out of one of the flow's
                              candidate paths increased (so it is bounded by the sampling interval);
  * path_declared          -- the first PathStatusChanged at the source site making a candidate path
                              worse (to degraded or down); `declared` says which;
  * routing_decision       -- the first FailoverTriggered at the source site whose from_path is a
                              candidate. The agent's router works per slot (an aggregate), so it is
                              matched by path and time, not by the flow's 5-tuple; when several
                              slots move, the one whose to_path the flow's packets were seen on wins,
                              then the one whose policy is named like the flow's class, then the
                              earliest;
  * steering_changed       -- the first SteeringApplied at the source site at or after that decision
                              (naming its to_path, if it lists paths);
  * first_packet_new_path  -- the send time of the flow's first packet, at or after the edge, on a
                              path other than the one it was on (needs packets.csv's `path`);
  * sla_restored           -- the earliest of: the next SlaRestored at the source site for a
                              candidate path (subject `path` or `path/class`, class matching) and the
                              send time at which the flow's rolling SLA held again after breaking
                              (`sla_violated_ms` says when it broke; both None: it never broke).
Candidate paths: the flow's path at the edge (the path of its last packet sent before it) when the
packets name paths; else every path of the source site toward the flow's destination on that link.
A flow is on the ledger for an edge when it is active then and a candidate path crosses the link --
and, when its path is unknown, when its site's router also moved a candidate path or the flow lost
packets in the window (otherwise every flow that *might* have used the link would be listed).

Also per entry: `gap_ms`, the longest interval between the flow's arrivals over the window (see
flows.longest_gap), and `lost_packets`, the flow's packets sent in the window and lost; the window is
[edge, next edge or end of run], clipped to the flow's active time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emulation.measure.flows import NS, arrivals, has_path_data, longest_gap, lost_between
from emulation.measure.rundata import FlowSpec, RunData
from emulation.measure.sla import rolling_break_and_restore
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
    rel_applied = edge.applied_at - t0
    if not (spec.start_s <= rel_applied < spec.stop_s):
        return None
    current = _current_path(run, spec, applied_ns)
    cands = _candidates(run, spec, edge, current)
    if not cands:
        return None
    site = spec.src_site
    ref = edge.applied_at

    # first probe lost
    pm = run.path_metrics
    pm = pm[(pm["site"] == site) & pm["path"].isin(cands)]
    probe_lost: float | None = None
    if not pm.empty:
        inc = pm.groupby("path", sort=False)["probes_timed_out"].diff().fillna(0) > 0
        hit = pm[inc & (pm["at"] >= ref) & (pm["at"] < end)]
        probe_lost = float(hit["at"].min()) if not hit.empty else None

    ev = run.events
    ev = ev[(ev["site"] == site) & (ev["at"] >= ref) & (ev["at"] < end)]
    psc = ev[(ev["kind"] == "PathStatusChanged") & ev["path_id"].isin(cands)]
    worse = [_RANK.get(n, -1) > _RANK.get(o, 3) and n in ("down", "degraded")
             for o, n in zip(psc["old"], psc["new"], strict=True)]
    declared_row = _first(psc[np.array(worse, dtype=bool)] if len(psc) else psc)

    # the first packet on another path
    new_path: str | None = None
    first_new: float | None = None
    if spec.has_packets:
        a = arrivals(run, spec.name)
        end_ns = run.t0_ns + round((end - t0) * NS)
        other = (a.path != "") & ((a.path != current) if current is not None else ~np.isin(a.path, cands))
        sel = np.flatnonzero((a.sent_ns >= applied_ns) & (a.sent_ns < end_ns) & other)
        if len(sel):
            new_path = str(a.path[sel[0]])
            first_new = t0 + (int(a.sent_ns[sel[0]]) - run.t0_ns) / NS

    fo = ev[(ev["kind"] == "FailoverTriggered") & ev["from_path"].isin(cands)]
    decision = None
    if not fo.empty:
        for pick in (fo[fo["to_path"] == new_path] if new_path else fo.iloc[:0],
                     fo[fo["policy"] == spec.traffic_class], fo):
            if not pick.empty:
                decision = pick.iloc[0]
                break

    steering: float | None = None
    if decision is not None:
        st = ev[(ev["kind"] == "SteeringApplied") & (ev["at"] >= decision["at"])]
        st = st[np.array([not paths or decision["to_path"] in paths for paths in st["paths"]], dtype=bool)]
        steering = float(st["at"].iloc[0]) if not st.empty else None

    # SLA restored: the agent's SlaRestored for the path/class, or the flow's own rolling SLA
    restored: list[float] = []
    sr = ev[ev["kind"] == "SlaRestored"]
    if not sr.empty:
        subj = sr["subject"]
        match = subj.isin(cands) | subj.isin([f"{c}/{spec.traffic_class}" for c in cands])
        cls_ok = (sr["traffic_class"] == "") | (sr["traffic_class"] == spec.traffic_class)
        hit = sr[match & cls_ok]
        if not hit.empty:
            restored.append(float(hit["at"].iloc[0]))
    broke_ns, back_ns = rolling_break_and_restore(
        run, spec, applied_ns, run.t0_ns + round((end - t0) * NS))
    if back_ns is not None:
        restored.append(t0 + (back_ns - run.t0_ns) / NS)
    sla_broke = None if broke_ns is None else t0 + (broke_ns - run.t0_ns) / NS

    gap_ms: float | None = None
    lost: int | None = None
    if spec.has_packets:
        a = arrivals(run, spec.name)
        lo = max(applied_ns, a.ns(spec.start_s))
        hi = min(run.t0_ns + round((end - t0) * NS), a.ns(spec.stop_s))
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
        "path_declared": _ms(None if declared_row is None else float(declared_row["at"]), ref),
        "routing_decision": _ms(None if decision is None else float(decision["at"]), ref),
        "steering_changed": _ms(steering, ref),
        "first_packet_new_path": _ms(first_new, ref),
        "sla_restored": _ms(min(restored) if restored else None, ref),
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


def uses_path_data(run: RunData) -> bool:
    """Whether any packet flow names its paths (the ledger's last stages need it)."""
    return any(has_path_data(arrivals(run, f.name)) for f in run.run.flows if f.has_packets)
