"""Parameter sweeps: one scenario run over a grid of settings, one results table (the timer tuner).

    params = parse_params(["monitor.interval=20ms,50ms,100ms", "monitor.multiplier=2,3"])
    plan = plan_sweep(scenario, params)            # every point checked; ConfigError lists every problem
    result = run_sweep(plan, "reports/sweeps/fb")   # OUT/points/*, results.parquet/.csv, plots/, sweep.md
    sys.exit(sweep_command("scenarios/failover-basic.yaml", ["monitor.interval=20ms,50ms"], out=...))

Grammar: each `--param NAME=V1,V2,...` is one axis; the grid is their cartesian product, the first
axis varying slowest. Values are YAML scalars (`3` is a number, `20ms` a string, `null` removes the
setting: its default). NAME is a dotted path of the scenario document (`Scenario.with_overrides`:
`sites.hq.uplinks.isp1.delay`, `traffic.cbr.rate`, `seed`), or a shorthand for every site's agent:

    monitor=fast,default                   the whole monitor profile
    monitor.KEY                            KEY one of MONITOR_KEYS: profile, interval, multiplier
                                           (= detect_multiplier), up_count, window, timeout, max_timeout,
                                           report_interval, jitter
    router.KEY                             failback_hold, failover_cooldown, min_improvement, idle_timeout
    sla.KEY                                latency, loss, jitter, window, min_samples, latency_percentile
    steering                               nftables, none

`sites.S.agent.monitor.KEY` sets one site's monitor key the same way. Monitor keys change the site's
profile in place: a site on `fast` swept with `monitor.interval=50ms` runs `{profile: fast, interval:
50ms}` (fast's other settings kept); `monitor.profile` replaces the base profile. A dotted path must lead
to a setting that exists (a sweep changes settings, it does not add sites, uplinks or flows).

Everything is checked before anything runs: the grammar, every name, every value on its own, then every
point of the grid as a whole scenario; a `ConfigError` lists each problem with its field and reason.

Each point runs in its own process (ProcessPoolExecutor, `workers`, default the CPU count; started with
"spawn" unless `start_method` says otherwise, so a runner must be importable by name; `workers=0` runs
them one after the other in this process), or on a Dask cluster (`dask_address`; needs
`dask[distributed]`, and OUT on a filesystem the workers share). Each point's run directory is
OUT/points/<index>-<slug>. The runner is `runner(scenario, point_dir) -> exit code` writing
`point_dir/summary.json` and `point_dir/raw/`; the default is the simulation backend
(`emulation.backends`' `sim`, i.e. `emulation.backends.sim.run_sim`, imported in the worker).

Per point, one row of the results table (see `ROW_DOC` for every column): the parameter values, the
resolved probe interval and multiplier, whether the expectations held, detection time (mean and max over
the breaking edges of the timeline: the link's, whatever flows were on it), failover gap (mean and max
over summary.json's failovers), lost packets, false failovers, probe overhead and the lowest SLA
compliance. Definitions:

* false failover: a `FailoverTriggered` event (one per moved slot), or a `PathStatusChanged` to `down`
  (counted apart as `false_path_downs`), during the run (scenario time 0 to its duration: not start-up,
  not tear-down) that no timeline edge explains. An edge (timeline.csv, flaps expanded to their down and
  up edges, any action) explains what happens from the moment it took effect to `explain_window_s`
  later (a ramp: that long after its last step). The window is the longest time a change can take to
  show through the monitor: (window + detect_multiplier) × interval + max_timeout of the point's
  slowest site; `explain_window_s` overrides it.
* probe overhead: bits per second one path's probe stream puts on the wire in each direction: requests
  one way and replies the other, each `PROBE_WIRE_BYTES` (the 48-byte probe of patronus.core.probe in
  UDP over IPv4), at the rate the agents sent them (`probes_sent` in raw/path_metrics.csv, mean over
  paths). Each of two sites probes its own path to the other, so the link between them carries twice this.
  `probe_overhead_nominal_bps` is the same from the configured interval alone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from emulation.measure.ledger import detections
from emulation.measure.load import load_run
from emulation.scenario.loader import with_overrides
from emulation.scenario.model import Scenario
from patronus.core.errors import ConfigError
from patronus.core.probe import BASE_LEN

PROBE_WIRE_BYTES = BASE_LEN + 8 + 20          # probe + UDP + IPv4 headers
PROBE_WIRE_BITS = PROBE_WIRE_BYTES * 8

# monitor shorthand → the key MonitorProfile.from_config reads
MONITOR_KEYS = {"profile": "profile", "interval": "interval", "multiplier": "detect_multiplier",
                "detect_multiplier": "detect_multiplier", "up_count": "up_count", "window": "window",
                "timeout": "timeout", "max_timeout": "max_timeout", "report_interval": "report_interval",
                "jitter": "jitter"}
ROUTER_KEYS = ("failback_hold", "failover_cooldown", "min_improvement", "idle_timeout")
SLA_KEYS = ("latency", "loss", "jitter", "window", "min_samples", "latency_percentile")
AGENT_LEAVES = ("steering",)
MAX_POINTS = 10_000

Runner = Callable[[Scenario, Path], int]

ROW_DOC: dict[str, str] = {
    "index": "the point's number (grid order)",
    "point": "the point's directory name under OUT/points",
    "interval_ms": "probe interval of the point's fastest-probing site",
    "multiplier": "detect multiplier of the point's sites (the largest)",
    "exit_code": "the runner's exit code (0 passed, 1 an expectation failed, 2 could not run); -1: it raised",
    "passed": "every expectation held",
    "expectations_failed": "expectations that did not hold",
    "error": "why the point has no results ('' when it has)",
    "failovers": "summary.json failover rows (flow × breaking edge)",
    "missed_detections": "breaking edges no path declaration on the link followed within the edge's window",
    "detect_mean_ms": "mean detection time over the breaking edges: from the edge to the first path over its link "
                      "declared worse, at any site",
    "detect_max_ms": "longest detection time",
    "gap_mean_ms": "mean failover gap",
    "gap_max_ms": "longest failover gap",
    "lost_packets": "packets lost over all failover rows",
    "false_failovers": "FailoverTriggered events no timeline edge explains",
    "false_path_downs": "PathStatusChanged → down events no timeline edge explains",
    "explain_window_s": "how long after a timeline edge an event counts as explained",
    "probe_rate_hz": "probes sent per second per path (measured)",
    "probe_overhead_bps": "probe bits per second per path per direction (measured rate)",
    "probe_overhead_nominal_bps": "the same from the configured interval",
    "sla_compliance_min_pct": "lowest SLA compliance over the flows",
    "elapsed_s": "wall time the point took",
    "dir": "the point's run directory, relative to OUT",
}
_FIXED_COLUMNS = tuple(ROW_DOC)
_FLOAT_COLUMNS = ("interval_ms", "detect_mean_ms", "detect_max_ms", "gap_mean_ms", "gap_max_ms",
                  "explain_window_s", "probe_rate_hz", "probe_overhead_bps", "probe_overhead_nominal_bps",
                  "sla_compliance_min_pct", "elapsed_s")
_INT_COLUMNS = ("index", "multiplier", "exit_code", "expectations_failed", "failovers", "missed_detections",
                "lost_packets", "false_failovers", "false_path_downs")


# --- the grammar --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One axis of the grid: a name and its values (as written, and as YAML reads them)."""

    name: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")


