"""One site's agent in virtual time: the agent's own site runtime, driven the way the asyncio agent drives it.

What it does, mirroring `patronus.agent.daemon.Agent` (both are thin drivers of
`patronus.core.runtime.SiteRuntime`):
  * a step whenever the runtime's `next_deadline()` is due (one timer armed at a time; a stale one is
    recognised by its token and ignored) and after every probe reply, then performs its actions:
    `SendProbe` → a probe crosses the path's links to the remote site's reflector and back
    (`on_probe_reply(path, seq, sent_at, now)` when it returns); events are published as the agent
    publishes them; a steering plan is applied to the site's modelled dataplane.
  * The dataplane is the kernel's, modelled: it holds the last plan applied (`plan`) and, per flow,
    the slot its connection was put in. A flow's first packet is classified as nftables does it: the
    policy it matches and, for a balancing policy, its hash bucket (`SiteRuntime.bucket_of`) give the
    plan's path for new connections, and so its slot; its packets then take the slot's path in the
    current plan (none: stranded, the packet is lost). A flow that finds no path for new connections
    is classified again at the next plan. A plan is applied `steering_latency_s` after the decision
    (0 by default: no kernel here) and, when it carries failovers or failbacks, published as
    `SteeringApplied` like the agent's. The same runtime, the same plan, the same buckets: a policy
    balances the same way on both backends.
  * Flow mode, between timeline steps: a probe whose links are fixed takes the network's shortcut (one
    event a round trip), and once its path is steady the path coasts: the core sends and answers its
    probes itself, with the links' round trip, until the round trip of the last would reach the next
    step (`_shortcut_home`). The run then costs a few events a path a second (reports, SLA) instead
    of two per probe, and says the same (tests/sim/test_sim_coast.py).
  * Stop and start, as the real agent does them (`patronus.agent.adopt`):
    - `stop(cleanup=False)` is a graceful SIGTERM: the agent's logic stops (no probes, no decisions;
      replies still in flight are ignored) but the site's dataplane stays (`forwarding`): its flows
      keep their slot and path, its reflector answers the peers' probes, and a flow that starts
      meanwhile goes where the last plan sends new connections.
    - `stop(cleanup=True)` also removes the dataplane: nothing more is reflected, sent or received at
      the site.
    - `spawned()`, then `start()` `startup_s` later (the engine waits: a real agent takes that long
      from its spawn to its first probe; `AGENT_STARTUP_S` is the measured default, a scenario's
      `agent.startup` overrides it). A start runs a fresh runtime (paths Down until probes bring
      them up). Over a kept dataplane it adopts the plan's slots as the agent adopts the kernel's
      (`SiteRuntime.adopt`: the steering is held until every path has a verdict, then the router
      takes the slots where they are, with the origin they had failed over from); over none the
      dataplane comes up with it and flows are classified again.

Clock: the core sees virtual seconds (scenario time); published events carry wall time `T0 + at`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.meshdrive import SimMesh, add_learned
from emulation.backends.sim.network import PROBE_WIRE_BYTES, Network, SimOptions, SimPath
from emulation.backends.sim.traffic import SimFlow
from emulation.scenario.model import Site as ScenarioSite
from patronus.agent.config import SiteConfig
from patronus.core.announce import Announcement
from patronus.core.events import AgentStarted, Event
from patronus.core.model import PathId, SiteId
from patronus.core.plan import LB_BUCKETS, SteeringPlan
from patronus.core.runtime import Actions, SiteRuntime
from patronus.core.site import SiteLogic
from patronus.core.sla import SlaMonitor

# From `patronus agent` being spawned to its core running (its first probes), adopting a kept dataplane:
# measured by `python -m benchmarks bench_agent_startup` (a netns lab, agents at the runner's nice -5, 12
# graceful restarts; the agent's AgentStarted time minus its spawn time) on the 2-core VM: median 0.71 s,
# 0.57-0.81 s (a fresh start, building four tunnels, 0.91 s). Mininet runs of agent-restart gave
# 0.54-0.71 s. Python's start-up and imports are most of it.
AGENT_STARTUP_S = 0.7


class World(Protocol):
    """What an agent sees of the simulation (`engine.Simulation` is one)."""

    @property
    def env(self) -> SimEnvironment: ...
    @property
    def net(self) -> Network: ...
    @property
    def options(self) -> SimOptions: ...
    @property
    def agents(self) -> Mapping[str, SimAgent]: ...
    def wall(self, t: float) -> float: ...
    def set_forwarding(self, site: str, now: float, on: bool) -> None: ...
    def start_mesh(self, agent: SimAgent, kept: list[str]) -> SimMesh | None: ...
    def scenario_site(self, name: str) -> ScenarioSite: ...


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
    def __init__(self, sim: World, cfg: SiteConfig, startup_s: float = AGENT_STARTUP_S) -> None:
        self.sim = sim
        self.env = sim.env
        self.name = cfg.name
        self.cfg = cfg
        self.startup_s = startup_s
        self.running = False            # the agent's logic runs (probes, decisions)
        self.forwarding = False         # the site's dataplane is up (tunnels, steering, reflector)
        self.spawn_token = 0            # which spawn a pending start belongs to (a stop cancels it)
        self.generation = 0
        self.runtime: SiteRuntime | None = None
        self.logic: SiteLogic | None = None      # the runtime's, while the agent runs
        # the dataplane (kept across a graceful stop): the last plan applied, and the runtime whose
        # policies the kernel's classifier holds
        self.plan: SteeringPlan | None = None
        self._classifier: SiteRuntime | None = None
        net = sim.net
        self.paths: dict[PathId, SimPath] = {}
        for p in cfg.paths:
            self.paths[p.id] = net.path(p.id, cfg.name, p.uplink.name, p.remote, p.endpoint.uplink)
        self.mesh: SimMesh | None = None         # the running agent's mesh node (scenarios with a mesh)
        self.learned: dict[str, Announcement] = {}   # the dataplane's learned remotes (kept across a graceful stop)
        self.flows: list[SimFlow] = []          # flows sent from this site
        self.events: list[dict[str, Any]] = []  # published, in order
        self.steering_changes = 0
        self._timer_token = 0
        self._timer_at: float | None = None
        self._now = -math.inf
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
        adopting = self.forwarding           # over a kept dataplane
        self.running = True
        self.forwarding = True
        self.sim.set_forwarding(self.name, now, True)
        self.generation += 1
        self._now = max(self._now, now)
        rt = SiteRuntime(cfg.name, cfg.core_paths(), {r.name: r.prefixes for r in cfg.remotes},
                         profile=cfg.monitor, router=cfg.router, sla=SlaMonitor(cfg.sla), policies=cfg.policies,
                         now=now)
        self.runtime = rt
        self.logic = rt.logic
        self._classifier = rt
        # over a kept dataplane, the remotes the last agent had learned come back with it (their tunnels
        # and steering were kept), as the agent's do (`Learned.keep`); the mesh keeps them while its
        # new node finds them again
        kept = dict(self.learned) if adopting else {}
        self.learned.clear()
        for name, a in sorted(kept.items()):
            add_learned(self, self.sim.scenario_site(self.name), name, a, now, kept=True)
        flows = sum(f.classified for f in self.flows)
        if adopting and self.plan is not None and flows:
            rt.adopt(self.plan.slots, now)      # the kernel steers as the last agent left it meanwhile
        else:
            self.plan = None
        self._publish_event(AgentStarted(at=now, site=cfg.name, paths=len(cfg.paths), wireguard_backend="none",
                                         steering=cfg.steering, adopted={"flows": flows} if adopting else None))
        self._pump(now)
        self.mesh = self.sim.start_mesh(self, kept=sorted(kept))

    def stop(self, now: float, cleanup: bool = False) -> None:
        """SIGTERM: graceful (the dataplane stays) or, with `cleanup`, the dataplane goes too."""
        self.spawn_token += 1           # a start still in its start-up does not happen
        if self.running:
            self.running = False
            self.generation += 1
            self._timer_token += 1
            self._timer_at = None
            logic, rt = self.logic, self.runtime
            assert logic is not None and rt is not None
            if self.mesh is not None:
                self.mesh.stop()          # silent from now on: the others will find it failed
                self.mesh = None
            logic.monitor.sync(now)
            self._probes_coasted += logic.monitor.coasted_probes
            if not rt.steering_held:     # stopped within a hold: the plan it adopted stays as it was
                self.plan = rt.plan()    # the kernel's maps, as the agent leaves them
            self.runtime = None
            self.logic = None
        if cleanup and self.forwarding:
            self.forwarding = False
            self.sim.set_forwarding(self.name, now, False)
            self.plan = None
            self.learned.clear()
            for f in self.flows:
                f.classified = False
                f.slot = None
                f.set_path(None, now)

    def leave(self, now: float) -> None:
        """`site_leave`: the agent says that the site leaves the mesh, then stops with its dataplane."""
        if self.mesh is not None:
            self.mesh.leave()
            self.mesh = None
        self.stop(now, cleanup=True)

    def mesh_datagram(self, src: str, data: bytes) -> None:
        """A mesh datagram from site `src` reached this site (dropped unless its agent runs)."""
        if self.mesh is not None:
            self.mesh.datagram(src, data)

    # -- events ------------------------------------------------------------------------------------

    def publish(self, d: dict[str, Any]) -> None:
        self.events.append(d)

    def publish_wall_event(self, ev: Event) -> None:
        """An event whose times are wall seconds already (the mesh node's)."""
        self.publish(_finite(ev.as_dict(0.0)))

    def _publish_event(self, ev: Event) -> None:
        self.publish(_finite(ev.as_dict(self.sim.wall(0.0))))

    # -- the core loop -----------------------------------------------------------------------------

    def _clock(self) -> float:
        """Now, never earlier than a time already handed to the core."""
        now = self.env.now
        if now < self._now:
            now = self._now
        self._now = now
        return now

    def _pump(self, now: float) -> None:
        rt = self.runtime
        assert rt is not None
        self._perform(rt.pump(now), now)

    def pump_now(self, now: float) -> None:
        """Take a step after an input outside the probes (a remote added or removed)."""
        self._pump(max(now, self._now))

    def _perform(self, act: Actions, now: float) -> None:
        for probe in act.probes:
            self._send_probe(probe.path_id, probe.seq, now)
        for ev in act.events:
            self._publish_event(ev)
        if act.replan:
            self._replan(act.moves, now)
        self._arm()

    def _arm(self) -> None:
        assert self.runtime is not None
        when = self.runtime.next_deadline()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        self._timer_token += 1
        token = self._timer_token
        self._timer_at = when
        self.env.later(when - self.env.now, self._on_timer, token, when)

    def _on_timer(self, token: int, when: float) -> None:
        if token != self._timer_token:
            return              # replaced by an earlier timer, or the agent stopped
        self._timer_at = None
        now = self._clock()
        if now < when:          # float rounding of the timeout: never hand the core a time before its deadline
            now = self._now = when
        rt = self.runtime
        assert rt is not None
        due = rt.next_deadline()
        if (due is None or due > now) and not rt.has_news():
            # the deadline this timer was armed for went away (a reply came before its probe's timeout):
            # nothing to fire, so no step; arm for the next one
            self._arm()
            return
        self._perform(rt.on_timer(now, when), now)

    # -- probes ------------------------------------------------------------------------------------

    def _send_probe(self, path_id: PathId, seq: int, sent_at: float) -> None:
        path = self.paths[path_id]
        self._probes_asked += 1
        net = self.sim.net
        now = self.env.now
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
                self.env.later(back - now, home, path.id, seq, sent_at, self.generation)
                return
        # the far end may change before the probe gets there, or the way back goes hop by hop
        self.env.later(there - now, self._reflect, path, seq, sent_at, self.generation)

    def _reflect(self, path: SimPath, seq: int, sent_at: float, generation: int) -> None:
        """The probe reached the remote site: its reflector sends it back if the site's dataplane is up
        (the reflector outlives a gracefully stopped agent)."""
        if self.sim.agents[path.remote].forwarding:
            self.sim.net.send(path.reverse, PROBE_WIRE_BYTES, self._probe_home, path.id, seq, sent_at, generation)

    def _probe_home(self, path_id: PathId, seq: int, sent_at: float, generation: int) -> None:
        if self.generation != generation:
            return          # the agent that sent it is gone
        now = self._clock()
        rt = self.runtime
        assert rt is not None
        rt.on_probe_reply(path_id, seq, sent_at, now)
        # Most replies change nothing a step would act on (the armed timer fires what falls due, even
        # at `now`); skipping their step is a third of the simulator's time at 1,000 sites.
        if rt.has_news():
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
        """A flow's first packet: the dataplane classifies it (if the plan has a path for it)."""
        if self.forwarding:
            self._classify(f, self._clock())

    def _live(self) -> SiteRuntime | None:
        """The runtime whose plan the dataplane follows now (None: it keeps the plan it was left)."""
        rt = self.runtime
        return rt if rt is not None and not rt.steering_held else None

    def _classify(self, f: SimFlow, now: float) -> bool:
        """Put an unclassified flow in its slot by the dataplane's plan, as the kernel does a new
        connection's first packet. Returns True if the plan had a path for it."""
        classifier = self._classifier
        if classifier is None or self.cfg.steering == "none":
            return False        # no steering: nothing carries LAN traffic into the tunnels
        bucket = classifier.bucket_of(f.key, SiteId(f.dst_site))
        live = self._live()
        if live is not None:
            slot = live.new_slot(bucket)
            path = live.slot_path(slot) if slot is not None else None
        elif self.plan is not None:
            slot = self.plan.new.get(bucket)
            path = self.plan.path_of_new(bucket)
        else:
            slot = path = None
        if slot is None:
            return False        # no usable path toward its site: the kernel drops it
        f.classified = True
        f.slot = slot
        if f.policy is None:
            f.policy = bucket.policy if bucket.policy is not None else "implicit-default"
        f.set_path(path, now)
        f.pending_path = path
        return True

    def _replan(self, moves: list[Event], now: float) -> None:
        """The dataplane follows the runtime's plan again (read for the slots and buckets its flows use),
        `steering_latency_s` after the decision."""
        rt = self._live()
        assert rt is not None
        self.plan = None                     # a kept plan is the live one's from here on
        for f in self.flows:
            if f.active and not f.classified:
                self._classify(f, now)
        changes: list[tuple[SimFlow, PathId | None]] = []
        for f in self.flows:
            if f.classified and f.slot is not None:
                pid = rt.slot_path(f.slot)
                if pid != f.pending_path:
                    changes.append((f, pid))
                    f.pending_path = pid
        if not changes and not moves:
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
            self.env.later(latency, apply)
        else:
            for f, pid in changes:
                f.set_path(pid, now)
        applied = rt.steering_applied(moves, done, done)   # the model switches at one instant
        if applied is not None:
            self._publish_event(applied)

    def steering_plan(self) -> dict[str, Any]:
        """The plan the modelled dataplane follows, as the agent's `GET /steering` gives it."""
        rt = self._live()
        plan = rt.plan() if rt is not None else self.plan if self.plan is not None else SteeringPlan()
        return {"held": self.runtime is not None and self.runtime.steering_held, "buckets": LB_BUCKETS,
                **plan.as_dict()}

    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, now: float, wall: float) -> list[list[Any]]:
        """One path_metrics row per path, as the test-bed's sampler reads the agent's /paths."""
        if not self.running or self.logic is None:
            return []
        mon = self.logic.monitor
        rows = []
        at = round(wall, 4)
        for pid in self.logic.path_ids:
            m = mon.metrics(pid, now)
            c = mon.counters(pid)
            # no answered probe in the window: no latency, no jitter (empty cells), as the agent's API says
            rows.append([self.name, pid, at, mon.status(pid).value, m.measured_latency_ms, m.measured_jitter_ms,
                         m.loss_pct, m.score, c.sent, c.timed_out])
        return rows
