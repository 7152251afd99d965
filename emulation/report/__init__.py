"""Reports of a run, rebuilt from its raw data alone.

    summary = write_reports("reports/failover-basic")   # summary.json, report.md, report.html,
                                                         # junit.xml, plots/*.png
    sys.exit(report_command("reports/failover-basic"))  # what `patronus-lab report DIR` runs

`write_reports` raises `RawDataError` (file, line and column named) before writing anything when the
raw data is bad. Each file is written to a temporary name and renamed, so a reader never sees half of
one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from emulation.measure.analysis import Analysis, analyse
from emulation.measure.errors import RawDataError
from emulation.measure.load import load_run
from emulation.report.documents import render_html, render_junit, render_markdown
from emulation.report.plots import render_plots
from emulation.report.summary import SUMMARY_KEYS, Summary, build_summary
from emulation.report.tables import expectation_value

__all__ = ["SUMMARY_KEYS", "RawDataError", "Summary", "build_summary", "report_command", "write_reports"]

EXIT_CODES = {"passed": 0, "failed": 1, "inconclusive": 3}     # 2: bad input, or the run could not run
VERDICT_WORDS = {"passed": "PASS", "failed": "FAIL", "inconclusive": "?"}
_PLOT_PREFIXES = ("failover-timeline", "paths-", "flow-latency", "latency-cdf")


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)     # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(directory: str | Path) -> Summary:
    """Analyse DIR/raw and write DIR/summary.json, report.md, report.html, junit.xml and DIR/plots/."""
    d = Path(directory)
    analysis = analyse(load_run(d))
    return write_analysis(analysis, d)


def write_analysis(analysis: Analysis, directory: Path) -> Summary:
    summary = build_summary(analysis)
    plots = render_plots(analysis)
    plot_dir = directory / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):        # ours from an earlier report, gone from this one
        if old.name.startswith(_PLOT_PREFIXES) and old.name not in plots:
            old.unlink()
    for name, (_, data) in plots.items():
        _write(plot_dir / name, data)
    _write(directory / "summary.json", summary.to_json().encode("utf-8"))
    _write(directory / "report.md", render_markdown(analysis, plots).encode("utf-8"))
    _write(directory / "report.html", render_html(analysis, plots).encode("utf-8"))
    _write(directory / "junit.xml", render_junit(analysis))
    return summary


def report_command(directory: str | Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`patronus-lab report DIR`: rebuild the reports. Exit 0 when every expectation holds, 1 when one
    fails, 2 when the raw data is missing or bad (every problem printed, file and column named), 3 when
    the run is inconclusive (a miss the platform's noise accounts for, and no other failure)."""
    out = out or sys.stdout
    err = err or sys.stderr
    d = Path(directory)
    try:
        analysis = analyse(load_run(d))
        summary = write_analysis(analysis, d)
    except RawDataError as exc:
        print(f"patronus-lab report: cannot report on {d}: bad or missing raw data", file=err)
        for where, reason in exc.errors:
            print(f"  {where}: {reason}" if where else f"  {reason}", file=err)
        return 2
    except OSError as exc:
        print(f"patronus-lab report: cannot write the reports in {d}: {exc}", file=err)
        return 2
    for e in analysis.expectations:
        print(f"{VERDICT_WORDS[e.verdict]:<5} {e.text}  (measured {expectation_value(e)})", file=out)
        if e.reason:
            print(f"      {e.reason}", file=out)
    n = len(analysis.expectations)
    failed = sum(1 for e in analysis.expectations if e.verdict == "failed")
    unsure = sum(1 for e in analysis.expectations if e.verdict == "inconclusive")
    verdict = {"passed": "passed", "failed": f"FAILED ({failed} of {n} expectations)",
               "inconclusive": f"INCONCLUSIVE ({unsure} of {n} expectations missed where the platform's noise "
                               "accounts for it; see summary.json's platform)"}[summary.verdict]
    print(f"{summary.scenario}: {verdict}; reports in {d}: summary.json, report.md, report.html, junit.xml, "
          "plots/", file=out)
    return EXIT_CODES[summary.verdict]
