"""Repeated runs of one scenario, judged together: `patronus-lab run FILE --repeat N`.

    code = run_repeated(scenario, Path("reports/runs/fb-x10"), 10, run_one, backend="sim")
    doc = write_combined(Path("reports/runs/fb-x10"))      # the combined reports, from the runs on disk
    sys.exit(repeat_report_command("reports/runs/fb-x10"))  # `patronus-lab report DIR` of such a directory

OUT holds:

    repeat.json        the plan: scenario, backend, runs planned, their seeds, the scenario's duration
    scenario.yaml      the scenario as given (run 1's)
    runs/1 … runs/N    each a complete run directory (summary.json, report.*, junit.xml, raw/, plots/):
                       `patronus-lab report OUT/runs/3` rebuilds it like any run
    summary.json, report.md, report.html, junit.xml     the combined report

Run i has seed + i - 1, on either backend: the simulator's runs differ by nothing else; on Mininet the
seed drives the relays' random impairments and the platform adds its own noise. The runs go one after
another (a Mininet run tears its network down before it returns). A run that could not run (exit 2)
stops the repetition: the combined report covers the runs made, and the exit code is 2.

The combined summary.json keeps the keys of a run's where they make sense (emulation.report.summary):
`scenario`, `backend`, `impairment_backend`, `seed` (run 1's), `started_at` (run 1's), `duration_s` (of
one run), `passed`, and `expectations`, each judged over the runs (emulation.measure.repeated: the
rule, the combined value, the per-run values and verdicts, the median, p95, min, max and 95 % interval
of the values); and adds `verdict` ("passed", "failed", "inconclusive", "error"), `runs` (each run's
number, directory relative to OUT, seed, passed, verdict and exit code), `repeat` (how many runs were
planned, made, passed, failed, inconclusive, could not run) and `metrics`: every failover metric
(`detect_ms`, `gap_ms`, `lost_packets` per flow and timeline edge), every SLA metric per flow and every
number of a run's `platform`, each with its per-run values and their statistics. Inconclusive runs are
left out of the verdicts and the statistics (`metrics_runs` lists the runs the statistics are over; when
every run is inconclusive, they are over all of them). Like a run's, the file is deterministic: the
same runs give the same bytes (the simulator's runs are the same for the same seeds).

Exit codes: 0 every expectation passes by its rule, 1 one does not, 2 bad input or a run that could not
run, 3 inconclusive (every run was).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from emulation.compare import FAILOVER_METRICS, SLA_METRICS, _keyed
from emulation.measure.errors import RawDataError
from emulation.measure.expectations import ExpectationResult
from emulation.measure.repeated import (
    ERROR,
    EXIT_CODES,
    INCONCLUSIVE,
    PASSED,
    combined_verdict,
    describe,
    judge,
    judged_runs,
    run_verdict,
)
from emulation.report.summary import clean_value
from emulation.report.tables import DASH, Table, expectation_value, num
from emulation.scenario.model import Scenario
from patronus.core.errors import ConfigError

MAX_REPEAT = 1000
MAX_SEED = 2**63 - 1          # emulation.scenario.schema's bound
PLAN_FILE = "repeat.json"
RUNS_DIR = "runs"

RunOne = Callable[[Scenario, Path], int]     # writes a complete run directory; returns its exit code


# --- the plan -------------------------------------------------------------------------------------------

def plan_runs(scenario: Scenario, n: int) -> list[Scenario]:
    """The N scenarios to run: the same with seeds seed … seed + N - 1. ConfigError for a bad N."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
        raise ConfigError([("--repeat", f"expected a number of runs from 1 to {MAX_REPEAT}, got {n!r}")])
    if scenario.seed + n - 1 > MAX_SEED:
        raise ConfigError([("--repeat", f"the runs' seeds {scenario.seed}…{scenario.seed + n - 1} go beyond the "
                                        f"largest seed ({MAX_SEED}); lower the scenario's seed")])
    # the seed is a plain setting (nothing else of the scenario derives from it): no need to re-validate
    return [dataclasses.replace(scenario, seed=scenario.seed + i) for i in range(n)]


