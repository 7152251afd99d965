"""The simulation of one scenario run: build it, play it in virtual time, write its raw data.

Virtual time is scenario time: 0 is the scenario's start, which is wall time `T0` in every file
(`t0` in run.json; `started_at` is T0 − 0.5 s, when the runner starts sampling). The agents start
during a warm-up before 0 (each at its own deterministic phase within one probe interval, so sites do
not probe in lockstep), long enough for every path to come up, as the Mininet runner waits for every
path to be Up before it starts the traffic. The run goes on for a drain period after the scenario's
end so that packets in flight arrive; sampling stops at the end, as the runner's sampler does.

Simultaneous events run in the order they were scheduled (simpy's insertion order): flows start
before timeline steps of the same instant, as in the runner's action list.

Mode: `packet` simulates every UDP datagram, and every probe hop by hop; `flow` computes the UDP
records per flow after the run (see `traffic`), and lets probes cross delay-and-rate-only links in
one step between timeline steps (see `network`: only the probes' queueing behind each other is left
out); `auto` takes packet mode unless the scenario's UDP flows would send more than
`AUTO_PACKET_LIMIT` datagrams or its agents more than `AUTO_PROBE_LIMIT` probes. Every probe is
always simulated, and every reply goes through the site's core logic at its own virtual time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from emulation.backends.sim import traffic as tr
from emulation.backends.sim.agent import AGENT_STARTUP_S, SimAgent
from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.meshdrive import SimMesh, SimOrg, mesh_options, sim_public_key
from emulation.backends.sim.network import Network, SimOptions
from emulation.rawfiles import (
    HTTP_COLUMNS,
    PATH_METRIC_COLUMNS,
    TCP_COLUMNS,
    TIMELINE_COLUMNS,
    run_document,
    write_csv,
    write_events,
    write_json,
    write_packets,
)
from emulation.scenario.model import Ramp, Scenario, Site
from emulation.scenario.timeline import AgentStep, LinkStep, MembershipStep, Step, schedule
from emulation.siteconf import (
    API_PORT,
    mesh_doc,
    site_document,
    uplink_addresses,
)
from emulation.traffic.plan import traffic_plan
from patronus.agent.config import from_dict
from patronus.core.errors import ConfigError

T0 = 1_700_000_000.0               # wall time of scenario time 0, in every file
T0_NS = 1_700_000_000 * 1_000_000_000
SAMPLE_LEAD_S = 0.5                # sampling starts this long before 0 (the runner's t0 = started_at + 0.5)
SAMPLE_PERIOD_S = 0.25             # the runner's sampler
MAX_METRIC_ROWS = 1_000_000        # above this, path_metrics is sampled more coarsely (a multiple of 0.25 s)
AUTO_PACKET_LIMIT = 2_000_000      # auto mode: packet mode up to this many UDP datagrams, flow mode above
AUTO_PROBE_LIMIT = 10_000_000      # ... and up to this many probes (four events each in packet mode)
MODES = ("auto", "packet", "flow")
SIM_TOKEN = "patronus-sim-token-0000000000000000"


class WallBudgetExceeded(Exception):
    """The run took longer than `SimOptions.wall_budget_s`: how far it got."""

    def __init__(self, simulated_s: float, total_s: float, wall_s: float) -> None:
        super().__init__(f"stopped after {wall_s:.1f} s of wall time, {simulated_s:.1f} of {total_s:.1f} "
                         "virtual seconds simulated")
        self.simulated_s = simulated_s
        self.total_s = total_s
        self.wall_s = wall_s


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a scenario seed and names (never Python's salted `hash`)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def udp_datagrams(scenario: Scenario) -> int:
    """How many datagrams the scenario's UDP flows send (what packet mode costs)."""
    total = 0
    for f in scenario.flows:
        if f.type.is_packet_flow:
            p = traffic_plan(f)
            total += int(p.rate * (f.stop_s - f.start_s)) * p.burst
    return total


def resolve_mode(scenario: Scenario, mode: str, probes: int = 0) -> str:
    """`mode`, or for `auto` the mode the run's size calls for: packet mode unless the scenario's UDP
    flows send more than `AUTO_PACKET_LIMIT` datagrams or its agents send more than
    `AUTO_PROBE_LIMIT` probes (`probes`, as `Simulation` counts them)."""
    if mode not in MODES:
        raise ConfigError(f"expected one of {', '.join(MODES)}, got {mode!r}", "mode")
    if mode != "auto":
        return mode
    return "packet" if udp_datagrams(scenario) <= AUTO_PACKET_LIMIT and probes <= AUTO_PROBE_LIMIT else "flow"


