"""A run directory's raw data: loading and validation (the contract between the runner and the reports).

    DIR/raw/run.json          the run: scenario, backends, seed, clocks, flows, links, SLA targets,
                              expectations
    DIR/raw/timeline.csv      at_s, applied_at, action, target, params (JSON text)
    DIR/raw/packets.csv       flow, seq, sent_ns, recv_ns (empty = lost), path (may be empty)
    DIR/raw/path_metrics.csv  site, path, at, status, latency_ms, jitter_ms, loss_pct, score,
                              probes_sent, probes_timed_out (cumulative counters)
    DIR/raw/events.jsonl      agent events, one JSON object a line, each with "site" and "at"
    DIR/raw/tcp.csv           optional: flow, at, bits_per_second
    DIR/raw/http.csv          optional: flow, at, latency_ms, ok

Every time is wall-clock seconds (float) unless its name ends in `_ns` (integer nanoseconds,
CLOCK_REALTIME); `run.json`'s `t0` is the wall time of scenario time 0. The loaded frames add
scenario-time columns (`t_s`, `sent_s`, `recv_s`) so analysis code never mixes the two.

`emulation.measure.load_run` checks everything before returning and raises one `RawDataError` listing every problem
with its file, line and column; nothing is analysed from data that failed a check. Nothing here
writes to the directory.

Details the analysis relies on:
  * packets.csv has one row per packet *sent* (a lost one with an empty recv_ns, and an empty sent_ns
    if the send time is unknown: it is then estimated from its neighbours' and the flow's rate); integers
    are plain digits (nanoseconds need all 64 bits: no "1.7e18"). `path` makes the ledger's "first packet on the
    new path" and per-flow path changes possible; without it they fall back on the agents' events.
  * timeline.csv: a flap is one row with `{"period_s"|"period", "count"[, "down_s"|"down"]}` or one row
    per edge with `{"state": "down"|"up"}`; a ramp is one row at its start (later steps, if logged, carry
    `{"step": k}`); `clear` is accepted beside the other actions.
  * run.json `flows[].policy` (optional): the agent policy that classified the flow, as the runner saw it
    in the agent's flow table; the slot events of that policy are then the flow's moves.
  * run.json `links[].paths`: path ids, or `site/path` (unambiguous with three sites or more); ids in the
    agent's `remote:local-remote_uplink` form need no entry at all (timeline.py).
  * `sla_targets` entries may also give `latency_percentile` (50, 95, 99) and use the agent's human form
    (`latency: "150ms"`); an `sla_compliance` expectation may carry its own `target`.
  * events.jsonl: kind, at, site always; ProbeLost path_id and sent_at (the first unanswered probe of a run
    of misses: sent then, given up on at `at`), PathStatusChanged path_id/old/new, FailoverTriggered and
    Failback from_path/to_path (and `policy`, matched against the flow's class when several slots move),
    SteeringApplied (optional `begun_at`: when the kernel transaction began; `at` is when it returned),
    SlaViolated/SlaRestored subject (and traffic_class); other kinds are kept and ignored. Runs written
    before ProbeLost existed have none (the ledger then falls back on path_metrics.csv). Mesh runs add
    AgentStarted (a fresh agent: every path of its site gone), PathAdded and PathRemoved (path_id, remote).
  * run.json `mesh` (optional: runs of a scenario with a `mesh:` section; `emulation.siteconf.mesh_doc`):
    the topology, each site's uplinks and region, and the changes of the live membership (`MeshRun`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emulation import rawfiles
from emulation.measure.errors import RawDataError
from patronus.core import validate as val
from patronus.core.mesh import MeshTopology
from patronus.core.validate import show

FLOW_TYPES = ("udp_cbr", "voip", "video", "tcp_bulk", "http")
PACKET_FLOW_TYPES = ("udp_cbr", "voip", "video")
BACKENDS = ("mininet", "sim")
IMPAIRMENT_BACKENDS = ("netem", "relay", "model")
ACTIONS = ("impair", "cut", "restore", "clear", "flap", "ramp", "agent_stop", "agent_start", "site_join", "site_leave")
STATUSES = ("up", "degraded", "down")
EXPECTATION_TYPES = ("failover_gap", "lost_packets", "sla_compliance", "path_changes", "detect_time",
                     "flow_stays", "join_time", "converged")
MESH_CAUSES = ("site_join", "site_leave", "agent_stop", "agent_start")   # besides "start" (changes[0])

# the columns of each file, as every producer writes them (emulation.rawfiles)
TIMELINE_COLUMNS, PACKET_COLUMNS, PATH_METRIC_COLUMNS = rawfiles.TIMELINE_COLUMNS, rawfiles.PACKET_COLUMNS, \
    rawfiles.PATH_METRIC_COLUMNS
TCP_COLUMNS, HTTP_COLUMNS = rawfiles.TCP_COLUMNS, rawfiles.HTTP_COLUMNS

# Event kinds the analysis reads, and the fields each must carry (besides kind, at, site).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "ProbeLost": ("path_id",),
    "PathStatusChanged": ("path_id", "old", "new"),
    "FailoverTriggered": ("from_path", "to_path"),
    "Failback": ("from_path", "to_path"),
    "SteeringApplied": (),
    "SlaViolated": ("subject",),
    "SlaRestored": ("subject",),
    "PathAdded": ("path_id",),
    "PathRemoved": ("path_id",),
}
# Times (wall seconds) some kinds carry besides `at`: (field, required)
EVENT_TIMES: dict[str, tuple[tuple[str, bool], ...]] = {
    "ProbeLost": (("sent_at", True),),
    "SteeringApplied": (("begun_at", False),),    # runs before it had `at` only
}
EVENT_COLUMNS = ("at", "t_s", "site", "kind", "path_id", "old", "new", "reason", "from_path", "to_path",
                 "policy", "subject", "traffic_class", "paths", "sent_at", "begun_at", "line")

_MAX_REPORTED = 3   # bad values reported per column before "and N more"


@dataclass(frozen=True, slots=True)
class FlowSpec:
    name: str
    type: str
    traffic_class: str
    src_site: str
    dst_site: str
    dst_port: int | None
    rate_pps: float | None
    start_s: float
    stop_s: float
    sent: int
    policy: str | None = None     # the agent's policy that classified the flow, as observed (optional)

    @property
    def has_packets(self) -> bool:
        """True for the flow types whose every datagram is in packets.csv."""
        return self.type in PACKET_FLOW_TYPES


@dataclass(frozen=True, slots=True)
class ClassTarget:
    """What the test-bed judges a traffic class's packets against (run.json's `sla_targets`, an
    expectation's `target`); None means "not judged". The latency compared with `latency_ms` is the
    delay's `latency_percentile` (50, 95 or 99; 95 unless the target says otherwise).

    Not the agent's `patronus.core.sla.SlaTarget`: that one configures a site's SLA monitor (every
    metric has a value, with defaults, over a window of probes); this one is a contract read from a
    run's data, where a metric a scenario left out is not judged and the window defaults to 1 s (what
    run.json meant before it carried windows). It reads the agent's form too (`parse_target`)."""

    latency_ms: float | None = None
    loss_pct: float | None = None
    jitter_ms: float | None = None
    latency_percentile: int = 95
    window_s: float = 1.0          # judged over the packets of the trailing window (the agent's `window`)

    def meets(self, latency_ms: float | None, loss_pct: float | None, jitter_ms: float | None) -> bool:
        """Every judged metric within its target; a metric without a measurement is not judged.
        `latency_ms` is the measured latency at `latency_percentile`."""
        pairs = ((latency_ms, self.latency_ms), (loss_pct, self.loss_pct), (jitter_ms, self.jitter_ms))
        return all(m is None or t is None or m <= t for m, t in pairs)


