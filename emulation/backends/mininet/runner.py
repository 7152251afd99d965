"""`patronus-lab run`: a scenario end to end on the Mininet backend.

Build the network (sites, LAN hosts, impaired uplinks, core) → write each site's agent file and
start real `patronus agent` processes in the site routers → wait until every path is Up and every
tunnel has a handshake → start receivers, taps and senders → play the timeline at its times
(recording when each change took effect) while sampling every agent's paths → stop traffic →
collect events → tear everything down (always, in `finally`, unless `--keep`) → write the raw data
(`raw/`) and the reports.

The runner orchestrates; the parts are the package's other modules: `net` (the namespaces), `agents`,
`traffic`, `sampler` and `raw` (the raw data). It owns processes by pid and namespaces by name
(`pt<run>-*`); nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulation import runs
from emulation.backends.mininet.agents import Agents
from emulation.backends.mininet.net import MininetNet, NetSpec, SiteSpec, UplinkSpec, clean_run
from emulation.backends.mininet.procs import RELAY_NICE, RT_RELAY, RT_STALLWATCH, RunError
from emulation.backends.mininet.raw import Collected, write_platform, write_raw, write_stalls
from emulation.backends.mininet.sampler import Sampler
from emulation.backends.mininet.traffic import Traffic, linger_s, plan_flows
from emulation.links.settings import impairment_of
from emulation.platform import CpuWatch
from emulation.scenario.model import Scenario
from emulation.scenario.timeline import schedule
from emulation.siteconf import API_PORT, expectations_doc, mesh_doc
from emulation.stallwatch import StallWatch

__all__ = ["RunError", "Runner"]

TOKEN_BYTES = 24
SETTLE_TIMEOUT_S = 60.0     # at least; three times (probe window + 1 s + failback hold) if that is longer
SENDER_LEAD_S = 1.5          # a UDP sender starts this long before its flow and waits for the instant:
                             # a Python process in a namespace takes ~0.5 s to start on a busy 2-core host
SAMPLE_LEAD_S = 0.5          # sampling starts this long before the clock's 0 (run.json: started_at = t0 - 0.5)

Action = tuple[float, int, str, Callable[[], None]]     # (scenario time, order, label, what to do)


class Runner:
    def __init__(self, scenario: Scenario, out: Path, *, keep: bool = False, impairment_backend: str = "auto",
                 progress: Callable[[str], None] | None = None,
                 clock: Callable[[float, float, str], None] | None = None) -> None:
        self.sc = scenario
        self.out = Path(out)
        self.raw = self.out / "raw"
        self.keep = keep
        self.progress = progress or (lambda msg: None)
        self.clock = clock or (lambda t, total, nxt: None)     # scenario time, for a progress bar
        self.run_id = ""                         # claimed when the run starts (emulation.runs)
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.net: MininetNet | None = None
        self.agents: Agents | None = None
        self.traffic = Traffic([], self.raw)
        self.links: dict[str, Any] = {}          # "site.uplink" -> relay/netem link handle
        self.timeline_rows: list[list[Any]] = []
        self.t0 = 0.0
        self.impairment_backend = impairment_backend
        self.started_at = 0.0
        self.rtt_summary: dict[str, Any] | None = None
        self.sampler: Sampler | None = None
        self.watch = StallWatch(realtime=RT_STALLWATCH)
        self.cpu = CpuWatch(os.getpid(), self.relay_counters)

    # -- plan, links -------------------------------------------------------------------------------

    def plan(self) -> NetSpec:
        sc = self.sc
        self.traffic = Traffic(plan_flows(sc), self.raw, linger_s(sc))
        return NetSpec(run=self.run_id, impairment_backend=self.impairment_backend, sites=tuple(
            SiteSpec(s.name, s.id, s.lan_prefix, s.hosts,
                     tuple(UplinkSpec(u.name, u.bandwidth_bps, u.cost_per_gb) for u in s.uplinks))
            for s in sc.sites))

    def start_links(self) -> None:
        from emulation.links import make_link

        net = self._net()
        logs = self.out / "links"          # each relay's stderr: what a relay that died said
        for site in self.sc.sites:
            nodes = net.sites[site.name]
            for u in site.uplinks:
                imp = impairment_of(u.baseline())
                if self.impairment_backend == "relay":
                    ns = net.ns(nodes.relay_node[u.name])
                    logs.mkdir(exist_ok=True)
                    link = make_link("relay", ns_x=ns, if_x="x", ns_y=ns, if_y="y", seed=self.sc.seed + len(self.links),
                                     impairment_xy=imp, impairment_yx=imp, tag=f"pt{self.run_id}",
                                     nice=RELAY_NICE, realtime=RT_RELAY, log_path=logs / f"{site.name}.{u.name}.log")
                else:
                    link = make_link("netem", ns_x=net.ns(nodes.router), if_x=u.name, ns_y=net.ns(net.core),
                                     if_y=f"s{nodes.number}-{u.name}", seed=self.sc.seed + len(self.links),
                                     impairment_xy=imp, impairment_yx=imp)
                link.start()
                self.links[f"{site.name}.{u.name}"] = link

    def stop_links(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.stop()
        self.links.clear()

    def relay_counters(self) -> dict[str, dict[str, Any]]:
        """Every relay's cumulative counters (the platform watch reads their lateness each second)."""
        from emulation.links.relay import RelayLink

        return {name: link.counters() for name, link in list(self.links.items()) if isinstance(link, RelayLink)}

    def detach_links(self) -> dict[str, str]:
        """--keep: the relays must outlive the runner; each moves its control to a Unix socket."""
        from emulation.links.relay import RelayLink

        out = {}
        for name, link in self.links.items():
            if isinstance(link, RelayLink) and link.proc is not None:
                out[name] = link.detach()
        return out

    def _net(self) -> MininetNet:
        assert self.net is not None
        return self.net

    def _agents(self) -> Agents:
        assert self.agents is not None
        return self.agents

    # -- the run -----------------------------------------------------------------------------------

    def execute(self) -> int:
        """Run the scenario; returns the exit code (0 pass, 1 an expectation failed)."""
        from emulation.links import choose_backend

        if self.impairment_backend == "auto":
            self.impairment_backend, why = choose_backend("auto")
            self.progress(f"note: impairment backend {self.impairment_backend} ({why})")
        removed = runs.remove_dead(clean_run, kept_too=False)
        if removed:
            self.progress(f"note: removed what dead runs left ({len(removed)} items: "
                          f"{'; '.join(removed[:3])}{' ...' if len(removed) > 3 else ''})")
        self.run_id = runs.claim("run", str(self.out))
        spec = self.plan()
        self.out.mkdir(parents=True, exist_ok=True)
        self.raw.mkdir(parents=True, exist_ok=True)
        (self.out / "scenario.yaml").write_text(self.sc.to_yaml())
        try:
            self.bring_up(spec)
            self.progress("starting traffic")
            self.traffic.start_receivers(self._net())
            self.sampler = Sampler({s: self._agents().api_base(s) for s in self._net().sites}, self.token)
            self.play(self.actions())
            self.progress("stopping traffic, collecting data")
            self.collect()
        finally:
            self.shut_down()
        from emulation.report import report_command

        return report_command(self.out)

    def bring_up(self, spec: NetSpec) -> None:
        """The network, its links and the agents, up and settled, their RTTs checked."""
        self.progress(f"building {len(spec.sites)} sites (run {self.run_id})")
        self.net = MininetNet(spec).build()
        self.start_links()
        self.progress("starting agents (network built)")
        self.agents = Agents(self.sc, self.net, self.out / "agents", self.token)
        self.agents.start({s.name: s.agent.to_dict() for s in self.sc.sites},
                          {s.name: list(self.sc.remotes_of(s.name)) for s in self.sc.sites})
        self.agents.wait_ready(90)
        self.agents.wait_tunnels(60)
        self.progress("agents ready, every tunnel up; letting them settle")
        if not self.agents.wait_settled(SETTLE_TIMEOUT_S):
            self.progress(f"warning: agents not settled after {SETTLE_TIMEOUT_S:g} s (a path not Up, or "
                          "paths or steering still changing); starting anyway")
        self.rtt_summary = self.agents.check_rtts(self.progress)

    def actions(self) -> list[Action]:
        """What happens when, in scenario time: the clock's 0 is planned ahead (now + SENDER_LEAD_S): a UDP
        sender is started SENDER_LEAD_S before its flow's start and sends from that instant (`--start-at`);
        sampling starts SAMPLE_LEAD_S before 0; timeline steps after the flows of their instant."""
        net = self._net()
        self.t0 = time.time() + SENDER_LEAD_S
        actions: list[Action] = []
        for i, f in enumerate(self.traffic.flows):
            actions.append((f.start_s - SENDER_LEAD_S if f.udp else f.start_s, i, f"start {f.name}",
                            lambda f=f: self.traffic.start_sender(net, f, self.t0)))  # type: ignore[misc]
        for j, step in enumerate(schedule(self.sc)):
            label = f"{self.sc.timeline[step.event].action} {step.link if hasattr(step, 'link') else step.site}"
            actions.append((step.at_s, 10_000 + j, label,
                            lambda st=step: self.apply_step(st)))  # type: ignore[misc]
        actions.append((-SAMPLE_LEAD_S, -1, "sampling", self.start_watching))
        actions.sort(key=lambda a: (a[0], a[1]))
        return actions

    def start_watching(self) -> None:
        assert self.sampler is not None
        self.sampler.start()
        self.watch.start()
        self.cpu.start()
        self.started_at = time.time()

    def play(self, actions: list[Action]) -> None:
        """Each action at its instant (an agent that exits, unless the timeline stopped it, fails the run),
        then wait for the scenario's end."""
        agents = self._agents()
        total = self.sc.duration_s
        self.progress(f"running the timeline ({len(self.sc.timeline)} events, {total:g} s)")
        for at_s, _, label, act in actions:
            due = self.t0 + at_s
            while time.time() < due:
                self.clock(max(0.0, time.time() - self.t0), total, f"{label} at {max(0.0, at_s):g} s")
                time.sleep(min(0.05, due - time.time()))   # waiting for the scheduled instant
            err = agents.down()
            if err and not agents.stopped_on_purpose():
                raise RunError(err)
            act()
        end = self.t0 + total
        while time.time() < end:
            self.clock(time.time() - self.t0, total, "end")
            time.sleep(min(0.2, end - time.time()))       # waiting for the scenario's end
        self.clock(total, total, "")

    def apply_step(self, step: Any) -> None:
        from emulation.scenario.timeline import AgentStep, MembershipStep

        if isinstance(step, MembershipStep):
            agents = self._agents()
            (agents.join if step.joins else agents.leave)(step.site)
            self.timeline_rows.append(agents.timeline_row(step.at_s, step.site, step.joins, not step.joins,
                                                          "site_join" if step.joins else "site_leave"))
            return
        if isinstance(step, AgentStep):
            self._agents().apply(step.site, step.running, step.cleanup)
            self.timeline_rows.append(self._agents().timeline_row(step.at_s, step.site, step.running, step.cleanup))
            return
        link = self.links[str(step.link)]
        ns = link.set("both", impairment_of(step.settings))
        action = self.sc.timeline[step.event].action
        self.timeline_rows.append([step.at_s, round(ns / 1e9, 6), action, str(step.link),
                                   json.dumps({"changed": list(step.changed), "up": step.settings.up,
                                               "delay_ms": step.settings.delay_s * 1e3,
                                               "loss": step.settings.loss_ratio}, sort_keys=True)])

    def collect(self) -> None:
        """Stop the traffic and the watchers, then write the raw data."""
        from emulation.links.relay import RelayLink

        agents, sampler = self._agents(), self.sampler
        assert sampler is not None
        self.traffic.finish()
        sampler.stop()
        stalls = self.watch.stop()
        write_stalls(self.raw, self.sc, stalls, self.t0, self.progress)
        write_platform(self.raw, self.cpu.stop(), [ms for _, ms in stalls], self.t0,
                       [link.sched for link in self.links.values() if isinstance(link, RelayLink)], self.rtt_summary)
        links = [{"link": f"{s.name}.{u.name}",
                  "paths": [p["id"] for p in agents.paths_of(s.name) if p["uplink"] == u.name]}
                 for s in self.sc.sites for u in s.uplinks]
        events, plans, if_to_path = agents.collect()
        got = Collected(sampler=sampler, timeline_rows=self.timeline_rows, events=events, plans=plans,
                        if_to_path=if_to_path, expectations=expectations_doc(self.sc, "mininet"), links=links)
        spawned = agents.spawned_at if agents.spawned_at is not None else self.t0
        write_raw(self.raw, self.sc, self._net(), self.traffic.flows, got,
                  impairment_backend=self.impairment_backend, started_at=self.started_at, t0=self.t0,
                  mesh=mesh_doc(self.sc, spawned - self.t0))

    # -- the end -----------------------------------------------------------------------------------

    def shut_down(self) -> None:
        """The watchers and traffic first, each on its own (none of them may keep the network up), then
        the network: torn down, or kept with --keep."""
        sampler = self.sampler
        for what, stop in (("stall watcher", self.watch.stop), ("platform watch", self.cpu.stop),
                           ("sampler", sampler.stop if sampler is not None and sampler.is_alive() else None),
                           ("traffic", self.traffic.kill_all)):
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:
                self.progress(f"warning: stopping the {what} failed ({type(exc).__name__}: {exc}); "
                              "tearing down anyway")
        if self.keep and self.net is not None:
            sockets = self.detach_links()
            runs.mark_kept(self.run_id)
            self.progress(self.keep_message(sockets))
        else:
            self.progress("tearing down")
            t = time.monotonic()
            self.teardown()
            runs.release(self.run_id)
            self.progress(f"note: torn down in {time.monotonic() - t:.2f} s")

    def keep_message(self, sockets: dict[str, str] | None = None) -> str:
        net = self._net()
        lines = [f"network kept up (run {self.run_id}); remove it with: patronus-lab clean --run {self.run_id}"]
        for s, n in net.sites.items():
            lines.append(f"  {s}: ip netns exec {net.ns(n.router)} bash   (agent API http://{n.mgmt_ip}:{API_PORT}, "
                         f"token in {self.out / 'agents' / (s + '.yaml')})")
        for link, path in sorted((sockets or {}).items()):
            lines.append(f"  link {link}: relay control socket {path} (JSON lines: {{\"counters\": true}}, "
                         f"{{\"set\": ...}})")
        return "\n".join(lines)

    def teardown(self) -> None:
        if self.agents is not None:
            self.agents.stop_all()
            self.agents = None
        self.stop_links()
        if self.net is not None:
            self.net.teardown()
            self.net = None
