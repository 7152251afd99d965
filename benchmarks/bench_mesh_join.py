"""Joins into a running emulated mesh (issue 14), through `patronus-lab run` exactly as a user runs it (root).

* `mesh_join_p95`: scenarios/mesh-join.yaml on Mininet (ten sites that found each other through two seeds,
  every agent with its certificate), with s11 joining and leaving `PATRONUS_BENCH_JOINS` times (default 10):
  a join every 20 s, a leave 12 s after each (its agent says it leaves, stops and removes its dataplane).
  A join's time is from the site's start (its agent spawned) to every path it should have Up
  (`emulation.measure.meshtimes`: the same measurement as the scenario's `join_time`). The figure is
  the p95 (nearest rank) over the joins; goal ≤ 2 s (the issue's). Every join's time, the start-up of each
  s11 agent (from its log) and the convergence of the whole mesh after each change are kept as detail.

One run, one fresh process; the run is checked for leftovers.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_failover import all_cores
from benchmarks.bench_testbed import ROOT, _leftovers, _run
from benchmarks.common import write

JOINS = int(os.environ.get("PATRONUS_BENCH_JOINS", "10"))
FIRST_S, EVERY_S, STAY_S = 20.0, 20.0, 12.0
_UP = re.compile(r"agent s11 up: .*?([\d.]+) s after its process started")


def p95(values: list[float]) -> float:
    """Nearest-rank p95."""
    xs = sorted(values)
    return xs[max(0, math.ceil(0.95 * len(xs)) - 1)] if xs else float("inf")


def scenario_doc(joins: int) -> dict[str, Any]:
    """mesh-join with s11 joining `joins` times (and leaving between), its expectations its joins'."""
    import yaml

    doc = yaml.safe_load((ROOT / "scenarios" / "mesh-join.yaml").read_text())
    doc["name"] = "mesh-join-repeated"
    doc["backends"] = ["mininet"]
    timeline = []
    for k in range(joins):
        at = FIRST_S + k * EVERY_S
        timeline.append({"at": f"{at:g}s", "action": "site_join", "site": "s11"})
        timeline.append({"at": f"{at + STAY_S:g}s", "action": "site_leave", "site": "s11"})
    doc["timeline"] = timeline
    doc["duration"] = f"{FIRST_S + joins * EVERY_S:g}s"
    doc["traffic"] = [f for f in doc["traffic"] if f["name"] == "steady"]
    doc["expectations"] = [{"join_time": {"site": "s11", "max": "2s"}}, {"lost_packets": {"flow": "steady", "max": 0}}]
    return dict(doc)


def main() -> list[dict[str, Any]]:
    import yaml

    from emulation.measure.load import load_run
    from emulation.measure.meshtimes import convergence, join_times

    if os.geteuid() != 0:
        print("  (mesh join benchmark skipped: it needs root for network namespaces)")
        return []
    with all_cores(), tempfile.TemporaryDirectory(prefix="patronus-bench-join-") as d:
        tmp = Path(d)
        path = tmp / "mesh-join-repeated.yaml"
        path.write_text(yaml.safe_dump(scenario_doc(JOINS), sort_keys=False))
        out = tmp / "run"
        code, phases = _run(path, out, 120.0 + JOINS * EVERY_S * 3)
        if not (out / "raw" / "run.json").exists():
            raise RuntimeError(f"the run left no data (exit {code}): {(out / 'summary.json').exists()=}; "
                               f"phases {phases[-5:]}")
        run = load_run(out)
        joins = [j.time_s for j in join_times(run, "s11") if j.cause.startswith("site_join")]
        changes = [{"at": c.at, "cause": c.cause, "converged_s": c.time_s} for c in convergence(run)]
        log = (out / "agents" / "s11.log").read_text(errors="replace")
        startups = [float(m.group(1)) for m in _UP.finditer(log)]
        done = [j for j in joins if j is not None]
        value = p95(done) if len(done) == len(joins) and joins else float("inf")
        left = _leftovers()
    return [write("mesh_join_p95", value, "s", 2.0, higher_is_better=False, joins=len(joins),
                  join_s=joins, median_s=sorted(done)[len(done) // 2] if done else None,
                  agent_startup_s=startups, convergence=changes, exit_code=code,
                  phases=[{"at_s": t, "phase": p} for t, p in phases], leftovers=left)]