def parse_target(t: object, path: str) -> tuple[ClassTarget | None, list[str]]:
    """An SLA target in the contract's form (latency_ms, loss_pct, jitter_ms, window_s: numbers) or the
    agent's (latency: "150ms", loss: "1%", jitter: "30ms", window: "30s"), either with latency_percentile
    (50/95/99 or "p95"). No window: 1 s (what run.json meant before it carried windows). Returns
    (target, problems), each problem "path: reason"."""
    errs = val.Errors()
    target = read_target(t, path, errs)
    return target, [f"{p}: {r}" for p, r in errs.items]


def read_target(t: object, path: str, errs: val.Errors) -> ClassTarget | None:
    m = val.mapping(t, path, errs)
    if m is None:
        return None
    vals: dict[str, float | None] = {}
    for attr, human, scale in (("latency_ms", "latency", 1000.0), ("loss_pct", "loss", 100.0),
                               ("jitter_ms", "jitter", 1000.0)):
        x: float | None = None
        if m.get(attr) is not None:
            x = val.number(m[attr], val.join(path, attr), errs, 0.0, what="a non-negative number")
        elif m.get(human) is not None:
            read = val.ratio if human == "loss" else val.duration
            x = read(m[human], val.join(path, human), errs)
            x = None if x is None else x * scale
        vals[attr] = x
    pct = m.get("latency_percentile", 95)
    text = pct[1:] if isinstance(pct, str) and pct[:1].lower() == "p" else pct
    pct_i = next((p for p in (50, 95, 99) if text in (p, str(p)) and not isinstance(text, bool)), None)
    if pct_i is None:
        errs.add(val.join(path, "latency_percentile"), f"expected one of 50, 95, 99, got {show(pct)}")
    window: float | None = 1.0
    if m.get("window_s") is not None:
        window = val.number(m["window_s"], val.join(path, "window_s"), errs, 1e-9, 86_400,
                            "a number of seconds in (0, 86400]")
    elif m.get("window") is not None:
        window = val.duration(m["window"], val.join(path, "window"), errs, positive=True, at_most=86_400)
    return ClassTarget(latency_percentile=pct_i or 95, window_s=window or 1.0, **vals)