def _scalar(text: str) -> Any:
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if v is None or isinstance(v, str | int | float | bool) else text


def parse_param(spec: str) -> Param:
    """`NAME=V1,V2,...` → Param. Raises ConfigError naming the problem."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError([(spec or "(empty)", "expected NAME=V1,V2,... such as monitor.interval=20ms,50ms")])
    if not _NAME_RE.match(name):
        raise ConfigError([(name, "expected a dotted name like monitor.interval or sites.hq.uplinks.isp1.delay")])
    texts = [t.strip() for t in rest.split(",")]
    if not rest.strip():
        raise ConfigError([(name, "no values: expected NAME=V1,V2,...")])
    errors = [(name, f"value {i + 1} is empty (in {rest!r})") for i, t in enumerate(texts) if not t]
    dup = sorted({t for t in texts if t and texts.count(t) > 1})
    errors += [(name, f"value {t!r} is given twice") for t in dup]
    if errors:
        raise ConfigError(errors)
    return Param(name=name, texts=tuple(texts), values=tuple(_scalar(t) for t in texts))


def parse_params(specs: Iterable[str]) -> list[Param]:
    """Every `--param`; ConfigError lists every problem of every one."""
    out: list[Param] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for spec in specs:
        name = spec.partition("=")[0].strip()
        if name and "=" in spec and name in seen:
            errors.append((name, "given twice: one --param per name, with all its values"))
            continue
        seen.add(name)
        try:
            out.append(parse_param(spec))
        except ConfigError as exc:
            errors += exc.errors
    if not out and not errors:
        errors.append(("--param", "nothing to sweep: give at least one --param NAME=V1,V2,..."))
    if errors:
        raise ConfigError(errors)
    return out


# --- names → scenario overrides -----------------------------------------------------------------------

_SITE_MONITOR = re.compile(r"^sites\.([^.\[\]]+)\.agent\.monitor(?:\.([^.\[\]]+))?$")


def _walk_parent(doc: Any, path: str) -> str | None:
    """None when every segment of `path` but the last exists in `doc`; else why not."""
    from emulation.scenario.loader import _list_index, _tokens

    tokens = _tokens(path)
    if tokens is None:
        return "not a dotted path like sites.hq.uplinks.isp1.delay or traffic.cbr.rate"
    node, walked = doc, ""
    for tok in tokens[:-1]:
        if isinstance(node, list):
            i = _list_index(node, tok)
            if i is None:
                return (f"{walked} has no item {tok!r} (it has {len(node)}; use an index or, for flows, a name); "
                        "a sweep changes settings, it does not add items")
            node, walked = node[i], f"{walked}[{i}]"
        elif isinstance(node, dict):
            key = str(tok)
            if key not in node:
                has = ", ".join(sorted(map(str, node))) or "nothing"
                return (f"{walked or 'the scenario'} has no {key!r} (it has {has}); a sweep changes settings, "
                        "it does not add sites, uplinks or flows")
            node, walked = node[key], f"{walked}.{key}" if walked else key
        else:
            return f"{walked} is a value ({node!r}), not a mapping or list"
    return None


@dataclass
class _Targets:
    overrides: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)                  # override path → param name
    monitor: dict[str, dict[str, tuple[str, Any]]] = field(default_factory=dict)   # site → key → (param, v)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def set(self, path: str, value: Any, param: str) -> None:
        if path in self.owner and self.owner[path] != param:
            self.errors.append((param, f"sets {path}, which {self.owner[path]} sets too; sweep one of them"))
            return
        self.owner[path] = param
        self.overrides[path] = value

    def set_monitor(self, site: str, key: str, value: Any, param: str) -> None:
        keys = self.monitor.setdefault(site, {})
        norm = MONITOR_KEYS.get(key, key)
        for k, (other, _) in keys.items():
            if MONITOR_KEYS.get(k, k) == norm and other != param:
                self.errors.append((param, f"sets {site}'s monitor {norm}, which {other} sets too; sweep one of "
                                           "them"))
                return
        keys[key] = (param, value)


def point_overrides(scenario: Scenario, assignment: Mapping[str, Any], *,
                    doc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `Scenario.with_overrides` mapping for one point (param name → value). Raises ConfigError for
    an unknown name, a path that leads nowhere, or two params that set the same thing."""
    base = doc if doc is not None else scenario.to_dict()
    sites = [s.name for s in scenario.sites]
    t = _Targets()
    for name, value in assignment.items():
        _assign(t, name, value, sites, base)
    _merge_monitors(t, base)
    if t.errors:
        raise ConfigError(t.errors)
    return t.overrides


