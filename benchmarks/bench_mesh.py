"""MeshNode (patronus/core/meshnode.py): the whole membership layer as deployed, signed datagrams and
admitted announcements included, in the deterministic lab of tests/unit/meshlab.py (5 ms links, no loss,
virtual time; every datagram really signed, sent as bytes and verified).

For N = 20 and N = 100 sites of one organisation (full mesh, default SWIM timers: 1 s probes):
- formation: the N sites start 20 ms apart through one seed; the time until every site peers with every
  other, and its wall time;
- mesh_steady_bytes (the figure, N = 100): bytes of datagrams sent per site per second over 60 s of
  steady state (probes, acks, gossip rounds, push-pull, all signed), and datagrams per site per second;
- mesh_join_s: one more site joins; the time until it peers with all N and all N with it (the core's
  share of the issue's join target: the emulation adds the agent's start-up and the paths' probes);
- mesh_verify_rate: authentic datagrams (pings from a known member) a node takes per second.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import best_rate, write
from patronus.core.swimwire import Ping, encode
from tests.unit.meshlab import MeshLab

SIZES = (20, 100)
STEADY_S = 60.0
# Bytes per site per second at N = 100: 2,000 B/s is 16 kbit/s, under 0.2 % of the slowest uplink a site
# of the test-bed has (10 Mbit/s). Most of it is push-pull, which sends whole announcements (see the README).
GOAL_BYTES = 2000.0
GOAL_JOIN_S = 2.0


def measure(n: int) -> dict[str, Any]:
    lab = MeshLab()
    t0 = time.perf_counter()
    lab.add("s0", 1)
    for i in range(1, n):
        lab.run_for(0.02)
        lab.add(f"s{i}", i + 1, seeds=["s0"])
    formed = lab.when(lab.full_mesh, within=300.0, step=0.1)
    wall_form = time.perf_counter() - t0
    assert formed is not None, "the mesh never formed"
    lab.run_for(35.0)                       # past a push-pull period: the joins' gossip has drained
    mark, start = len(lab.sent), lab.now
    t1 = time.perf_counter()
    lab.run_for(STEADY_S)
    wall_steady = time.perf_counter() - t1
    sent = lab.sent[mark:]
    span = lab.now - start
    bytes_per_site = sum(len(d) for *_, d in sent) / n / span
    datagrams_per_site = len(sent) / n / span
    t2 = time.perf_counter()
    new = f"s{n}"
    lab.add(new, n + 1, seeds=["s0"])
    joined = lab.when(lab.full_mesh, within=60.0, step=0.01)
    wall_join = time.perf_counter() - t2
    assert joined is not None, "the newcomer never joined"
    refused: Counter[str] = Counter()
    for site in lab.sites.values():
        refused.update(site.node.rejected)
        refused.update(site.node.gate.rejected)
    return {"sites": n, "formed_s": round(formed, 3), "wall_form_s": round(wall_form, 2),
            "bytes_per_site_s": round(bytes_per_site, 1), "datagrams_per_site_s": round(datagrams_per_site, 2),
            "wall_steady_s": round(wall_steady, 2), "join_s": round(joined, 3), "wall_join_s": round(wall_join, 2),
            "refused": dict(refused)}


def verify_rate() -> tuple[float, list[float]]:
    lab = MeshLab()
    lab.add("s0", 1)
    lab.add("s1", 2, seeds=["s0"])
    lab.run_for(3.0)
    a, b = lab.sites["s0"].node, lab.sites["s1"].node
    b._now = lab.now                                    # sealing takes the node's clock
    datagrams = [b._seal(1, encode(Ping(seq=i, sender="s1")), "s0", attach=False) for i in range(2000)]

    def run() -> int:
        for i, d in enumerate(datagrams):
            a.on_datagram(f"192.0.2.{i % 250}:51900", d, lab.now)
        return len(datagrams)
    return best_rate(run, repeats=3)


def main() -> list[dict[str, Any]]:
    rows = [measure(n) for n in SIZES]
    big = rows[-1]
    rate, rates = verify_rate()
    return [
        write("mesh_steady_bytes", big["bytes_per_site_s"], "B/site/s", GOAL_BYTES, higher_is_better=False,
              sizes=rows),
        write("mesh_join_s", max(r["join_s"] for r in rows), "s", GOAL_JOIN_S, higher_is_better=False, sizes=rows),
        write("mesh_verify_rate", rate, "datagrams/s", 1000.0, rates=[round(r) for r in rates]),
    ]


if __name__ == "__main__":
    for rec in main():
        print(rec["name"], rec["value"], rec["unit"], "ok" if rec["ok"] else "MISS", file=sys.stderr)