@dataclass(frozen=True, slots=True)
class MonitorInfo:
    """A site's probe timers, as run.json's `monitors` gives them (optional: older runs lack it)."""

    interval_s: float
    detect_multiplier: int
    window: int

    @property
    def window_s(self) -> float:
        """How far back the path's quality looks."""
        return self.interval_s * self.window

    @property
    def fastest_detection_s(self) -> float:
        """No cut is declared sooner: the first of `detect_multiplier` missed probes leaves at the
        earliest just before the cut, the last one `detect_multiplier - 1` intervals later."""
        return self.interval_s * (self.detect_multiplier - 1)

    @property
    def reach_s(self) -> float:
        """How long before a Down a disturbance can have caused it: the probes it takes, plus one."""
        return self.interval_s * (self.detect_multiplier + 1)


@dataclass(frozen=True, slots=True)
class MeshSite:
    """A mesh site as run.json's `mesh.sites` gives it."""

    uplinks: tuple[str, ...]          # in the scenario's order
    region: str | None = None


@dataclass(frozen=True, slots=True)
class MeshChange:
    """A change of the live membership: from `at` (scenario s) on, `live` are the sites in the mesh whose
    agent runs. `cause`: "start" (the first, when the agents are spawned) or "<action> <site>" with an
    action of MESH_CAUSES."""

    at: float
    live: frozenset[str]
    cause: str

    @property
    def site(self) -> str | None:
        """The site the change is about (None for the start)."""
        return self.cause.partition(" ")[2] or None


@dataclass(frozen=True, slots=True)
class MeshRun:
    """run.json's `mesh`: a run of sites that discover each other (emulation.siteconf.mesh_doc)."""

    topology: MeshTopology
    sites: Mapping[str, MeshSite]
    changes: tuple[MeshChange, ...]   # at least the start; `at` never goes back


@dataclass(frozen=True, slots=True)
class RunInfo:
    scenario: str
    backend: str
    impairment_backend: str
    seed: int
    started_at: float
    t0: float
    duration_s: float
    flows: tuple[FlowSpec, ...]
    links: Mapping[str, tuple[str, ...]]
    sla_targets: Mapping[str, ClassTarget]
    expectations: tuple[Mapping[str, Any], ...]
    monitors: Mapping[str, MonitorInfo] = field(default_factory=dict)   # site → its probe timers
    mesh: MeshRun | None = None       # sites that discover each other (optional)

    def flow(self, name: str) -> FlowSpec:
        for f in self.flows:
            if f.name == name:
                return f
        raise KeyError(name)

    def target_for(self, traffic_class: str) -> ClassTarget | None:
        return self.sla_targets.get(traffic_class)


@dataclass(frozen=True, eq=False)
class RunData:
    """Everything under DIR/raw, validated. Frames are sorted by time (stable for ties).

    * `timeline`: at_s, applied_at, action, target, params (dict), line (in timeline.csv), t_s
    * `packets`: flow, seq, sent_ns (int64), recv_ns (nullable Int64), path ("" when unknown),
      received (bool), sent_estimated (bool: a lost packet whose row had no sent_ns, see
      _estimate_sent), sent_s, recv_s (scenario seconds, NaN when lost), delay_ms (NaN when lost)
    * `path_metrics`: the CSV's columns (floats NaN when empty) and t_s
    * `events`: EVENT_COLUMNS ("" where an event has no such field; `paths` a tuple; the times `sent_at`
      and `begun_at` NaN where absent); `event_dicts` holds each event as read
    * `tcp` / `http`: the optional files, with t_s, or None
    """

    dir: Path
    run: RunInfo
    timeline: pd.DataFrame
    packets: pd.DataFrame
    path_metrics: pd.DataFrame
    events: pd.DataFrame
    event_dicts: tuple[Mapping[str, Any], ...]
    tcp: pd.DataFrame | None = None
    http: pd.DataFrame | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def t0_ns(self) -> int:
        return round(self.run.t0 * 1e9)

    def rel(self, wall: float) -> float:
        """Wall seconds → scenario seconds."""
        return wall - self.run.t0

    def flow_packets(self, flow: str) -> pd.DataFrame:
        """One flow's packets, in send order."""
        key = f"packets:{flow}"
        if key not in self._cache:
            df = self.packets[self.packets["flow"] == flow]
            self._cache[key] = df.sort_values(["sent_ns", "seq"], kind="stable").reset_index(drop=True)
        out: pd.DataFrame = self._cache[key]
        return out


# --- run.json -------------------------------------------------------------------------------------

def _parse_run(doc: object, where: str, errors: val.Errors) -> RunInfo | None:
    """run.json's fields; each problem an error at `where` (the file) naming the field."""
    e = val.Errors()
    run = _run_info(doc, e)
    errors.items.extend((where, f"{p}: {r}" if p != "(top level)" else r) for p, r in e.items)
    return run if not e.items else None


def _str(v: object, path: str, errs: val.Errors) -> str | None:
    return val.text(v, path, errs, "a non-empty string", nonempty=True)