def _assign(t: _Targets, name: str, value: Any, sites: list[str], base: Mapping[str, Any]) -> None:
    """One param: a shorthand for every site's agent (monitor[.KEY], router.KEY, sla.KEY, an agent
    leaf), a site's monitor, or a dotted path into the scenario."""
    head, _, key = name.partition(".")
    m = _SITE_MONITOR.match(name)
    if name == "monitor":
        for s in sites:
            t.set_monitor(s, "", value, name)
    elif head == "monitor":
        if key not in MONITOR_KEYS:
            t.errors.append((name, f"unknown monitor setting {key!r}; expected one of {', '.join(MONITOR_KEYS)}"))
            return
        for s in sites:
            t.set_monitor(s, key, value, name)
    elif m is not None:
        site, key = m.group(1), m.group(2) or ""
        if site not in sites:
            t.errors.append((name, f"no site {site!r}; the scenario has {', '.join(sites)}"))
        elif key and key not in MONITOR_KEYS:
            t.errors.append((name, f"unknown monitor setting {key!r}; expected one of {', '.join(MONITOR_KEYS)}"))
        else:
            t.set_monitor(site, key, value, name)
    elif head in ("router", "sla"):
        known = ROUTER_KEYS if head == "router" else SLA_KEYS
        if key not in known:
            t.errors.append((name, f"unknown {head} setting {key!r}; expected one of {', '.join(known)}"))
            return
        for s in sites:
            t.set(f"sites.{s}.agent.{head}.{key}", value, name)
    elif name in AGENT_LEAVES:
        for s in sites:
            t.set(f"sites.{s}.agent.{name}", value, name)
    else:
        why = _walk_parent(base, name)
        if why is not None:
            shorthands = "monitor[.KEY], router.KEY, sla.KEY, steering"
            t.errors.append((name, f"{why} (or use a shorthand for every site's agent: {shorthands})"))
            return
        t.set(name, value, name)


def _merge_monitors(t: _Targets, base: Mapping[str, Any]) -> None:
    """Each site's monitor settings, merged into one override of its `agent.monitor`."""
    for site, keys in t.monitor.items():
        path = f"sites.{site}.agent.monitor"
        whole = keys.pop("", None)
        if not keys:
            assert whole is not None
            t.set(path, whole[1], whole[0])
            continue
        current = base["sites"][site]["agent"]["monitor"] if whole is None else whole[1]
        mon: dict[str, Any] = dict(current) if isinstance(current, dict) else {"profile": current or "default"}
        if "profile" in keys:
            mon = {"profile": keys["profile"][1]}
        for key, (_, value) in keys.items():
            if key in ("multiplier", "detect_multiplier"):
                mon.pop("multiplier", None)
                mon.pop("detect_multiplier", None)
            mon[key] = value
        owners = sorted({p for p, _ in keys.values()} | ({whole[0]} if whole else set()))
        t.set(path, mon, " and ".join(owners))


# --- the plan ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    index: int
    assignment: tuple[tuple[str, str], ...]     # (param name, value as written), in axis order
    overrides: Mapping[str, Any]
    scenario: Scenario
    slug: str                                   # the run directory's name under OUT/points


@dataclass(frozen=True)
class SweepPlan:
    scenario: Scenario
    params: tuple[Param, ...]
    points: tuple[Point, ...]


def _slug(index: int, width: int, assignment: Sequence[tuple[str, str]]) -> str:
    parts = []
    for name, text in assignment:
        short = name.rsplit(".", 1)[-1]
        parts.append(f"{short}-{text}")
    body = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")[:80]
    return f"{index:0{width}d}-{body}" if body else f"{index:0{width}d}"


