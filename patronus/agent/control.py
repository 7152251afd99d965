"""What the API reads and changes of a running agent (`patronus.agent.api.AgentControl`).

Every method runs on the agent's event-loop thread and answers from the agent's state: the
runtime's monitor and router, the kernel's connections (last conntrack dump), the store's history.
Policy changes go through `Agent.apply_policies` (kernel classifier, router and store together).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

from patronus import __version__
from patronus.agent.config import PathPlan
from patronus.agent.running import RunningAgent
from patronus.core.model import PathId
from patronus.core.policy import RoutingPolicy


class AgentApi:
    """Implements `patronus.agent.api.AgentControl` over one agent."""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent
        self.token = agent.token

    def site_info(self) -> dict[str, Any]:
        a = self.agent
        cfg = a.cfg
        return {"name": cfg.name, "id": cfg.id, "lan_prefixes": list(cfg.lan_prefixes),
                "public_key": a.public_key,
                "uplinks": [{"name": u.name, "interface": u.interface, "address": u.address,
                             "gateway": u.gateway, "cost_per_gb": u.cost_per_gb,
                             "bandwidth_mbps": u.bandwidth_mbps or None} for u in cfg.uplinks],
                "remotes": [{"name": r.name, "id": r.id, "prefixes": list(r.prefixes),
                             "endpoints": [{"uplink": e.uplink, "address": e.address} for e in r.endpoints]}
                            for r in cfg.remotes],
                "wireguard_backend": a.dataplane.wg_backend, "steering": cfg.steering, "started_at": a.started_at,
                "version": __version__, "monitor_profile": cfg.monitor.name,
                "steering_changes": a.steering_changes, "last_steering_change": a.last_steering_change,
                "displaced_slots": a.runtime.displaced_slots(),
                "pending_failbacks": a.runtime.logic.router.pending_failbacks(),
                "adopted": a.adopted or None, "steering_held": a.runtime.logic.steering_held}

    def _path_dict(self, plan: PathPlan, now: float, flows: Counter[PathId | None]) -> dict[str, Any]:
        a = self.agent
        monitor = a.runtime.logic.monitor
        pid = plan.id
        m = monitor.metrics(pid, now)
        c = monitor.counters(pid)
        sender = a.prober.senders.get(pid) if a.prober else None
        rejected = dict(sender.counters.rejected) if sender else {}
        return {"id": pid, "remote": plan.remote, "uplink": plan.uplink.name, "remote_uplink": plan.endpoint.uplink,
                "interface": plan.ifname, "status": monitor.status(pid).value,
                "status_since": a.status_since.get(pid), "latency_ms": m.measured_latency_ms,
                "jitter_ms": m.measured_jitter_ms,
                "loss_pct": m.loss_pct, "score": m.score, "bandwidth_mbps": m.bandwidth_mbps or None,
                "mtu_bytes": m.mtu_bytes or None, "cost_per_gb": plan.uplink.cost_per_gb,
                "probes_sent": sender.counters.sent if sender else c.sent, "probes_received": c.received,
                "probes_timed_out": c.timed_out, "probes_late": c.late, "probes_duplicate": c.duplicates,
                "probes_rejected": sum(rejected.values()), "probes_rejected_by_reason": rejected,
                "probe_timeout_ms": round(monitor.current_timeout_s(pid) * 1000, 3),
                "flows": flows[pid],
                "local_address": plan.uplink.address, "remote_address": plan.endpoint.address}

    def list_paths(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        flows = Counter(f["path"] for f in self.list_flows())
        return [self._path_dict(p, now, flows) for p in self.agent.cfg.paths]

    def path_history(self, path_id: str, since: float | None, until: float | None, limit: int) -> list[dict[str, Any]]:
        a = self.agent
        if path_id not in a.numbers.plans:
            raise KeyError(path_id)
        assert a.store is not None
        rows = a.store.metrics_history(path_id, since, until, limit)
        return [{"measured_at": m.measured_at, "latency_ms": m.latency_ms, "jitter_ms": m.jitter_ms,
                 "loss_pct": m.loss_pct, "score": m.score, "bandwidth_mbps": m.bandwidth_mbps or None,
                 "mtu_bytes": m.mtu_bytes or None} for m in rows]

    def list_policies(self) -> list[RoutingPolicy]:
        return self.agent.runtime.logic.router.list_policies()

    def put_policy(self, policy: RoutingPolicy) -> bool:
        current = self.list_policies()
        created = all(p.name != policy.name for p in current)
        self.agent.apply_policies([p for p in current if p.name != policy.name] + [policy])
        return created

    def delete_policy(self, name: str) -> None:
        current = self.list_policies()
        if all(p.name != name for p in current):
            raise KeyError(name)
        self.agent.apply_policies([p for p in current if p.name != name])

    def list_flows(self) -> list[dict[str, Any]]:
        return self.agent.flow_table()

    def topology(self) -> dict[str, Any]:
        a = self.agent
        cfg, monitor = a.cfg, a.runtime.logic.monitor
        nodes: list[dict[str, Any]] = [{"id": cfg.name, "kind": "local", "prefixes": list(cfg.lan_prefixes)}]
        nodes += [{"id": r.name, "kind": "remote", "prefixes": list(r.prefixes), "learned": r.learned}
                  for r in cfg.remotes]
        now = time.monotonic()
        links = [{"path": p.id, "from": cfg.name, "to": p.remote, "uplink": p.uplink.name,
                  "remote_uplink": p.endpoint.uplink, "status": monitor.status(p.id).value,
                  "score": monitor.metrics(p.id, now).score} for p in cfg.paths]
        out: dict[str, Any] = {"nodes": nodes, "links": links}
        if a.mesh is not None:
            out["mesh"] = a.mesh.state()
        return out

    def steering_plan(self) -> dict[str, Any]:
        rt = self.agent.runtime
        return {"held": rt.steering_held, "buckets": rt.buckets, **rt.plan().as_dict()}

    async def test_path(self, path_id: str, probes: int, bandwidth: bool) -> dict[str, Any]:
        from patronus.agent.ondemand import test_path

        plan = self.agent.numbers.plans.get(PathId(path_id))
        if plan is None:
            raise KeyError(path_id)
        if not 1 <= probes <= 1000:
            raise ValueError("probes must be 1-1000")
        return await test_path(self.agent.cfg, plan, probes=probes, bandwidth=bandwidth)

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return self.agent.hub.recent(limit)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.agent.hub.subscribe()

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.agent.hub.unsubscribe(q)

    def prometheus_snapshot(self) -> Any:
        from patronus.agent.metrics import MetricsSnapshot, PathSample

        a = self.agent
        rows = []
        for d in self.list_paths():
            rows.append(PathSample(
                path=d["id"], remote=d["remote"], uplink=d["uplink"], status=d["status"],
                latency_ms=_finite(d["latency_ms"]), jitter_ms=_finite(d["jitter_ms"]),
                loss_ratio=None if _finite(d["loss_pct"]) is None else d["loss_pct"] / 100.0,
                score=_finite(d["score"]), flows=d["flows"], probes_sent=d["probes_sent"],
                probes_received=d["probes_received"], probes_rejected=d["probes_rejected_by_reason"]))
        unattributed: Counter[str] = a.reflector.rejected() if a.reflector is not None else Counter()
        return MetricsSnapshot(paths=rows, failovers=dict(a.runtime.failovers),
                               unattributed_rejections=dict(unattributed))


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