def _int(v: object, path: str, errs: val.Errors) -> int | None:
    return val.integer(v, path, errs, what="an integer")


def _run_info(doc: object, e: val.Errors) -> RunInfo | None:
    top = val.mapping(doc, "", e)
    if top is None:
        return None
    scenario = val.field(top, "scenario", "", e, _str)
    backend = val.field(top, "backend", "", e, val.choice, BACKENDS)
    imp = val.field(top, "impairment_backend", "", e, val.choice, IMPAIRMENT_BACKENDS)
    seed = val.field(top, "seed", "", e, _int)
    started_at = val.field(top, "started_at", "", e, val.number)
    t0 = val.field(top, "t0", "", e, val.number)
    duration_s = val.field(top, "duration_s", "", e, val.number)
    if duration_s is not None and duration_s <= 0:
        e.add("duration_s", f"expected a positive number, got {duration_s!r}")
    flows = _run_flows(e, val.field(top, "flows", "", e, val.items, "flows") or [])
    links = _run_links(e, val.field(top, "links", "", e, val.items, "links") or [])
    targets: dict[str, ClassTarget] = {}
    for cls_name, t in (val.field(top, "sla_targets", "", e, val.mapping) or {}).items():
        target = read_target(t, val.join("sla_targets", cls_name), e)
        if target is not None:
            targets[str(cls_name)] = target
    expectations: list[dict[str, Any]] = []
    for i, x in enumerate(val.field(top, "expectations", "", e, val.items, "expectations") or []):
        m = val.mapping(x, val.item("expectations", i), e)
        p = val.item("expectations", i)
        if m is not None and val.field(m, "type", p, e, val.choice, EXPECTATION_TYPES) is not None \
                and val.field(m, "text", p, e, _str) is not None:
            expectations.append(m)
    monitors = _run_monitors(e, val.field(top, "monitors", "", e, val.mapping, optional=True) or {})
    mesh = _run_mesh(e, top["mesh"]) if top.get("mesh") is not None else None
    if e.items:
        return None
    assert scenario is not None and backend is not None and imp is not None and seed is not None
    assert started_at is not None and t0 is not None and duration_s is not None
    return RunInfo(scenario=scenario, backend=backend, impairment_backend=imp, seed=seed, started_at=started_at,
                   t0=t0, duration_s=duration_s, flows=tuple(flows), links=links, sla_targets=targets,
                   expectations=tuple(expectations), monitors=monitors, mesh=mesh)


def _run_flows(e: val.Errors, raw: list[Any]) -> list[FlowSpec]:
    flows: list[FlowSpec] = []
    seen: set[str] = set()
    for i, f in enumerate(raw):
        p = val.item("flows", i)
        m = val.mapping(f, p, e)
        if m is None:
            continue
        n = len(e)
        nm = val.field(m, "name", p, e, _str)
        ftype = val.field(m, "type", p, e, val.choice, FLOW_TYPES)
        tclass = val.field(m, "class", p, e, _str)
        src, dst = val.field(m, "src_site", p, e, _str), val.field(m, "dst_site", p, e, _str)
        port = val.field(m, "dst_port", p, e, _int, optional=True)
        rate_pps = val.field(m, "rate_pps", p, e, val.number, optional=True)
        start, stop = val.field(m, "start_s", p, e, val.number), val.field(m, "stop_s", p, e, val.number)
        sent = val.field(m, "sent", p, e, _int)
        policy = val.field(m, "policy", p, e, _str, optional=True)
        if nm is not None and nm in seen:
            e.add(f"{p}.name", f"duplicate flow name {nm!r}")
        if nm is not None:
            seen.add(nm)
        if len(e) != n:
            continue
        assert nm is not None and ftype is not None and tclass is not None and src is not None and dst is not None
        assert start is not None and stop is not None and sent is not None
        if stop < start:
            e.add(f"{p}.stop_s", f"{stop} is before start_s {start}")
        flows.append(FlowSpec(name=nm, type=ftype, traffic_class=tclass, src_site=src, dst_site=dst, dst_port=port,
                              rate_pps=rate_pps, start_s=start, stop_s=stop, sent=sent, policy=policy))
    return flows


def _run_links(e: val.Errors, raw: list[Any]) -> dict[str, tuple[str, ...]]:
    links: dict[str, tuple[str, ...]] = {}
    for i, link in enumerate(raw):
        p = val.item("links", i)
        m = val.mapping(link, p, e)
        if m is None:
            continue
        name = val.field(m, "link", p, e, _str)
        paths = val.field(m, "paths", p, e, val.items, "path ids")
        if name is None or paths is None:
            continue
        if not all(isinstance(x, str) and x for x in paths):
            e.add(f"{p}.paths", f"expected a list of path ids, got {show(paths)}")
            continue
        links[name] = tuple(links.get(name, ())) + tuple(paths)
    return links