def _errors_of(exc: ConfigError, name: str, text: str, shorthand: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path, reason in exc.errors:
        if shorthand:
            path = re.sub(r"^sites\.[^.]+\.agent\.", "", path)
        item = (f"{name}={text}", reason if path in (name, "") else f"{path}: {reason}")
        if item not in out:
            out.append(item)
    return out


def _is_shorthand(name: str) -> bool:
    return name.partition(".")[0] in ("monitor", "router", "sla") or name in AGENT_LEAVES


def plan_sweep(scenario: Scenario, params: Sequence[Param]) -> SweepPlan:
    """Check every name, every value and every point of the grid; raise ConfigError listing every
    problem (nothing has run), or return the plan."""
    doc = scenario.to_dict()
    errors: list[tuple[str, str]] = []
    # each name on its own, then the names together (two that set the same thing), then each value on its own
    good: list[Param] = []
    for p in params:
        try:
            point_overrides(scenario, {p.name: p.values[0]}, doc=doc)
        except ConfigError as exc:
            errors += exc.errors
        else:
            good.append(p)
    try:
        point_overrides(scenario, {p.name: p.values[0] for p in good}, doc=doc)
    except ConfigError as exc:
        errors += [e for e in exc.errors if e not in errors]
    for p in good:
        for text, value in zip(p.texts, p.values, strict=True):
            try:
                with_overrides(scenario, point_overrides(scenario, {p.name: value}, doc=doc))
            except ConfigError as exc:
                errors += [e for e in _errors_of(exc, p.name, text, _is_shorthand(p.name)) if e not in errors]
    size = math.prod(len(p.values) for p in params)
    if size > MAX_POINTS:
        errors.append(("--param", f"the grid has {size} points ({' × '.join(str(len(p.values)) for p in params)}); "
                                  f"at most {MAX_POINTS}"))
    if errors:
        raise ConfigError(errors)
    # then every combination, as whole scenarios
    combos = list(itertools.product(*[list(zip(p.texts, p.values, strict=True)) for p in params]))
    width = max(3, len(str(len(combos) - 1)))
    points: list[Point] = []
    for i, combo in enumerate(combos):
        assignment = tuple((p.name, text) for p, (text, _) in zip(params, combo, strict=True))
        overrides = point_overrides(scenario, {p.name: v for p, (_, v) in zip(params, combo, strict=True)}, doc=doc)
        label = ", ".join(f"{n}={v}" for n, v in assignment)
        try:
            point_scenario = with_overrides(scenario, overrides)
        except ConfigError as exc:
            for path, reason in exc.errors:
                errors.append((f"point {i} ({label})", f"{path}: {reason}" if path else reason))
            continue
        points.append(Point(index=i, assignment=assignment, overrides=overrides, scenario=point_scenario,
                            slug=_slug(i, width, assignment)))
    if errors:
        raise ConfigError(errors)
    return SweepPlan(scenario=scenario, params=tuple(params), points=tuple(points))


# --- one point -----------------------------------------------------------------------------------------

def sim_runner(scenario: Scenario, out: Path) -> int:
    """The default runner: the simulation backend (`emulation.backends`' `sim`: `run_sim(scenario, out)`),
    silent, an exit code."""
    from emulation.backends import RunOptions, get

    return int(get("sim").run(scenario, out, RunOptions()))


def sim_available() -> str | None:
    """None when the simulation backend can be imported; else why not."""
    from emulation.backends import get

    return get("sim").available()


@dataclass(frozen=True)
class PointTask:
    """What a worker needs for one point: plain data and a runner importable by name."""

    index: int
    slug: str
    assignment: tuple[tuple[str, str], ...]
    scenario_doc: Mapping[str, Any]
    source: str
    out: str
    runner: Runner | None = None
    explain_window_s: float | None = None


def explain_window(scenario: Scenario) -> float:
    """How long after a timeline edge its effects may show: the slowest site's
    (window + detect_multiplier) × interval + max_timeout."""
    return max(((m.window + m.detect_multiplier) * m.interval_s + m.max_timeout_s
                for m in (s.agent.monitor for s in scenario.sites)), default=0.0)


def false_events(directory: Path, window_s: float) -> tuple[int, int]:
    """(false failovers, false path downs) of a run directory; see the module docstring."""
    from emulation.measure.timeline import edges
    from patronus.core.units import parse_duration

    run = load_run(directory)
    spans = []
    for e in edges(run):
        end = e.applied_at
        if e.action == "ramp" and not e.continuation:
            over = e.params.get("over_s", e.params.get("over"))
            with contextlib.suppress(ConfigError):
                end += parse_duration(over, "over") if over is not None else 0.0
        spans.append((e.applied_at, end + window_s))
    ev = run.events
    ev = ev[(ev["t_s"] >= 0.0) & (ev["t_s"] <= run.run.duration_s)]      # not start-up, not tear-down
    failover = (ev["kind"] == "FailoverTriggered").to_numpy(dtype=bool)
    down = ((ev["kind"] == "PathStatusChanged") & (ev["new"] == "down")).to_numpy(dtype=bool)
    at = ev["at"].to_numpy(dtype=np.float64)
    explained = np.zeros(len(ev), dtype=bool)
    for a, b in spans:
        explained |= (at >= a) & (at <= b)
    return int(np.count_nonzero(failover & ~explained)), int(np.count_nonzero(down & ~explained))


def path_probe_rates(path_metrics: Path) -> list[float]:
    """Probes sent per second by each (site, path) over the run, from raw/path_metrics.csv's cumulative
    `probes_sent` (paths with fewer than two samples left out; an unreadable file gives none)."""
    try:
        df = pd.read_csv(path_metrics, usecols=["site", "path", "at", "probes_sent"])
    except (OSError, ValueError, pd.errors.ParserError):
        return []
    df = df.assign(at=pd.to_numeric(df["at"], errors="coerce"),
                   probes_sent=pd.to_numeric(df["probes_sent"], errors="coerce")).dropna()
    rates = []
    for _, g in df.groupby(["site", "path"], sort=True):
        g = g.sort_values("at")
        span = float(g["at"].iloc[-1] - g["at"].iloc[0])
        if span > 0:
            rates.append(float(g["probes_sent"].iloc[-1] - g["probes_sent"].iloc[0]) / span)
    return rates


def probe_rate(path_metrics: Path) -> float | None:
    """Probes sent per second per path, the mean over paths; None when nothing was measured."""
    rates = path_probe_rates(path_metrics)
    return float(np.mean(rates)) if rates else None


def _stats(values: Iterable[Any]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return (float(np.mean(xs)), max(xs)) if xs else (None, None)


def point_metrics(directory: Path, scenario: Scenario, explain_window_s: float | None = None) -> dict[str, Any]:
    """The measured columns of a point's row, from its run directory (summary.json and raw/)."""
    d = Path(directory)
    summary_path = d / "summary.json"
    run = load_run(d)
    if not summary_path.exists():
        from emulation.measure.analysis import analyse
        from emulation.report.summary import build_summary

        summary_path.write_text(build_summary(analyse(run)).to_json())
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    fo = summary.get("failovers", [])
    # detection is the link's: a flow that false failovers had taken off the link before it broke has no
    # failover row, yet the break was noticed (or not) all the same
    dets = detections(run)
    detect_mean, detect_max = _stats(x.detect_ms for x in dets)
    gap_mean, gap_max = _stats(f.get("gap_ms") for f in fo)
    lost = [f["lost_packets"] for f in fo if isinstance(f.get("lost_packets"), int)]
    window = explain_window(scenario) if explain_window_s is None else explain_window_s
    false_fo, false_down = false_events(d, window)
    rate = probe_rate(d / "raw" / "path_metrics.csv")
    interval = min(s.agent.monitor.interval_s for s in scenario.sites)
    compliance = [s["compliance_pct"] for s in summary.get("sla", []) if isinstance(s.get("compliance_pct"),
                                                                                    int | float)]
    return {
        "passed": bool(summary.get("passed")),
        "expectations_failed": sum(1 for e in summary.get("expectations", []) if not e.get("passed")),
        "failovers": len(fo),
        "missed_detections": sum(1 for x in dets if x.detect_ms is None),
        "detect_mean_ms": detect_mean, "detect_max_ms": detect_max, "gap_mean_ms": gap_mean, "gap_max_ms": gap_max,
        "lost_packets": sum(lost) if lost else None,
        "false_failovers": false_fo, "false_path_downs": false_down, "explain_window_s": window,
        "probe_rate_hz": rate, "probe_overhead_bps": None if rate is None else rate * PROBE_WIRE_BITS,
        "probe_overhead_nominal_bps": PROBE_WIRE_BITS / interval,
        "sla_compliance_min_pct": min(compliance) if compliance else None,
    }


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one point and return its row. Never raises for the runner's sake: a runner that raises or
    exits 2 gives a row with `error` set (and the traceback in the point's error.txt)."""
    from emulation.scenario.schema import from_dict

    scenario = from_dict(dict(task.scenario_doc), source=task.source)
    out = Path(task.out)
    out.mkdir(parents=True, exist_ok=True)
    interval = min(s.agent.monitor.interval_s for s in scenario.sites)
    row: dict[str, Any] = {"index": task.index, "point": task.slug, **dict(task.assignment),
                           "interval_ms": interval * 1000.0,
                           "multiplier": max(s.agent.monitor.detect_multiplier for s in scenario.sites),
                           "exit_code": -1, "error": "", "dir": f"points/{task.slug}"}
    runner = task.runner or sim_runner
    started = time.perf_counter()
    try:
        code = int(runner(scenario, out))
    except Exception as exc:
        (out / "error.txt").write_text(traceback.format_exc())
        row.update(error=f"the runner raised {type(exc).__name__}: {exc}", elapsed_s=time.perf_counter() - started)
        return row
    row.update(exit_code=code, elapsed_s=time.perf_counter() - started)
    if not (out / "scenario.yaml").exists():
        (out / "scenario.yaml").write_text(scenario.to_yaml())
    try:
        row.update(point_metrics(out, scenario, task.explain_window_s))
    except (ConfigError, OSError, ValueError, KeyError, TypeError) as exc:
        row["error"] = f"no results: {type(exc).__name__}: {exc}"
    if code not in (0, 1) and not row["error"]:
        row["error"] = f"the runner exited {code} (bad input or environment)"
    return row


# --- the sweep -----------------------------------------------------------------------------------------

class SweepEnvironmentError(Exception):
    """The sweep cannot run here (a missing backend or Dask); the message says what to install."""


def environment_problem(runner: Runner | None, dask_address: str | None) -> str | None:
    """Why a sweep with this runner (None: the simulator) and executor cannot run here, or None."""
    if dask_address is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            return ("--dask needs Dask's distributed scheduler, which is not installed: "
                    "pip install 'dask[distributed]' (on this machine and every worker)")
    return sim_available() if runner is None else None


@dataclass(frozen=True)
class SweepResult:
    out: Path
    table: pd.DataFrame                 # one row per point, in grid order
    files: tuple[Path, ...]

    @property
    def errors(self) -> pd.DataFrame:
        return self.table[self.table["error"] != ""]

    @property
    def exit_code(self) -> int:
        """0 every point ran and passed, 1 they all ran and one failed an expectation, 2 one could not run."""
        if len(self.errors):
            return 2
        return 0 if bool(self.table["passed"].fillna(False).all()) else 1


def results_frame(rows: Sequence[Mapping[str, Any]], params: Sequence[Param]) -> pd.DataFrame:
    """The rows as a table with fixed columns and dtypes (also when every value of a column is missing)."""
    names = [p.name for p in params]
    cols = ["index", "point", *names, *[c for c in _FIXED_COLUMNS if c not in ("index", "point")]]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in sorted(rows, key=lambda r: r["index"])], columns=cols)
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df["passed"] = df["passed"].astype("boolean")
    for c in ("point", "error", "dir"):
        df[c] = df[c].fillna("").astype(str)
    for p in params:
        # a parameter's column holds numbers when every value is one ("3", "0.5"), else the values as written
        typed = dict(zip(p.texts, p.values, strict=True))
        values = [typed.get(str(t)) for t in df[p.name]]
        numbers = [v for v in p.values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(p.values) and all(isinstance(v, int) for v in numbers):
            df[p.name] = pd.array(values, dtype="Int64")
        elif len(numbers) == len(p.values):
            df[p.name] = pd.array(values, dtype="float64")
        else:
            df[p.name] = df[p.name].fillna("").astype(str)
    return df


def _execute(tasks: Sequence[PointTask], workers: int, dask_address: str | None,
             on_done: Callable[[dict[str, Any]], None], start_method: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def failed(task: PointTask, exc: BaseException) -> dict[str, Any]:
        return {"index": task.index, "point": task.slug, **dict(task.assignment), "exit_code": -1,
                "error": f"the worker failed: {type(exc).__name__}: {exc}", "dir": f"points/{task.slug}"}

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        on_done(row)

    if dask_address is not None:
        from distributed import Client
        from distributed import as_completed as dask_completed

        with Client(dask_address) as client:  # type: ignore[no-untyped-call]
            futures = {client.submit(run_point, t, pure=False): t for t in tasks}
            for fut in dask_completed(list(futures)):  # type: ignore[no-untyped-call]
                try:
                    done(fut.result())
                except Exception as exc:
                    done(failed(futures[fut], exc))
        return rows
    if workers == 0:
        for t in tasks:
            done(run_point(t))
        return rows
    ctx = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        pending: dict[Future[dict[str, Any]], PointTask] = {pool.submit(run_point, t): t for t in tasks}
        for fut in as_completed(pending):
            try:
                done(fut.result())
            except Exception as exc:
                done(failed(pending[fut], exc))
    return rows


def run_sweep(plan: SweepPlan, out: str | Path, *, runner: Runner | None = None, workers: int | None = None,
              dask_address: str | None = None, explain_window_s: float | None = None,
              on_point: Callable[[dict[str, Any]], None] | None = None,
              start_method: str = "spawn") -> SweepResult:
    """Run every point of the plan and write OUT/results.parquet, results.csv, plots/*.png and sweep.md.

    `runner`: default the simulation backend. `workers`: processes (default the CPU count; 0 runs the
    points one after the other in this process). `start_method`: how worker processes start; "spawn"
    (the default) needs the runner importable by name and a script's `if __name__ == "__main__":` guard,
    "fork" also takes a runner defined in a notebook. `dask_address`: run on that Dask scheduler
    instead. Raises SweepEnvironmentError when the default backend or Dask is missing (nothing has run)."""
    why = environment_problem(runner, dask_address)
    if why is not None:
        raise SweepEnvironmentError(why)
    d = Path(out)
    (d / "points").mkdir(parents=True, exist_ok=True)
    tasks = [PointTask(index=p.index, slug=p.slug, assignment=p.assignment, scenario_doc=p.scenario.to_dict(),
                       source=p.scenario.source, out=str((d / "points" / p.slug).resolve()), runner=runner,
                       explain_window_s=explain_window_s) for p in plan.points]
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    rows = _execute(tasks, n_workers, dask_address, on_point or (lambda _row: None), start_method)
    table = results_frame(rows, plan.params)
    files = write_results(plan, table, d, runner=runner, workers=n_workers, dask_address=dask_address)
    return SweepResult(out=d, table=table, files=tuple(files))


# --- results -------------------------------------------------------------------------------------------

def _runner_name(runner: Runner | None) -> str:
    if runner is None or runner is sim_runner:
        return "sim (emulation.backends.sim.run_sim)"
    return f"{getattr(runner, '__module__', '?')}.{getattr(runner, '__qualname__', repr(runner))}"


def _groups(table: pd.DataFrame, metric: str, by_multiplier: bool) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
    """(multiplier or None, intervals, mean metric) per multiplier (when several were run and
    `by_multiplier`): the metric averaged over the other parameters, points without a value left out."""
    ok = table[(table["error"] == "") & table[metric].notna() & table["interval_ms"].notna()]
    if ok.empty:
        return []
    mults = sorted(int(m) for m in ok["multiplier"].dropna().unique())
    out = []
    for m in mults if by_multiplier and len(mults) > 1 else [None]:
        sub = ok if m is None else ok[ok["multiplier"] == m]
        g = sub.groupby("interval_ms", sort=True)[metric].mean()
        out.append((m, g.index.to_numpy(dtype=np.float64), g.to_numpy(dtype=np.float64)))
    return out


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# file name, title, y label, y scale, split by multiplier, [(metric, label, line style, marker)]
_PLOTS: tuple[tuple[str, str, str, float, bool, tuple[tuple[str, str, str, str | None], ...]], ...] = (
    ("detection-vs-interval.png", "Detection time against probe interval", "detection time (ms)", 1.0, True,
     (("detect_mean_ms", "mean", "-", "o"), ("detect_max_ms", "max", ":", "x"))),
    ("false-failovers-vs-interval.png", "False failovers against probe interval", "unexplained events", 1.0, True,
     (("false_failovers", "failovers", "-", "o"), ("false_path_downs", "path downs", "--", "s"))),
    ("overhead-vs-interval.png", "Probe overhead per path and direction against probe interval",
     "probe overhead (kbit/s)", 1e-3, False,
     (("probe_overhead_bps", "measured", "-", "o"), ("probe_overhead_nominal_bps", "nominal", "--", None))),
)


def render_plots(table: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    """name → (caption, PNG): detection time (with interval × multiplier for reference), false failovers
    and probe overhead against the probe interval; one line per multiplier when several were run."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    from emulation.report.plots import new_figure, png_bytes

    plots: dict[str, tuple[str, bytes]] = {}
    ok = table[(table["error"] == "") & table["interval_ms"].notna()]
    ticks = sorted(float(x) for x in ok["interval_ms"].unique())
    log_x = bool(ticks) and ticks[0] > 0 and ticks[-1] / ticks[0] >= 5
    for name, title, ylabel, scale, by_mult, series in _PLOTS:
        fig = new_figure(7.0, 4.2)
        ax = fig.add_subplot()
        drawn = False
        for metric, what, style, marker in series:
            for i, (mult, xs, ys) in enumerate(_groups(table, metric, by_mult)):
                colour = _PALETTE[i % len(_PALETTE)]
                ax.plot(xs, ys * scale, linestyle=style, marker=marker, color=colour,
                        label=what if mult is None else f"{what}, multiplier {mult}")
                drawn = True
        if name.startswith("detection") and drawn:
            for i, (mult, xs, ms) in enumerate(_groups(table, "multiplier", True)):
                ax.plot(xs, xs * ms, linestyle="--", linewidth=0.8, alpha=0.6, color=_PALETTE[i % len(_PALETTE)],
                        label="interval × multiplier" if mult is None else f"interval × {mult}")
        if not drawn:
            ax.text(0.5, 0.5, "no point has a value", transform=ax.transAxes, ha="center", va="center")
        elif log_x:
            ax.set_xscale("log")
        if drawn and ticks:
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])
        if name.startswith("false"):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("probe interval (ms)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        plots[name] = (title, png_bytes(fig))
    return plots


def _cell(v: Any, digits: int = 1) -> str:
    from emulation.report.tables import DASH

    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return DASH
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        return f"{float(v):.{digits}f}"
    return str(v)


def render_markdown(plan: SweepPlan, table: pd.DataFrame, plots: Mapping[str, tuple[str, bytes]], *,
                    runner: str) -> str:
    from emulation.report.tables import Table

    n = len(table)
    passed = int(table["passed"].fillna(False).sum())
    errors = int((table["error"] != "").sum())
    out = [f"# Sweep of {plan.scenario.name}: {n} point{'s' if n != 1 else ''}, {passed} passed"
           + (f", {errors} could not run" if errors else ""), ""]
    out.append(f"- **scenario**: {plan.scenario.source or plan.scenario.name}")
    for p in plan.params:
        out.append(f"- **{p.name}**: {', '.join(p.texts)}")
    out += [f"- **runner**: {runner}", ""]
    names = [p.name for p in plan.params]
    rows = []
    for rec in table.to_dict("records"):
        rows.append({"point": rec["point"], **{nm: rec[nm] for nm in names}, "passed": _cell(rec["passed"]),
                     "detect mean/max (ms)": f"{_cell(rec['detect_mean_ms'])}/{_cell(rec['detect_max_ms'])}",
                     "gap mean/max (ms)": f"{_cell(rec['gap_mean_ms'])}/{_cell(rec['gap_max_ms'])}",
                     "lost": _cell(rec["lost_packets"]),
                     "false failovers/downs": f"{_cell(rec['false_failovers'])}/{_cell(rec['false_path_downs'])}",
                     "overhead (kbit/s)": _cell(rec["probe_overhead_bps"] / 1000.0, 2),
                     "SLA min (%)": _cell(rec["sla_compliance_min_pct"], 2),
                     "error": rec["error"] or "–"})
    cols = ["point", *names, "passed", "detect mean/max (ms)", "gap mean/max (ms)", "lost", "false failovers/downs",
            "overhead (kbit/s)", "SLA min (%)", "error"]
    out += ["## Results", "", Table("Results", pd.DataFrame(rows, columns=cols)).to_markdown(), ""]
    out += ["## Plots", ""]
    for name, (caption, _) in plots.items():
        out += [f"![{caption}](plots/{name})", ""]
    out += ["## Definitions", ""]
    out += [
        "- **detection**: ms from the impairment taking effect to the first path declared down or degraded at the "
        "flow's source site (summary.json failovers, mean and max over flow × event).",
        "- **false failovers / downs**: FailoverTriggered events (one per moved slot) / PathStatusChanged → down "
        "events during the run that no timeline edge explains; an edge explains what happens up to "
        "`explain_window_s` after it took effect ((window + detect_multiplier) × interval + max_timeout).",
        f"- **probe overhead**: bits/s of one path's probe stream in each direction ({PROBE_WIRE_BYTES}-byte "
        "probes in UDP/IPv4, requests one way and replies the other), at the measured probe rate.",
        "- Plots average each metric over the parameters other than the interval and the multiplier.",
        "- The full table, with every column, is results.parquet (and results.csv).", ""]
    return "\n".join(out)


def write_results(plan: SweepPlan, table: pd.DataFrame, out: Path, *, runner: Runner | None = None,
                  workers: int | None = None, dask_address: str | None = None) -> list[Path]:
    """OUT/results.parquet, results.csv, plots/*.png and sweep.md; returns the paths written."""
    from emulation.report import _write

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    parquet = out / "results.parquet"
    tmp = out / ".results.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, parquet)
    files.append(parquet)
    _write(out / "results.csv", table.to_csv(index=False).encode("utf-8"))
    files.append(out / "results.csv")
    plots = render_plots(table)
    (out / "plots").mkdir(exist_ok=True)
    for name, (_, data) in plots.items():
        _write(out / "plots" / name, data)
        files.append(out / "plots" / name)
    md = render_markdown(plan, table, plots, runner=_runner_name(runner))
    _write(out / "sweep.md", md.encode("utf-8"))
    files.append(out / "sweep.md")
    return files


def sweep_command(file: str | Path, param_specs: Sequence[str], out: str | Path | None = None, *,
                  runner: Runner | None = None, workers: int | None = None, dask_address: str | None = None,
                  explain_window: str | float | None = None, console: Any = None) -> int:
    """`patronus-lab sweep FILE --param NAME=V1,V2 ...`: check everything (exit 2 with every problem, nothing
    run), run the grid with a progress bar, write the results; exit 0 all passed, 1 an expectation failed
    somewhere, 2 bad input, a missing backend, or a point that could not run."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emulation.scenario import load
    from patronus.core.units import parse_duration

    con: Console = console or Console(highlight=False, soft_wrap=True)
    errors: list[tuple[str, str]] = []
    scenario: Scenario | None = None
    params: list[Param] = []
    try:
        scenario = load(file)
    except ConfigError as exc:
        errors += [(f"{file}: {w}" if w else str(file), r) for w, r in exc.errors]
    try:
        params = parse_params(param_specs)
    except ConfigError as exc:
        errors += exc.errors
    if workers is not None and workers < 0:
        errors.append(("--workers", f"expected 0 or more worker processes, got {workers}"))
    explain_window_s: float | None = None
    if explain_window is not None:
        try:
            explain_window_s = parse_duration(explain_window, "--explain-window")
        except ConfigError as exc:
            errors += exc.errors
        else:
            if not math.isfinite(explain_window_s):
                errors.append(("--explain-window", f"expected a finite duration, got {explain_window!r}"))
    plan: SweepPlan | None = None
    if scenario is not None and params:
        try:
            plan = plan_sweep(scenario, params)
        except ConfigError as exc:
            errors += exc.errors
    if errors or plan is None:
        con.print(f"[red]patronus-lab sweep: nothing was run — {len(errors)} problem"
                  f"{'s' if len(errors) != 1 else ''}[/red]")
        for where, reason in errors:
            con.print(f"  {where}: {reason}" if where else f"  {reason}", markup=False)
        return 2
    why = environment_problem(runner, dask_address)
    if why is not None:
        con.print(f"[red]patronus-lab sweep: {escape(why)}[/red]")
        return 2
    d = Path(out) if out is not None else Path("reports") / "sweeps" / \
        f"{plan.scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    con.print(f"{plan.scenario.name}: {len(plan.points)} point{'s' if len(plan.points) != 1 else ''} "
              f"({' × '.join(str(len(p.values)) for p in params)}) → {d}", markup=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=con, transient=False)
    task_id = progress.add_task("sweep", total=len(plan.points))

    def on_point(row: dict[str, Any]) -> None:
        state = "error" if row.get("error") else ("passed" if row.get("passed") else "failed")
        progress.console.print(f"  {row['point']}: {state}" + (f" — {row['error']}" if row.get("error") else ""),
                               markup=False)
        progress.advance(task_id)

    try:
        with progress:
            result = run_sweep(plan, d, runner=runner, workers=workers, dask_address=dask_address,
                               explain_window_s=explain_window_s, on_point=on_point)
    except SweepEnvironmentError as exc:
        con.print(f"[red]patronus-lab sweep: {escape(str(exc))}[/red]")
        return 2
    except OSError as exc:
        con.print(f"[red]patronus-lab sweep: cannot write in {escape(str(d))}: {escape(str(exc))}[/red]")
        return 2
    t = result.table
    con.print(f"{int(t['passed'].fillna(False).sum())} of {len(t)} points passed"
              + (f", {len(result.errors)} could not run" if len(result.errors) else "")
              + f"; results in {d}: results.parquet, results.csv, sweep.md, plots/", markup=False)
    return result.exit_code
