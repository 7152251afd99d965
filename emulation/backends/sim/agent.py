"""One site's agent in virtual time: the agent's own `SiteLogic`, driven the way the asyncio agent drives it.

What it does, mirroring `patronus.agent.daemon.Agent`:
  * `pump(now)` whenever the core's `next_deadline()` is due (one simpy Timeout armed at a time; a
    stale one is recognised by its token and ignored) and after every probe reply, then performs the
    step: `SendProbe` → a probe crosses the path's links to the remote site's reflector and back
    (`on_probe_reply(path, seq, sent_at, now)` when it returns); first misses (`ProbeLost`), status,
    router and SLA events are published with the agent's fields; a routing change updates the steering.
  * Steering: the agent steers per slot, we steer per flow (each scenario flow is one router flow,
    classified by `Router.select_path` on its 5-tuple, so the policies match as they do in the kernel).
    A flow is classified when it starts, or at the first routing change after that when no path was
    usable yet; its packets then take `router.flow_path(key)` as applied by the last steering change
    (None: stranded, the packet is lost). A change is applied `steering_latency_s` after the decision
    (0 by default: no kernel here) and, when flows moved, published as `SteeringApplied` like the
    agent's.
  * Flow mode, between timeline steps: a probe whose links are fixed takes the network's shortcut (one
    event a round trip), and once its path is steady the path coasts: the core sends and answers its
    probes itself, with the links' round trip, until the round trip of the last would reach the next
    step (`_shortcut_home`). The run then costs a few events a path a second (reports, SLA) instead
    of two per probe, and says the same (tests/sim/test_sim_coast.py).
  * Once a second, like the agent's periodic duty: the running flows are touched (so they never idle
    out while they send) and the core is pumped.
  * Stop and start, as the real agent does them (`patronus.agent.adopt`):
    - `stop(cleanup=False)` is a graceful SIGTERM: the agent's logic stops (no probes, no decisions;
      replies still in flight are ignored) but the site's dataplane stays (`forwarding`): its flows
      keep the path they were on, its reflector answers the peers' probes, and a flow that starts
      meanwhile goes where the kernel's new-flow map pointed (the stopped agent's router, frozen).
    - `stop(cleanup=True)` also removes the dataplane: nothing more is reflected, sent or received at
      the site.
    - `spawned()`, then `start()` `startup_s` later (the engine waits: a real agent takes that long
      from its spawn to its first probe; `AGENT_STARTUP_S` is the measured default, a scenario's
      `agent.startup` overrides it). A start runs a fresh `SiteLogic` (paths Down until probes bring
      them up). Over a kept dataplane it holds the steering as the agent does
      (`SiteLogic.hold_steering`) and then hands the router the flows where they are, with the origin
      they had failed over from; over none the dataplane comes up with it and flows are classified
      again.

Clock: the core sees virtual seconds (scenario time); published events carry wall time `T0 + at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emulation.backends.sim.network import FROM_CORE, PROBE_WIRE_BYTES, TO_CORE, Hops, later
from patronus.agent.config import SiteConfig
from patronus.core.events import (
    Event,
    Failback,
    FailoverTriggered,
    FlowAssigned,
    FlowExpired,
    FlowUnroutable,
    ProbeLost,
)
from patronus.core.model import FlowKey, PathId, SiteId
from patronus.core.site import SiteLogic, steering_hold_s
from patronus.core.sla import SlaMonitor

if TYPE_CHECKING:
    from emulation.backends.sim.engine import Simulation
    from emulation.backends.sim.traffic import SimFlow

HOUSEKEEPING_S = 1.0        # the agent's periodic duty (slot touches, a pump)
# From `patronus agent` being spawned to its core running (its first probes), adopting a kept dataplane:
# measured by `python -m benchmarks bench_agent_startup` (a netns lab, agents at the runner's nice -5, 12
# graceful restarts; the agent's AgentStarted time minus its spawn time) on the 2-core VM: median 0.71 s,
# 0.57-0.81 s (a fresh start, building four tunnels, 0.91 s). Mininet runs of agent-restart gave
# 0.54-0.71 s. Python's start-up and imports are most of it.
AGENT_STARTUP_S = 0.7


@dataclass(frozen=True, slots=True)
class SimPath:
    """One path of a site: where it goes and the hops of its probes and packets, both ways."""

    id: PathId
    remote: str
    uplink: str
    remote_uplink: str
    forward: Hops       # local uplink toward the core, then the remote uplink from it
    reverse: Hops       # the remote uplink toward the core, then the local uplink from it


def _finite(v: Any) -> Any:
    """JSON-safe: non-finite floats as None, recursively (the agent's API would not emit NaN either)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


class SimAgent:
    def __init__(self, sim: Simulation, cfg: SiteConfig, startup_s: float = AGENT_STARTUP_S) -> None:
        self.sim = sim
        self.env = sim.env
        self.name = cfg.name
        self.cfg = cfg
        self.startup_s = startup_s
        self.running = False            # the agent's logic runs (probes, decisions)
        self.forwarding = False         # the site's dataplane is up (tunnels, steering, reflector)
        self.spawn_token = 0            # which spawn a pending start belongs to (a stop cancels it)
        self.generation = 0
        self.logic: SiteLogic | None = None
        # a kept dataplane: the stopped agent's router (the kernel's new-flow map, frozen) and, per flow
        # it steers, the origin it had failed over from (what the next agent adopts)
        self._frozen: SiteLogic | None = None
        self._origins: dict[FlowKey, PathId | None] = {}
        net = sim.net
        self.paths: dict[PathId, SimPath] = {}
        for p in cfg.paths:
            local = f"{cfg.name}.{p.uplink.name}"
            remote = f"{p.remote}.{p.endpoint.uplink}"
            self.paths[p.id] = SimPath(p.id, p.remote, p.uplink.name, p.endpoint.uplink,
                                       net.hops((local, TO_CORE), (remote, FROM_CORE)),
                                       net.hops((remote, TO_CORE), (local, FROM_CORE)))
        self.flows: list[SimFlow] = []          # flows sent from this site
        self.events: list[dict[str, Any]] = []  # published, in order
        self.steering_changes = 0
        self._timer_token = 0
        self._timer_at: float | None = None
        self._now = -math.inf
        self._unroutable: set[FlowKey] = set()
        self._probes_asked = 0          # probes the core asked for (SendProbe)
        self._probes_coasted = 0        # probes coasted by the cores of earlier runs of this agent

    @property
    def probes_sent(self) -> int:
        """Probes sent by this site's agents, coasted ones included (as of the last sync)."""
        now = self._probes_asked + self._probes_coasted
        return now + self.logic.monitor.coasted_probes if self.logic is not None else now

    # -- life cycle --------------------------------------------------------------------------------

    def spawned(self, now: float) -> None:
        """`agent_start`: the process is spawned; the engine calls `start` `startup_s` later."""
        self.spawn_token += 1

    def start(self, now: float) -> None:
        if self.running:
            return
        cfg = self.cfg
        adopting = self.forwarding
        self.running = True
        self.forwarding = True
        self.sim.set_forwarding(self.name, now, True)
        self.generation += 1
        self._now = max(self._now, now)
        self.logic = SiteLogic(cfg.name, cfg.monitor, cfg.router, SlaMonitor(cfg.sla), cfg.policies)
        for path in cfg.core_paths():
            self.logic.add_path(path, now)
        for r in cfg.remotes:
            self.logic.set_site_prefixes(r.name, r.prefixes)
        self._unroutable.clear()
        if adopting and any(f.classified for f in self.flows):
            self.logic.hold_steering(now + steering_hold_s(cfg.monitor))
        else:
            self._frozen = None
            self._origins.clear()
        self.publish({"kind": "AgentStarted", "at": self.sim.wall(now), "site": cfg.name, "paths": len(cfg.paths),
                      "wireguard_backend": "none", "steering": cfg.steering,
                      "adopted": {"flows": sum(f.classified for f in self.flows)} if adopting else None})
        self._pump(now)
        self._housekeeping(self.generation)

    def stop(self, now: float, cleanup: bool = False) -> None:
        """SIGTERM: graceful (the dataplane stays) or, with `cleanup`, the dataplane goes too."""
        self.spawn_token += 1           # a start still in its start-up does not happen
        if self.running:
            self.running = False
            self.generation += 1
            self._timer_token += 1
            self._timer_at = None
            logic = self.logic
            assert logic is not None
            logic.monitor.sync(now)
            self._probes_coasted += logic.monitor.coasted_probes
            if not logic.steering_held:          # stopped within a hold: what it adopted stays as it was
                self._frozen = logic
                self._origins = {}
                for f in self.flows:
                    info = logic.router.flow_info(f.key) if f.classified else None
                    if info is not None:
                        self._origins[f.key] = info.origin
            self.logic = None
        if cleanup and self.forwarding:
            self.forwarding = False
            self.sim.set_forwarding(self.name, now, False)
            self._frozen = None
            self._origins.clear()
            for f in self.flows:
                f.classified = False
                f.set_path(None, now)

    # -- events ------------------------------------------------------------------------------------

    def publish(self, d: dict[str, Any]) -> None:
        self.events.append(d)

    def _publish_event(self, ev: Event) -> None:
        d = _finite(ev.as_dict())
        d["at"] = self.sim.wall(ev.at)
        if isinstance(ev, ProbeLost):
            d["sent_at"] = self.sim.wall(ev.sent_at)
        self.publish(d)

    # -- the core loop -----------------------------------------------------------------------------

    def _clock(self) -> float:
        """Now, never earlier than a time already handed to the core."""
        now = self.env.now
        if now < self._now:
            now = self._now
        self._now = now
        return now

    def _pump(self, now: float) -> None:
        logic = self.logic
        assert logic is not None
        step = logic.pump(now)
        for probe in step.probes:
            self._send_probe(probe.path_id, probe.seq, now)
        for lost in step.lost:
            self._publish_event(lost)
        for sc in step.status:
            self._publish_event(sc)
        for ev in step.router:
            if isinstance(ev, FlowUnroutable):
                if ev.flow in self._unroutable:
                    continue
                self._unroutable.add(ev.flow)
            elif isinstance(ev, FlowAssigned):
                self._unroutable.discard(ev.flow)
            elif isinstance(ev, FlowExpired):
                for f in self.flows:
                    if f.key == ev.flow:
                        f.classified = False
            self._publish_event(ev)
        for sev in step.sla:
            self._publish_event(sev)
        trigger = step.router
        if step.released:
            self._adopt_flows(now)
            adopted = logic.router.drain_events()
            for ev in adopted:
                if not isinstance(ev, FlowAssigned):
                    self._publish_event(ev)
            trigger = trigger + adopted
        if step.routing_changed:
            self._steer(now, trigger)
        self._arm()

    def _arm(self) -> None:
        assert self.logic is not None
        when = self.logic.next_deadline()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        self._timer_token += 1
        token = self._timer_token
        self._timer_at = when
        later(self.env, when - self.env.now, self._on_timer, token, when)

    def _on_timer(self, token: int, when: float) -> None:
        if token != self._timer_token:
            return              # replaced by an earlier timer, or the agent stopped
        self._timer_at = None
        now = self._clock()
        if now < when:          # float rounding of the timeout: never hand the core a time before its deadline
            now = self._now = when
        logic = self.logic
        assert logic is not None
        due = logic.next_deadline()
        if (due is None or due > now) and not logic.has_news():
            # the deadline this timer was armed for went away (a reply came before its probe's timeout):
            # nothing to fire, so no pump; arm for the next one
            self._arm()
            return
        self._pump(now)

    def _housekeeping(self, generation: int) -> None:
        if generation != self.generation:
            return
        now = self._clock()
        assert self.logic is not None
        router = self.logic.router
        for f in self.flows:
            if f.classified and f.active:
                router.touch(f.key, now)
        self._pump(now)
        later(self.env, HOUSEKEEPING_S, self._housekeeping, generation)

    # -- probes ------------------------------------------------------------------------------------

    def _send_probe(self, path_id: PathId, seq: int, sent_at: float) -> None:
        path = self.paths[path_id]
        self._probes_asked += 1
        net = self.sim.net
        now = self.env._now
        there = net.shortcut(path.forward, now, PROBE_WIRE_BYTES)
        if there is None:
            net.send(path.forward, PROBE_WIRE_BYTES, self._reflect, path, seq, sent_at, self.generation)
            return
        if there < net.stable_until:        # nothing changes before the probe gets there
            if not self.sim.agents[path.remote].forwarding:
                return                      # no reflector now (no dataplane), so none then
            back = net.shortcut(path.reverse, there, PROBE_WIRE_BYTES)
            if back is not None:
                home = self._shortcut_home if self.sim.options.probe_coast else self._probe_home
                later(self.env, back - now, home, path.id, seq, sent_at, self.generation)
                return
        # the far end may change before the probe gets there, or the way back goes hop by hop
        later(self.env, there - now, self._reflect, path, seq, sent_at, self.generation)

    def _reflect(self, path: SimPath, seq: int, sent_at: float, generation: int) -> None:
        """The probe reached the remote site: its reflector sends it back if the site's dataplane is up
        (the reflector outlives a gracefully stopped agent)."""
        if self.sim.agents[path.remote].forwarding:
            self.sim.net.send(path.reverse, PROBE_WIRE_BYTES, self._probe_home, path.id, seq, sent_at, generation)

    def _probe_home(self, path_id: PathId, seq: int, sent_at: float, generation: int) -> None:
        if self.generation != generation:
            return          # the agent that sent it is gone
        now = self._clock()
        logic = self.logic
        assert logic is not None
        logic.on_probe_reply(path_id, seq, sent_at, now)
        # Most replies change nothing a pump would act on (the armed timer fires what falls due, even
        # at `now`); skipping their pump is a third of the simulator's time at 1,000 sites.
        if logic.has_news():
            self._pump(now)
        else:
            self._arm()

    def _shortcut_home(self, path_id: PathId, seq: int, sent_at: float, generation: int) -> None:
        """A probe that took the shortcut is back: taken as any other, then, if its path is steady,
        the path's next probes coast until the network may change under them (the round trip of the
        last one sent ends before the next timeline step): the core sends and answers them itself,
        with the round trip the links give, and wakes only for its reports and timers. Only when
        nothing changed since this probe left (so the probes sent after it, still out, come back as it
        did) and the far end's agent runs."""
        self._probe_home(path_id, seq, sent_at, generation)
        if self.generation != generation:
            return
        logic = self.logic
        assert logic is not None
        net = self.sim.net
        path = self.paths[path_id]
        if sent_at < net.stable_since or not self.sim.agents[path.remote].forwarding:
            # the network changed since this probe left (probes still out may not come back), or
            # nothing reflects there now
            return
        there = net.crossing_s(path.forward, PROBE_WIRE_BYTES)
        back = net.crossing_s(path.reverse, PROBE_WIRE_BYTES)
        if there is None or back is None:
            return
        rtt = there + back
        now = self._now
        if logic.coast(path_id, rtt, net.stable_until - rtt, now):
            self._arm()

    # -- steering ----------------------------------------------------------------------------------

    def flow_started(self, f: SimFlow) -> None:
        """A flow's first packet: the kernel classifies it (if a path is usable)."""
        now = self._clock()
        if self.running and self.logic is not None and not self.logic.steering_held:
            if self._classify(f, now):
                self._pump(now)
        elif self.forwarding and self._frozen is not None:
            # no agent decides now: the kernel's new-flow map, as the last agent left it, classifies it
            pid = self._frozen.router.select_path(f.key, now) if self.cfg.steering != "none" else None
            if pid is not None:
                f.classified = True
                f.set_path(pid, now)
                f.pending_path = pid
                self._origins[f.key] = None
                info = self._frozen.router.flow_info(f.key)
                if f.policy is None and info is not None:
                    f.policy = info.policy

    def _adopt_flows(self, now: float) -> None:
        """The steering hold is over: the router takes the flows where the kernel has them (as the
        agent takes its slots), with the origin each had failed over from."""
        assert self.logic is not None
        router = self.logic.router
        for f in self.flows:
            if f.classified and f.pending_path is not None:
                router.place(f.key, f.pending_path, now, site=SiteId(f.dst_site), policy=f.policy,
                             origin=self._origins.get(f.key))
            elif f.classified:
                f.classified = False        # stranded when the agent stopped: classified afresh
        self._frozen = None
        self._origins.clear()

    def _classify(self, f: SimFlow, now: float) -> bool:
        """Give an unclassified running flow its router flow, if a path toward its site is usable.
        Returns True if it got one."""
        assert self.logic is not None
        if self.cfg.steering == "none":
            return False        # no steering: nothing carries LAN traffic into the tunnels
        router = self.logic.router
        if router.preview(SiteId(f.dst_site)) is None:
            return False        # no usable path at all: the kernel drops it, the router hears nothing
        pid = router.select_path(f.key, now)
        if pid is None:
            return False
        f.classified = True
        f.set_path(pid, now)    # the kernel's new-flow map already points there
        f.pending_path = pid
        info = router.flow_info(f.key)
        if f.policy is None and info is not None:
            f.policy = info.policy
        return True

    def _steer(self, now: float, trigger: list[Event]) -> None:
        assert self.logic is not None
        if self.logic.steering_held:
            return              # the kernel steers as the previous agent left it
        router = self.logic.router
        for f in self.flows:
            if f.active and not f.classified:
                self._classify(f, now)
        changes: list[tuple[SimFlow, PathId | None]] = []
        for f in self.flows:
            if f.classified:
                pid = router.flow_path(f.key)
                if pid != f.pending_path:
                    changes.append((f, pid))
                    f.pending_path = pid
        if not changes:
            return
        self.steering_changes += 1
        latency = self.sim.options.steering_latency_s
        done = now + latency
        if latency > 0:
            generation = self.generation

            def apply() -> None:
                if generation == self.generation:
                    for f, pid in changes:
                        f.set_path(pid, done)
            later(self.env, latency, apply)
        else:
            for f, pid in changes:
                f.set_path(pid, now)
        moves = [e for e in trigger if isinstance(e, FailoverTriggered | Failback)]
        if moves:
            first = min(e.at for e in moves)
            # the model switches the flows at one instant: the transaction begins and ends at `done`
            self.publish({"kind": "SteeringApplied", "at": self.sim.wall(done), "begun_at": self.sim.wall(done),
                          "moves": len(moves),
                          "latency_ms": round((done - first) * 1000, 3),
                          "paths": sorted({str(e.to_path) for e in moves})})

    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, now: float, wall: float) -> list[list[Any]]:
        """One path_metrics row per path, as the test-bed's sampler reads the agent's /paths."""
        if not self.running or self.logic is None:
            return []
        mon = self.logic.monitor
        rows = []
        at = round(wall, 4)
        for pid in self.paths:
            m = mon.metrics(pid, now)
            c = mon.counters(pid)
            # no answered probe in the window: no latency, no jitter (empty cells), as the agent's API says
            rows.append([self.name, pid, at, mon.status(pid).value, m.measured_latency_ms, m.measured_jitter_ms,
                         m.loss_pct, m.score, c.sent, c.timed_out])
        return rows