def _run_monitors(e: val.Errors, raw: dict[str, Any]) -> dict[str, MonitorInfo]:
    monitors: dict[str, MonitorInfo] = {}
    for site, m in raw.items():
        p = val.join("monitors", site)
        mm = val.mapping(m, p, e)
        if mm is None:
            continue
        interval = val.field(mm, "interval_s", p, e, val.number)
        mult = val.field(mm, "detect_multiplier", p, e, _int)
        window = val.field(mm, "window", p, e, _int)
        if interval is None or mult is None or window is None:
            continue
        if interval <= 0 or mult < 1 or window < 1:
            e.add(p, f"expected a positive interval, multiplier and window, got {show(m)}")
            continue
        monitors[str(site)] = MonitorInfo(interval, mult, window)
    return monitors


def _run_mesh(e: val.Errors, raw: object) -> MeshRun | None:
    m = val.mapping(raw, "mesh", e, ("topology", "sites", "changes"))
    if m is None:
        return None
    n = len(e)
    topology = val.field(m, "topology", "mesh", e, MeshTopology.read)
    sites: dict[str, MeshSite] = {}
    for name, s in (val.field(m, "sites", "mesh", e, val.mapping) or {}).items():
        p = val.join("mesh.sites", name)
        sm = val.mapping(s, p, e, ("uplinks", "region"))
        if val.name(name, p, e, "site") is None or sm is None:
            continue
        ups = val.field(sm, "uplinks", p, e, val.items, "uplink names", nonempty=True) or []
        good = [u for i, u in enumerate(ups) if val.name(u, val.item(val.join(p, "uplinks"), i), e, "uplink")]
        if len(set(good)) != len(good):
            e.add(val.join(p, "uplinks"), f"expected distinct uplink names, got {show(ups)}")
        region = val.field(sm, "region", p, e, val.name, "region", optional=True)
        sites[name] = MeshSite(tuple(good), region)
    if topology is not None:
        for h in (*topology.all_hubs, *topology.critical):
            if h not in sites and m.get("sites") is not None:
                e.add("mesh.topology", f"{h} is not a site of mesh.sites")
    changes = _mesh_changes(e, val.field(m, "changes", "mesh", e, val.items, "changes", nonempty=True) or [],
                            sites if m.get("sites") is not None else None)
    if len(e) > n or topology is None:
        return None
    return MeshRun(topology=topology, sites=sites, changes=tuple(changes))


def _mesh_changes(e: val.Errors, raw: list[Any], sites: Mapping[str, MeshSite] | None) -> list[MeshChange]:
    """Each change, checked: times never go back, live sites are mesh sites, the first is the start and
    each other one moves its site in or out of the live set as its cause says (or leaves it, for a
    site_leave of a site whose agent was stopped)."""
    out: list[MeshChange] = []
    whole = True           # every change so far read: the next one is checked against the one before
    for i, c in enumerate(raw):
        p = val.item("mesh.changes", i)
        cm = val.mapping(c, p, e, ("at", "live", "cause"))
        if cm is None:
            whole = False
            continue
        n = len(e)
        at = val.field(cm, "at", p, e, val.number, what="a number of seconds")
        live_raw = val.field(cm, "live", p, e, val.items, "site names") or []
        live = frozenset(x for x in live_raw if isinstance(x, str))
        unknown = sorted(live - set(sites)) if sites is not None else []
        if len(live) != len(live_raw) or unknown:
            e.add(val.join(p, "live"), f"expected names of mesh.sites, got {show(unknown or live_raw)}")
        cause = val.field(cm, "cause", p, e, _str)
        action, _, site = (cause or "").partition(" ")
        if cause is None:
            pass
        elif (i == 0) != (cause == "start") or (i > 0 and (action not in MESH_CAUSES or
                                                          (sites is not None and site not in sites))):
            want = "start" if i == 0 else f"one of {', '.join(MESH_CAUSES)} and a site of mesh.sites"
            e.add(val.join(p, "cause"), f"expected {want}, got {show(cause)}")
        elif whole and out and at is not None and at < out[-1].at:
            e.add(val.join(p, "at"), f"expected no earlier than the change before ({out[-1].at!r}), got {at!r}")
        elif whole and out and len(e) == n and live != _after(out[-1].live, action, site):
            e.add(val.join(p, "live"), f"{cause} does not turn {show(sorted(out[-1].live))} into "
                                       f"{show(sorted(live))}")
        if len(e) == n and at is not None and cause is not None:
            out.append(MeshChange(at, live, cause))
        else:
            whole = False
    return out


def _after(live: frozenset[str], action: str, site: str) -> frozenset[str]:
    if action in ("site_join", "agent_start"):
        return live | {site}
    return live - {site}


# --- tables ---------------------------------------------------------------------------------------

def _read_csv(path: Path, where: str, columns: tuple[str, ...], errors: val.Errors) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except FileNotFoundError:
        errors.add(where, "missing file")
        return None
    except pd.errors.EmptyDataError:
        errors.add(where, f"empty file: expected a header line with columns {', '.join(columns)}")
        return None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        errors.add(where, f"not a readable CSV file: {exc}")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    for c in missing:
        errors.add(where, f"missing column {c!r} (has: {', '.join(df.columns)})")
    if missing:
        return None
    return df


