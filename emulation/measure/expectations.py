"""Expectations of run.json, judged against the measurements: each → (text, passed, value).

Parameters: `flow`, `link`, `site`, `path` (names), `max` / `min` (durations in seconds, counts, or
ratios 0..1), `during` ([from_s, to_s] in scenario time; default the flow's whole active time, or the
whole run). `value` is in the unit of the parameter it is compared with:

  failover_gap    max (s)   value: the longest interval between arrivals (flows.longest_gap) of the
                            flow -- or the worst over every packet flow -- during the window; it
                            includes failback gaps, which interrupt traffic too.
  lost_packets    max (n)   value: packets of the flow (or of every packet flow) sent in the window
                            and lost (whole run: also packets run.json counts but packets.csv lacks).
  sla_compliance  min (0..1) value: the flow's compliance ratio over the 1-s steps starting in the
                            window, each judged over the target's trailing window (measure.sla); the
                            worst flow when no flow is named; judged against the expectation's own
                            `target` if it has one (rundata.parse_target's forms), else the class's;
                            None without any target.
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
  join_time       max (s)   value: the slowest of `site`'s joins of the mesh (meshtimes.join_times); None
                            when one of them never completed, or the site never joined: a failure.
  converged       max (s)   value: the slowest convergence of the mesh after each membership change of the
                            timeline (meshtimes.convergence; the formation, when the timeline changes none:
                            the formation is the backend's bring-up, which a run on namespaces waits out before
                            its clock starts, and the report gives its time); None when one never converged.
The last two need run.json's `mesh` (a run of sites that discover each other); `site` is one of its sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emulation.measure.errors import RawDataError
from emulation.measure.flows import NS, FlowStats, arrivals, has_path_data, longest_gap, lost_between, path_runs
from emulation.measure.ledger import Detection
from emulation.measure.meshtimes import convergence, join_times, worst
from emulation.measure.platform import NO_NOISE, Noise
from emulation.measure.rundata import ClassTarget, FlowSpec, MonitorInfo, RunData, read_target
from emulation.measure.sla import flow_samples, windows
from emulation.measure.timeline import path_leads_to
from patronus.core import validate as val

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"


@dataclass(frozen=True, slots=True)
class ExpectationResult:
    type: str
    text: str
    passed: bool
    value: float | int | None
    verdict: str = ""             # passed | failed | inconclusive ("" → from `passed`)
    reason: str | None = None     # why inconclusive (the platform noise that explains the miss)

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", PASSED if self.passed else FAILED)


@dataclass(frozen=True, slots=True)
class _Params:
    flow: FlowSpec | None
    link: str | None
    site: str | None
    path: str | None
    max: float | None
    min: float | None
    during: tuple[float, float] | None
    target: ClassTarget | None


_REQUIRED = {"failover_gap": ("max",), "lost_packets": ("max",), "sla_compliance": ("min",),
             "path_changes": ("max",), "detect_time": ("max",), "flow_stays": ("flow",), "join_time": ("site", "max"),
             "converged": ("max",)}
_MESH_TYPES = ("join_time", "converged")


def _params(run: RunData, i: int, e: Mapping[str, Any]) -> _Params:
    """An expectation's parameters, read with the validation toolkit (`patronus.core.validate`): every
    problem at once, each named by its path in run.json, no value printed unbounded."""
    errs = val.Errors()
    p = f"expectations[{i}]"

    def num(key: str) -> float | None:
        v = e.get(key)
        return None if v is None else val.number(v, val.join(p, key), errs, what="a number")

    def name(key: str) -> str | None:
        v = e.get(key)
        return None if v is None else val.text(v, val.join(p, key), errs, "a name", nonempty=True, max_len=200)

    for key in _REQUIRED[e["type"]]:
        if e.get(key) is None:
            errs.add(val.join(p, key), f"missing (required by {e['type']})")
    flow = None
    fname = name("flow")
    if fname is not None:
        try:
            flow = run.run.flow(fname)
        except KeyError:
            errs.add(val.join(p, "flow"), f"{val.show(fname)} is not a flow of this run")
    during = None
    d = e.get("during")
    if d is not None:
        ends = val.items(d, val.join(p, "during"), errs, "two numbers (from_s, to_s)")
        if ends is not None and len(ends) != 2:
            errs.add(val.join(p, "during"), f"expected [from_s, to_s], got {val.show(d)}")
        elif ends is not None:
            lo = val.number(ends[0], val.item(val.join(p, "during"), 0), errs, what="a number of seconds")
            hi = val.number(ends[1], val.item(val.join(p, "during"), 1), errs, what="a number of seconds")
            if lo is not None and hi is not None:
                if lo > hi:
                    errs.add(val.join(p, "during"), f"expected from_s <= to_s, got {val.show(d)}")
                else:
                    during = (lo, hi)
    target = None
    if e.get("target") is not None:
        target = read_target(e["target"], val.join(p, "target"), errs)
    site = name("site")
    mesh = run.run.mesh
    if e["type"] in _MESH_TYPES and mesh is None:
        errs.add(val.join(p, "type"), f"{e['type']} needs the mesh section of run.json (a run of sites that "
                                      "discover each other)")
    elif site is not None and mesh is not None and site not in mesh.sites:
        errs.add(val.join(p, "site"), f"{val.show(site)} is not a site of this run's mesh")
    out = _Params(flow=flow, link=name("link"), site=site, path=name("path"), max=num("max"),
                  min=num("min"), during=during, target=target)
    if errs:
        raise RawDataError([("raw/run.json", f"{path}: {reason}") for path, reason in errs.items])
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


def _agent_move_times(run: RunData, lo_s: float, hi_s: float, site: str | None, flow: FlowSpec | None) -> list[float]:
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
    moves = {(round(float(at), 6), s, f): float(t) for at, s, f, t in zip(ev["at"], ev["site"], ev["from_path"],
                                                                         ev["t_s"], strict=True)}
    return sorted(moves.values())


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


def evaluate(run: RunData, stats: Mapping[str, FlowStats], detections: list[Detection],
             noise: Noise = NO_NOISE) -> list[ExpectationResult]:
    """Judge every expectation of run.json, in its order. A failed expectation whose miss the
    platform's `noise` can account for, where it was decided, is inconclusive (see _explained)."""
    out: list[ExpectationResult] = []
    for i, e in enumerate(run.run.expectations):
        p = _params(run, i, e)
        kind = str(e["type"])
        value, passed = _judge(run, p, kind, stats, detections)
        verdict, reason = PASSED if passed else FAILED, None
        if not passed and not noise.empty:
            reason = _explained(run, p, kind, value, detections, noise)
            if reason is not None:
                verdict = INCONCLUSIVE
        out.append(ExpectationResult(type=kind, text=str(e["text"]), passed=bool(passed), value=value,
                                     verdict=verdict, reason=reason))
    return out


