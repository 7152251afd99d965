"""Routing decisions per second on one core: the four default policies, 8 paths toward one site.

- routing_new_flows: `select_path` for flows the router has never seen (policy match, ranking from
  the cache, flow state, FlowAssigned event), events drained every 256 flows as a driver would.
  Goal ≥ 200,000/s (the seeds' Rust figure: 100,000/s). Python's cyclic GC costs about a third of
  this figure as the flow table grows (measured: ~340k/s with the collector off); the agent may tune it.
- routing_sticky_flows: `select_path` for flows that already have an Up path. Goal ≥ 2,000,000/s.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import best_rate, write
from patronus.core.model import FlowKey, Path, PathId, PathMetrics, PathStatus, SiteId
from patronus.core.quality import quality_score
from patronus.core.router import Router

N_FLOWS = 200_000
PORTS = (5060, 27015, 21, 443, 80, 8080, 5061, 22)   # a mix that hits every default policy


def build() -> Router:
    r = Router()
    r.set_site_prefixes(SiteId("b"), ["10.2.0.0/16"])
    for i in range(8):
        lat, jit, loss = 10.0 + 7 * i, 1.0 + i, 0.1 * i
        m = PathMetrics(latency_ms=lat, jitter_ms=jit, loss_pct=loss, score=quality_score(lat, jit, loss),
                        measured_at=0.0, bandwidth_mbps=100.0 * (i + 1), cost_per_gb=0.01 * i)
        r.add_path(Path(PathId(f"p{i}"), SiteId("a"), SiteId("b")), 0.0, PathStatus.UP, m)
    return r


def flows(n: int, salt: int) -> list[FlowKey]:
    out = []
    for i in range(n):
        src = f"10.1.{(i >> 8) & 255}.{i & 255}"
        dst = f"10.2.{salt}.{(i * 7) & 255}"
        proto = 17 if i % 3 else 6
        out.append(FlowKey(src, dst, 1024 + (i % 60000), PORTS[i % len(PORTS)], proto))
    return out


def main() -> list[dict[str, Any]]:
    batches = [flows(N_FLOWS, salt) for salt in range(5)]
    it = iter(batches)

    def new_flows() -> int:
        # As a driver runs it: route what arrived, then drain the events (here every 256 flows).
        r = build()
        batch = next(it)
        sel = r.select_path
        drain = r.drain_events
        for i in range(0, len(batch), 256):
            for k in batch[i:i + 256]:
                sel(k, 1.0)
            drain()
        return len(batch)

    new_rate, new_all = best_rate(new_flows, repeats=5)

    r = build()
    known = flows(N_FLOWS, 9)
    for k in known:
        r.select_path(k, 1.0)
    r.drain_events()

    def sticky() -> int:
        sel = r.select_path
        for k in known:
            sel(k, 2.0)
        return len(known)

    sticky_rate, sticky_all = best_rate(sticky, repeats=5)
    return [
        write("routing_new_flows", new_rate, "flows/s", 200_000.0, paths=8, policies=4, flows=N_FLOWS,
              all_rates=[round(x) for x in new_all]),
        write("routing_sticky_flows", sticky_rate, "lookups/s", 2_000_000.0, paths=8, policies=4, flows=N_FLOWS,
              all_rates=[round(x) for x in sticky_all]),
    ]
