"""SWIM membership (patronus/core/swim.py) at 100 and 1,000 members, in the deterministic network of
tests/unit/test_swim.py (5-25 ms links, no loss; messages are not encoded here, their sizes are computed
exactly by the core: `Send.size` == len(encode(msg)), which the tests check).

For each size N: N members join through one seed (staggered over N × 20 ms), the run waits until every
member counts N members and no record is left to gossip (the joins' gossip has drained), then measures the
steady state over 60 simulated seconds or one whole push-pull period if longer (90 s at N = 100, 180 s at
N = 1,000: push-pull is the bulk of the bytes, and a shorter window would catch a phase of it):

- swim_bytes_per_member_s (the figure, N = 1,000): bytes sent per member per second, all SWIM traffic
  (probes, acks, indirect probes, gossip rounds, push-pull), and the same split by message type;
- messages per member per second;
- crash detection: 10 members crash 3 s apart; for each, the time until every live member has declared
  it failed (p50, p95, max) and until the first suspicion;
- a new joiner: the time until every member has its `joined` event;
- wall time of each phase.

Goal: at most 1,000 bytes per member per second at N = 1,000 (memberlist's budget on a LAN is of that
order: a 1 s probe and a 200 ms gossip round of a few hundred bytes); the detection figures are reported
against the bound in tests/unit/test_swim.py (`detect_bound`).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import write
from patronus.core.swim import EventKind, MemberEvent
from tests.unit.test_swim import Net, detect_bound

SIZES = (100, 1000)
STEADY_S = 60.0
CRASHES = 10
GOAL_BYTES = 1000.0


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]


def measure(n: int, seed: int = 1) -> dict[str, Any]:
    net = Net(seed, wire=False)
    net.keep_event = lambda e: e.kind is not EventKind.JOINED
    names = [f"s{i}" for i in range(n)]
    for i, name in enumerate(names):
        net.add(name, seeds=["s0"] if i else [], at=i * 0.02)
    t0 = time.perf_counter()

    def settled() -> bool:
        return all(s.cluster_size() == n and not s.pending_broadcasts() for s in net.nodes.values())

    ready = net.run(n * 0.02 + 600.0, settled, every=1.0)
    wall_join = time.perf_counter() - t0
    assert ready is not None, "the cluster never converged"
    start = net.now

    # steady state, over one whole push-pull period at least (each member syncs about once in it)
    cfg = net.config
    sync_period = cfg.sync_interval * (1 + math.ceil(math.log2(n / 32)) if n > 32 else 1)
    window = max(STEADY_S, sync_period)
    before = {k: Counter(s.stats) for k, s in net.nodes.items()}
    msgs0, bytes0 = net.messages, net.bytes
    t0 = time.perf_counter()
    net.run(start + window)
    wall_steady = time.perf_counter() - t0
    per = n * window
    by_type: Counter[str] = Counter()
    by_bytes: Counter[str] = Counter()
    for k, s in net.nodes.items():
        diff = Counter(s.stats)
        diff.subtract(before[k])
        by_type.update({key[4:]: v for key, v in diff.items() if key.startswith("out.")})
        by_bytes.update({key[10:]: v for key, v in diff.items() if key.startswith("bytes_out.")})
    steady_bytes = (net.bytes - bytes0) / per
    steady_msgs = (net.messages - msgs0) / per
    false_alarms = sum(1 for _, _, e in net.events if e.kind in (EventKind.SUSPECTED, EventKind.FAILED))

    # crashes
    t0 = time.perf_counter()
    victims = names[n - CRASHES:]
    crash_at = {}
    for i, v in enumerate(victims):
        crash_at[v] = net.now + 1.0 + 3.0 * i
        net.at(crash_at[v], lambda v=v: net.down.add(v))
    net.events.clear()
    failed_count: Counter[str] = Counter()

    def keep_crash(e: MemberEvent) -> bool:
        if e.kind is EventKind.FAILED:
            failed_count[e.name] += 1
        return e.kind in (EventKind.FAILED, EventKind.SUSPECTED)

    net.keep_event = keep_crash
    live = [s for s in names if s not in victims]
    net.run(max(crash_at.values()) + detect_bound(n) + 1.0,
            lambda: all(failed_count[v] >= len(live) for v in victims), every=0.5)
    wall_crash = time.perf_counter() - t0
    detect, first = [], []
    for v in victims:
        failed = {o: t for t, o, e in reversed(net.events) if e.kind is EventKind.FAILED and e.name == v}
        missing = [o for o in live if o not in failed]
        assert not missing, f"{v} not declared failed by {len(missing)} members"
        detect.append(max(failed[o] for o in live) - crash_at[v])
        first.append(min(t for t, _, e in net.events if e.kind is EventKind.SUSPECTED and e.name == v) - crash_at[v])

    # a new joiner
    t0 = time.perf_counter()
    joined: dict[str, float] = {}

    def keep(e: MemberEvent) -> bool:
        return e.kind is EventKind.JOINED and e.name == "newcomer"

    net.keep_event = keep
    net.events.clear()
    join_at = net.now + 1.0
    net.add("newcomer", seeds=["s0"], at=join_at)
    net.run(join_at + 120.0, lambda: len({o for _, o, _ in net.events}) >= len(live), every=0.05)
    for t, o, _ in net.events:
        joined.setdefault(o, t)
    wall_newcomer = time.perf_counter() - t0
    seen_by_all = max(joined.values()) - join_at if len(joined) >= len(live) else None

    return {
        "members": n, "steady_window_s": window, "bytes_per_member_s": round(steady_bytes, 1),
        "messages_per_member_s": round(steady_msgs, 2),
        "messages_per_member_s_by_type": {k: round(v / per, 3) for k, v in sorted(by_type.items())},
        "false_alarms_in_steady_state": false_alarms,
        "crash_detection_s": {"p50": round(statistics.median(detect), 2), "p95": round(_quantile(detect, 0.95), 2),
                              "max": round(max(detect), 2), "first_suspicion_p50": round(statistics.median(first), 2),
                              "bound": round(detect_bound(n), 1), "crashes": len(detect)},
        "new_joiner_seen_by_all_s": None if seen_by_all is None else round(seen_by_all, 2),
        "converged_after_join_s": round(ready, 1),
        "bytes_per_member_s_by_type": {k: round(v / per, 1) for k, v in sorted(by_bytes.items())},
        "wall_s": {"join": round(wall_join, 1), "steady": round(wall_steady, 1), "crashes": round(wall_crash, 1),
                   "newcomer": round(wall_newcomer, 1)},
    }


def main(sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    results = []
    for n in sizes:
        r = measure(n)
        print(f"  swim N={n}: {r}", flush=True)
        results.append(r)
    wall = time.perf_counter() - t0
    figure = results[-1]["bytes_per_member_s"]
    return [write("swim", figure, "B/member/s", GOAL_BYTES, higher_is_better=False, sizes=list(sizes),
                  results=results, wall_s=round(wall, 1))]


if __name__ == "__main__":
    for rec in main(tuple(int(a) for a in sys.argv[1:]) or SIZES):
        print(rec)