def _judge(run: RunData, p: _Params, kind: str, stats: Mapping[str, FlowStats],
           detections: list[Detection]) -> tuple[float | int | None, bool]:
    value: float | int | None = None
    passed = False
    if kind in _MESH_TYPES:
        if kind == "join_time":
            assert p.site is not None
            value = worst(j.time_s for j in join_times(run, p.site))
        else:
            changes = convergence(run)
            value = worst(c.time_s for c in [c for c in changes if c.cause != "start"] or changes)
        passed = value is not None and p.max is not None and value <= p.max
    elif kind == "failover_gap":
        gaps = [g for g, _, _ in _gaps(run, p)]
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
        ratios = [sum(1 for w in judged if w.compliant) / len(judged) for judged, _ in _sla_windows(run, p).values()]
        value = min(ratios) if ratios else None
        passed = value is not None and p.min is not None and value >= p.min
    elif kind == "path_changes":
        if p.flow is not None:
            value = len(_change_times(run, p, p.flow))
        else:
            lo, hi = _span(run, p, None)
            value = len(_agent_move_times(run, lo, hi, p.site, None))
        passed = p.max is not None and value <= p.max and (p.min is None or value >= p.min)
    elif kind == "detect_time":
        scope = _detections_in_scope(run, p, detections)
        found = [d.down_ms / 1000.0 for d in scope if d.down_ms is not None]
        value = max(found) if found else None
        passed = (bool(scope) and len(found) == len(scope) and value is not None and p.max is not None
                  and value <= p.max)
    elif kind == "flow_stays":
        assert p.flow is not None
        value = len(_change_times(run, p, p.flow))
        passed = value == 0
        if passed and p.path is not None and p.flow.has_packets:
            a = arrivals(run, p.flow.name)
            lo, hi = _span(run, p, p.flow)
            runs = path_runs(a, a.ns(lo), a.ns(hi))
            passed = all(r == p.path for r in runs)
    return value, bool(passed)


