"""Expectations of run.json, judged against the measurements: each → (text, passed, value).

Parameters: `flow`, `link`, `site`, `path` (names), `max` / `min` (durations in seconds, counts, or
ratios 0..1), `during` ([from_s, to_s] in scenario time; default the flow's whole active time, or the
whole run). `value` is in the unit of the parameter it is compared with:

  failover_gap    max (s)   value: the longest interval between arrivals (flows.longest_gap) of the
                            flow -- or the worst over every packet flow -- during the window; it
                            includes failback gaps, which interrupt traffic too.
  lost_packets    max (n)   value: packets of the flow (or of every packet flow) sent in the window
                            and lost (whole run: also packets run.json counts but packets.csv lacks).
  sla_compliance  min (0..1) value: the flow's compliance ratio over the 1-s windows starting in the
                            window (the worst flow when no flow is named), judged against the
                            expectation's own `target` if it has one (rundata.parse_target's forms),
                            else the class's; None without any target.
  path_changes    max (n)   value: with a flow, how many times its packets changed path in the
                            window (from the agent's FailoverTriggered/Failback of its slot when the
                            packets name no paths: the slots of the flow's `policy` if run.json names
                            it, else of the policy named like its class); without, every FailoverTriggered/Failback (at
                            `site`, if given). An optional `min` must be reached too.
  detect_time     max (s)   value: the slowest time to Down (ledger.detections' down_ms) of the cuts
                            and flap down edges in the window on `link` (every link if not given). One
                            never declared Down fails it (value None if none was); none in scope fails.
  flow_stays      -         value: path changes of the flow in the window; passes at 0 (and, with
                            `path`, when every packet with a path took that one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emulation.measure.errors import RawDataError
from emulation.measure.flows import NS, FlowStats, arrivals, has_path_data, longest_gap, lost_between, path_runs
from emulation.measure.ledger import Detection
from emulation.measure.rundata import FlowSpec, RunData, SlaTarget, parse_target
from emulation.measure.sla import flow_samples, windows
from emulation.measure.timeline import path_leads_to


@dataclass(frozen=True, slots=True)
class ExpectationResult:
    type: str
    text: str
    passed: bool
    value: float | int | None


@dataclass(frozen=True, slots=True)
class _Params:
    flow: FlowSpec | None
    link: str | None
    site: str | None
    path: str | None
    max: float | None
    min: float | None
    during: tuple[float, float] | None
    target: SlaTarget | None


_REQUIRED = {"failover_gap": ("max",), "lost_packets": ("max",), "sla_compliance": ("min",),
             "path_changes": ("max",), "detect_time": ("max",), "flow_stays": ("flow",)}


def _params(run: RunData, i: int, e: Mapping[str, Any]) -> _Params:
    where = "raw/run.json"
    errs: list[tuple[str, str]] = []
    p = f"expectations[{i}]."

    def num(key: str) -> float | None:
        v = e.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
            errs.append((where, f"{p}{key}: expected a number, got {v!r}"))
            return None
        return float(v)

    def name(key: str) -> str | None:
        v = e.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            errs.append((where, f"{p}{key}: expected a name, got {v!r}"))
            return None
        return v

    for key in _REQUIRED[e["type"]]:
        if e.get(key) is None:
            errs.append((where, f"{p}{key}: missing (required by {e['type']})"))
    flow = None
    fname = name("flow")
    if fname is not None:
        try:
            flow = run.run.flow(fname)
        except KeyError:
            errs.append((where, f"{p}flow: {fname!r} is not a flow of this run"))
    during = None
    d = e.get("during")
    if d is not None:
        if (not isinstance(d, list) or len(d) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in d) or d[0] > d[1]):
            errs.append((where, f"{p}during: expected [from_s, to_s] with from_s <= to_s, got {d!r}"))
        else:
            during = (float(d[0]), float(d[1]))
    target = None
    if e.get("target") is not None:
        target, problems = parse_target(e["target"], f"{p}target")
        errs.extend((where, problem) for problem in problems)
    out = _Params(flow=flow, link=name("link"), site=name("site"), path=name("path"), max=num("max"),
                  min=num("min"), during=during, target=target)
    if errs:
        raise RawDataError(errs)
    return out


def _span(run: RunData, p: _Params, spec: FlowSpec | None) -> tuple[float, float]:
    lo, hi = (0.0, run.run.duration_s) if spec is None else (spec.start_s, spec.stop_s)
    if p.during is not None:
        lo, hi = max(lo, p.during[0]), min(hi, p.during[1])
    return lo, hi


def _packet_flows(run: RunData, p: _Params) -> list[FlowSpec]:
    if p.flow is not None:
        return [p.flow] if p.flow.has_packets else []
    return [f for f in sorted(run.run.flows, key=lambda f: f.name) if f.has_packets]


def _agent_moves(run: RunData, lo_s: float, hi_s: float, site: str | None, flow: FlowSpec | None) -> int:
    ev = run.events
    ev = ev[ev["kind"].isin(["FailoverTriggered", "Failback"]) & (ev["t_s"] >= lo_s) & (ev["t_s"] < hi_s)]
    if site is not None:
        ev = ev[ev["site"] == site]
    if flow is not None and flow.policy is not None:
        # the runner saw which policy classified the flow: its slots' moves are the flow's
        ev = ev[(ev["site"] == flow.src_site) & (ev["policy"] == flow.policy) &
                np.array([path_leads_to(str(x), flow.dst_site) for x in ev["from_path"]], dtype=bool)]
    elif flow is not None:
        ev = ev[ev["site"] == flow.src_site]
        same_class = ev[ev["policy"] == flow.traffic_class]
        if not same_class.empty:
            ev = same_class
        else:
            ev = ev[np.array([path_leads_to(str(x), flow.dst_site) for x in ev["from_path"]], dtype=bool)]
    # slots leaving one path at one instant are one move from any flow's point of view
    return len(set(zip(ev["at"].round(6), ev["site"], ev["from_path"], strict=True)))


def _path_changes(run: RunData, p: _Params, spec: FlowSpec) -> int:
    lo, hi = _span(run, p, spec)
    if spec.has_packets:
        a = arrivals(run, spec.name)
        if has_path_data(a):
            return max(0, len(path_runs(a, a.ns(lo), a.ns(hi))) - 1)
    return _agent_moves(run, lo, hi, None, spec)


def check_expectations(run: RunData) -> None:
    """Raise RawDataError listing every bad parameter of every expectation."""
    problems: list[tuple[str, str]] = []
    for i, e in enumerate(run.run.expectations):
        try:
            _params(run, i, e)
        except RawDataError as exc:
            problems.extend(exc.errors)
    if problems:
        raise RawDataError(problems)


def evaluate(run: RunData, stats: Mapping[str, FlowStats], detections: list[Detection]) -> list[ExpectationResult]:
    """Judge every expectation of run.json, in its order."""
    out: list[ExpectationResult] = []
    for i, e in enumerate(run.run.expectations):
        p = _params(run, i, e)
        kind = str(e["type"])
        value: float | int | None = None
        passed = False
        if kind == "failover_gap":
            gaps = []
            for spec in _packet_flows(run, p):
                a = arrivals(run, spec.name)
                lo, hi = _span(run, p, spec)
                if hi > lo and np.any(a.received):
                    gaps.append(longest_gap(a.arrival_times(), a.ns(lo), a.ns(hi))[0] / NS)
            value = max(gaps) if gaps else None
            passed = value is not None and p.max is not None and value <= p.max
        elif kind == "lost_packets":
            total = 0
            for spec in _packet_flows(run, p):
                if p.during is None:
                    total += stats[spec.name].lost
                else:
                    a = arrivals(run, spec.name)
                    lo, hi = _span(run, p, spec)
                    total += lost_between(a, a.ns(lo), a.ns(hi)) if hi > lo else 0
            value = total
            passed = p.max is not None and total <= p.max
        elif kind == "sla_compliance":
            flows = [p.flow] if p.flow is not None else sorted(run.run.flows, key=lambda f: f.name)
            ratios = []
            for spec in flows:
                samples = flow_samples(run, spec)
                target = p.target or run.run.target_for(spec.traffic_class)
                if samples is None or target is None:
                    continue
                lo, hi = _span(run, p, spec)
                judged = [w.compliant for w in windows(run, spec, samples, target)
                          if w.compliant is not None and lo <= w.start_s < hi]
                if judged:
                    ratios.append(sum(1 for ok in judged if ok) / len(judged))
            value = min(ratios) if ratios else None
            passed = value is not None and p.min is not None and value >= p.min
        elif kind == "path_changes":
            if p.flow is not None:
                value = _path_changes(run, p, p.flow)
            else:
                lo, hi = _span(run, p, None)
                value = _agent_moves(run, lo, hi, p.site, None)
            passed = p.max is not None and value <= p.max and (p.min is None or value >= p.min)
        elif kind == "detect_time":
            lo, hi = _span(run, p, None)
            scope = [d for d in detections if d.action in ("cut", "flap") and (p.link is None or d.link == p.link)
                     and lo <= d.at_s <= hi]
            found = [d.down_ms / 1000.0 for d in scope if d.down_ms is not None]
            value = max(found) if found else None
            passed = (bool(scope) and len(found) == len(scope) and value is not None and p.max is not None
                      and value <= p.max)
        elif kind == "flow_stays":
            assert p.flow is not None
            value = _path_changes(run, p, p.flow)
            passed = value == 0
            if passed and p.path is not None and p.flow.has_packets:
                a = arrivals(run, p.flow.name)
                lo, hi = _span(run, p, p.flow)
                runs = path_runs(a, a.ns(lo), a.ns(hi))
                passed = all(r == p.path for r in runs)
        out.append(ExpectationResult(type=kind, text=str(e["text"]), passed=bool(passed), value=value))
    return out
