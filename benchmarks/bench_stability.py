"""Do the shipped scenarios give the same verdict run after run? (root; hours in all: run it in parts)

    python -m benchmarks bench_stability [SCENARIO ...] [--mode quiet|hog|full] [--runs N]

Each run is `patronus-lab run` of a shipped scenario on the Mininet backend, as a user runs it:

* `quiet` (the default): the scenario's CI version (`emulation.scenario.short`), nothing else running;
  the bar is the same verdict (passed) in at least 19 of 20 consecutive runs;
* `hog`: the CI version while an unrelated process keeps one core busy (a spinning loop pinned to the
  last CPU); the bar is 9 of 10;
* `full`: the full-length file from scenarios/; the bar is 5 of 5.

Runs accumulate: each call appends its runs to `reports/bench/stability.json` (per scenario, per mode:
every run's commit, exit code, verdict, every expectation's value, those that did not pass with their reasons, and
the platform's figures), and the verdict on a bar is taken over the latest runs of that kind (the last
20, 10 or 5). `value` is the lowest share of passing runs over every scenario × mode that has enough
runs; `ok` only when every shipped scenario meets every bar. A run that could not run (exit 2) counts
as a failure of its bar: it did not give the verdict.

`--runs N` sets how many runs this call makes (default: what the bar needs beyond what is recorded, at
least 1). Each run is a fresh process; nothing of a run survives it (namespaces are checked). A run that
did not pass keeps its whole output directory under `reports/bench/stability-runs/` (its path is in the
record as `kept`): the report, the events and the platform record say why.

`--table` prints the recorded counts as a Markdown table (the README's) and runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_failover import all_cores
from benchmarks.common import OUT_DIR, write

ROOT = Path(__file__).resolve().parents[1]
BARS = {"quiet": (19, 20), "hog": (9, 10), "full": (5, 5)}        # passed, of the latest runs
HISTORY = OUT_DIR / "stability.json"
KEPT = OUT_DIR / "stability-runs"                                   # the output of runs that did not pass
KEEP_RUNS = 200                                                     # per scenario and mode, newest kept


def shipped() -> list[str]:
    """The shipped scenarios that run on the Mininet backend."""
    from emulation.scenario import load

    names = []
    for f in sorted((ROOT / "scenarios").glob("*.yaml")):
        sc = load(f)
        if "mininet" in sc.backends:
            names.append(sc.name)
    return names


def _leftovers() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("pt")]


@contextlib.contextmanager
def cpu_hog(on: bool) -> Any:
    """An unrelated process spinning on the last CPU, for the duration (nothing when `on` is False)."""
    if not on:
        yield None
        return
    code = "import os\nos.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\nwhile True: pass\n"
    hog = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait(10)


def _commit() -> str:
    """The code a run ran: the checkout's commit, `+` when patronus/, emulation/ or scenarios/ differ from it."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+" if git("status", "--porcelain", "--", "patronus", "emulation", "scenarios") else "")


def one_run(name: str, mode: str, tmp: Path, i: int) -> dict[str, Any]:
    from emulation.scenario.short import full_version, short_version

    sc = full_version(name) if mode == "full" else short_version(name)
    path = tmp / f"{name}-{mode}.yaml"
    path.write_text(sc.to_yaml())
    out = tmp / f"{name}-{mode}-{i}"
    before = set(_leftovers())
    t = time.monotonic()
    with cpu_hog(mode == "hog"):
        r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(path), "--out", str(out)],
                           capture_output=True, text=True, timeout=60 + 6 * sc.duration_s + 300, cwd=ROOT)
    rec: dict[str, Any] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "exit": r.returncode,
                           "wall_s": round(time.monotonic() - t, 1), "leftovers": sorted(set(_leftovers()) - before),
                           "commit": _commit()}
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        rec["verdict"] = "error"
        rec["error"] = (r.stdout[-600:] + r.stderr[-600:]).strip()
        return rec
    rec["verdict"] = s.get("verdict", "passed" if s.get("passed") else "failed")
    rec["missed"] = [{"text": e["text"], "value": e["value"], "verdict": e.get("verdict"), "reason": e.get("reason")}
                     for e in s["expectations"] if not e["passed"]]
    rec["values"] = {e["text"]: e["value"] for e in s["expectations"]}     # every measured value: the margins
    if rec["verdict"] != "passed":
        kept = KEPT / f"{name}-{mode}-{rec['at'].replace(':', '')}"
        shutil.copytree(out, kept, dirs_exist_ok=True)
        rec["kept"] = str(kept.relative_to(ROOT))
    pf = s.get("platform") or {}
    rec["platform"] = {k: pf.get(k) for k in ("cpu_busy_p95_pct", "cpu_busy_mean_pct", "max_stall_ms",
                                              "relay_late_p99_ms", "relay_late_max_ms", "steal_max_pct")}
    return rec


