"""`python -m benchmarks [NAME ...]`: run the benchmarks (all by default) and print their figures.

`python -m benchmarks bench_stability [ARGS ...]` runs the stability benchmark alone, with its own
arguments (scenarios, --mode, --runs): it takes hours, so `make bench` leaves it out; so does
`python -m benchmarks bench_loader_fuzz [N]` (N mutated files per loader, 100,000 by default), and
`python -m benchmarks bench_identity_fuzz [N]` (N mutated certificates and revocation lists, 100,000 by default),
and `python -m benchmarks bench_announce_fuzz [N]` (N mutated announcements through a gate, 100,000 by default)."""

from __future__ import annotations

import importlib
import sys

from benchmarks.common import OUT_DIR, pin_one_core

ALL = ["bench_routing", "bench_monitor", "bench_failover", "bench_probe_overhead", "bench_agent_startup", "bench_relay",
       "bench_testbed",
       "bench_sim_events", "bench_sim_100x3", "bench_sim_scale1000", "bench_swim", "bench_mesh", "bench_mesh_join",
       "bench_mesh_scale"]


# run by name only, with their own arguments
BY_ARGS = ["bench_stability", "bench_loader_fuzz", "bench_identity_fuzz", "bench_announce_fuzz"]


def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in BY_ARGS:
        with_args = importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:])
        for rec in with_args:
            print(f"  [{'ok  ' if rec['ok'] else 'MISS'}] {rec['name']:<24} {rec['value']:>14,.3f} {rec['unit']}")
        return 0
    names = argv or ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    cpu = pin_one_core()
    print(f"benchmarks on one core (cpu {cpu}); results in {OUT_DIR}")
    for name in names:
        for rec in importlib.import_module(f"benchmarks.{name}").main():
            mark = "ok  " if rec["ok"] else "MISS"
            print(f"  [{mark}] {rec['name']:<24} {rec['value']:>14,.0f} {rec['unit']:<10} goal {rec['goal']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
