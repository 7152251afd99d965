"""The run's `patronus agent` processes, one per site router: their site files and keys, starting,
stopping and restarting them (the timeline's agent steps), their API over the management links, and
the waits before a scenario's clock starts (every path Up, every tunnel handshaken, the agents settled,
their RTTs close to the scenario's).

Agents are owned by pid: a stop is a signal to the recorded process, never a kill by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from emulation import rttcheck
from emulation.backends.mininet.net import MininetNet
from emulation.backends.mininet.procs import AGENT_NICE, RT_REFLECTOR, RunError, popen
from emulation.org import Org
from emulation.scenario.model import Scenario
from emulation.siteconf import API_PORT, site_document
from emulation.wait import wait_for
from patronus.agent.config import MESH_PORT
from patronus.agent.keys import generate_private_key, public_key
from patronus.core.mesh import Member, peer_map


class Agents:
    """Every site's agent of one run, in `out/agents/` (SITE.yaml, SITE.key, SITE.log, SITE.state/)."""

    def __init__(self, scenario: Scenario, net: MininetNet, directory: Path, token: str) -> None:
        self.sc = scenario
        self.net = net
        self.dir = directory
        self.token = token
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.keys: dict[str, str] = {}
        self.org: Org | None = None           # with a `mesh:` section: the run's organisation (emulation.org)
        self.spawned_at: float | None = None  # when the first agents were started (wall time)
        self.stopped: set[str] = set()        # stopped by the timeline, on purpose
        self.earlier_events: dict[str, list[dict[str, Any]]] = {}   # what agents said before the timeline stopped them
        # the run's own tunnel names (pt<run><site id>p<n>): wireguard-go's control sockets are shared by
        # every namespace, so a dead or kept run's tunnels must not have ours' names
        self.if_prefix = f"pt{net.run}"

    # -- the API -----------------------------------------------------------------------------------

    def api_base(self, site: str) -> str:
        return f"http://{self.net.sites[site].mgmt_ip}:{API_PORT}/api/v1"

    def api(self, site: str, path: str) -> Any:
        r = httpx.get(self.api_base(site) + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    def paths_of(self, site: str) -> list[dict[str, Any]]:
        """`site`'s paths, or none if its agent does not answer."""
        try:
            return list(self.api(site, "/paths"))
        except (httpx.HTTPError, ValueError):
            return []

    # -- site files, start, stop -------------------------------------------------------------------

    def config(self, site: str) -> Path:
        return self.dir / f"{site}.yaml"

    def site_file(self, site: str, agent: dict[str, Any], remotes: list[str]) -> dict[str, Any]:
        """The site file of `site`'s agent (emulation.siteconf builds it the same way for every backend);
        with a `mesh:` section, no remote and the site's `mesh:` (its certificate from the run's org)."""
        uplink_addr = {n: dict(s.uplink_addr) for n, s in self.net.sites.items()}
        doc = site_document(self.sc, site, uplink_addr=uplink_addr,
                            public_keys={r: public_key(self.keys[r]) for r in remotes},
                            agents_dir=self.dir, api_listen=f"{self.net.sites[site].mgmt_ip}:{API_PORT}",
                            token=self.token, remotes=remotes, agent=agent, probe_realtime=RT_REFLECTOR,
                            interface_prefix=self.if_prefix)
        mesh = self.sc.mesh
        if mesh is not None and self.org is not None:
            me = self.sc.site(site)
            seeds = [f"{uplink_addr[s][self.sc.site(s).uplinks[0].name][0]}:{MESH_PORT}" for s in mesh.seeds
                     if s != site]
            doc["mesh"] = self.org.mesh_section(site, seeds=seeds, extra={
                "topology": mesh.topology.as_dict(), "timers": mesh.timers.to_dict(),
                **({"region": me.region} if me.region else {})})
        return doc

    def start(self, agents: dict[str, dict[str, Any]], remotes: dict[str, list[str]]) -> None:
        """A key and a site file for every site, then its agent (`agents`: each site's agent settings); a
        mesh site that joins later (`site_join`) gets its files now and its agent then (`join`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for site in self.net.sites:
            key = self.dir / f"{site}.key"
            self.keys[site] = generate_private_key()
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.keys[site] + "\n")
        if self.sc.mesh is not None:
            self.org = Org.create(self.dir / "org", "testbed")
            for s in self.sc.sites:
                self.org.site(s.name, s.id, public_key(self.keys[s.name]), [s.lan_prefix])
        self.spawned_at = time.time()
        for site in self.net.sites:
            self.config(site).write_text(yaml.safe_dump(self.site_file(site, agents.get(site, {}), remotes[site]),
                                                        sort_keys=False))
            if self.sc.present_at_start(site):
                self.launch(site)

    def expected_paths(self) -> dict[str, int]:
        """How many paths each running agent should have: its remotes' (the scenario's, or with a mesh the
        topology's peers among the running sites) endpoints times its uplinks."""
        up = {s.name: len(s.uplinks) for s in self.sc.sites}
        mesh = self.sc.mesh
        if mesh is None:
            return {s: up[s] * sum(up[r] for r in self.sc.remotes_of(s)) for s in self.procs}
        live = [s for s, p in self.procs.items() if p.poll() is None]
        pm = peer_map({s: Member(self.sc.site(s).region) for s in live}, mesh.topology)
        return {s: up[s] * sum(up[r] for r in pm.get(s, ())) for s in live}

    def join(self, site: str) -> None:
        """A mesh site comes up (`site_join`): its agent, on the site file written at the start."""
        self.stopped.discard(site)
        self.launch(site)

    def leave(self, site: str) -> None:
        """A mesh site leaves (`site_leave`): its agent says so, stops and removes its dataplane (SIGUSR2)."""
        self.stopped.add(site)
        p = self.procs[site]
        if p.poll() is None:
            self._keep_events(site)
            p.send_signal(signal.SIGUSR2)
            p.wait(20)

    def launch(self, site: str) -> None:
        """`site`'s agent on its site file as it is (`agent_start` too: it adopts what a graceful stop left)."""
        self.procs[site] = popen(self.net.ns(self.net.sites[site].router),
                                 [sys.executable, "-m", "patronus.cli", "agent", "--config", str(self.config(site))],
                                 self.dir / f"{site}.log", nice=AGENT_NICE)

    def down(self) -> str | None:
        """Why an agent is gone (its exit code and the end of its log), or None while every one runs."""
        for site, p in self.procs.items():
            if p.poll() is not None:
                log = (self.dir / f"{site}.log").read_text(errors="replace")[-2000:]
                return f"agent {site} exited with {p.returncode}:\n{log}"
        return None

    def stopped_on_purpose(self) -> bool:
        return all(s in self.stopped for s, p in self.procs.items() if p.poll() is not None)

    def apply(self, site: str, running: bool, cleanup: bool) -> None:
        """A timeline's agent step: start `site`'s agent again, or stop it: gracefully (SIGTERM: the
        dataplane stays, the next start adopts it) or, with cleanup, SIGUSR1 (the agent removes its
        tunnels, steering and reflector as it stops)."""
        if running:
            self.stopped.discard(site)
            self.launch(site)
            return
        self.stopped.add(site)
        p = self.procs[site]
        if p.poll() is None:
            self._keep_events(site)
            p.send_signal(signal.SIGUSR1 if cleanup else signal.SIGTERM)
            p.wait(20)
        elif cleanup:              # stopped gracefully before: remove what it left
            subprocess.run(["ip", "netns", "exec", self.net.ns(self.net.sites[site].router), sys.executable, "-m",
                            "patronus.cli", "cleanup", "--config", str(self.config(site))],
                           capture_output=True, timeout=30)

    def stop_all(self) -> None:
        """Stop every agent and remove its dataplane: SIGUSR1 (stop and clean up) to those running, then
        `patronus cleanup` for any site whose agent left one (stopped gracefully by the timeline, or
        gone): its wireguard-go and reflector processes would outlive the namespaces."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        cleaners = [popen(self.net.ns(self.net.sites[site].router),
                          [sys.executable, "-m", "patronus.cli", "cleanup", "--config", str(self.config(site))])
                    for site in self.procs if (self.dir / f"{site}.state" / "dataplane.json").exists()]
        for c in cleaners:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.pid, signal.SIGKILL)
                c.wait(5)

    # -- before the clock starts -------------------------------------------------------------------

    def _raise_if_down(self) -> None:
        err = self.down()
        if err:
            raise RunError(err)

    def wait_ready(self, timeout_s: float) -> None:
        """Every agent's paths are Up and lossless, as many as it should have (an agent that exits meanwhile
        fails the run; with a mesh, the paths appear as the sites find each other)."""
        pending = set(self.procs)
        want = self.expected_paths()

        def ready() -> bool:
            self._raise_if_down()
            for site in list(pending):
                try:
                    ps = self.api(site, "/paths")
                except (httpx.HTTPError, ValueError):
                    continue
                if ps and len(ps) >= want.get(site, 0) and all(p["status"] == "up" and p["loss_pct"] == 0
                                                               for p in ps):
                    pending.discard(site)
            return not pending
        wait_for(ready, timeout_s, lambda: f"paths not all Up after {timeout_s:g} s at: {', '.join(sorted(pending))}",
                 interval_s=0.1, error=RunError)

    def wait_tunnels(self, timeout_s: float) -> None:
        """Every WireGuard tunnel of every agent has completed a handshake (a run measures failovers,
        not the first handshake of a backup tunnel nobody had used yet)."""
        pending = {s.name: s.id for s in self.sc.sites if s.name in self.procs}

        def handshaken() -> bool:
            for site, sid in list(pending.items()):
                out = subprocess.run(["ip", "netns", "exec", self.net.ns(self.net.sites[site].router), "wg", "show",
                                      "all", "latest-handshakes"], capture_output=True, text=True).stdout
                mine = f"{self.if_prefix}{sid}p"
                stamps = [int(line.split()[-1]) for line in out.splitlines() if line.startswith(mine)]
                if stamps and all(t > 0 for t in stamps):
                    del pending[site]
            return not pending
        wait_for(handshaken, timeout_s, lambda: f"WireGuard tunnels without a handshake after {timeout_s:g} s at: "
                                                f"{', '.join(sorted(pending))}", interval_s=0.2, error=RunError)

    def wait_settled(self, timeout_s: float) -> bool:
        """The steady state a scenario starts from: every path Up, no failback waiting to happen, and
        no path status or steering change for longer than the longest probe window (plus 1 s; plus
        the failback hold while a slot is away from its first path). Agents
        that start together often move a slot on their first probes (a slow first reply through a
        fresh tunnel, one loss); it comes back once its path has been clean for the failback hold,
        and starting the clock before would count that return as the scenario's path change. Returns
        False if the deadline passed first (the run goes on, and says so)."""
        quiet_s = max((s.agent.monitor.window * s.agent.monitor.interval_s for s in self.sc.sites), default=0.0) + 1.0
        hold_s = max((s.agent.router.failback_hold_s for s in self.sc.sites), default=0.0)

        def settled() -> bool:
            self._raise_if_down()
            last = 0.0
            displaced = False
            for site in self.procs:
                try:
                    info, ps = self.api(site, "/site"), self.api(site, "/paths")
                except (httpx.HTTPError, ValueError):
                    return False
                if info.get("pending_failbacks", 0) or not all(p["status"] == "up" for p in ps):
                    return False
                displaced = displaced or bool(info.get("displaced_slots", 0))
                last = max([last, info.get("last_steering_change") or 0.0] +
                           [p.get("status_since") or 0.0 for p in ps])
            # a slot still away from its first path may be waiting for its origin to look clean again
            # (a loss in the window) before its failback hold even starts: give it the hold as well
            return time.time() - last >= quiet_s + (hold_s if displaced else 0.0)
        try:
            wait_for(settled, max(timeout_s, 3 * (quiet_s + hold_s)), "the agents to settle", interval_s=0.2)
        except TimeoutError:
            return False
        return True

    def check_rtts(self, progress: Callable[[str], None]) -> dict[str, Any]:
        """The agents' RTTs against the scenario's delays (emulation.rttcheck): far off, the run would
        measure the host, not the network it describes: refuse (RunError); off, say so. Returns the
        check's summary (raw/platform.json's `rtt_check`)."""
        measured = [{**p, "site": site} for site in self.procs for p in self.paths_of(site)]
        checks = rttcheck.check(measured, rttcheck.expected_rtts(self.sc))
        summary = rttcheck.summary(checks)
        bad = [c for c in checks if c.level == "refuse"]
        if bad:
            raise RunError("the emulated network is far from the scenario before the clock starts (agents' RTTs; "
                           f"allowed {bad[0].refuse_ms:.1f} ms off for the first):\n  "
                           + "\n  ".join(c.describe() for c in bad[:10]))
        for c in checks:
            if c.level in ("warn", "unmeasured"):
                progress(f"warning: {c.describe()}; beyond the {c.warn_ms:.1f} ms the check allows")
        return summary

    # -- at the end --------------------------------------------------------------------------------

    def collect(self) -> tuple[list[tuple[str, list[dict[str, Any]]]], dict[str, Any], dict[tuple[str, str], str]]:
        """Each agent's events, the steering plan its dataplane follows at the end, and (site, interface)
        → path id: what the raw data needs from the agents (an agent that does not answer gives none)."""
        events: list[tuple[str, list[dict[str, Any]]]] = []
        plans: dict[str, Any] = {}
        if_to_path: dict[tuple[str, str], str] = {}
        for site in self.net.sites:
            now: list[dict[str, Any]] = []
            with contextlib.suppress(httpx.HTTPError, ValueError):
                now = list(self.api(site, "/events?limit=10000"))
            if site in self.earlier_events or now:
                events.append((site, self.earlier_events.get(site, []) + now))
            with contextlib.suppress(httpx.HTTPError, ValueError):
                plans[site] = self.api(site, "/steering")
        for site in self.net.sites:
            with contextlib.suppress(Exception):
                for p in self.api(site, "/paths"):
                    if_to_path[(site, p["interface"])] = p["id"]
        return events, plans, if_to_path

    def _keep_events(self, site: str) -> None:
        """The events of an agent the timeline is about to stop (a stopped agent answers nothing at the end,
        and a new one starts with none): kept for `collect`."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            self.earlier_events.setdefault(site, []).extend(self.api(site, "/events?limit=10000"))

    def timeline_row(self, at_s: float, site: str, running: bool, cleanup: bool,
                     action: str | None = None) -> list[Any]:
        """timeline.csv's row of an agent step (or a membership step: `action`) applied now."""
        return [at_s, round(time.time(), 6), action or ("agent_start" if running else "agent_stop"), site,
                json.dumps({"cleanup": cleanup}) if not running and action is None else "{}"]