# -- what decided each kind, for the platform question ----------------------------------------------

def _gaps(run: RunData, p: _Params) -> list[tuple[float, float, FlowSpec]]:
    """(longest gap s, where it starts in scenario s, flow) of each packet flow in scope."""
    out = []
    for spec in _packet_flows(run, p):
        a = arrivals(run, spec.name)
        lo, hi = _span(run, p, spec)
        if hi > lo and np.any(a.received):
            gap, at = longest_gap(a.arrival_times(), a.gap_start_ns(lo), a.ns(hi))
            out.append((gap / NS, (at - run.t0_ns) / NS, spec))
    return out


def _sla_windows(run: RunData, p: _Params) -> dict[str, tuple[list[Any], float]]:
    """Per flow in scope with a target, its judged 1-s steps in the expectation's span, and the length
    of the trailing window each step is judged over."""
    flows = [p.flow] if p.flow is not None else sorted(run.run.flows, key=lambda f: f.name)
    out: dict[str, tuple[list[Any], float]] = {}
    for spec in flows:
        samples = flow_samples(run, spec)
        target = p.target or run.run.target_for(spec.traffic_class)
        if samples is None or target is None:
            continue
        lo, hi = _span(run, p, spec)
        judged = [w for w in windows(run, spec, samples, target) if w.compliant is not None and lo <= w.start_s < hi]
        if judged:
            out[spec.name] = (judged, max(1.0, target.window_s))
    return out


def _change_times(run: RunData, p: _Params, spec: FlowSpec) -> list[float]:
    """When the flow changed path in its span (scenario s): from its packets' paths when known, else
    from its site's router moves (see _agent_moves)."""
    lo, hi = _span(run, p, spec)
    if spec.has_packets:
        a = arrivals(run, spec.name)
        if has_path_data(a):
            sel = (a.path != "") & (a.sent_ns >= a.ns(lo)) & (a.sent_ns < a.ns(hi))
            paths, sent = a.path[sel], a.sent_ns[sel]
            change = np.flatnonzero(paths[1:] != paths[:-1]) + 1
            return [float((sent[k] - run.t0_ns) / NS) for k in change]
    return _agent_move_times(run, lo, hi, None, spec)


def _detections_in_scope(run: RunData, p: _Params, detections: list[Detection]) -> list[Detection]:
    lo, hi = _span(run, p, None)
    return [d for d in detections if d.action in ("cut", "flap") and (p.link is None or d.link == p.link)
            and lo <= d.at_s <= hi]


def _monitor(run: RunData, site: str | None) -> MonitorInfo | None:
    """The site's probe timers (the slowest of all sites' when `site` is None), if run.json has them."""
    mons = run.run.monitors
    if site is not None:
        return mons.get(site)
    return max(mons.values(), key=lambda m: m.reach_s, default=None)


def _detect_floor(run: RunData) -> float | None:
    """The fastest any site's monitor can declare a cut (None when run.json does not say)."""
    return min((m.fastest_detection_s for m in run.run.monitors.values()), default=None)


def _detection_reach(run: RunData, site: str | None) -> float:
    m = _monitor(run, site)
    return m.reach_s if m is not None else 0.1


def _probe_window_s(run: RunData, site: str | None) -> float:
    m = _monitor(run, site)
    return m.window_s if m is not None else 1.0


def _explained(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
               noise: Noise) -> str | None:
    """The reason, when the platform's noise where this expectation was decided accounts for its miss;
    None when the miss stands without it. The question, per kind, is counterfactual: take away what
    the platform took (stall time, relay lateness) and would it have passed?"""
    explain = _EXPLAINERS.get(kind)     # one counterfactual per kind, below
    return explain(run, p, kind, value, detections, noise) if explain is not None else None


def _explain_gap(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
                 noise: Noise) -> str | None:
    if p.max is None:
        return None
    worse = [(g, at, spec) for g, at, spec in _gaps(run, p) if g > p.max]
    if not worse:
        return None
    for g, at, _ in worse:
        if noise.disturbance(at, at + g) < g - p.max:
            return None
    g, at, spec = max(worse, key=lambda w: w[0])
    return (f"the {1000.0 * g:.0f} ms gap of {spec.name} from {at:.2f} s overlaps platform noise that can account "
            f"for its {1000.0 * (g - p.max):.0f} ms over the limit: {noise.describe(at, at + g)}")


