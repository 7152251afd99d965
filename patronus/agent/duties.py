"""The agent's slow duties on the host, each an asyncio task of the running agent: the periodic round
(refresh the flow table from conntrack, record metrics history, check the tunnels' handshakes and
the probe reflector), path MTU discovery once each path is up, and scheduled bandwidth tests.

The runtime's own housekeeping (slot touches, failbacks, the probe schedule) is on its deadline, not
here: these duties only read the host and feed what they read to the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from patronus.agent.running import RunningAgent
from patronus.core.events import BandwidthMeasured, PathMtuMeasured, ReflectorRestarted
from patronus.core.model import PathStatus

log = logging.getLogger("patronus.agent")

FLOW_REFRESH_S = 1.0
PERIODIC_S = 1.0
TUNNEL_CHECK_S = 2.0


async def periodic(agent: RunningAgent) -> None:
    """Every second (or the metrics interval if shorter): the host's round."""
    cfg, dp, k = agent.cfg, agent.dataplane, agent.life.on_kernel
    next_metrics = time.monotonic() + cfg.metrics_interval_s
    flows_at = tunnels_at = 0.0
    while True:
        await asyncio.sleep(min(PERIODIC_S, cfg.metrics_interval_s))
        now = time.monotonic()
        if dp.steering is not None and dp.steering.applied and now - flows_at >= FLOW_REFRESH_S:
            try:
                agent.kernel_flows = await k(dp.steering.flows)
                flows_at = now
            except Exception as exc:
                log.warning("conntrack dump failed: %s", exc)
        if now >= next_metrics:
            next_metrics = now + cfg.metrics_interval_s
            agent.record_metrics(now)
        if dp.wg is not None and now - tunnels_at >= TUNNEL_CHECK_S:
            tunnels_at = now
            try:
                shakes = await k(dp.handshakes)
            except Exception as exc:
                log.warning("tunnel check failed: %s", exc)
            else:
                agent.check_tunnels(shakes, time.monotonic())
        await _check_reflector(agent)


async def _check_reflector(agent: RunningAgent) -> None:
    """It lives apart from the agent (it outlives restarts), so it can die apart too."""
    if agent.reflector is None or agent.reflector.alive():
        return
    log.error("the probe reflector is gone; starting a new one")
    try:
        how = await agent.life.on_kernel(agent.reflector.start)
    except Exception as exc:
        log.error("probe reflector: %s", exc)
    else:
        agent.publish(ReflectorRestarted(at=time.monotonic(), how=how))


async def measure_mtus(agent: RunningAgent) -> None:
    """Path MTU of every path once it is up (RFC 4821 style search with DF probes)."""
    from patronus.agent.ondemand import path_mtu

    monitor = agent.runtime.logic.monitor
    pending = {p.id: p for p in agent.cfg.paths}
    while pending:
        for pid, plan in list(pending.items()):
            if monitor.status(pid) is PathStatus.DOWN:
                continue
            try:
                res = await path_mtu(agent.cfg, plan)
            except Exception as exc:
                log.warning("path MTU of %s: %s", pid, exc)
                del pending[pid]
                continue
            del pending[pid]
            if res.get("path_mtu"):
                monitor.set_mtu(pid, int(res["path_mtu"]))
                agent.publish(PathMtuMeasured(at=time.monotonic(), path_id=pid, result=res))
        if pending:
            await asyncio.sleep(1.0)     # re-check paths not yet up once a second


async def bandwidth_tests(agent: RunningAgent) -> None:
    """A round of bandwidth tests over every path not Down, every `bandwidth_interval_s`."""
    from patronus.agent.ondemand import measure_bandwidth

    monitor = agent.runtime.logic.monitor
    while True:
        for plan in agent.cfg.paths:
            if monitor.status(plan.id) is PathStatus.DOWN:
                continue
            try:
                res = await measure_bandwidth(agent.cfg, plan)
            except Exception as exc:
                log.warning("bandwidth test of %s: %s", plan.id, exc)
                continue
            monitor.set_bandwidth(plan.id, float(res["goodput_mbps"]))
            agent.publish(BandwidthMeasured(at=time.monotonic(), path_id=plan.id, result=res))
        await asyncio.sleep(agent.cfg.bandwidth_interval_s)   # the configured period between rounds