def _report_bad(where: str, column: str, bad: np.ndarray, values: pd.Series, what: str, errors: val.Errors) -> None:
    idx = np.flatnonzero(bad)
    for i in idx[:_MAX_REPORTED]:
        errors.add(f"{where} line {int(i) + 2} column {column!r}", f"expected {what}, got {show(values.iloc[int(i)])}")
    if len(idx) > _MAX_REPORTED:
        errors.add(f"{where} column {column!r}", f"... and {len(idx) - _MAX_REPORTED} more bad values")


def _floats(df: pd.DataFrame, column: str, where: str, errors: val.Errors, *, allow_empty: bool) -> np.ndarray:
    s = df[column].str.strip()
    present = (s != "").to_numpy(dtype=bool)
    num = pd.to_numeric(s.where(s != ""), errors="coerce").to_numpy(dtype=np.float64)
    bad = present & ~np.isfinite(num)
    if not allow_empty:
        bad |= ~present
    if bad.any():
        _report_bad(where, column, bad, df[column], "a number" + ("" if allow_empty else " (required)"), errors)
    out: np.ndarray = np.where(present & ~bad, num, np.nan)
    return out


def _ints(df: pd.DataFrame, column: str, where: str, errors: val.Errors, *,
          allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64, present mask). Integers are parsed exactly (nanosecond times need all 64 bits)."""
    s = df[column].str.strip()
    present = (s != "").to_numpy(dtype=bool)
    ok = s.str.fullmatch(r"[+-]?[0-9]{1,19}").to_numpy(dtype=bool) & present
    if ok.any():   # 19 digits may not fit in int64
        ok[ok] = [-(2**63) <= int(v) < 2**63 for v in s[ok].tolist()] if s[ok].str.len().max() >= 19 else True
    bad = present & ~ok
    if not allow_empty:
        bad |= ~present
    if bad.any():
        _report_bad(where, column, bad, df[column], "an integer" + ("" if allow_empty else " (required)"), errors)
    out = np.zeros(len(s), dtype=np.int64)
    if ok.any():
        out[ok] = s[ok].astype("int64").to_numpy(dtype=np.int64)
    return out, ok


def _strings(df: pd.DataFrame, column: str, where: str, errors: val.Errors, *, allow_empty: bool,
             choices: tuple[str, ...] = ()) -> np.ndarray:
    s = df[column].str.strip()
    arr: np.ndarray = s.to_numpy(dtype=object)
    bad = np.zeros(len(arr), dtype=bool)
    if not allow_empty:
        bad |= (s == "").to_numpy(dtype=bool)
    if choices:
        bad |= ~s.isin(choices + (("",) if allow_empty else ())).to_numpy(dtype=bool)
    if bad.any():
        what = f"one of {', '.join(choices)}" if choices else "a non-empty value"
        _report_bad(where, column, bad, df[column], what, errors)
    return arr


def _load_timeline(path: Path, where: str, run: RunInfo | None, errors: val.Errors) -> pd.DataFrame | None:
    df = _read_csv(path, where, TIMELINE_COLUMNS, errors)
    if df is None:
        return None
    n = len(errors.items)
    at_s = _floats(df, "at_s", where, errors, allow_empty=False)
    applied = _floats(df, "applied_at", where, errors, allow_empty=False)
    action = _strings(df, "action", where, errors, allow_empty=False, choices=ACTIONS)
    target = _strings(df, "target", where, errors, allow_empty=False)
    params: list[dict[str, Any]] = []
    for i, text in enumerate(df["params"].tolist()):
        text = text.strip()
        try:
            val = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            errors.add(f"{where} line {i + 2} column 'params'", f"expected JSON text, got {text!r} ({exc.msg})")
            val = {}
        if not isinstance(val, dict):
            errors.add(f"{where} line {i + 2} column 'params'", f"expected a JSON object, got {text!r}")
            val = {}
        params.append(val)
    if len(errors.items) > n:
        return None
    out = pd.DataFrame({"at_s": at_s, "applied_at": applied, "action": action.astype(str),
                        "target": target.astype(str), "params": pd.Series(params, dtype=object),
                        "line": np.arange(2, len(df) + 2)})
    out["t_s"] = out["applied_at"] - (run.t0 if run else 0.0)
    return out.sort_values(["applied_at", "line"], kind="stable").reset_index(drop=True)


def _load_packets(path: Path, where: str, run: RunInfo | None, errors: val.Errors) -> pd.DataFrame | None:
    df = _read_csv(path, where, PACKET_COLUMNS, errors)
    if df is None:
        return None
    n = len(errors.items)
    flow = _strings(df, "flow", where, errors, allow_empty=False)
    seq, _ = _ints(df, "seq", where, errors, allow_empty=False)
    sent, sent_known = _ints(df, "sent_ns", where, errors, allow_empty=True)
    recv, received = _ints(df, "recv_ns", where, errors, allow_empty=True)
    path_ids = _strings(df, "path", where, errors, allow_empty=True)
    no_sent = ~sent_known & received & (df["sent_ns"].str.strip() == "").to_numpy(dtype=bool)
    if no_sent.any():
        _report_bad(where, "sent_ns", no_sent, df["sent_ns"], "the send time of a received packet", errors)
    if run is not None and len(flow):
        known = {f.name for f in run.flows}
        for name in sorted(set(flow.tolist()) - known - {""}):
            line = int(np.flatnonzero(flow == name)[0]) + 2
            errors.add(f"{where} line {line} column 'flow'", f"{name!r} is not a flow of raw/run.json")
    if len(errors.items) > n:
        return None
    t0_ns = round(run.t0 * 1e9) if run else 0
    if run is not None and not sent_known.all():
        sent = _estimate_sent(flow, seq, sent, sent_known, run, t0_ns)
    out = pd.DataFrame({
        "flow": flow.astype(str), "seq": seq, "sent_ns": sent,
        "recv_ns": pd.array(np.where(received, recv, 0), dtype="Int64"),
        "path": path_ids.astype(str), "received": received, "sent_estimated": ~sent_known,
    })
    out.loc[~received, "recv_ns"] = pd.NA
    out["sent_s"] = (sent - t0_ns) / 1e9
    out["recv_s"] = np.where(received, (recv - t0_ns) / 1e9, np.nan)
    out["delay_ms"] = np.where(received, (recv - sent) / 1e6, np.nan)
    return out


def _estimate_sent(flow: np.ndarray, seq: np.ndarray, sent: np.ndarray, known: np.ndarray, run: RunInfo,
                   t0_ns: int) -> np.ndarray:
    """Send times of lost packets whose row has none (a receiver only learns the send time of what
    arrives): the senders pace on an absolute schedule, so it is interpolated by sequence number between
    the flow's nearest known packets, and extrapolated at the ends with the flow's rate (or the spacing of
    its known packets; with none known, start_s + seq/rate)."""
    out = sent.copy()
    for spec in run.flows:
        rows = np.flatnonzero(flow == spec.name)
        miss = rows[~known[rows]]
        if len(miss) == 0:
            continue
        have = rows[known[rows]]
        have = have[np.argsort(seq[have], kind="stable")]
        ks, kt = seq[have].astype(np.float64), sent[have]
        step_ns = 1e9 / spec.rate_pps if spec.rate_pps else (
            float(np.median(np.diff(kt) / np.diff(ks))) if len(have) > 1 and np.all(np.diff(ks) > 0) else 1e6)
        base = int(kt[0]) if len(have) else t0_ns + round(spec.start_s * 1e9)
        anchor = float(ks[0]) if len(have) else 0.0
        ms = seq[miss].astype(np.float64)
        if len(have) >= 2:
            est = np.interp(ms, ks, (kt - base).astype(np.float64))
            lo, hi = ms < ks[0], ms > ks[-1]
            est[lo] = (ms[lo] - ks[0]) * step_ns
            est[hi] = float(kt[-1] - base) + (ms[hi] - ks[-1]) * step_ns
        else:
            est = (ms - anchor) * step_ns
        out[miss] = base + np.round(est).astype(np.int64)
    return out


def _load_path_metrics(path: Path, where: str, run: RunInfo | None, errors: val.Errors) -> pd.DataFrame | None:
    df = _read_csv(path, where, PATH_METRIC_COLUMNS, errors)
    if df is None:
        return None
    n = len(errors.items)
    cols: dict[str, Any] = {
        "site": _strings(df, "site", where, errors, allow_empty=False).astype(str),
        "path": _strings(df, "path", where, errors, allow_empty=False).astype(str),
        "at": _floats(df, "at", where, errors, allow_empty=False),
        "status": _strings(df, "status", where, errors, allow_empty=False, choices=STATUSES).astype(str),
    }
    for c in ("latency_ms", "jitter_ms", "loss_pct", "score"):
        cols[c] = _floats(df, c, where, errors, allow_empty=True)
    for c in ("probes_sent", "probes_timed_out"):
        cols[c] = _ints(df, c, where, errors, allow_empty=False)[0]
    if len(errors.items) > n:
        return None
    out = pd.DataFrame(cols)
    out["t_s"] = out["at"] - (run.t0 if run else 0.0)
    return out.sort_values(["site", "path", "at"], kind="stable").reset_index(drop=True)


def _load_events(path: Path, where: str, run: RunInfo | None,
                 errors: val.Errors) -> tuple[pd.DataFrame, tuple[dict[str, Any], ...]] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.add(where, "missing file")
        return None
    except UnicodeDecodeError as exc:
        errors.add(where, f"not UTF-8 text: {exc}")
        return None
    n = len(errors.items)
    dicts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        loc = f"{where} line {lineno}"
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.add(loc, f"expected a JSON object, got {line[:60]!r} ({exc.msg})")
            continue
        if not isinstance(ev, dict):
            errors.add(loc, f"expected a JSON object, got {line[:60]!r}")
            continue
        problems = [k for k, ok in (("kind", isinstance(ev.get("kind"), str) and ev.get("kind")),
                                    ("at", val.is_number(ev.get("at"))),
                                    ("site", isinstance(ev.get("site"), str) and ev.get("site"))) if not ok]
        kind = ev.get("kind")
        if not problems and kind in EVENT_FIELDS:
            problems = [k for k in EVENT_FIELDS[kind] if not isinstance(ev.get(k), str) or not ev.get(k)]
            problems += [k for k, required in EVENT_TIMES.get(kind, ())
                         if not val.is_number(ev.get(k)) and (required or ev.get(k) is not None)]
        if problems:
            for k in problems:
                errors.add(f"{loc} field {k!r}", f"missing or invalid in {kind or 'event'} ({ev.get(k)!r})")
            continue
        dicts.append(ev)
        paths = ev.get("paths")
        rows.append({
            "at": float(ev["at"]), "t_s": float(ev["at"]) - (run.t0 if run else 0.0), "site": ev["site"],
            "kind": kind, **{k: str(ev.get(k) or "") for k in ("path_id", "old", "new", "reason", "from_path",
                                                               "to_path", "policy", "subject", "traffic_class")},
            "paths": tuple(str(p) for p in paths) if isinstance(paths, list) else (),
            **{k: float(ev[k]) if val.is_number(ev.get(k)) else math.nan for k in ("sent_at", "begun_at")},
            "line": lineno,
        })
    if len(errors.items) > n:
        return None
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    if not rows:
        frame = frame.astype({"at": "float64", "t_s": "float64", "sent_at": "float64", "begun_at": "float64",
                              "line": "int64"})
    frame = frame.sort_values(["at", "line"], kind="stable").reset_index(drop=True)
    order = sorted(range(len(dicts)), key=lambda i: (rows[i]["at"], rows[i]["line"]))
    return frame, tuple(dicts[i] for i in order)


def _load_optional(path: Path, where: str, kind: str, run: RunInfo | None,
                   errors: val.Errors) -> pd.DataFrame | None:
    if not path.exists():
        return None
    columns = TCP_COLUMNS if kind == "tcp" else HTTP_COLUMNS
    df = _read_csv(path, where, columns, errors)
    if df is None:
        return None
    n = len(errors.items)
    out: dict[str, Any] = {"flow": _strings(df, "flow", where, errors, allow_empty=False).astype(str),
                           "at": _floats(df, "at", where, errors, allow_empty=False)}
    if kind == "tcp":
        out["bits_per_second"] = _floats(df, "bits_per_second", where, errors, allow_empty=False)
    else:
        out["latency_ms"] = _floats(df, "latency_ms", where, errors, allow_empty=True)
        ok = df["ok"].str.strip().str.lower()
        good = ok.isin(["1", "true", "0", "false"]).to_numpy(dtype=bool)
        if not good.all():
            _report_bad(where, "ok", ~good, df["ok"], "one of true, false, 1, 0", errors)
        out["ok"] = ok.isin(["1", "true"]).to_numpy(dtype=bool)
    if len(errors.items) > n:
        return None
    frame = pd.DataFrame(out)
    frame["t_s"] = frame["at"] - (run.t0 if run else 0.0)
    return frame.sort_values(["flow", "at"], kind="stable").reset_index(drop=True)


def read_run(directory: str | Path) -> RunData:
    """Read and validate DIR/raw, its files and tables (`emulation.measure.load.load_run` also checks the
    expectations' and the timeline's parameters against them). Raises RawDataError listing every problem
    (file, line, column)."""
    d = Path(directory)
    raw = d / "raw"
    errors = val.Errors()
    if not d.is_dir():
        raise RawDataError([(str(d), "not a directory")])
    if not raw.is_dir():
        raise RawDataError([(f"{d}/raw", "missing directory: expected the run's raw data there")])
    run: RunInfo | None = None
    try:
        doc = json.loads((raw / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.add("raw/run.json", "missing file")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        errors.add("raw/run.json", f"not valid JSON: {exc}")
    else:
        run = _parse_run(doc, "raw/run.json", errors)
    timeline = _load_timeline(raw / "timeline.csv", "raw/timeline.csv", run, errors)
    packets = _load_packets(raw / "packets.csv", "raw/packets.csv", run, errors)
    metrics = _load_path_metrics(raw / "path_metrics.csv", "raw/path_metrics.csv", run, errors)
    events = _load_events(raw / "events.jsonl", "raw/events.jsonl", run, errors)
    tcp = _load_optional(raw / "tcp.csv", "raw/tcp.csv", "tcp", run, errors)
    http = _load_optional(raw / "http.csv", "raw/http.csv", "http", run, errors)
    errors.check(RawDataError)
    assert run is not None and timeline is not None and packets is not None and metrics is not None
    assert events is not None
    return RunData(dir=d, run=run, timeline=timeline, packets=packets, path_metrics=metrics, events=events[0],
                   event_dicts=events[1], tcp=tcp, http=http)
