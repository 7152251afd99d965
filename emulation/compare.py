"""Two runs of one scenario side by side (sim against mininet, before against after a change).

    result = compare_runs("reports/fb-sim", "reports/fb-mininet")     # a Comparison; raises ConfigError
    result.flagged                                                      # the differences beyond tolerance
    sys.exit(compare_command(a, b, out="reports/fb-compare"))           # `patronus-lab compare A B --out DIR`

What is compared, from each run's `summary.json` (the stable contract, emulation.report.summary):

* failovers, matched by (flow, event): `detect_ms`, `gap_ms`, `lost_packets`;
* SLA rows, matched by flow: `compliance_pct`, `latency_p50/p95/p99_ms`, `jitter_ms`, `loss_pct`;
* expectations, matched by text: their verdicts, shown and never flagged (a value within tolerance may
  still sit on either side of a threshold).

A difference is flagged when |B − A| exceeds its tolerance, or when one run has a value the other lacks
(a failover only one backend saw). Default tolerances (`Tolerances`), and why:

* detection: one probe interval of the scenario's monitor profile. A cut lands anywhere between two
  probes, so two faithful runs may detect it up to one interval apart. The interval comes from the
  run's `scenario.yaml` (the normalized copy a run keeps; the larger interval of its sites), else from
  how fast `raw/path_metrics.csv`'s `probes_sent` grew, else 100 ms (the result says which);
* failover gap: the larger of the detection tolerance (a gap contains the detection) and 25 % of the
  larger value;
* lost packets: the larger of the packets the flow sends in the gap tolerance (its `rate_pps` in
  `raw/run.json`; 10 when unknown) and 25 % of the larger value;
* SLA compliance 2 percent points, loss 0.5 percent points, latency and jitter the larger of 2 ms and
  10 %.

Refused (ConfigError, every problem listed; exit 2 from the command): a directory that is not a run
(missing, or without a readable `summary.json`), runs of differently named scenarios, and runs whose
`scenario.yaml` copies differ (unless `allow_changes`, when the differing settings are listed as notes).

`compare_command` prints a table, and with `out` writes `compare.md`, `compare.html` (self-contained,
in the style of the run reports) and `compare.json` (deterministic: sorted keys, rounded floats).
Exit 0 when nothing is flagged, 1 when something is, 2 on bad input.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from emulation.report.summary import SUMMARY_KEYS, clean_value
from emulation.report.tables import DASH, Table, num
from patronus.core.errors import ConfigError

DEFAULT_DETECT_TOLERANCE_MS = 100.0     # when no probe interval can be found in either run
DEFAULT_LOST_TOLERANCE = 10             # packets, when the flow's rate is unknown
FAILOVER_METRICS = ("detect_ms", "gap_ms", "lost_packets")
SLA_METRICS = ("compliance_pct", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "jitter_ms", "loss_pct")
_MAX_SCENARIO_DIFFS = 8                 # differing settings named in an error before "and N more"


@dataclass(frozen=True)
class Tolerances:
    """How far two runs may differ before a difference is flagged. `None`: derived from the runs (see
    the module docstring); everything else is absolute, in the unit its name says."""

    detect_ms: float | None = None          # None: one probe interval
    gap_ms: float | None = None             # None: the detection tolerance
    lost_packets: float | None = None       # None: the flow's packets in the gap tolerance
    relative: float = 0.25                  # gaps and lost packets: at least this share of the larger value
    sla_pct: float = 2.0                    # compliance, percent points
    loss_pct: float = 0.5                   # loss, percent points
    latency_ms: float = 2.0                 # latency percentiles and jitter ...
    latency_relative: float = 0.10          # ... or this share of the larger value, whichever is larger

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for name, v in asdict(self).items():
            if v is not None and not (math.isfinite(v) and v >= 0):
                out.append((f"tolerances.{name}", f"expected a non-negative number, got {v!r}"))
        return out


@dataclass(frozen=True)
class RunSide:
    """One run as the comparison reads it."""

    dir: Path
    summary: Mapping[str, Any]
    scenario_doc: Mapping[str, Any] | None     # scenario.yaml as plain data, when the run kept one
    probe_interval_s: float | None
    interval_source: str                        # "scenario.yaml", "raw/path_metrics.csv" or ""
    flow_rates_pps: Mapping[str, float]         # from raw/run.json, for the lost-packet tolerance

    @property
    def label(self) -> str:
        s = self.summary
        return f"{s['backend']}/{s['impairment_backend']}"

    def facts(self) -> dict[str, Any]:
        s = self.summary
        return {"dir": str(self.dir), "backend": s["backend"], "impairment_backend": s["impairment_backend"],
                "seed": s["seed"], "started_at": s["started_at"], "passed": s["passed"],
                "probe_interval_ms": None if self.probe_interval_s is None else self.probe_interval_s * 1000.0,
                "probe_interval_source": self.interval_source or None}


@dataclass(frozen=True)
class Difference:
    """One metric of one matched item in both runs. `diff` is B − A; `tolerance` is in the metric's unit."""

    section: str            # "failover" or "sla"
    item: str               # "cut hq.isp1 / cbr", "cbr (voice)"
    metric: str             # a summary.json field: detect_ms, gap_ms, compliance_pct, ...
    a: float | None
    b: float | None
    diff: float | None
    tolerance: float
    flagged: bool
    note: str = ""          # "only in A", "missing in B", ...