def _explain_detect(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
                    noise: Noise) -> str | None:
    if p.max is None:
        return None
    floor = _detect_floor(run)
    if floor is not None and p.max < floor:
        return None         # no platform makes this monitor faster: the limit itself is out of reach
    slow = [d for d in _detections_in_scope(run, p, detections)
            if d.down_ms is None or d.down_ms / 1000.0 > p.max]
    if not slow or any(d.down_ms is None for d in slow):
        return None         # never detected: no stall hides a whole cut
    for d in slow:
        assert d.down_ms is not None
        at = d.at_s
        if noise.disturbance(at, at + d.down_ms / 1000.0) < d.down_ms / 1000.0 - p.max:
            return None
    d = max(slow, key=lambda x: x.down_ms or 0.0)
    return (f"detecting {d.event} took {d.down_ms:.0f} ms and platform noise in that time can account for the "
            f"{(d.down_ms or 0.0) - 1000.0 * p.max:.0f} ms over the limit: "
            f"{noise.describe(d.at_s, d.at_s + (d.down_ms or 0.0) / 1000.0)}")


def _explain_lost(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
                  noise: Noise) -> str | None:
    if p.max is None or value is None:
        return None
    explained = 0
    spans: list[tuple[float, float]] = []
    for spec in _packet_flows(run, p):
        a = arrivals(run, spec.name)
        lo, hi = _span(run, p, spec)
        sel = a.lost & (a.sent_ns >= a.ns(lo)) & (a.sent_ns < a.ns(hi))
        reach = _detection_reach(run, spec.src_site)
        for t in (a.sent_ns[sel] - run.t0_ns) / NS:
            if noise.notable(float(t) - reach, float(t) + 0.05):
                explained += 1
                spans.append((float(t) - reach, float(t)))
    if explained == 0 or value - explained > p.max:
        return None
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    return (f"{explained} of the {value} packets lost went while the platform was disturbed, and without them "
            f"the flow keeps its limit of {p.max:g}: {noise.describe(lo, hi)}")


def _explain_sla(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
                 noise: Noise) -> str | None:
    if p.min is None:
        return None
    bad: list[tuple[str, float, float]] = []
    for flow, (judged, window_s) in _sla_windows(run, p).items():
        failed = [w for w in judged if not w.compliant]
        # a step is judged over the trailing window ending with it: noise anywhere in that window counts
        noisy = [w for w in failed if noise.notable(w.start_s + 1.0 - window_s, w.start_s + 1.0)]
        ratio = (len(judged) - len(failed) + len(noisy)) / len(judged)
        if ratio < p.min:
            return None
        bad += [(flow, w.start_s + 1.0 - window_s, w.start_s + 1.0) for w in noisy]
    if not bad:
        return None
    lo, hi = min(a for _, a, _ in bad), max(b for _, _, b in bad)
    return (f"{len(bad)} of the non-compliant steps had platform noise in their window, and without them "
            f"compliance meets {100.0 * p.min:g} %: {noise.describe(lo, hi)}")


def _explain_changes(run: RunData, p: _Params, kind: str, value: float | int | None, detections: list[Detection],
                     noise: Noise) -> str | None:
    if value is None:
        return None
    site = p.flow.src_site if p.flow is not None else p.site
    times = (_change_times(run, p, p.flow) if p.flow is not None
             else _agent_move_times(run, *_span(run, p, None), p.site, None))
    look = _probe_window_s(run, site) + _detection_reach(run, site)
    noisy = [t for t in times if noise.notable(t - look, t)]
    rest = len(times) - len(noisy)
    limit = 0 if kind == "flow_stays" else p.max
    if not noisy or limit is None or rest > limit or (p.min is not None and rest < p.min and kind != "flow_stays"):
        return None
    return (f"{len(noisy)} of the {len(times)} path changes followed platform noise within the monitor's window "
            f"({look:.1f} s), and without them the flow keeps its limit: "
            f"{noise.describe(min(noisy) - look, max(noisy))}")


_EXPLAINERS: dict[str, Callable[[RunData, _Params, str, float | int | None, list[Detection], Noise], str | None]] = {
    "failover_gap": _explain_gap,
    "detect_time": _explain_detect,
    "lost_packets": _explain_lost,
    "sla_compliance": _explain_sla,
    "path_changes": _explain_changes,
    "flow_stays": _explain_changes,
}
