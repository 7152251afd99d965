"""`patronus demo`: the core at work on a scripted two-site network, in virtual time.

Two sites, hq and branch, joined by two paths: `isp1` (fiber: 12 ms RTT, 1 Gbit/s, $0.01/GB) and
`isp2` (LTE: 45 ms RTT, 4 ms jitter, 50 Mbit/s, $0.10/GB). Three flows cross them: a SIP call
(VoIP/Video policy), an FTP transfer (Bulk Transfers) and a web session (Default). The script:

  t=4 s    brownout on isp1: RTT ramps to 190 ms, jitter to 35 ms, loss to 4 % over 3 s
           → the call leaves isp1 (below its threshold of 70); bulk and web stay
  t=10 s   isp1 recovers → the call fails back after the 10 s hold time
  t=26 s   hard cut of isp1 → every flow still on it moves within about 60 ms (fast profile)
  t=30 s   isp1 restored → flows fail back after the hold time
  t=45 s   end

The probes, their replies, timeouts and losses are simulated here (a deterministic random generator
seeded by `seed`); everything else, from RTT windows and scores to failover decisions, is the real
`patronus.core` code that the agent runs. The loop is the same shape as every driver's: deliver what
is due, call `on_timer(now)`, perform the actions, route the events.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from patronus.core.events import (
    Event,
    Failback,
    FailoverTriggered,
    FlowAssigned,
    PathMetricsUpdated,
    PathStatusChanged,
    SendProbe,
    SlaRestored,
    SlaViolated,
)
from patronus.core.model import FlowKey, Path, PathId, PathStatus, RouteKey, SiteId
from patronus.core.monitor import PROFILES, MonitorProfile, PathMonitor
from patronus.core.router import Router
from patronus.core.sla import SlaMonitor


@dataclass
class Link:
    """What the simulated network does to a probe on one path right now."""

    rtt_s: float
    jitter_s: float = 0.0
    loss_ratio: float = 0.0
    cut: bool = False


@dataclass
class DemoResult:
    events: list[Event] = field(default_factory=list)
    detection_s: float | None = None      # cut → path declared Down
    failover_s: float | None = None       # cut → last flow moved off the cut path
    failbacks: int = 0
    final_paths: dict[str, str] = field(default_factory=dict)


HQ, BRANCH = SiteId("hq"), SiteId("branch")
ISP1, ISP2 = PathId("hq-branch-isp1"), PathId("hq-branch-isp2")
FLOWS = {
    "sip-call": FlowKey.parse("10.1.0.10", "10.2.0.20", 40000, 5060, "udp"),
    "ftp-backup": FlowKey.parse("10.1.0.11", "10.2.0.21", 40001, 21, "tcp"),
    "web": FlowKey.parse("10.1.0.12", "10.2.0.22", 40002, 443, "tcp"),
}
CUT_AT, RESTORE_AT, END_AT = 26.0, 30.0, 45.0


def _script(links: dict[PathId, Link]) -> list[tuple[float, str, Callable[[], None]]]:
    steps: list[tuple[float, str, Callable[[], None]]] = []
    l1 = links[ISP1]
    for i in range(7):           # brownout ramp, t = 4.0 .. 7.0 s
        frac = i / 6
        rtt, jit, loss = 0.012 + frac * 0.178, frac * 0.035, frac * 0.04

        def ramp(r: float = rtt, j: float = jit, lo: float = loss) -> None:
            l1.rtt_s, l1.jitter_s, l1.loss_ratio = r, j, lo
        label = ("brownout on isp1 begins: RTT, jitter and loss ramp up for 3 s" if i == 0 else
                 f"brownout on isp1 at its worst: RTT {rtt * 1e3:.0f} ms, jitter {jit * 1e3:.0f} ms, "
                 f"loss {loss:.0%}" if i == 6 else "")
        steps.append((4.0 + 0.5 * i, label, ramp))

    def recover() -> None:
        l1.rtt_s, l1.jitter_s, l1.loss_ratio = 0.012, 0.0, 0.0

    def cut() -> None:
        l1.cut = True

    def restore() -> None:
        l1.cut = False

    steps += [(10.0, "isp1 recovers from the brownout", recover),
              (CUT_AT, "HARD CUT of isp1", cut),
              (RESTORE_AT, "isp1 restored", restore)]
    return steps


def run(seed: int = 1, profile: MonitorProfile | None = None,
        on_line: Callable[[float, str, str, dict[str, Any]], None] | None = None) -> DemoResult:
    """Run the scripted demo; `on_line(t, kind, text, data)` is called for every line worth showing."""
    profile = profile or PROFILES["fast"]
    rng = random.Random(seed)
    say = on_line or (lambda t, kind, text, data: None)
    links = {ISP1: Link(rtt_s=0.012), ISP2: Link(rtt_s=0.045, jitter_s=0.004)}
    names = {ISP1: "isp1", ISP2: "isp2"}
    monitor = PathMonitor(profile)
    router = Router()
    sla = SlaMonitor()
    router.set_site_prefixes(BRANCH, ["10.2.0.0/16"])
    for pid, cost, bw in ((ISP1, 0.01, 1000.0), (ISP2, 0.10, 50.0)):
        monitor.add_path(pid, 0.0, cost_per_gb=cost, bandwidth_mbps=bw)
        router.add_path(Path(pid, HQ, BRANCH, cost_per_gb=cost, bandwidth_mbps=bw), 0.0)
    script = _script(links)
    replies: list[tuple[float, int, PathId, int]] = []
    tie = 0
    result = DemoResult()
    flows_started = False
    last_table = -1.0
    now = 0.0

    def path_name(pid: PathId | None) -> str:
        return names.get(pid, "no path") if pid is not None else "no path"

    def flow_name(flow: RouteKey) -> str:
        return next((n for n, k in FLOWS.items() if k == flow), str(flow))

    while now < END_AT:
        candidates = [t for t in (monitor.next_deadline(), router.next_deadline(), sla.next_deadline(),
                                  replies[0][0] if replies else None, script[0][0] if script else None,
                                  None if flows_started else 1.0) if t is not None]
        now = min([*candidates, END_AT])
        while script and script[0][0] <= now:
            _, label, action = script.pop(0)
            action()
            if label:
                say(now, "script", label, {})
        while replies and replies[0][0] <= now:
            _, _, pid, seq = heapq.heappop(replies)
            monitor.on_probe_reply(pid, seq, None, now)
        monitor.on_timer(now)
        sla.on_timer(now)
        router.on_timer(now)
        if not flows_started and now >= 1.0:
            flows_started = True
            for flow in FLOWS.values():
                router.select_path(flow, now)
        for ev in monitor.drain_events():
            if isinstance(ev, SendProbe):
                link = links[ev.path_id]
                if link.cut or rng.random() < link.loss_ratio:
                    sla.record_probe(ev.path_id, None, now)
                    continue
                rtt = max(link.rtt_s * 0.5, link.rtt_s + rng.gauss(0.0, link.jitter_s))
                tie += 1
                heapq.heappush(replies, (now + rtt, tie, ev.path_id, ev.seq))
                sla.record_probe(ev.path_id, rtt * 1e3, now)
                continue
            router.handle(ev)
            result.events.append(ev)
            if isinstance(ev, PathStatusChanged):
                if ev.new is PathStatus.DOWN and now > CUT_AT and result.detection_s is None:
                    result.detection_s = now - CUT_AT
                say(now, "status", f"{path_name(ev.path_id)}: {ev.old.value} → {ev.new.value} ({ev.reason})",
                    {"path": ev.path_id, "score": ev.metrics.score if ev.metrics else None})
            elif isinstance(ev, PathMetricsUpdated) and now - last_table >= 2.0 - 1e-9:
                last_table = now
                rows = {path_name(p): (router.path_status(p).value, router.path_metrics(p)) for p in (ISP1, ISP2)}
                say(now, "metrics", "", {"paths": rows})
        for ev in sla.drain_events():
            result.events.append(ev)
            if isinstance(ev, SlaViolated):
                say(now, "sla", f"SLA violated on {path_name(PathId(ev.subject))}: {', '.join(ev.violations)} "
                                f"(p95 {ev.latency_ms:.0f} ms, loss {ev.loss_pct:.1f} %, jitter {ev.jitter_ms:.0f} ms)",
                    {})
            elif isinstance(ev, SlaRestored):
                say(now, "sla", f"SLA restored on {path_name(PathId(ev.subject))} after {ev.violated_for_s:.1f} s", {})
        for ev in router.drain_events():
            result.events.append(ev)
            if isinstance(ev, FlowAssigned):
                say(now, "route", f"{flow_name(ev.flow)} [{ev.policy}] → {path_name(ev.path_id)}", {})
            elif isinstance(ev, FailoverTriggered):
                if ev.from_path == ISP1 and now >= CUT_AT and now < RESTORE_AT:
                    result.failover_s = now - CUT_AT
                say(now, "failover", f"{flow_name(ev.flow)} [{ev.policy}] {path_name(ev.from_path)} → "
                                     f"{path_name(ev.to_path)} ({ev.reason.value})", {})
            elif isinstance(ev, Failback):
                result.failbacks += 1
                say(now, "failback", f"{flow_name(ev.flow)} [{ev.policy}] {path_name(ev.from_path)} → "
                                     f"{path_name(ev.to_path)} (hold time passed)", {})
        for flow in FLOWS.values():
            router.touch(flow, now)     # the flows keep sending
    result.final_paths = {name: path_name(router.flow_path(flow)) for name, flow in FLOWS.items()}
    return result