@dataclass(frozen=True)
class ExpectationPair:
    text: str
    a_passed: bool | None   # None: the run has no such expectation
    b_passed: bool | None
    a_value: Any = None
    b_value: Any = None


@dataclass(frozen=True)
class Comparison:
    """The result of `compare_runs`: both runs' facts, the resolved tolerances, every matched metric."""

    scenario: str
    a: RunSide
    b: RunSide
    tolerances: Tolerances                   # detect_ms and gap_ms resolved
    tolerance_source: str                    # where the detection tolerance came from
    differences: tuple[Difference, ...]
    expectations: tuple[ExpectationPair, ...]
    notes: tuple[str, ...] = ()

    @property
    def flagged(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.flagged)

    @property
    def agree(self) -> bool:
        return not self.flagged

    @property
    def exit_code(self) -> int:
        return 0 if self.agree else 1

    def find(self, section: str, item: str, metric: str) -> Difference:
        for d in self.differences:
            if (d.section, d.item, d.metric) == (section, item, metric):
                return d
        raise KeyError((section, item, metric))

    def as_dict(self) -> dict[str, Any]:
        """compare.json's content (JSON-ready, rounded as summary.json is)."""
        doc = {
            "scenario": self.scenario, "a": self.a.facts(), "b": self.b.facts(),
            "tolerances": {**asdict(self.tolerances), "source": self.tolerance_source},
            "agree": self.agree, "flagged": len(self.flagged),
            "differences": [asdict(d) for d in self.differences],
            "expectations": [asdict(e) for e in self.expectations],
            "notes": list(self.notes),
        }
        out: dict[str, Any] = clean_value(doc)
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- loading ----------------------------------------------------------------------------------------

