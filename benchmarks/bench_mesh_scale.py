"""The largest mesh the emulation brings up on this VM, and its build time (issue 14), through
`patronus-lab run` exactly as a user runs it (root).

Each size N is scenarios/hierarchical-20.yaml grown to N sites: two regions, each with two hubs and
(N − 4) / 2 spokes. The hubs form a full mesh, each spoke peers with its region's first live hub, every
site discovers its peers through the four hubs (the seeds), and every site runs a real agent in its
own namespaces. The timers and the monitor profile are hierarchical-20's. One call from a spoke to its
hub runs for the scenario's 10 s; its loss is recorded but is not what decides whether the mesh came up.

Sizes are tried in increasing order (`PATRONUS_BENCH_MESH_SIZES`, default 20,40,60,80,100), and the
benchmark stops at the first one that does not come up. A size comes up when the runner reports every
agent ready and every tunnel handshaken. It does not come up when the run exits 2 (a path not Up after
90 s, or the host too busy to measure: the RTT check), or takes longer than its timeout.

Per size the record keeps:
- the network build (namespaces, links, relays);
- the agents' start up to every path Up and every tunnel handshaken;
- the settling;
- the exit code and verdict, and the call's lost packets;
- the host's available memory before the run and at its lowest during it (sampled every 0.5 s).

The figure is the largest N that came up; the goal, 20, is the largest shipped emulated scenario
(hierarchical-20), so a miss means a shipped scenario no longer fits this VM. The build time of that
N is `build_s` (from "building" to "every tunnel up"). Each run is checked for leftovers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_failover import all_cores
from benchmarks.bench_testbed import PHASE, ROOT, _leftovers
from benchmarks.common import write

SIZES = [int(x) for x in os.environ.get("PATRONUS_BENCH_MESH_SIZES", "20,40,60,80,100").split(",")]
GOAL = 20
DURATION_S = 10.0
_BUILDING = re.compile(r"^building (\d+) sites")


def scenario_doc(n: int) -> dict[str, Any]:
    """hierarchical-20 with `n` sites (n ≥ 6, even), no failure, one spoke-to-hub call."""
    import yaml

    if n < 6 or n % 2:
        raise ValueError(f"mesh size {n}: expected an even number of sites, at least 6")
    doc = yaml.safe_load((ROOT / "scenarios" / "hierarchical-20.yaml").read_text())
    spokes = (n - 4) // 2
    doc["name"] = f"hierarchical-{n}"
    doc["backends"] = ["mininet"]
    doc["duration"] = f"{DURATION_S:g}s"
    for region in ("eu", "us"):
        doc["site_groups"][region]["count"] = spokes
    doc["traffic"] = [{"name": "call", "type": "voip", "from": "us-1", "to": "us-hub-1"}]
    doc["timeline"] = []
    doc["expectations"] = [{"lost_packets": {"flow": "call", "max": 0}}]
    return dict(doc)


class MemWatch:
    """The host's lowest MemAvailable while it runs (sampled every 0.5 s)."""

    def __init__(self) -> None:
        self.before_mb = self.lowest_mb = self._available()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _available() -> float:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.lowest_mb = min(self.lowest_mb, self._available())

    def __enter__(self) -> MemWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_size(n: int, tmp: Path) -> dict[str, Any]:
    import yaml

    path = tmp / f"hierarchical-{n}.yaml"
    path.write_text(yaml.safe_dump(scenario_doc(n), sort_keys=False))
    out = tmp / f"run-{n}"
    timeout_s = 300.0 + 6.0 * n
    t0 = time.monotonic()
    with MemWatch() as mem:
        try:
            r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(path), "--out", str(out)],
                               capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
            code, stdout, stderr = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as exc:
            code, stdout, stderr = None, str(exc.stdout or ""), str(exc.stderr or "")
    wall = time.monotonic() - t0
    if code is None:                        # the runner was killed: what it left is removed for the next size
        subprocess.run([sys.executable, "-m", "emulation.cli", "clean", "--all"], capture_output=True, cwd=ROOT)
    phases = [(float(m.group(1)), m.group(2)) for line in stdout.splitlines() if (m := PHASE.match(line))]

    def at(prefix: str) -> float | None:
        return next((t for t, p in phases if p.startswith(prefix)), None)
    building, agents, ready, settled = (at("building"), at("starting agents"), at("agents ready"),
                                        at("starting traffic") or at("running the timeline"))
    came_up = code in (0, 1, 3) and ready is not None
    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 2)
    rec: dict[str, Any] = {"sites": n, "came_up": came_up, "exit_code": code, "wall_s": round(wall, 1),
                           "network_build_s": span(building, agents), "agents_up_s": span(agents, ready),
                           "build_s": span(building, ready), "settle_s": span(ready, settled),
                           "mem_available_before_mb": round(mem.before_mb),
                           "mem_available_lowest_mb": round(mem.lowest_mb),
                           "leftovers": _leftovers()}
    summary = out / "summary.json"
    if summary.exists():
        doc = json.loads(summary.read_text())
        rec["verdict"] = doc.get("verdict")
        rec["call_lost"] = next((e.get("value") for e in doc.get("expectations", [])
                                 if str(e.get("text", "")).startswith("call loses")), None)
    if not came_up:
        rec["why"] = (stderr.strip() or stdout.strip())[-1500:]
    print(f"  mesh of {n}: {'up' if came_up else 'NOT up'} (exit {code}), build {rec['build_s']} s, "
          f"wall {rec['wall_s']} s, lowest MemAvailable {rec['mem_available_lowest_mb']} MB")
    return rec


def main() -> list[dict[str, Any]]:
    if os.geteuid() != 0:
        print("  (mesh scale benchmark skipped: it needs root for network namespaces)")
        return []
    tried: list[dict[str, Any]] = []
    with all_cores(), tempfile.TemporaryDirectory(prefix="patronus-bench-scale-") as d:
        for n in SIZES:
            rec = one_size(n, Path(d))
            tried.append(rec)
            if not rec["came_up"]:
                break
    up = [r for r in tried if r["came_up"]]
    best = max(up, key=lambda r: r["sites"]) if up else None
    return [write("mesh_emulated_largest", float(best["sites"]) if best else 0.0, "sites", GOAL,
                  build_s=best["build_s"] if best else None, tried=tried, sizes=SIZES,
                  stopped_by=None if len(up) == len(tried) else tried[-1]["sites"],
                  setup="hierarchical: 2 regions x 2 hubs, (N-4)/2 spokes each, hierarchical-20's timers and "
                        "monitor profile, one uplink per site, userspace WireGuard, relay links")]
