"""How long a `patronus agent` takes from being spawned to running its core (its first probes): the
start-up the simulator models (`emulation.backends.sim.agent.AGENT_STARTUP_S`, a scenario's
`agent.startup`). Goal ≤ 2 s (the agent steers again within two seconds of an upgrade).

One netns lab (`emulation/netns_lab.py`), both agents started without `--cleanup` at the priority the
test-bed's runner gives its agents (nice −5), on every core (the runner does not pin them). Then, one
site after the other, `RESTARTS` graceful restarts: SIGTERM, and a new agent on the same site file,
which adopts the dataplane its predecessor left. Each sample is the new agent's `AgentStarted` event
time (published right after its core sent its first probes) minus the wall time it was spawned. A
few fresh starts (after `patronus cleanup`, building every tunnel) are measured the same way and
reported beside (`fresh_s`). `value` is the median adopting start-up; the JSON keeps every sample.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_failover import agent_log_tails, all_cores, check_identity, new_lab, other_labs
from benchmarks.common import write
from emulation.backends.sim.agent import AGENT_STARTUP_S
from emulation.netns_lab import TwoSiteLab, wait_for

RESTARTS = 12          # graceful restarts measured (alternating sites)
FRESH = 4              # fresh starts measured
AGENT_NICE = -5        # emulation.backends.mininet.procs.AGENT_NICE


def _settled(lab: TwoSiteLab, site: str) -> bool:
    info = lab.api(site, "/site")
    return not info.get("steering_held") and lab.all_up(site)


def _start_up(lab: TwoSiteLab, site: str, fresh: bool) -> float:
    assert lab.stop_agent(site) == 0, lab.agent_log(site)[-2000:]
    if fresh:
        r = lab.cleanup_site(site)
        if r.returncode != 0:
            raise RuntimeError(f"patronus cleanup failed: {r.stdout}{r.stderr}")
    spawned = time.time()
    lab.start_agent(site, cleanup=False, write=False, nice=AGENT_NICE)
    wait_for(lambda: _settled(lab, site), 60, f"{site}'s agent settled")
    started = float(max(e["at"] for e in lab.api(site, "/events?limit=1000") if e["kind"] == "AgentStarted"))
    adopted = lab.api(site, "/site")["adopted"]
    if (adopted is None) != fresh:
        raise RuntimeError(f"{site}: expected a {'fresh' if fresh else 'adopting'} start, got adopted={adopted}")
    wait_for(lambda: _settled(lab, "hq") and _settled(lab, "br"), 60, "both sites settled")
    return started - spawned


def main() -> list[dict[str, Any]]:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="patronus-bench-startup-") as tmp, all_cores():
        lab = new_lab(Path(tmp))
        others = other_labs()
        try:
            lab.build()
            for s in ("hq", "br"):
                lab.start_agent(s, cleanup=False, nice=AGENT_NICE)
            lab.wait_ready()
            check_identity(lab)
            adopting = [_start_up(lab, ("hq", "br")[i % 2], fresh=False) for i in range(RESTARTS)]
            fresh = [_start_up(lab, ("hq", "br")[i % 2], fresh=True) for i in range(FRESH)]
        except BaseException:
            print(agent_log_tails(lab), file=sys.stderr)
            raise
        finally:
            lab.teardown()
    med = statistics.median(adopting)
    p90 = sorted(adopting)[max(0, round(0.9 * len(adopting)) - 1)]
    print(f"  adopting start-up: median {med:.3f} s, p90 {p90:.3f} s, {min(adopting):.3f}-{max(adopting):.3f} s "
          f"over {len(adopting)}; fresh: median {statistics.median(fresh):.3f} s; the simulator models "
          f"{AGENT_STARTUP_S:g} s")
    return [write("agent_startup", med, "s", 2.0, higher_is_better=False,
                  value_is="median time from spawning `patronus agent` (adopting a kept dataplane) to its core "
                           "running, netns lab, agents at nice -5 on every core",
                  p90_s=round(p90, 3), samples_s=[round(x, 3) for x in adopting],
                  fresh_median_s=round(statistics.median(fresh), 3), fresh_s=[round(x, 3) for x in fresh],
                  sim_agent_startup_s=AGENT_STARTUP_S, other_labs_running=others,
                  wall_s=round(time.monotonic() - t0, 1))]