def _read_json(path: Path, errors: list[tuple[str, str]], *, required: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            errors.append((str(path), "missing: not a run directory (a run writes summary.json; "
                                      "`patronus-lab report DIR` rebuilds it from DIR/raw)"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        errors.append((str(path), f"cannot read it: {exc}"))
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append((str(path), f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"))
        return None


def _check_summary(doc: Any, where: str, errors: list[tuple[str, str]]) -> bool:
    if not isinstance(doc, dict):
        errors.append((where, f"expected a JSON object, got {type(doc).__name__}"))
        return False
    n = len(errors)
    for key in SUMMARY_KEYS:
        if key not in doc:
            errors.append((where, f"{key}: missing"))
    for key in ("scenario", "backend", "impairment_backend"):
        if key in doc and not isinstance(doc[key], str):
            errors.append((where, f"{key}: expected a string, got {doc[key]!r}"))
    for key, fields_ in (("failovers", ("flow", "event")), ("sla", ("flow",)), ("expectations", ("text",))):
        items = doc.get(key, [])
        if not isinstance(items, list):
            errors.append((where, f"{key}: expected a list, got {items!r}"))
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict) or any(not isinstance(item.get(f), str) for f in fields_):
                errors.append((where, f"{key}[{i}]: expected an object with {', '.join(fields_)}, got {item!r}"))
    return len(errors) == n


def _interval_from_scenario(doc: Any) -> float | None:
    """The largest monitor interval of the scenario's sites (a normalized scenario document)."""
    from emulation.scenario.schema import from_dict

    try:
        scenario = from_dict(doc)
    except ConfigError:
        return None
    return max((s.agent.monitor.interval_s for s in scenario.sites), default=None)


def _interval_from_metrics(path: Path) -> float | None:
    """The probe interval the agents kept: the median over paths of elapsed time over probes sent."""
    from emulation.sweep import path_probe_rates

    rates = [r for r in path_probe_rates(path) if r > 0]
    # to 3 significant digits: the counters' sampling makes the estimate a little off (20.03 ms for 20 ms)
    return float(f"{statistics.median(1.0 / r for r in rates):.3g}") if rates else None


def load_side(directory: str | Path) -> RunSide:
    """Read one run directory for a comparison. Raises ConfigError naming every problem."""
    d = Path(directory)
    errors: list[tuple[str, str]] = []
    if not d.is_dir():
        raise ConfigError([(str(d), "not a directory" if not d.exists() else "not a directory (a file)")])
    if (d / "repeat.json").is_file():
        raise ConfigError([(str(d), "a repeated run (run --repeat): its summary.json combines the runs; compare one "
                                    f"of them, {d / 'runs'}/N")])
    summary = _read_json(d / "summary.json", errors, required=True)
    if summary is not None:
        _check_summary(summary, str(d / "summary.json"), errors)
    if errors:
        raise ConfigError(errors)

    scenario_doc: Any = None
    scen = d / "scenario.yaml"
    if scen.is_file():
        from emulation.scenario.loader import read_yaml

        try:
            scenario_doc = read_yaml(scen.read_text(encoding="utf-8"))
        except (ConfigError, OSError, UnicodeDecodeError):
            scenario_doc = None
    interval, source = None, ""
    if isinstance(scenario_doc, dict):
        interval = _interval_from_scenario(scenario_doc)
        source = "scenario.yaml" if interval is not None else ""
    if interval is None:
        interval = _interval_from_metrics(d / "raw" / "path_metrics.csv")
        source = "raw/path_metrics.csv" if interval is not None else ""

    rates: dict[str, float] = {}
    run = _read_json(d / "raw" / "run.json", [], required=False)
    if isinstance(run, dict) and isinstance(run.get("flows"), list):
        for f in run["flows"]:
            if isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("rate_pps"), int | float):
                rates[f["name"]] = float(f["rate_pps"])
    return RunSide(dir=d, summary=summary, scenario_doc=scenario_doc if isinstance(scenario_doc, dict) else None,
                   probe_interval_s=interval, interval_source=source, flow_rates_pps=rates)


def _doc_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths where two plain documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(sub)
            else:
                out += _doc_differences(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [x for i, (p, q) in enumerate(zip(a, b, strict=True)) for x in _doc_differences(p, q, f"{path}[{i}]")]
    return [] if a == b else [path or "(document)"]


# --- comparing --------------------------------------------------------------------------------------

def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _diff(section: str, item: str, metric: str, a: Any, b: Any, tolerance: float, in_a: bool,
          in_b: bool) -> Difference:
    va, vb = _number(a), _number(b)
    if not in_a or not in_b:
        note = "only in B" if not in_a else "only in A"
        return Difference(section, item, metric, va, vb, None, tolerance, flagged=True, note=note)
    if va is None and vb is None:
        return Difference(section, item, metric, None, None, None, tolerance, flagged=False)
    if va is None or vb is None:
        note = "not measured in A" if va is None else "not measured in B"
        return Difference(section, item, metric, va, vb, None, tolerance, flagged=True, note=note)
    d = vb - va
    return Difference(section, item, metric, va, vb, d, tolerance, flagged=abs(d) > tolerance + 1e-9)


def _keyed(items: Sequence[Mapping[str, Any]], key: Any) -> dict[Any, Mapping[str, Any]]:
    out: dict[Any, Mapping[str, Any]] = {}
    for item in items:
        k = key(item)
        n = 2
        while k in out:       # a repeated key (not expected): keep both, numbered
            k = (*k, n) if isinstance(k, tuple) else (k, n)
            n += 1
        out[k] = item
    return out


def _larger(a: Any, b: Any) -> float:
    vals = [abs(v) for v in (_number(a), _number(b)) if v is not None]
    return max(vals, default=0.0)


def compare_runs(a: str | Path | RunSide, b: str | Path | RunSide, *, tolerances: Tolerances | None = None,
                 allow_changes: bool = False) -> Comparison:
    """Compare run B against run A. Raises ConfigError (every problem listed) when a directory is not a
    run, when the runs are of different scenarios, or when the tolerances are invalid."""
    tol = tolerances or Tolerances()
    ra, rb = _load_sides(a, b, tol)
    sa, sb = ra.summary, rb.summary
    notes = _same_scenario(ra, rb, allow_changes)
    tol, source = _resolved_tolerances(ra, rb, tol, notes)
    diffs = _failover_differences(ra, rb, tol) + _sla_differences(sa, sb, tol, notes)
    ea = _keyed(sa["expectations"], lambda e: e["text"])
    eb = _keyed(sb["expectations"], lambda e: e["text"])
    texts = list(ea) + [t for t in eb if t not in ea]
    pairs = tuple(ExpectationPair(text=str(t[0] if isinstance(t, tuple) else t),
                                  a_passed=ea[t].get("passed") if t in ea else None,
                                  b_passed=eb[t].get("passed") if t in eb else None,
                                  a_value=ea[t].get("value") if t in ea else None,
                                  b_value=eb[t].get("value") if t in eb else None) for t in texts)
    return Comparison(scenario=str(sa["scenario"]), a=ra, b=rb, tolerances=tol, tolerance_source=source,
                      differences=tuple(diffs), expectations=pairs, notes=tuple(notes))


def _load_sides(a: str | Path | RunSide, b: str | Path | RunSide, tol: Tolerances) -> tuple[RunSide, RunSide]:
    errors = list(tol.problems())
    sides: list[RunSide] = []
    for label, given in (("A", a), ("B", b)):
        if isinstance(given, RunSide):
            sides.append(given)
            continue
        try:
            sides.append(load_side(given))
        except ConfigError as exc:
            errors += [(f"run {label}: {w}" if w else f"run {label}", r) for w, r in exc.errors]
    if errors:
        raise ConfigError(errors)
    return sides[0], sides[1]


def _same_scenario(ra: RunSide, rb: RunSide, allow_changes: bool) -> list[str]:
    """Refuse runs of two scenarios (or, unless allowed, of two versions of one); the notes to show."""
    sa, sb = ra.summary, rb.summary
    notes: list[str] = []
    if sa["scenario"] != sb["scenario"]:
        raise ConfigError([("scenario", f"run A is of {sa['scenario']!r}, run B of {sb['scenario']!r}: a comparison "
                                        "needs two runs of one scenario")])
    if ra.scenario_doc is not None and rb.scenario_doc is not None:
        changed = _doc_differences(ra.scenario_doc, rb.scenario_doc)
        if changed:
            shown = ", ".join(changed[:_MAX_SCENARIO_DIFFS])
            more = f" and {len(changed) - _MAX_SCENARIO_DIFFS} more" if len(changed) > _MAX_SCENARIO_DIFFS else ""
            if not allow_changes:
                raise ConfigError([("scenario.yaml", f"the runs' scenarios differ at {shown}{more}; compare runs of "
                                                     "one scenario, or allow the changes (--allow-changes)")])
            notes.append(f"the scenarios differ at {shown}{more}")
    if sa["seed"] != sb["seed"]:
        notes.append(f"the seeds differ (A {sa['seed']}, B {sb['seed']})")
    return notes


def _resolved_tolerances(ra: RunSide, rb: RunSide, tol: Tolerances, notes: list[str]) -> tuple[Tolerances, str]:
    """The tolerances this comparison uses (detection from the probe interval unless given) and where
    the detection tolerance came from."""
    intervals = [s.probe_interval_s for s in (ra, rb) if s.probe_interval_s is not None]
    if tol.detect_ms is not None:
        source, detect_tol = "given", tol.detect_ms
    elif intervals:
        srcs = sorted({s.interval_source for s in (ra, rb) if s.probe_interval_s is not None})
        source, detect_tol = f"one probe interval, from {' and '.join(srcs)}", max(intervals) * 1000.0
    else:
        source, detect_tol = "default (no probe interval found in either run)", DEFAULT_DETECT_TOLERANCE_MS
    gap_tol = detect_tol if tol.gap_ms is None else tol.gap_ms
    if len(intervals) == 2 and intervals[0] != intervals[1]:
        notes.append(f"the probe intervals differ (A {intervals[0] * 1000:g} ms, B {intervals[1] * 1000:g} ms)")
    return replace(tol, detect_ms=detect_tol, gap_ms=gap_tol), source


def _failover_differences(ra: RunSide, rb: RunSide, tol: Tolerances) -> list[Difference]:
    assert tol.detect_ms is not None and tol.gap_ms is not None
    detect_tol, gap_tol = tol.detect_ms, tol.gap_ms

    def lost_tolerance(flow: str, va: Any, vb: Any) -> float:
        if tol.lost_packets is not None:
            base = tol.lost_packets
        else:
            rate = ra.flow_rates_pps.get(flow) or rb.flow_rates_pps.get(flow)
            base = float(math.ceil(gap_tol / 1000.0 * rate)) if rate else float(DEFAULT_LOST_TOLERANCE)
        return max(base, tol.relative * _larger(va, vb))

    diffs: list[Difference] = []
    fa = _keyed(ra.summary["failovers"], lambda f: (f["event"], f["flow"]))
    fb = _keyed(rb.summary["failovers"], lambda f: (f["event"], f["flow"]))
    order = {k: (f.get("at_s") if _number(f.get("at_s")) is not None else math.inf, k)
             for k, f in (*fb.items(), *fa.items())}
    for key in sorted(set(fa) | set(fb), key=lambda k: order[k]):
        x, y = fa.get(key, {}), fb.get(key, {})
        item = f"{key[0]} / {key[1]}"
        flow = str(key[1])
        for metric in FAILOVER_METRICS:
            va, vb = x.get(metric), y.get(metric)
            if metric == "detect_ms":
                t = detect_tol
            elif metric == "gap_ms":
                t = max(gap_tol, tol.relative * _larger(va, vb))
            else:
                t = lost_tolerance(flow, va, vb)
            diffs.append(_diff("failover", item, metric, va, vb, t, key in fa, key in fb))
    return diffs


def _sla_differences(sa: Mapping[str, Any], sb: Mapping[str, Any], tol: Tolerances,
                     notes: list[str]) -> list[Difference]:
    diffs: list[Difference] = []
    la = _keyed(sa["sla"], lambda s: s["flow"])
    lb = _keyed(sb["sla"], lambda s: s["flow"])
    for key in sorted(set(la) | set(lb), key=str):
        x, y = la.get(key, {}), lb.get(key, {})
        cls = x.get("class") or y.get("class")
        item = f"{key} ({cls})" if cls else str(key)
        if key in la and key in lb and x.get("class") != y.get("class"):
            notes.append(f"{key}: SLA class {x.get('class')!r} in A, {y.get('class')!r} in B")
        for metric in SLA_METRICS:
            va, vb = x.get(metric), y.get(metric)
            if metric == "compliance_pct":
                t = tol.sla_pct
            elif metric == "loss_pct":
                t = tol.loss_pct
            else:
                t = max(tol.latency_ms, tol.latency_relative * _larger(va, vb))
            diffs.append(_diff("sla", item, metric, va, vb, t, key in la, key in lb))
    return diffs


# --- rendering --------------------------------------------------------------------------------------

_UNITS = {"detect_ms": "ms", "gap_ms": "ms", "lost_packets": "packets", "compliance_pct": "%",
          "latency_p50_ms": "ms", "latency_p95_ms": "ms", "latency_p99_ms": "ms", "jitter_ms": "ms", "loss_pct": "%"}
_TITLES = {"detect_ms": "detection", "gap_ms": "failover gap", "lost_packets": "lost packets",
           "compliance_pct": "SLA compliance", "latency_p50_ms": "latency p50", "latency_p95_ms": "latency p95",
           "latency_p99_ms": "latency p99", "jitter_ms": "jitter", "loss_pct": "loss"}


def _fmt(metric: str, v: float | None, signed: bool = False) -> str:
    if v is None:
        return DASH
    digits = 0 if metric == "lost_packets" else (3 if metric == "loss_pct" else (2 if metric == "compliance_pct"
                                                                               else 1))
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _verdict(v: bool | None) -> str:
    return DASH if v is None else ("PASS" if v else "FAIL")


def difference_rows(c: Comparison) -> list[dict[str, str]]:
    """Every difference as display strings (the columns of every rendering)."""
    rows = []
    for d in c.differences:
        rows.append({"": "✗" if d.flagged else "✓", "section": d.section, "item": d.item,
                     "metric": f"{_TITLES.get(d.metric, d.metric)} ({_UNITS.get(d.metric, '')})",
                     "A": _fmt(d.metric, d.a), "B": _fmt(d.metric, d.b),
                     "B − A": d.note or _fmt(d.metric, d.diff, signed=True),
                     "tolerance": "±" + _fmt(d.metric, d.tolerance)})
    return rows


def _facts(c: Comparison) -> list[tuple[str, str]]:
    out = [("scenario", c.scenario)]
    for label, side in (("A", c.a), ("B", c.b)):
        s = side.summary
        out.append((f"run {label}", f"{side.dir} — {side.label}, seed {s['seed']}, "
                                    f"{'passed' if s['passed'] else 'FAILED'}"))
    t = c.tolerances
    out.append(("tolerances", f"detection ±{num(t.detect_ms, 1)} ms ({c.tolerance_source}); gap ±max("
                              f"{num(t.gap_ms, 1)} ms, {t.relative * 100:g} %); lost packets ±max("
                              f"{'rate × gap tolerance' if t.lost_packets is None else num(t.lost_packets, 0)}, "
                              f"{t.relative * 100:g} %); SLA compliance ±{t.sla_pct:g} pp, loss ±{t.loss_pct:g} pp, "
                              f"latency and jitter ±max({t.latency_ms:g} ms, {t.latency_relative * 100:g} %)"))
    n = len(c.flagged)
    out.append(("verdict", "the runs agree within tolerance" if not n else
                f"{n} difference{'s' if n != 1 else ''} beyond tolerance"))
    return out


def _tables(c: Comparison) -> list[Table]:
    rows = difference_rows(c)
    cols = ["", "section", "item", "metric", "A", "B", "B − A", "tolerance"]
    exp = [{"expectation": e.text, "A": _verdict(e.a_passed), "B": _verdict(e.b_passed),
            "": "differs" if e.a_passed != e.b_passed else ""} for e in c.expectations]
    return [Table("Differences", pd.DataFrame(rows, columns=cols),
                  note="✗: beyond tolerance, or measured in one run only. Times in ms after the impairment took "
                       "effect; B − A is run B's value minus run A's."),
            Table("Expectations", pd.DataFrame(exp, columns=["expectation", "A", "B", ""]),
                  note="Verdicts are shown, not flagged: a value within tolerance may fall on either side of a "
                       "threshold.")]


def render_markdown(c: Comparison) -> str:
    verdict = "AGREE" if c.agree else f"{len(c.flagged)} FLAGGED"
    out = [f"# {c.scenario}: A against B: {verdict}", ""]
    out += [f"- **{k}**: {v}" for k, v in _facts(c)]
    out += [f"- **note**: {n}" for n in c.notes]
    out.append("")
    for t in _tables(c):
        out += [f"## {t.title}", "", t.to_markdown(), ""]
        if t.note:
            out += [f"_{t.note}_", ""]
    return "\n".join(out)


def render_html(c: Comparison) -> str:
    from emulation.report.documents import _CSS  # the run reports' look

    scen = html.escape(c.scenario)
    verdict = ('<span class="pass">AGREE</span>' if c.agree
               else f'<span class="fail">{len(c.flagged)} FLAGGED</span>')
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Patronus comparison: {scen}</title><style>{_CSS}</style></head><body>",
             f"<h1>{scen}: A against B: {verdict}</h1>", "<dl>"]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(c)]
    parts += [f"<dt>note</dt><dd>{html.escape(n)}</dd>" for n in c.notes]
    parts.append("</dl>")
    for t in _tables(c):
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        head = "".join(f"<th>{html.escape(str(col))}</th>" for col in t.frame.columns)
        body = []
        for r in t.frame.itertuples(index=False):
            bad = r[0] == "✗" if t.title == "Differences" else r[-1] == "differs"
            cls = ' class="fail"' if bad else ""
            body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
        if not body:
            body.append(f'<tr><td colspan="{len(t.frame.columns)}">none</td></tr>')
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        if t.note:
            parts.append(f'<p class="note">{html.escape(t.note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def rich_table(c: Comparison) -> RichTable:
    t = RichTable(title=f"{c.scenario}: A = {c.a.label}, B = {c.b.label}", title_justify="left")
    t.add_column("", justify="center")
    t.add_column("item")
    t.add_column("metric")
    for col in ("A", "B", "B − A", "tolerance"):
        t.add_column(col, justify="right")
    for r in difference_rows(c):
        style = "red" if r[""] == "✗" else None
        t.add_row(r[""], r["item"], r["metric"], r["A"], r["B"], r["B − A"], r["tolerance"], style=style)
    return t


def write_comparison(c: Comparison, out: str | Path) -> list[Path]:
    """Write OUT/compare.md, compare.html and compare.json; returns their paths."""
    from emulation.report import _write

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    files = [(d / "compare.json", c.to_json()), (d / "compare.md", render_markdown(c)),
             (d / "compare.html", render_html(c))]
    for path, text in files:
        _write(path, text.encode("utf-8"))
    return [p for p, _ in files]


@dataclass(frozen=True)
class ToleranceOptions:
    """Tolerances as a user writes them ("20ms", "25%", 2.0), parsed by `parse_tolerances`."""

    detect: str | None = None
    gap: str | None = None
    lost: float | None = None
    relative: str | None = None
    sla_pct: float | None = None
    loss_pct: float | None = None
    latency: str | None = None


def parse_tolerances(o: ToleranceOptions) -> Tolerances:
    """Human tolerances → `Tolerances`. Raises ConfigError naming each bad option."""
    from patronus.core.units import parse_duration, parse_ratio

    errors: list[tuple[str, str]] = []
    kw: dict[str, Any] = {}
    for opt, attr, value in (("--detect-tol", "detect_ms", o.detect), ("--gap-tol", "gap_ms", o.gap),
                             ("--latency-tol", "latency_ms", o.latency)):
        if value is not None:
            try:
                kw[attr] = parse_duration(value, opt) * 1000.0
            except ConfigError as exc:
                errors += exc.errors
    if o.relative is not None:
        try:
            kw["relative"] = parse_ratio(o.relative, "--rel-tol")
        except ConfigError as exc:
            errors += exc.errors
    for opt, attr, number in (("--lost-tol", "lost_packets", o.lost), ("--sla-tol", "sla_pct", o.sla_pct),
                              ("--loss-tol", "loss_pct", o.loss_pct)):
        if number is not None:
            if not (math.isfinite(number) and number >= 0):
                errors.append((opt, f"expected a non-negative number, got {number!r}"))
            else:
                kw[attr] = float(number)
    if errors:
        raise ConfigError(errors)
    return Tolerances(**kw)


def compare_command(a: str | Path, b: str | Path, out: str | Path | None = None, *,
                    tolerances: Tolerances | ToleranceOptions | None = None, allow_changes: bool = False,
                    console: Console | None = None) -> int:
    """`patronus-lab compare A B [--out DIR]`: print the table, write the documents; exit 0 when the runs
    agree within tolerance, 1 when a difference is flagged, 2 on bad input (every problem printed)."""
    con = console or Console(highlight=False, soft_wrap=True)
    try:
        tol = parse_tolerances(tolerances) if isinstance(tolerances, ToleranceOptions) else tolerances
        c = compare_runs(a, b, tolerances=tol, allow_changes=allow_changes)
    except ConfigError as exc:
        con.print(f"[red]patronus-lab compare: cannot compare {escape(str(a))} with {escape(str(b))}[/red]")
        for where, reason in exc.errors:
            con.print(f"  {where}: {reason}" if where else f"  {reason}", markup=False)
        return 2
    con.print(rich_table(c))
    for n in c.notes:
        con.print(f"note: {n}", markup=False)
    for k, v in _facts(c)[-2:]:
        con.print(f"{k}: {v}", markup=False)
    if out is not None:
        try:
            files = write_comparison(c, out)
        except OSError as exc:
            con.print(f"[red]patronus-lab compare: cannot write in {escape(str(out))}: {escape(str(exc))}[/red]")
            return 2
        con.print(f"written: {', '.join(str(p) for p in files)}", markup=False)
    return c.exit_code