def is_repeat_dir(directory: str | Path) -> bool:
    return (Path(directory) / PLAN_FILE).is_file()


def run_repeated(scenario: Scenario, out: Path, n: int, run_one: RunOne, *, backend: str,
                 on_run: Callable[[int, int, int, Path], None] | None = None) -> int:
    """Run the scenario N times into OUT/runs/1 … N, then write the combined report; the exit code.
    `on_run(i, seed, exit code, dir)` is called after each run. Raises ConfigError for a bad N, or an
    OUT that already holds runs (nothing is written then)."""
    from emulation.report import _write

    scenarios = plan_runs(scenario, n)
    if (out / RUNS_DIR).is_dir() and any((out / RUNS_DIR).iterdir()):
        raise ConfigError([("--out", f"{out} already holds the runs of an earlier repeated run ({RUNS_DIR}/): "
                                     "give a new directory, or remove it first")])
    out.mkdir(parents=True, exist_ok=True)
    plan = {"scenario": scenario.name, "backend": backend, "runs": n, "seeds": [s.seed for s in scenarios],
            "duration_s": scenario.duration_s}
    _write(out / PLAN_FILE, (json.dumps(plan, sort_keys=True, indent=2) + "\n").encode("utf-8"))
    _write(out / "scenario.yaml", scenario.to_yaml().encode("utf-8"))
    broken: set[int] = set()
    for i, sc in enumerate(scenarios, start=1):
        d = out / RUNS_DIR / str(i)
        d.mkdir(parents=True)           # even if it cannot run: the combined report lists it
        code = run_one(sc, d)
        if on_run is not None:
            on_run(i, sc.seed, code, d)
        if code == EXIT_CODES[ERROR] or code not in EXIT_CODES.values():
            broken.add(i)
            break
    doc = write_combined(out, frozenset(broken))
    return int(EXIT_CODES[doc["verdict"]])


# --- combining ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Run:
    number: int
    seed: int
    summary: Mapping[str, Any] | None       # None: no readable summary.json (it could not run)
    expectations: Sequence[Mapping[str, Any]] | None    # raw/run.json's expectation documents

    @property
    def verdict(self) -> str:
        return run_verdict(self.summary)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_plan(directory: Path) -> dict[str, Any]:
    """repeat.json, checked. RawDataError naming the problem."""
    where = str(directory / PLAN_FILE)
    plan = _read_json(directory / PLAN_FILE)
    if not isinstance(plan, dict):
        raise RawDataError([(where, "missing or not a JSON object: not a repeated-run directory")])
    problems = []
    n = plan.get("runs")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        problems.append((where, f"runs: expected a number of runs, got {n!r}"))
    seeds = plan.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or (isinstance(n, int) and len(seeds) != n):
        problems.append((where, f"seeds: expected one seed per run, got {seeds!r}"))
    for key in ("scenario", "backend"):
        if not isinstance(plan.get(key), str):
            problems.append((where, f"{key}: expected a string, got {plan.get(key)!r}"))
    if not isinstance(plan.get("duration_s"), int | float):
        problems.append((where, f"duration_s: expected a number, got {plan.get('duration_s')!r}"))
    if problems:
        raise RawDataError(problems)
    return plan


def _load_runs(directory: Path, plan: Mapping[str, Any], broken: frozenset[int]) -> list[_Run]:
    runs = []
    for i, seed in enumerate(plan["seeds"], start=1):
        d = directory / RUNS_DIR / str(i)
        if not d.is_dir():
            break                               # the repetition stopped before this run
        summary = None if i in broken else _read_json(d / "summary.json")
        run = _read_json(d / "raw" / "run.json")
        exps = run.get("expectations") if isinstance(run, dict) else None
        ok = isinstance(summary, dict) and isinstance(summary.get("expectations"), list) and isinstance(exps, list)
        runs.append(_Run(i, seed, summary if ok else None, exps if ok else None))
    return runs


