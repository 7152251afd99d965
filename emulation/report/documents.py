"""report.md, report.html (self-contained: inline CSS, plots as base64 PNG, no external reference) and
junit.xml (one testcase per expectation)."""

from __future__ import annotations

import base64
import html
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from emulation.measure.analysis import Analysis
from emulation.report.summary import clean_value
from emulation.report.tables import Table, all_tables, expectation_value

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 .pass { color: #2ca02c; } h1 .fail { color: #d62728; } h1 .unsure { color: #b8860b; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.fail td { background: #fde8e8; } tr.pass td:first-child { color: #2ca02c; }
tr.unsure td { background: #fdf6e0; }
p.note { color: #555; font-size: 0.85em; margin-top: -1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
"""


def _started(a: Analysis) -> str:
    """The run's start, from the raw data (never the report's own clock)."""
    return datetime.fromtimestamp(a.run.run.started_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _facts(a: Analysis) -> list[tuple[str, str]]:
    info = a.run.run
    n = {v: sum(1 for e in a.expectations if e.verdict == v) for v in ("passed", "failed", "inconclusive")}
    counts = f"{n['passed']} passed, {n['failed']} failed" + (f", {n['inconclusive']} inconclusive"
                                                             if n["inconclusive"] else "")
    facts = [("scenario", info.scenario), ("backend", info.backend),
             ("impairment backend", info.impairment_backend), ("seed", str(info.seed)),
             ("started", _started(a)), ("duration", f"{info.duration_s:g} s"), ("expectations", counts)]
    pf = a.platform
    if pf:
        facts.append(("platform", f"CPU busy p95 {pf.get('cpu_busy_p95_pct')} %, longest stall "
                                  f"{pf.get('max_stall_ms')} ms, relays late p99 {pf.get('relay_late_p99_ms')} ms"))
    return facts


VERDICT_TITLES = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE"}


def render_markdown(a: Analysis, plots: dict[str, tuple[str, bytes]], plot_dir: str = "plots") -> str:
    verdict = VERDICT_TITLES[a.verdict]
    out = [f"# {a.run.run.scenario}: {verdict}", ""]
    out += [f"- **{k}**: {v}" for k, v in _facts(a)]
    out.append("")
    for t in all_tables(a):
        out += [f"## {t.title}", "", t.to_markdown(), ""]
        if t.note:
            out += [f"_{t.note}_", ""]
    out += ["## Plots", ""]
    for name, (caption, _) in plots.items():
        out += [f"![{caption}]({plot_dir}/{name})", ""]
    return "\n".join(out)


def _table_html(t: Table) -> str:
    if t.title != "Expectations":
        return t.to_html()
    # colour the rows of failed expectations
    rows = []
    for r in t.frame.itertuples(index=False):
        cls = {"PASS": "pass", "FAIL": "fail"}.get(str(r[0]), "unsure")
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.frame.columns)
    body = "".join(rows) or f'<tr><td colspan="{len(t.frame.columns)}">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(a: Analysis, plots: dict[str, tuple[str, bytes]]) -> str:
    scen = html.escape(a.run.run.scenario)
    css = {"passed": "pass", "failed": "fail", "inconclusive": "unsure"}[a.verdict]
    verdict = f'<span class="{css}">{VERDICT_TITLES[a.verdict]}</span>'
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Patronus run: {scen}</title><style>{_CSS}</style></head><body>",
             f"<h1>{scen}: {verdict}</h1>", "<dl>"]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(a)]
    parts.append("</dl>")
    for t in all_tables(a):
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        parts.append(_table_html(t))
        if t.note:
            parts.append(f'<p class="note">{html.escape(t.note)}</p>')
    parts.append("<h2>Plots</h2>")
    for _name, (caption, data) in plots.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_junit(a: Analysis) -> bytes:
    """JUnit XML: a testsuite for the scenario, a testcase per expectation, a <failure> with the
    measured value for each that failed, an <error type="inconclusive"> with the platform's noise for
    each inconclusive one (JUnit's "could not be judged", not "the system failed")."""
    info = a.run.run
    failures = sum(1 for e in a.expectations if e.verdict == "failed")
    errors = sum(1 for e in a.expectations if e.verdict == "inconclusive")
    n = str(len(a.expectations))
    suites = ET.Element("testsuites", {"name": "patronus-lab", "tests": n, "failures": str(failures),
                                       "errors": str(errors), "time": f"{info.duration_s:.3f}"})
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"scenario.{info.scenario}", "tests": n, "failures": str(failures), "errors": str(errors),
        "skipped": "0",
        "time": f"{info.duration_s:.3f}", "timestamp": datetime.fromtimestamp(info.started_at, tz=UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")})
    props = ET.SubElement(suite, "properties")
    for k, v in (("backend", info.backend), ("impairment_backend", info.impairment_backend),
                 ("seed", str(info.seed)), ("verdict", a.verdict)):
        ET.SubElement(props, "property", {"name": k, "value": v})
    for i, e in enumerate(a.expectations):
        case = ET.SubElement(suite, "testcase", {"classname": f"scenario.{info.scenario}",
                                                 "name": f"{i + 1:02d} {e.text}", "time": "0"})
        shown = expectation_value(e)
        if e.verdict == "inconclusive":
            err = ET.SubElement(case, "error", {"message": f"inconclusive: {e.text}: measured {shown}; {e.reason}",
                                                "type": "inconclusive"})
            err.text = (f"expectation: {e.text}\ntype: {e.type}\nvalue: {clean_value(e.value)!r} ({shown})\n"
                        f"platform: {e.reason}\n")
        elif not e.passed:
            fail = ET.SubElement(case, "failure", {"message": f"{e.text}: measured {shown}", "type": e.type})
            fail.text = f"expectation: {e.text}\ntype: {e.type}\nvalue: {clean_value(e.value)!r} ({shown})\n"
        else:
            ET.SubElement(case, "system-out").text = f"value: {clean_value(e.value)!r} ({shown})"
    ET.indent(suites)
    body: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return body + b"\n"
