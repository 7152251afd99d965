"""The report's tables, built once (with pandas) and rendered as Markdown or HTML."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from emulation.measure.analysis import Analysis
from emulation.measure.expectations import ExpectationResult
from emulation.measure.ledger import STAGE_TITLES, STAGES
from emulation.measure.meshtimes import mesh_times

DASH = "–"


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame     # every cell already a string
    note: str = ""

    def to_markdown(self) -> str:
        cols = [str(c) for c in self.frame.columns]

        def esc(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for row in self.frame.itertuples(index=False):
            lines.append("| " + " | ".join(esc(str(v)) for v in row) + " |")
        if self.frame.empty:
            lines.append("| " + " | ".join([DASH] * len(cols)) + " |")
        return "\n".join(lines)

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.frame.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                       for row in self.frame.itertuples(index=False))
        if self.frame.empty:
            body = f'<tr><td colspan="{len(self.frame.columns)}">none</td></tr>'
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def num(v: float | int | None, digits: int = 1, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return DASH
    text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return f"{text} {unit}".rstrip()


def expectation_value(e: ExpectationResult) -> str:
    v = e.value
    if v is None:
        return DASH
    if e.type in ("failover_gap", "detect_time", "join_time", "converged"):
        return num(float(v) * 1000.0, 1, "ms")
    if e.type == "sla_compliance":
        return num(float(v) * 100.0, 2, "%")
    return str(v)


RESULT_WORDS = {"passed": "PASS", "failed": "FAIL", "inconclusive": "INCONCLUSIVE"}


def expectations_table(a: Analysis) -> Table:
    rows = [{"result": RESULT_WORDS[e.verdict], "expectation": e.text, "type": e.type,
             "value": expectation_value(e), "platform": e.reason or ""} for e in a.expectations]
    cols = ["result", "expectation", "type", "value"]
    if any(e.reason for e in a.expectations):
        cols.append("platform")
    note = ("INCONCLUSIVE: the expectation missed where the platform's measured noise (a host stall, relays "
            "releasing frames late) accounts for the miss; nothing else failed. See the platform table."
            if a.verdict == "inconclusive" else "")
    return Table("Expectations", pd.DataFrame(rows, columns=cols), note)


def _rtt_text(rc: Any) -> str:
    if not isinstance(rc, dict) or not rc.get("worst"):
        return DASH
    w = rc["worst"]
    return (f"{rc.get('paths', 0)} paths, {rc.get('warned', 0)} beyond the warning margin; furthest: {w['site']} "
            f"{w['path']} {w['measured_ms']:.1f} ms for {w['expected_ms']:.1f} ms ({w['off_ms']:+.1f} ms)")


def platform_table(a: Analysis) -> Table | None:
    """What the host did during the run (Mininet runs only): beside the verdict, so a reader can tell
    the platform's noise from the SD-WAN's behaviour."""
    pf = a.platform
    if not pf:
        return None
    comp = pf.get("components_mean_pct") or {}
    comp95 = pf.get("components_p95_pct") or {}
    rows = [
        {"measure": "host CPU busy (all cores = 100 %)",
         "value": f"mean {num(pf.get('cpu_busy_mean_pct'), 1, '%')}, p95 {num(pf.get('cpu_busy_p95_pct'), 1, '%')}, "
                  f"max {num(pf.get('cpu_busy_max_pct'), 1, '%')} over {pf.get('seconds', 0)} s"},
        {"measure": "CPU by component (mean / p95)",
         "value": ", ".join(f"{c} {num(comp.get(c), 1)} / {num(comp95.get(c), 1)} %" for c in comp)},
        {"measure": "VM steal (max of a second)", "value": num(pf.get("steal_max_pct"), 1, "%")},
        {"measure": "longest host stall", "value": f"{num(pf.get('max_stall_ms'), 1, 'ms')} "
                                                   f"({pf.get('stalls', 0)} stalls of 20 ms or more)"},
        {"measure": "agents' RTTs before the start vs the scenario",
         "value": _rtt_text(pf.get("rtt_check"))},
        {"measure": "relays: frames released late (p99 / max)",
         "value": f"{num(pf.get('relay_late_p99_ms'), 3, 'ms')} / {num(pf.get('relay_late_max_ms'), 3, 'ms')} "
                  f"over {pf.get('relay_frames_held', 0):,} frames ({', '.join(pf.get('relay_sched') or []) or '?'})"},
    ]
    return Table("Platform", pd.DataFrame(rows, columns=["measure", "value"]),
                 "Measured during the run (raw/platform.csv, raw/host_stalls.csv). Late relays add delay the "
                 "scenario did not ask for; a stall stops the wire and every agent at once.")


def failover_table(a: Analysis) -> Table:
    rows = []
    for e in sorted(a.ledger, key=lambda e: (e.at_s, e.event, e.flow)):
        row = {"event": e.event, "at (s)": num(e.at_s, 3), "flow": e.flow,
               "from → to": f"{e.from_path or '?'} → {e.to_path or DASH}",
               "declared": e.declared or DASH}
        for s in STAGES[1:]:
            row[f"{STAGE_TITLES[s]} (ms)"] = num(e.stages_ms[s], 1)
        row["gap (ms)"] = num(e.gap_ms, 1)
        row["lost"] = num(e.lost_packets)
        rows.append(row)
    cols = ["event", "at (s)", "flow", "from → to", "declared", *[f"{STAGE_TITLES[s]} (ms)" for s in STAGES[1:]],
            "gap (ms)", "lost"]
    return Table("Failover timing", pd.DataFrame(rows, columns=cols),
                 note="Times are ms after the impairment took effect; – means it did not happen before the "
                      "next timeline event. The gap is the longest interval between the flow's arrivals.")


def sla_table(a: Analysis) -> Table:
    rows = []
    for s in a.sla:
        t = a.run.run.target_for(s.traffic_class)
        target = DASH if t is None else ", ".join(
            x for x in (None if t.latency_ms is None else f"p95 ≤ {t.latency_ms:g} ms",
                        None if t.loss_pct is None else f"loss ≤ {t.loss_pct:g} %",
                        None if t.jitter_ms is None else f"jitter ≤ {t.jitter_ms:g} ms") if x)
        rows.append({"flow": s.flow, "class": s.traffic_class, "target": target,
                     "compliance": num(s.compliance_pct, 2, "%"), "windows": f"{s.compliant_windows}/{s.windows}",
                     "p50 (ms)": num(s.latency_p50_ms, 2), "p95 (ms)": num(s.latency_p95_ms, 2),
                     "p99 (ms)": num(s.latency_p99_ms, 2), "jitter (ms)": num(s.jitter_ms, 2),
                     "loss": num(s.loss_pct, 3, "%")})
    cols = ["flow", "class", "target", "compliance", "windows", "p50 (ms)", "p95 (ms)", "p99 (ms)", "jitter (ms)",
            "loss"]
    return Table("SLA per flow", pd.DataFrame(rows, columns=cols),
                 note="Compliance: share of 1-second steps at which the class's trailing window (the agent's SLA "
                      "window) met every target. One-way delay; "
                      "jitter is the standard deviation of the delay.")


def flows_table(a: Analysis) -> Table:
    rows = [{"flow": f.flow, "type": f.type, "sites": f"{f.src_site} → {f.dst_site}", "sent": f.sent,
             "received": f.received, "lost": f.lost, "reordered": f.reordered, "duplicates": f.duplicates,
             "max gap (ms)": num(f.max_gap_ms, 1), "at (s)": num(f.max_gap_at_s, 3),
             "mean delay (ms)": num(f.latency_mean_ms, 2), "RFC 3550 jitter (ms)": num(f.jitter_rfc3550_ms, 3),
             "path changes": f.path_changes, "paths": ", ".join(f.paths) or DASH} for f in a.flows]
    cols = ["flow", "type", "sites", "sent", "received", "lost", "reordered", "duplicates", "max gap (ms)", "at (s)",
            "mean delay (ms)", "RFC 3550 jitter (ms)", "path changes", "paths"]
    return Table("Flows", pd.DataFrame(rows, columns=cols))


def paths_table(a: Analysis) -> Table:
    rows = []
    for p in a.paths:
        rows.append({
            "site": p.site, "path": p.path, "links": ", ".join(p.links) or DASH,
            "latency mean/min/max (ms)": "/".join(num(x, 1) for x in (p.latency_mean_ms, p.latency_min_ms,
                                                                      p.latency_max_ms)),
            "loss mean/max (%)": "/".join(num(x, 1) for x in (p.loss_mean_pct, p.loss_max_pct)),
            "score mean/min": "/".join(num(x, 1) for x in (p.score_mean, p.score_min)),
            "up/degraded/down (s)": "/".join(num(p.time_in_status_s[s], 1) for s in ("up", "degraded", "down")),
            "status changes": p.status_changes,
            "probes lost": f"{p.probes_timed_out}/{p.probes_sent}",
            "SLA by class": ", ".join(f"{c} {num(v, 1, '%')}" for c, v in p.sla_compliance_pct.items()) or DASH,
        })
    cols = ["site", "path", "links", "latency mean/min/max (ms)", "loss mean/max (%)", "score mean/min",
            "up/degraded/down (s)", "status changes", "probes lost", "SLA by class"]
    return Table("Paths (the agents' measurements)", pd.DataFrame(rows, columns=cols),
                 note="Latency is over the samples of a path that was not Down (a dead path has no latency: – when "
                      "it never answered). SLA by class: share of the time the path's own latency, loss and jitter "
                      "met the class's targets.")


def timeline_table(a: Analysis) -> Table:
    tl = a.run.timeline
    rows = [{"at (s)": num(float(r.at_s), 3), "applied (s)": num(float(r.t_s), 4), "action": r.action,
             "target": r.target, "params": json.dumps(r.params, sort_keys=True) if r.params else DASH}
            for r in tl.itertuples(index=False)]
    return Table("Timeline", pd.DataFrame(rows, columns=["at (s)", "applied (s)", "action", "target", "params"]))


def _names(sites: Any, most: int = 8) -> str:
    names = sorted(sites)
    shown = ", ".join(names[:most]) + (f" … ({len(names)} sites)" if len(names) > most else "")
    return shown or DASH


def mesh_table(a: Analysis) -> Table | None:
    """The mesh's membership changes and how long it took to settle after each, and the sites' joins
    (emulation.measure.meshtimes): runs with run.json's `mesh` only."""
    mesh = a.run.run.mesh
    if mesh is None:
        return None
    times = mesh_times(a.run)
    named = {str(e.get("site")) for e in a.run.run.expectations if e.get("type") == "join_time"}
    rows = []
    for c in times.changes:
        done = f"not converged: {_names(c.pending, 5)}" if c.time_s is None else num(c.time_s * 1000.0, 1, "ms")
        rows.append({"at (s)": num(c.at, 3), "change": c.cause, "sites": _names(c.live), "converged": done})
        for j in times.joins:
            if j.index == c.index and (c.index > 0 or j.site in named):
                rows.append({"at (s)": num(j.at, 3), "change": f"join {j.site}", "sites": j.site,
                             "converged": "not joined" if j.time_s is None else num(j.time_s * 1000.0, 1, "ms")})
    return Table("Mesh", pd.DataFrame(rows, columns=["at (s)", "change", "sites", "converged"]),
                 note="Each change of the live membership (the start: when the agents were spawned), its live "
                      "sites, and how long until every live site had exactly the paths the topology gives it, "
                      "each Up (before the next change); a join row: how long the joining site took to have "
                      "its own (the start's joins only for sites a join_time expectation names).")


def all_tables(a: Analysis) -> list[Table]:
    pf = platform_table(a)
    mesh = mesh_table(a)
    return [expectations_table(a), *([pf] if pf is not None else []), *([mesh] if mesh is not None else []),
            failover_table(a), sla_table(a), flows_table(a), paths_table(a), timeline_table(a)]
