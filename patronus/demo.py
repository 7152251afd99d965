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
seeded by `seed`); everything else, from RTT windows and scores to failover decisions and the slots
the flows are steered in, is the site runtime (`patronus.core.runtime.SiteRuntime`) that the agent and
the simulator run. The loop is the same shape as every driver's: deliver what is due, take a step,
perform its actions (send the probes, show the events, steer by the plan).
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
    PathStatusChanged,
    SlaRestored,
    SlaViolated,
)
from patronus.core.model import EndpointId, FlowKey, Path, PathId, PathStatus, SiteId, Slot
from patronus.core.monitor import PROFILES, MonitorProfile
from patronus.core.runtime import SiteRuntime


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
    paths = [Path(pid, HQ, BRANCH, EndpointId(f"hq:{names[pid]}"), EndpointId(f"branch:{names[pid]}"),
                  cost_per_gb=cost, bandwidth_mbps=bw) for pid, cost, bw in ((ISP1, 0.01, 1000.0), (ISP2, 0.10, 50.0))]
    rt = SiteRuntime("hq", paths, {BRANCH: ["10.2.0.0/16"]}, profile=profile)
    script = _script(links)
    replies: list[tuple[float, int, PathId, int, float]] = []
    tie = 0
    result = DemoResult()
    slot_of: dict[str, Slot] = {}          # flow name -> the slot the dataplane put its connection in
    last_table = -1.0
    now = 0.0

    def path_name(pid: PathId | None) -> str:
        return names.get(pid, "no path") if pid is not None else "no path"

    def flows_in(slot: object) -> list[str]:
        return [n for n, s in slot_of.items() if s == slot]

    while now < END_AT:
        due = rt.next_deadline()
        candidates = [t for t in (due, replies[0][0] if replies else None, script[0][0] if script else None,
                                  1.0 if now < 1.0 else None) if t is not None]
        now = max(now, min([*candidates, END_AT]))
        while script and script[0][0] <= now:
            _, label, action = script.pop(0)
            action()
            if label:
                say(now, "script", label, {})
        while replies and replies[0][0] <= now:
            _, _, pid, seq, sent = heapq.heappop(replies)
            rt.on_probe_reply(pid, seq, sent, now)
        act = rt.on_timer(now, due) if due is not None and due <= now else rt.pump(now)
        for probe in act.probes:
            link = links[probe.path_id]
            if link.cut or rng.random() < link.loss_ratio:
                continue                      # lost: the monitor times it out
            rtt = max(link.rtt_s * 0.5, link.rtt_s + rng.gauss(0.0, link.jitter_s))
            tie += 1
            heapq.heappush(replies, (now + rtt, tie, probe.path_id, probe.seq, now))
        if len(slot_of) < len(FLOWS) and now >= 1.0:
            # the flows' first packets (from t = 1 s, again until a path is usable): classified as the
            # kernel does it, by the plan's path for new connections, into their slots
            for name, flow in FLOWS.items():
                bucket = rt.bucket_of(flow, BRANCH)
                slot = rt.new_slot(bucket) if name not in slot_of else None
                if slot is not None:
                    slot_of[name] = slot
                    say(now, "route", f"{name} [{bucket.policy or 'implicit-default'}] → "
                                      f"{path_name(rt.slot_path(slot))}", {})
        for ev in act.events:
            result.events.append(ev)
            _show(ev, now, result, say, path_name, flows_in)
        if now - last_table >= 2.0 - 1e-9:
            last_table = now
            rows = {path_name(p): (rt.logic.status(p).value, rt.monitor.metrics(p, now)) for p in (ISP1, ISP2)}
            say(now, "metrics", "", {"paths": rows})
    result.final_paths = {name: path_name(rt.slot_path(slot)) for name, slot in slot_of.items()}
    return result


def _show(ev: Event, now: float, result: DemoResult, say: Callable[[float, str, str, dict[str, Any]], None],
          path_name: Callable[[PathId | None], str], flows_in: Callable[[object], list[str]]) -> None:
    """One event as the demo's lines (a slot's move is told for each demo flow in it)."""
    if isinstance(ev, PathStatusChanged):
        if ev.new is PathStatus.DOWN and now > CUT_AT and result.detection_s is None:
            result.detection_s = now - CUT_AT
        say(now, "status", f"{path_name(ev.path_id)}: {ev.old.value} → {ev.new.value} ({ev.reason})",
            {"path": ev.path_id, "score": ev.metrics.score if ev.metrics else None})
    elif isinstance(ev, SlaViolated):
        say(now, "sla", f"SLA violated on {path_name(PathId(ev.subject))}: {', '.join(ev.violations)} "
                        f"(p95 {ev.latency_ms:.0f} ms, loss {ev.loss_pct:.1f} %, jitter {ev.jitter_ms:.0f} ms)", {})
    elif isinstance(ev, SlaRestored):
        say(now, "sla", f"SLA restored on {path_name(PathId(ev.subject))} after {ev.violated_for_s:.1f} s", {})
    elif isinstance(ev, FailoverTriggered):
        if ev.from_path == ISP1 and CUT_AT <= now < RESTORE_AT:
            result.failover_s = now - CUT_AT
        for name in flows_in(ev.flow):
            say(now, "failover", f"{name} [{ev.policy}] {path_name(ev.from_path)} → {path_name(ev.to_path)} "
                                 f"({ev.reason.value})", {})
    elif isinstance(ev, Failback):
        result.failbacks += len(flows_in(ev.flow))      # the demo's flows that failed back
        for name in flows_in(ev.flow):
            say(now, "failback", f"{name} [{ev.policy}] {path_name(ev.from_path)} → {path_name(ev.to_path)} "
                                 "(hold time passed)", {})
