"""Measurements beyond the regular probe stream: "test this path now" (a probe burst), path-MTU
discovery (DF probes, RFC 4821 style, `pmtu.py`) and the UDP bandwidth test (`bwtest.py`).

Each uses its own socket, bound like the path's probe sender (uplink address, interface and mark),
and its own probe session, so it never disturbs the monitor's stream. The bandwidth server of a site
for peer site X listens on `probe port + 1 + X` on every uplink address (one pair key per server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from typing import Any

from patronus.agent.config import PathPlan, SiteConfig, probe_key
from patronus.agent.sockets import open_path_socket, recvfrom_until
from patronus.core.errors import PeerError
from patronus.core.probe import Probe, ProbeType, ReplayWindow, decode, encode


def bandwidth_port(cfg: SiteConfig, peer_site_id: int) -> int:
    return cfg.probe_port + 1 + peer_site_id


async def probe_burst(cfg: SiteConfig, plan: PathPlan, count: int, spacing_s: float = 0.01,
                      wait_s: float = 1.0) -> dict[str, Any]:
    key = probe_key(cfg, cfg.remote(plan.remote))
    sock = open_path_socket(plan.uplink.address, plan.uplink.interface, plan.uplink.mark, 0)
    session = int.from_bytes(os.urandom(4), "big") | 1
    dest = (plan.endpoint.address, cfg.probe_port)
    loop = asyncio.get_running_loop()
    rtts: dict[int, float] = {}
    window = ReplayWindow(4096)
    rejected = 0

    async def reader(deadline: float) -> None:
        nonlocal rejected
        while len(rtts) < count:
            got = await recvfrom_until(sock, deadline)
            if got is None:
                return
            now = time.monotonic_ns()
            try:
                p = decode(got[0], key)
            except PeerError:
                rejected += 1
                continue
            if p.type is not ProbeType.REPLY or p.session != session or not window.check_and_update(p.seq):
                rejected += 1
                continue
            rtts[p.seq] = (now - p.t_send_ns) / 1e6

    try:
        task = loop.create_task(reader(loop.time() + count * spacing_s + wait_s))
        start = loop.time()
        for seq in range(count):
            due = start + seq * spacing_s
            if due > loop.time():
                await asyncio.sleep(due - loop.time())   # pacing the burst, not waiting for a condition
            with contextlib.suppress(OSError):
                sock.sendto(encode(Probe(ProbeType.REQUEST, session, seq, time.monotonic_ns()), key), dest)
        await task
    finally:
        sock.close()
    vals = sorted(rtts.values())
    out: dict[str, Any] = {"sent": count, "received": len(vals), "loss_pct": 100.0 * (count - len(vals)) / count,
                           "rejected": rejected}
    if vals:
        out.update(rtt_min_ms=vals[0], rtt_avg_ms=statistics.fmean(vals), rtt_max_ms=vals[-1],
                   rtt_p50_ms=vals[len(vals) // 2], rtt_p95_ms=vals[min(len(vals) - 1, int(len(vals) * 0.95))],
                   jitter_ms=statistics.pstdev(vals) if len(vals) > 1 else 0.0)
    return out


async def path_mtu(cfg: SiteConfig, plan: PathPlan) -> dict[str, Any]:
    from patronus.agent.pmtu import discover_path_mtu

    key = probe_key(cfg, cfg.remote(plan.remote))
    sock = open_path_socket(plan.uplink.address, plan.uplink.interface, plan.uplink.mark, 0, df=True)
    try:
        res = await discover_path_mtu(sock, (plan.endpoint.address, cfg.probe_port), key,
                                      int.from_bytes(os.urandom(4), "big") | 1, hi=9000, timeout_s=0.2)
    finally:
        sock.close()
    return res.as_dict()


async def measure_bandwidth(cfg: SiteConfig, plan: PathPlan, duration_s: float | None = None,
                    rate_mbps: float | None = None) -> dict[str, Any]:
    from patronus.agent.bwtest import run_bandwidth_test

    remote = cfg.remote(plan.remote)
    key = probe_key(cfg, remote)
    if key is None:
        raise ValueError("bandwidth tests need authenticated probing (probe.auth: true and a secret)")
    sock = open_path_socket(plan.uplink.address, plan.uplink.interface, plan.uplink.mark, 0)
    try:
        res = await run_bandwidth_test(sock, (plan.endpoint.address, bandwidth_port(cfg, cfg.id)), key,
                                       duration_s=duration_s or cfg.bandwidth_duration_s,
                                       rate_mbps=rate_mbps if rate_mbps is not None else cfg.bandwidth_rate_mbps)
    finally:
        sock.close()
    return res.as_dict()


async def test_path(cfg: SiteConfig, plan: PathPlan, *, probes: int, bandwidth: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"path": plan.id, "probes": await probe_burst(cfg, plan, probes)}
    if bandwidth:
        try:
            out["bandwidth"] = await measure_bandwidth(cfg, plan)
        except Exception as exc:      # a refused or unanswered test is a result, not an API error
            out["bandwidth"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
