"""100 sites × 3 uplinks, 10 probes a second on every path, one simulated hour: wall time. Goal ≤ 5 min.

The scenario is generated (`emulation.backends.sim.synthetic.regional_mesh_doc`): 5 regions of 20
sites (one hub, 19 spokes), each site on 3 uplinks, probes every 100 ms; a spoke peers with its hub, the
hubs with each other (the agent allows 250 paths a site, so one hub for 99 spokes is not possible):
1,890 paths, 18,900 probes a virtual second, one voip call per region; 3,600 s. The figure is the wall
time of the whole run: simulation, raw data and reports (each also reported on its own). Mode: what
`auto` takes for the hour (a shorter run takes the same), which is flow mode for a run this size (68
million probes: the links are fixed, so once a path is steady its probes coast, sent and answered by
its monitor in batches, and the calls' records are computed per flow); `mode` in the record says which.

`core_every_probe_s` is what the hour would cost if every probe went through the core one by one,
the way packet mode and the agent take them (each site's `SiteLogic` with no simulator, timed once
the SLA windows are full): the figure coasting is measured against.

Bounded: the run is stopped once it has taken `PATRONUS_BENCH_SIM_BUDGET_S` (default 900 s, three
times the goal). Then `completed` is false, `value` is the wall time it would have taken at the rate it
went (elapsed × total virtual time / virtual time done: an estimate, said so in `estimated`), and `ok`
is false. `PATRONUS_BENCH_SIM_HOURS` simulates that many hours instead of one (e.g. 0.02 for a quick
look); the record's name then ends in `_quick`, `simulated_s` says how much was simulated, and `value`
is the hour extrapolated from the simulation's rate (`estimated: true`, the measured wall time beside
it), so a short run is never mistaken for the real figure.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write
from emulation.backends.sim.agent import SimAgent
from emulation.backends.sim.engine import Simulation, WallBudgetExceeded
from emulation.backends.sim.network import SimOptions
from emulation.backends.sim.synthetic import regional_mesh_doc
from emulation.report import write_reports
from emulation.scenario import Scenario, from_dict
from patronus.core.site import SiteLogic
from patronus.core.sla import SlaMonitor

GOAL_WALL_S = 300.0
CORE_SIMULATED_S = 5.0
CORE_RTT_S = 0.05


def core_probe_cost_s(agents: list[SimAgent], simulated_s: float = CORE_SIMULATED_S) -> tuple[float, int]:
    """CPU seconds per probe of the sites' core logic alone, a probe at a time, in steady state, and
    the probes it took
    to measure: each agent's `SiteLogic`, built as `SimAgent.start` builds it, pumped at its
    deadlines, every probe answered `CORE_RTT_S` after it was sent; untimed until the SLA windows
    are full (their evaluation grows with them), then timed for `simulated_s` virtual seconds."""
    from heapq import heappop, heappush

    probes = 0
    cpu = 0.0
    for agent in agents:
        cfg = agent.cfg
        logic = SiteLogic(cfg.name, cfg.monitor, cfg.router, SlaMonitor(cfg.sla), cfg.policies)
        for path in cfg.core_paths():
            logic.add_path(path, 0.0)
        for r in cfg.remotes:
            logic.set_site_prefixes(r.name, r.prefixes)
        replies: list[tuple[float, int, str, float]] = []
        warm = max(t.window_s for t in (logic.sla.target_for(str(p)) for p in logic.path_ids)) + 1.0
        now = 0.0
        c0 = None
        while now < warm + simulated_s:
            if c0 is None and now >= warm:
                c0 = time.process_time()
            due = logic.next_deadline()
            if replies and (due is None or replies[0][0] < due):
                now, seq, pid, sent_at = heappop(replies)
                logic.on_probe_reply(pid, seq, sent_at, now)     # type: ignore[arg-type]
                if not logic.has_news():
                    continue
            elif due is not None:
                now = due
            else:
                break
            for p in logic.pump(now).probes:
                if c0 is not None:
                    probes += 1
                heappush(replies, (now + CORE_RTT_S, p.seq, p.path_id, now))
        if c0 is not None:
            cpu += time.process_time() - c0
    return cpu / max(probes, 1), probes


def main() -> list[dict[str, Any]]:
    hours = float(os.environ.get("PATRONUS_BENCH_SIM_HOURS", "1"))
    budget = float(os.environ.get("PATRONUS_BENCH_SIM_BUDGET_S", "900"))
    seconds = round(hours * 3600)
    def scenario_of(duration_s: int) -> Scenario:
        return from_dict(regional_mesh_doc(regions=5, sites_per_region=20, uplinks=3, probe_interval="100ms",
                                           duration=f"{duration_s}s", flows_per_region=1, name="bench-sim-100x3"))

    scenario = scenario_of(seconds)
    quick = seconds != 3600
    name = "sim_100x3_hour_wall_quick" if quick else "sim_100x3_hour_wall"
    details: dict[str, Any] = {"sites": 100, "uplinks": 3, "paths": 1890, "probe_interval_s": 0.1,
                               "simulated_s": seconds, "budget_s": budget}
    with tempfile.TemporaryDirectory(prefix="patronus-bench-sim-") as tmp:
        # the mode `auto` takes for the hour, also when a shorter run stands for it
        mode = Simulation(scenario_of(3600), Path(tmp) / "hour", "auto").mode
        sim = Simulation(scenario, Path(tmp) / "run", mode, SimOptions(wall_budget_s=budget))
        per_probe_s, core_probes = core_probe_cost_s(list(sim.agents.values()))
        hour_probes = round(sum(len(a.paths) for a in sim.agents.values()) * 3600 / 0.1)
        details["mode"] = sim.mode
        details.update(core_every_probe_s=round(per_probe_s * hour_probes, 1),
                       core_us_per_probe=round(per_probe_s * 1e6, 2), core_probes_measured=core_probes,
                       probes_per_hour=hour_probes)
        t0 = time.perf_counter()
        try:
            sim.run()
        except WallBudgetExceeded as exc:
            projected = exc.wall_s * exc.total_s / max(exc.simulated_s, 1e-9)
            return [write(name, projected, "s", GOAL_WALL_S, higher_is_better=False, completed=False,
                          estimated=True, stopped_after_s=round(exc.wall_s, 1),
                          virtual_s_done=round(exc.simulated_s, 1), virtual_s_total=round(exc.total_s, 1),
                          note="stopped at the wall budget; value = elapsed × total / done (simulation only, "
                               "without writing the raw data and the reports)", **details)]
        sim_wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        sim.write_raw()
        passed = write_reports(sim.out).passed
        rest_wall = time.perf_counter() - t1
    wall = sim_wall + rest_wall
    details.update(simulation_s=round(sim_wall, 1), raw_and_reports_s=round(rest_wall, 1),
                   events=sim.events_processed, probes=sim.probes_sent, expectations_passed=passed)
    if not quick:
        return [write(name, wall, "s", GOAL_WALL_S, higher_is_better=False, completed=True, estimated=False,
                      **details)]
    # a shorter run: the figure is the hour it stands for, extrapolated from the simulation's rate (the
    # reports' time is added as measured: a lower bound for an hour's), and it says so
    full = 3600 + sim.warmup_s
    projected = sim_wall * full / (seconds + sim.warmup_s) + rest_wall
    return [write(name, projected, "s", GOAL_WALL_S, higher_is_better=False, completed=True, estimated=True,
                  measured_wall_s=round(wall, 1),
                  note=f"quick variant: {seconds} s simulated, not an hour; value = the hour extrapolated "
                       "from the simulation's rate plus the reports' time", **details)]


if __name__ == "__main__":
    for rec in main():
        print(rec)