def load_history() -> dict[str, Any]:
    try:
        doc = json.loads(HISTORY.read_text())
        return doc.get("scenarios", {}) if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def tally(history: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], float, bool]:
    """Per scenario and mode: the latest runs against the bar; the lowest passing share; every bar met."""
    table: dict[str, Any] = {}
    lowest, ok = 1.0, True
    for name in names:
        row = {}
        for mode, (need, of) in BARS.items():
            runs = history.get(name, {}).get(mode, [])
            latest = runs[-of:]
            passed = sum(1 for r in latest if r.get("verdict") == "passed")
            counts = {v: sum(1 for r in latest if r.get("verdict") == v)
                      for v in ("passed", "failed", "inconclusive", "error")}
            met = len(latest) >= of and passed >= need
            row[mode] = {"bar": f"{need}/{of}", "runs": len(latest), **counts, "met": met}
            if len(latest) >= of:
                lowest = min(lowest, passed / of)
            ok = ok and met
        table[name] = row
    return table, lowest, ok


def markdown_table(history: dict[str, Any], names: list[str]) -> str:
    """The recorded verdicts per scenario and mode: passed of the latest runs, against each bar."""
    table, _, _ = tally(history, names)
    head = " | ".join(f"{mode} (bar {need}/{of})" for mode, (need, of) in BARS.items())
    lines = [f"| scenario | {head} |", "|---" * (1 + len(BARS)) + "|"]
    for name in names:
        cells = []
        for mode in BARS:
            c = table[name][mode]
            if not c["runs"]:
                cells.append("not run")
                continue
            other = ", ".join(f"{c[v]} {v}" for v in ("failed", "inconclusive", "error") if c[v])
            cells.append(f"{c['passed']}/{c['runs']}" + (f" ({other})" if other else "")
                         + (" ✓" if c["met"] else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks bench_stability")
    ap.add_argument("scenarios", nargs="*", help="shipped scenario names (default: every one that runs on Mininet)")
    ap.add_argument("--mode", choices=sorted(BARS), default="quiet")
    ap.add_argument("--runs", type=int, default=None, help="runs to make now (default: what the bar still needs)")
    ap.add_argument("--table", action="store_true", help="print the recorded counts as a Markdown table; run nothing")
    a = ap.parse_args(argv or [])
    if a.table:
        print(markdown_table(load_history(), shipped()))
        return []
    if os.geteuid() != 0:
        print("  (bench_stability skipped: it needs root for network namespaces)")
        return []
    every = shipped()
    names = a.scenarios or every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"not a shipped Mininet scenario: {', '.join(unknown)} (choose from {', '.join(every)})")
    history = load_history()
    _, of = BARS[a.mode]
    with all_cores(), tempfile.TemporaryDirectory(prefix="patronus-bench-stability-") as d:
        for name in names:
            runs = history.setdefault(name, {}).setdefault(a.mode, [])
            todo = a.runs if a.runs is not None else max(1, of - len(runs))
            for i in range(todo):
                rec = one_run(name, a.mode, Path(d), i)
                runs.append(rec)
                del runs[:-KEEP_RUNS]
                missed = "; ".join(f"{m['text']} = {m['value']} ({m['verdict']})" for m in rec.get("missed", []))
                print(f"  {name} [{a.mode}] run {i + 1}/{todo}: {rec['verdict']} in {rec['wall_s']} s"
                      + (f" — {missed}" if missed else "") + (f" — {rec.get('error', '')[:200]}"
                                                               if rec["verdict"] == "error" else ""), flush=True)
                table, lowest, ok = tally(history, every)
                write("stability", lowest, "ratio", min(n / o for n, o in BARS.values()), bars=BARS,
                      table=table, all_met=ok, scenarios=history, ok=ok)
    table, lowest, ok = tally(history, every)
    return [write("stability", lowest, "ratio", min(n / o for n, o in BARS.values()), bars=BARS, table=table,
                  all_met=ok, scenarios=history, ok=ok)]