def _expectation_docs(runs: Sequence[_Run]) -> list[Mapping[str, Any]]:
    """The expectations (run.json documents) every run with a summary shares. RawDataError if they differ."""
    docs: list[Mapping[str, Any]] | None = None
    for r in runs:
        if r.summary is None or r.expectations is None:
            continue
        texts = [e.get("text") for e in r.summary["expectations"] if isinstance(e, dict)]
        if [e.get("text") for e in r.expectations] != texts:
            raise RawDataError([(f"{RUNS_DIR}/{r.number}/summary.json", "its expectations are not raw/run.json's")])
        if docs is None:
            docs = list(r.expectations)
        elif [e.get("text") for e in docs] != texts:
            raise RawDataError([(f"{RUNS_DIR}/{r.number}/summary.json", "its expectations differ from run 1's: "
                                 "the runs are not of one scenario")])
    return docs or []


def _metric_series(runs: Sequence[_Run]) -> list[tuple[str, str, str, list[Any]]]:
    """(section, item, metric, one value per run) for every failover, SLA and platform metric."""
    out: list[tuple[str, str, str, list[Any]]] = []
    with_summary = [r.summary or {} for r in runs]
    fo = [_keyed([f for f in s.get("failovers", []) if isinstance(f, dict)],
                 lambda f: (str(f.get("event")), str(f.get("flow")))) for s in with_summary]
    first_at: dict[Any, Any] = {}
    for keyed in fo:
        for k, f in keyed.items():
            at = f.get("at_s")
            first_at.setdefault(k, at if isinstance(at, int | float) else math.inf)
    for k in sorted(first_at, key=lambda k: (first_at[k], str(k))):
        item = f"{k[0]} / {k[1]}" + (f" #{k[2]}" if len(k) > 2 else "")
        for metric in FAILOVER_METRICS:
            out.append(("failover", item, metric, [keyed.get(k, {}).get(metric) for keyed in fo]))
    sla = [_keyed([x for x in s.get("sla", []) if isinstance(x, dict)], lambda x: str(x.get("flow")))
           for s in with_summary]
    classes: dict[Any, str] = {}
    for keyed in sla:
        for k, x in keyed.items():
            classes.setdefault(k, str(x.get("class")))
    for k in sorted(classes, key=str):
        item = f"{k if isinstance(k, str) else ' #'.join(map(str, k))} ({classes[k]})"
        for metric in SLA_METRICS:
            out.append(("sla", item, metric, [keyed.get(k, {}).get(metric) for keyed in sla]))

    def leaves(doc: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(doc, dict):
            found: dict[str, Any] = {}
            for k, v in doc.items():
                found.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
            return found
        return {prefix: doc} if isinstance(doc, int | float) and not isinstance(doc, bool) else {}

    platform = [leaves(s.get("platform")) for s in with_summary]
    for name in sorted({k for p in platform for k in p}):
        out.append(("platform", "host", name, [p.get(name) for p in platform]))
    return out


def combine(directory: str | Path, broken: frozenset[int] = frozenset()) -> dict[str, Any]:
    """The combined summary of a repeated-run directory, from repeat.json and each run's summary.json
    and raw/run.json (runs in `broken` count as runs that could not run). RawDataError when repeat.json
    is bad or the runs are not of one scenario."""
    d = Path(directory)
    plan = read_plan(d)
    runs = _load_runs(d, plan, broken)
    docs = _expectation_docs(runs)
    verdicts = [r.verdict for r in runs]
    judged = judged_runs(verdicts)
    left_out = sum(1 for v in verdicts if v == INCONCLUSIVE)
    expectations: list[dict[str, Any]] = []
    for j, doc in enumerate(docs):
        per_run = [r.summary["expectations"][j] if r.summary is not None else None for r in runs]
        values = [None if e is None else e.get("value") for e in per_run]
        passed = [None if e is None else bool(e.get("passed")) for e in per_run]
        jd = judge(doc, [values[i] for i in judged], [bool(passed[i]) for i in judged])
        verdict = INCONCLUSIVE if jd.passed is None else (PASSED if jd.passed else "failed")
        expectations.append({
            "type": doc.get("type"), "text": doc.get("text"), "passed": jd.passed is True, "verdict": verdict,
            "rule": jd.rule.kind, "rule_text": jd.rule.text, "quantile": jd.rule.quantile,
            "pass_rate": jd.rule.pass_rate, "value": jd.value, "value_low": jd.value_low,
            "values": values, "run_passed": passed, "runs_judged": jd.runs_judged, "runs_passed": jd.runs_passed,
            "left_out": left_out, "stats": describe([values[i] for i in judged]).as_dict()})
    verdict = combined_verdict(verdicts, [e["passed"] if e["verdict"] != INCONCLUSIVE else None
                                          for e in expectations])
    over = judged or [i for i, r in enumerate(runs) if r.summary is not None]
    metrics = [{"section": section, "item": item, "metric": metric, "values": values,
                **describe([values[i] for i in over]).as_dict()}
               for section, item, metric, values in _metric_series(runs)]
    first = next((r.summary for r in runs if r.summary is not None), {})
    counts = {v: verdicts.count(v) for v in ("passed", "failed", INCONCLUSIVE, ERROR)}
    doc = {
        "scenario": plan["scenario"], "backend": plan["backend"],
        "impairment_backend": first.get("impairment_backend", ""), "seed": plan["seeds"][0],
        "started_at": first.get("started_at", 0.0), "duration_s": plan["duration_s"],
        "passed": verdict == PASSED, "verdict": verdict, "expectations": expectations,
        "runs": [{"run": r.number, "dir": f"{RUNS_DIR}/{r.number}", "seed": r.seed,
                  "passed": None if r.summary is None else bool(r.summary.get("passed")), "verdict": r.verdict,
                  "exit_code": EXIT_CODES[r.verdict]} for r in runs],
        "repeat": {"planned": plan["runs"], "made": len(runs), **counts, "left_out": left_out},
        "metrics_runs": [runs[i].number for i in over], "metrics": metrics,
    }
    out: dict[str, Any] = clean_value(doc)
    return out


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_combined(directory: str | Path, broken: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Combine the runs of DIR and write DIR/summary.json, report.md, report.html and junit.xml."""
    from emulation.report import _write

    d = Path(directory)
    doc = combine(d, broken)
    _write(d / "summary.json", to_json(doc).encode("utf-8"))
    _write(d / "report.md", render_markdown(doc).encode("utf-8"))
    _write(d / "report.html", render_html(doc).encode("utf-8"))
    _write(d / "junit.xml", render_junit(doc))
    return doc


# --- rendering ------------------------------------------------------------------------------------------

_VERDICT_WORD = {PASSED: "PASSED", "failed": "FAILED", INCONCLUSIVE: "INCONCLUSIVE", ERROR: "INCOMPLETE"}
_RESULT_WORD = {PASSED: "PASS", "failed": "FAIL", INCONCLUSIVE: "N/A"}


def shown_value(e: Mapping[str, Any], value: Any) -> str:
    """An expectation's value for people: ms, %, counts (expectation_value's units)."""
    return expectation_value(ExpectationResult(str(e.get("type")), str(e.get("text")), bool(e.get("passed")), value))


def combined_value(e: Mapping[str, Any]) -> str:
    if e.get("value") is None:
        return DASH
    if e.get("rule") == "pass_rate":
        return f"{e['value'] * 100:.4g} % of runs passed"
    what = "worst run" if e.get("rule") == "every_run" else f"p{e['quantile'] * 100:.4g}"
    low = f", lower bound's {shown_value(e, e['value_low'])}" if e.get("value_low") is not None else ""
    return f"{shown_value(e, e['value'])} ({what}{low})"


def _per_run(e: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for r, v, p in zip(runs, e["values"], e["run_passed"], strict=True):
        mark = "" if p is None else (" ✓" if p else " ✗")
        left = " (left out)" if r["verdict"] not in (PASSED, "failed") else ""
        parts.append(f"{shown_value(e, v)}{mark}{left}")
    return ", ".join(parts) or DASH


def _metric_unit(metric: str) -> tuple[str, int]:
    if metric.endswith("_ms"):
        return "ms", 1
    if metric.endswith("_pct"):
        return "%", 3 if metric.startswith("loss") else 2
    return "", 1 if metric != "lost_packets" else 0


def _ci_text(m: Mapping[str, Any], digits: int) -> str:
    if m.get("ci_low") is None:
        return "n/a"
    return f"{m['ci_low']:.{digits}f}–{m['ci_high']:.{digits}f} ({m['ci_confidence'] * 100:.1f} %)"


def tables(doc: Mapping[str, Any]) -> list[Table]:
    runs = doc["runs"]
    rows = [{"result": _RESULT_WORD[e["verdict"]], "expectation": e["text"], "rule": e["rule_text"],
             "value": combined_value(e), "runs passed": f"{e['runs_passed']}/{e['runs_judged']}",
             "median (95 % CI)": f"{shown_value(e, e['stats']['median'])} "
                                 f"({_stat_ci(e)})", "per run": _per_run(e, runs)}
            for e in doc["expectations"]]
    cols = ["result", "expectation", "rule", "value", "runs passed", "median (95 % CI)", "per run"]
    rep = doc["repeat"]
    exp_note = ("Each expectation is judged over the runs that passed or failed"
                + (f"; {rep['left_out']} inconclusive run{'s' if rep['left_out'] != 1 else ''} left out" if
                   rep["left_out"] else "")
                + ". Quantiles by nearest rank; for a lower bound (min) the value that the quantile's share of "
                  "runs meet or beat.")
    out = [Table("Expectations over the runs", pd.DataFrame(rows, columns=cols), note=exp_note)]
    run_rows = [{"run": str(r["run"]), "seed": str(r["seed"]), "verdict": r["verdict"],
                 "exit code": str(r["exit_code"]), "report": f"{r['dir']}/report.html"} for r in runs]
    out.append(Table("Runs", pd.DataFrame(run_rows, columns=["run", "seed", "verdict", "exit code", "report"])))
    m_rows = []
    for m in doc["metrics"]:
        unit, digits = _metric_unit(m["metric"])
        m_rows.append({"section": m["section"], "item": m["item"], "metric": m["metric"], "runs": str(m["n"]),
                       "median": num(m["median"], digits), "p95": num(m["p95"], digits),
                       "min": num(m["min"], digits), "max": num(m["max"], digits),
                       "95 % CI of the median": _ci_text(m, digits), "unit": unit or DASH})
    cols = ["section", "item", "metric", "runs", "median", "p95", "min", "max", "95 % CI of the median", "unit"]
    over = ", ".join(str(n) for n in doc["metrics_runs"]) or DASH
    out.append(Table("Metrics over the runs", pd.DataFrame(m_rows, columns=cols),
                     note=f"Over runs {over}. p95 by nearest rank. The interval is the distribution-free "
                          "order-statistic interval of the median (its exact confidence in brackets); it needs "
                          "6 runs, n/a with fewer."))
    return out


def _stat_ci(e: Mapping[str, Any]) -> str:
    s = e["stats"]
    if s["ci_low"] is None:
        return "CI n/a"
    return f"{shown_value(e, s['ci_low'])}–{shown_value(e, s['ci_high'])}"


def _facts(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    rep = doc["repeat"]
    seeds = [r["seed"] for r in doc["runs"]]
    seed_text = DASH if not seeds else str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    failed = sum(1 for e in doc["expectations"] if e["verdict"] == "failed")
    passed = sum(1 for e in doc["expectations"] if e["verdict"] == PASSED)
    runs = f"{rep['made']} of {rep['planned']} (seeds {seed_text}): {rep['passed']} passed, {rep['failed']} failed, " \
           f"{rep['inconclusive']} inconclusive" + (f", {rep['error']} could not run" if rep["error"] else "")
    return [("scenario", str(doc["scenario"])), ("backend", str(doc["backend"])),
            ("impairment backend", str(doc["impairment_backend"]) or DASH), ("runs", runs),
            ("expectations", f"{passed} passed, {failed} failed"
             + (f", {len(doc['expectations']) - passed - failed} not judged"
                if len(doc["expectations"]) - passed - failed else ""))]


def _title(doc: Mapping[str, Any]) -> str:
    return f"{doc['scenario']}: {_VERDICT_WORD[doc['verdict']]} over {doc['repeat']['made']} runs"


def render_markdown(doc: Mapping[str, Any]) -> str:
    out = [f"# {_title(doc)}", ""]
    out += [f"- **{k}**: {v}" for k, v in _facts(doc)]
    out.append("")
    for t in tables(doc):
        out += [f"## {t.title}", "", t.to_markdown(), ""]
        if t.note:
            out += [f"_{t.note}_", ""]
    return "\n".join(out)


def render_html(doc: Mapping[str, Any]) -> str:
    from emulation.report.documents import _CSS

    scen = html.escape(str(doc["scenario"]))
    cls = "pass" if doc["verdict"] == PASSED else "fail"
    title = html.escape(_title(doc)).replace(html.escape(_VERDICT_WORD[doc["verdict"]]),
                                             f'<span class="{cls}">{_VERDICT_WORD[doc["verdict"]]}</span>', 1)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Patronus repeated run: {scen}</title><style>{_CSS}</style></head><body>",
             f"<h1>{title}</h1>", "<dl>"]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(doc)]
    parts.append("</dl>")
    for t in tables(doc):
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        if t.title.startswith("Expectations"):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.frame.columns)
            body = "".join(f'<tr class="{"pass" if r[0] == "PASS" else "fail"}">'
                           + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                           for r in t.frame.itertuples(index=False))
            body = body or f'<tr><td colspan="{len(t.frame.columns)}">none</td></tr>'
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif t.title == "Runs":
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r[:-1])
                           + f'<td><a href="{html.escape(r[-1])}">{html.escape(r[-1])}</a></td></tr>'
                           for r in t.frame.itertuples(index=False))
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.frame.columns)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            parts.append(t.to_html())
        if t.note:
            parts.append(f'<p class="note">{html.escape(t.note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_junit(doc: Mapping[str, Any]) -> bytes:
    """A testsuite for the scenario over the runs, a testcase per expectation judged by its rule: a
    <failure> when it fails, <skipped> when no run could judge it; a testcase with an <error> when a
    run could not run."""
    exps = doc["expectations"]
    failures = sum(1 for e in exps if e["verdict"] == "failed")
    skipped = sum(1 for e in exps if e["verdict"] == INCONCLUSIVE)
    errors = [r for r in doc["runs"] if r["verdict"] == ERROR]
    n = str(len(exps) + (1 if errors else 0))
    total_s = f"{float(doc['duration_s']) * len(doc['runs']):.3f}"
    suites = ET.Element("testsuites", {"name": "patronus-lab", "tests": n, "failures": str(failures),
                                       "errors": str(1 if errors else 0), "time": total_s})
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"scenario.{doc['scenario']}.repeated", "tests": n, "failures": str(failures),
        "errors": str(1 if errors else 0), "skipped": str(skipped), "time": total_s,
        "timestamp": datetime.fromtimestamp(float(doc["started_at"]), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")})
    props = ET.SubElement(suite, "properties")
    for k, v in (("backend", doc["backend"]), ("impairment_backend", doc["impairment_backend"]),
                 ("runs", str(doc["repeat"]["made"])), ("seeds", " ".join(str(r["seed"]) for r in doc["runs"])),
                 ("verdict", doc["verdict"])):
        ET.SubElement(props, "property", {"name": k, "value": str(v)})
    for i, e in enumerate(exps):
        case = ET.SubElement(suite, "testcase", {"classname": f"scenario.{doc['scenario']}",
                                                 "name": f"{i + 1:02d} {e['text']}", "time": "0"})
        detail = (f"rule: {e['rule_text']}\nvalue: {combined_value(e)}\nruns passed: "
                  f"{e['runs_passed']}/{e['runs_judged']} (left out: {e['left_out']})\n"
                  f"per run: {_per_run(e, doc['runs'])}\n")
        if e["verdict"] == "failed":
            fail = ET.SubElement(case, "failure", {"message": f"{e['text']} {e['rule_text']}: {combined_value(e)}",
                                                   "type": str(e["type"])})
            fail.text = detail
        elif e["verdict"] == INCONCLUSIVE:
            ET.SubElement(case, "skipped", {"message": "inconclusive: no run left to judge it on (every run's "
                                                       "platform noise explains its result)"})
        else:
            ET.SubElement(case, "system-out").text = detail
    if errors:
        case = ET.SubElement(suite, "testcase", {"classname": f"scenario.{doc['scenario']}", "name": "runs",
                                                 "time": "0"})
        ET.SubElement(case, "error", {"message": "could not run: " + ", ".join(r["dir"] for r in errors),
                                      "type": "run"})
    ET.indent(suites)
    body: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


# --- the command's output -------------------------------------------------------------------------------

def verdict_lines(doc: Mapping[str, Any]) -> list[str]:
    """One line per expectation and the verdict, as `run --repeat` and `report` print them."""
    lines = [f"{_RESULT_WORD[e['verdict']]:4}  {e['text']} {e['rule_text']}  ({combined_value(e)}; "
             f"{e['runs_passed']}/{e['runs_judged']} runs passed)" for e in doc["expectations"]]
    rep = doc["repeat"]
    tail = f"{rep['passed']} passed, {rep['failed']} failed, {rep['inconclusive']} inconclusive" \
           + (f", {rep['error']} could not run" if rep["error"] else "")
    lines.append(f"{doc['scenario']}: {_VERDICT_WORD[doc['verdict']].lower()} over {rep['made']} of "
                 f"{rep['planned']} runs ({tail})")
    return lines


def repeat_report_command(directory: str | Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`patronus-lab report DIR` of a repeated-run directory: rebuild every run's reports from its raw
    data, then the combined report. Exit codes as the repeated run's (2 when repeat.json is bad or a
    run's raw data is)."""
    import sys

    from emulation.report import write_reports

    out = out or sys.stdout
    err = err or sys.stderr
    d = Path(directory)
    try:
        plan = read_plan(d)
    except RawDataError as exc:
        print(f"patronus-lab report: cannot report on {d}", file=err)
        for where, reason in exc.errors:
            print(f"  {where}: {reason}", file=err)
        return 2
    broken: set[int] = set()
    for i in range(1, plan["runs"] + 1):
        run_dir = d / RUNS_DIR / str(i)
        if not run_dir.is_dir():
            break
        try:
            write_reports(run_dir)
        except RawDataError as exc:
            broken.add(i)
            print(f"patronus-lab report: {run_dir}: bad or missing raw data", file=err)
            for where, reason in exc.errors:
                print(f"  {where}: {reason}" if where else f"  {reason}", file=err)
    try:
        doc = write_combined(d, frozenset(broken))
    except RawDataError as exc:
        print(f"patronus-lab report: cannot combine the runs of {d}", file=err)
        for where, reason in exc.errors:
            print(f"  {where}: {reason}", file=err)
        return 2
    except OSError as exc:
        print(f"patronus-lab report: cannot write the reports in {d}: {exc}", file=err)
        return 2
    for line in verdict_lines(doc):
        print(line, file=out)
    print(f"reports in {d}: summary.json, report.md, report.html, junit.xml; each run's in {d / RUNS_DIR}/N",
          file=out)
    return int(EXIT_CODES[doc["verdict"]])