def warmup_s(scenario: Scenario) -> float:
    """Time before 0 that the agents start: what the Mininet runner waits before it starts the clock.
    That is every path Up (several probe rounds and the first probe's 1 s timeout), then quiet for a
    whole probe window plus 1 s (`mininet.agents.Agents.wait_settled`): a probe lost while the agents start (one sent
    before the far reflector listens) must have left the window, or a policy with a loss requirement
    starts the scenario on a worse path than the runner's would."""
    need = max(s.agent.monitor.interval_s * (s.agent.monitor.up_count + 2) + 1.0
               + s.agent.monitor.interval_s * s.agent.monitor.window + 1.0 for s in scenario.sites)
    if scenario.mesh is not None:
        # first the sites find each other: a join round trip to a seed, then gossip for a few periods
        need += scenario.mesh.timers.join_interval_s + 3 * scenario.mesh.timers.probe_interval_s
    return max(2.0, math.ceil(need * 2.0) / 2.0)


class Simulation:
    """One run: the network, one `SimAgent` per site (from the site file the runner would write), the
    flows; `run()` plays it, `write_raw()` writes what the reports read. Raises ConfigError for a bad
    mode before anything is built."""

    def __init__(self, scenario: Scenario, out: Path, mode: str, options: SimOptions | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.sc = scenario
        self.out = Path(out)
        self.mode = resolve_mode(scenario, mode)    # a bad mode fails here, before anything is built
        self.options = options or SimOptions()
        self.progress = progress or (lambda _msg: None)
        self.t0_ns = T0_NS
        self.warmup_s = warmup_s(scenario)
        self.env = SimEnvironment(initial_time=-self.warmup_s)
        self.net = Network(self.env, scenario)
        addrs = uplink_addresses(scenario)
        keys = {s.name: sim_public_key(scenario, s.name) for s in scenario.sites}
        self.documents: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, SimAgent] = {}
        self.org = SimOrg(scenario, T0) if scenario.mesh is not None else None
        self._mesh_options = mesh_options(scenario.mesh) if scenario.mesh is not None else None
        for k, s in enumerate(scenario.sites):
            n = k + 1           # 127.0.0.n for the first 254 sites, as before; past them 127.0.1.x, ...
            doc = site_document(scenario, s.name, uplink_addr=addrs, public_keys=keys, agents_dir=self.out / "agents",
                                api_listen=f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}:{API_PORT}", token=SIM_TOKEN)
            self.documents[s.name] = doc
            self.agents[s.name] = SimAgent(self, from_dict(doc, f"<simulated site {s.name}>"),
                                           AGENT_STARTUP_S if s.agent.startup_s is None else s.agent.startup_s)
        if mode == "auto":
            self.mode = resolve_mode(scenario, mode, self.probes_expected())
        self.net.probe_shortcut = self.mode == "flow"
        self.flows: list[tr.SimFlow] = []
        for i, f in enumerate(scenario.flows):
            sf = tr.SimFlow(i, f, scenario, self.agents[f.src.site], self.agents[f.dst.site])
            self.flows.append(sf)
            self.agents[f.src.site].flows.append(sf)
        # whether each site forwards (its dataplane is up: a gracefully stopped agent's site still does)
        self.forwarding: dict[str, list[tuple[float, int]]] = {s.name: [(-math.inf, 0)] for s in scenario.sites}
        self.timeline_rows: list[list[Any]] = []
        self._metrics: Any = None          # csv writer of raw/path_metrics.csv while the run goes
        self.tcp: list[list[Any]] = []
        self.http: list[list[Any]] = []
        self._link_tables: dict[str, tr.LinkTable] = {}
        self._forwarding_tables: dict[str, tr.StepTable] = {}
        self.sample_period_s = self._sample_period()
        self.events_processed = 0
        self.probes_sent = 0
        self._change_times: list[float] = []
        self._changes_done = 0

    # -- clocks and lookups --------------------------------------------------------------------------

    @staticmethod
    def wall(t: float) -> float:
        return T0 + t

    def link_table(self, link: str) -> tr.LinkTable:
        if link not in self._link_tables:
            self._link_tables[link] = tr.LinkTable(self.net.history[link])
        return self._link_tables[link]

    def forwarding_table(self, site: str) -> tr.StepTable:
        if site not in self._forwarding_tables:
            self._forwarding_tables[site] = tr.StepTable(self.forwarding[site])
        return self._forwarding_tables[site]

    def start_mesh(self, agent: SimAgent, kept: list[str]) -> SimMesh | None:
        """The mesh node of an agent that starts (None without a mesh); `kept`: the peers its dataplane kept."""
        if self.org is None or self._mesh_options is None:
            return None
        return SimMesh(agent, self.sc, self.org.identities[agent.name], self._mesh_options, agent.publish_wall_event,
                       self.org.signed_here, kept)

    def scenario_site(self, name: str) -> Site:
        return self.sc.site(name)

    def set_forwarding(self, site: str, now: float, on: bool) -> None:
        hist = self.forwarding[site]
        if bool(hist[-1][1]) != on:
            hist.append((now, int(on)))

    def probes_expected(self) -> int:
        """About how many probes the run sends: every path of every site at its interval, from the
        warm-up to the end."""
        span = self.warmup_s + self.sc.duration_s
        return round(sum(len(a.paths) * span / a.cfg.monitor.interval_s for a in self.agents.values()))

    def _sample_period(self) -> float:
        if self.options.sample_period_s is not None:
            return self.options.sample_period_s
        paths = sum(len(a.paths) for a in self.agents.values())
        rows = paths * (self.sc.duration_s + SAMPLE_LEAD_S) / SAMPLE_PERIOD_S
        return SAMPLE_PERIOD_S * max(1, math.ceil(rows / MAX_METRIC_ROWS))

    def drain_s(self) -> float:
        """After the end: long enough for the slowest packet in flight to arrive."""
        worst = 0.0
        for hist in self.net.history.values():
            for _, s in hist:
                worst = max(worst, s.delay_s + 4.0 * s.jitter_s)
        return 2.0 * worst + 1.0

    # -- the run -----------------------------------------------------------------------------------

    def _changed(self) -> None:
        """One of the run's link or agent changes happened: the network is stable up to the next."""
        self._changes_done += 1
        k = self._changes_done
        self.net.stable_since = self.env.now
        self.net.stable_until = self._change_times[k] if k < len(self._change_times) else math.inf

    def _agent_step(self, site: str, running: bool, cleanup: bool = False) -> None:
        """An agent starts (its process is spawned: it runs `startup_s` later, `_boot`) or stops."""
        self._changed()
        now = self.env.now
        agent = self.agents[site]
        if running:
            agent.spawned(now)
        else:
            agent.stop(now, cleanup=cleanup)

    def _boot(self, site: str, token: int | None = None) -> None:
        """The agent's start-up is over: it probes and steers from now on (`token`: of the spawn this
        boot belongs to; a stop since then cancels it). A change of the network either way."""
        self._changed()
        agent = self.agents[site]
        if token is None or token == agent.spawn_token:
            agent.start(self.env.now)

    def _apply(self, step: Step, ramp_step: int | None) -> None:
        now = self.env.now
        if isinstance(step, MembershipStep):
            self._changed()
            agent = self.agents[step.site]
            if step.joins:
                agent.spawned(now)
                self.env.later(agent.startup_s, self._boot, step.site, agent.spawn_token)
            else:
                agent.leave(now)
            self.timeline_rows.append([step.at_s, round(self.wall(now), 6), "site_join" if step.joins else "site_leave",
                                       step.site, "{}"])
            return
        if isinstance(step, AgentStep):
            self._agent_step(step.site, step.running, step.cleanup)
            if step.running:
                agent = self.agents[step.site]
                self.env.later(agent.startup_s, self._boot, step.site, agent.spawn_token)
            self.timeline_rows.append([step.at_s, round(self.wall(now), 6),
                                       "agent_start" if step.running else "agent_stop", step.site,
                                       json.dumps({"cleanup": step.cleanup}) if not step.running else "{}"])
            return
        assert isinstance(step, LinkStep)
        self._changed()
        link = str(step.link)
        self.net.apply(link, step.settings, now)
        s = step.settings
        params: dict[str, Any] = {"changed": list(step.changed), "up": s.up, "delay_ms": s.delay_s * 1e3,
                                  "loss": s.loss_ratio}
        if ramp_step is not None:
            params["step"] = ramp_step
        self.timeline_rows.append([step.at_s, round(self.wall(now), 6), self.sc.timeline[step.event].action, link,
                                   json.dumps(params, sort_keys=True)])

    def _sample(self) -> None:
        now = self.env.now
        wall = self.wall(now)
        for agent in self.agents.values():
            self._metrics.writerows(agent.sample(now, wall))

    def _flow_start(self, f: tr.SimFlow) -> None:
        f.active = True
        f.src.flow_started(f)
        if f.udp and self.mode == "packet":
            tr.start_packets(self, f)

    def run(self) -> None:
        """Schedule the agents, flows, timeline and sampler, play them, then compute what the flow-level
        models give (flow-mode UDP records, TCP rates, HTTP requests). Writes raw/path_metrics.csv as
        it samples."""
        env, sc = self.env, self.sc
        wall_started = time.monotonic()
        phase = random.Random(f"sim/{sc.seed}/agent-phase")

        def at(t: float, fn: Callable[[], None]) -> float:
            env.later(t - env.now, fn)
            return env.now + max(t - env.now, 0.0)      # when it runs, as `later` computes it

        changes: list[float] = []       # when links and agents change: the network is stable in between
        for s in sc.sites:
            # the first start is not timed (the runner waits for every path to be Up before 0); a site that
            # joins the mesh later is not there before
            boot = env.now + phase.random() * s.agent.monitor.interval_s
            if sc.present_at_start(s.name):
                changes.append(at(boot, partial(self._boot, s.name)))
        for f in self.flows:
            at(f.start_s, partial(self._flow_start, f))
            at(f.stop_s, partial(setattr, f, "active", False))
        ramp_steps: dict[int, int] = {}
        for step in schedule(sc):
            k = None
            if isinstance(step, LinkStep) and isinstance(sc.timeline[step.event], Ramp):
                k = ramp_steps[step.event] = ramp_steps.get(step.event, 0) + 1
            changes.append(at(step.at_s, partial(self._apply, step, k)))
            if (isinstance(step, AgentStep) and step.running) or (isinstance(step, MembershipStep) and step.joins):
                changes.append(step.at_s + self.agents[step.site].startup_s)     # its boot (`_apply` arms it)
        self._change_times = sorted(changes)
        self._changes_done = 0
        self.net.stable_until = self._change_times[0] if changes else math.inf
        period = self.sample_period_s
        n_samples = math.floor((sc.duration_s + SAMPLE_LEAD_S) / period + 1e-9) + 1
        for i in range(n_samples):
            at(-SAMPLE_LEAD_S + i * period, self._sample)
        at(0.0, self._check_ready)
        for i in range(1, 10):
            at(sc.duration_s * i / 10, partial(self._report_progress, i * 10, wall_started))
        if self.options.wall_budget_s is not None:
            span = sc.duration_s + self.warmup_s
            for i in range(1, 200):
                at(-self.warmup_s + span * i / 200, partial(self._check_budget, wall_started))
        raw = self.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        with open(raw / "path_metrics.csv", "w", newline="") as fh:      # written as sampled: it can be large
            self._metrics = csv.writer(fh)
            self._metrics.writerow(PATH_METRIC_COLUMNS)
            env.play(sc.duration_s + self.drain_s())
        took = time.monotonic() - wall_started
        self.events_processed = env.events_scheduled()
        for a in self.agents.values():
            if a.logic is not None:
                a.logic.monitor.sync(env.now)   # coasted probes sent by the end
        self.probes_sent = sum(a.probes_sent for a in self.agents.values())
        self.progress(f"simulated {env.now + self.warmup_s:g} s in {took:.1f} s: {self.events_processed} events "
                      f"({self.events_processed / max(took, 1e-9):,.0f}/s), {self.probes_sent} probes")
        if self.mode == "flow":
            for f in self.flows:
                if f.udp:
                    tr.synthesize_packets(self, f, np.random.default_rng(stable_seed(sc.seed, "flow", f.name)))
        for f in self.flows:
            if f.type == "tcp_bulk":
                self.tcp += [[f.name, round(self.wall(t), 4), bps] for t, bps in tr.tcp_rows(self, f)]
            elif f.type == "http":
                rng = np.random.default_rng(stable_seed(sc.seed, "http", f.name))
                self.http += [[f.name, self.wall(a), lat, int(ok)] for a, lat, ok in tr.http_rows(self, f, rng)]

    def _check_budget(self, wall_started: float) -> None:
        took = time.monotonic() - wall_started
        budget = self.options.wall_budget_s
        if budget is not None and took > budget:
            raise WallBudgetExceeded(self.env.now + self.warmup_s, self.sc.duration_s + self.warmup_s, took)

    def _report_progress(self, pct: int, wall_started: float) -> None:
        self.progress(f"{pct} % of the scenario simulated ({time.monotonic() - wall_started:.1f} s)")

    def _check_ready(self) -> None:
        for agent in self.agents.values():
            if agent.running and agent.logic is not None:
                down = [p for p in agent.logic.path_ids if agent.logic.monitor.status(p).value != "up"]
                if down:
                    self.progress(f"warning: at {agent.name}, not Up when the scenario starts: {', '.join(down)}")

    # -- output ------------------------------------------------------------------------------------

    def write_raw(self) -> None:
        """The rest of raw/ (run.json, timeline, packets, events, tcp, http), the normalized scenario and
        each site's agent file."""
        raw = self.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        sc = self.sc
        (self.out / "scenario.yaml").write_text(sc.to_yaml())
        agents_dir = self.out / "agents"
        agents_dir.mkdir(exist_ok=True)
        for name, doc in self.documents.items():
            (agents_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        write_csv(raw / "timeline.csv", TIMELINE_COLUMNS, self.timeline_rows)
        write_events(raw / "events.jsonl", ((name, a.events) for name, a in self.agents.items()))
        write_json(raw / "steering.json", {name: a.steering_plan() for name, a in self.agents.items()})
        if self.tcp:
            write_csv(raw / "tcp.csv", TCP_COLUMNS, self.tcp)
        if self.http:
            write_csv(raw / "http.csv", HTTP_COLUMNS, self.http)
        packet_flows = []
        for f in self.flows:
            if f.udp:
                if len(f.recv_ns) != f.sent:
                    f.allocate()       # never started (cannot happen: flows start before the end)
                sent = self.t0_ns + np.round(f.send_times() * tr.NS).astype(np.int64)
                packet_flows.append((f.name, sent, np.frombuffer(f.recv_ns, dtype=np.int64),
                                     np.frombuffer(f.path_no, dtype=np.int16).astype(np.int64), f.path_names))
        write_packets(raw / "packets.csv", packet_flows)
        flows = [{"name": f.name, "type": f.type, "class": f.cls, "src_site": f.src_site, "dst_site": f.dst_site,
                  "dst_port": f.key.dst_port, "rate_pps": f.plan.rate * f.plan.burst if f.udp else None,
                  "start_s": f.start_s, "stop_s": f.stop_s, "sent": f.sent, "policy": f.policy} for f in self.flows]
        links = [{"link": f"{s.name}.{u.name}",
                  "paths": [p.id for p in self.agents[s.name].paths.values() if p.uplink == u.name]}
                 for s in sc.sites for u in s.uplinks]
        sim = {"mode": self.mode, "warmup_s": self.warmup_s, "sample_period_s": self.sample_period_s,
               "steering_latency_s": self.options.steering_latency_s, "drain_s": self.drain_s(),
               "agent_startup_s": {name: a.startup_s for name, a in self.agents.items()}}
        extra: dict[str, Any] = {"sim": sim}
        mesh = mesh_doc(sc, -self.warmup_s)
        if mesh is not None:
            extra["mesh"] = mesh
        write_json(raw / "run.json", run_document(sc, backend="sim", impairment_backend="model",
                                                  started_at=T0 - SAMPLE_LEAD_S, t0=T0, flows=flows, links=links,
                                                  **extra))


def run_sim(scenario: Scenario, out: Path, *, mode: str = "auto", progress: Callable[[str], None] | None = None,
            options: SimOptions | None = None) -> int:
    """Simulate `scenario`, write `out/raw/*` and the reports; 0 when every expectation holds, else 1.

    Raises ConfigError for a bad `mode` (before anything is written)."""
    from emulation.report import write_reports

    sim = Simulation(scenario, Path(out), mode, options, progress)
    sim.progress(f"simulating {scenario.name}: {len(scenario.sites)} sites, "
                 f"{sum(len(a.paths) for a in sim.agents.values())} paths, {len(sim.flows)} flows, "
                 f"{sim.mode} mode")
    sim.run()
    sim.progress("writing the raw data")
    sim.write_raw()
    sim.progress("analysing, writing the reports")
    summary = write_reports(sim.out)
    return 0 if summary.passed else 1
