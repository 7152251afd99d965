"""`patronus-lab run`: a scenario end to end on the Mininet backend.

Build the network (sites, LAN hosts, impaired uplinks, core) → write each site's agent file and
start real `patronus agent` processes in the site routers → wait until every path is Up and every
tunnel has a handshake → start receivers, taps and senders → play the timeline at its times
(recording when each change took effect) while sampling every agent's paths → stop traffic →
collect events → tear everything down (always, in `finally`, unless `--keep`) → write the raw data
(`raw/`) and the reports.

The runner owns processes by pid and namespaces by name (`pt<run>-*`); nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from emulation import rttcheck
from emulation.backends.mininet_net import MininetNet, NetSpec, SiteSpec, UplinkSpec
from emulation.links.settings import impairment_of
from emulation.platform import CpuWatch, PlatformLog
from emulation.platform import summarize as summarize_platform
from emulation.platform import write_csv as write_platform_csv
from emulation.rawfiles import (
    HTTP_COLUMNS,
    PACKET_COLUMNS,
    PATH_METRIC_COLUMNS,
    TCP_COLUMNS,
    TIMELINE_COLUMNS,
    run_document,
    write_csv,
    write_events,
    write_json,
)
from emulation.scenario.timeline import schedule
from emulation.siteconf import expectations_doc, site_document
from emulation.stallwatch import REPORT_MS, StallWatch
from emulation.traffic.plan import traffic_plan
from emulation.wait import wait_for
from patronus.agent.keys import generate_private_key, public_key

API_PORT = 8470          # every agent's API, on its site's management address

TOKEN_BYTES = 24
# Scheduling on a shared host: every site, every ISP and every application host of a scenario shares
# two cores here, where in the world each is a box of its own. What stands for the wire and for the
# hosts' network stacks must not wait for a CPU, or the run measures this host's scheduler, not the
# SD-WAN: a relay that waits delays every packet on its link, a reflector that waits adds its wait to
# every peer's RTT, a sender that wakes late leaves a gap in its flow. So those run SCHED_FIFO
# (patronus.agent.sched; they sleep between packets and do little per packet), in this order: the
# stall watcher above everything it measures, then the relays, the reflectors, the UDP traffic. The
# agents (the system under test) stand for dedicated router boxes and go ahead of the rest at nice -5;
# bulk TCP, web traffic, taps and the runner take what is left. Without this, healthy paths of the
# brownout scenario went Down when the host was busy, and a voice flow on a clean path showed
# one-way delays of 250 ms.
SETTLE_TIMEOUT_S = 60.0     # at least; three times (probe window + 1 s + failback hold) if that is longer
SENDER_LEAD_S = 1.5          # a UDP sender starts this long before its flow and waits for the instant:
                             # a Python process in a namespace takes ~0.5 s to start on a busy 2-core host
SAMPLE_LEAD_S = 0.5          # sampling starts this long before the clock's 0 (run.json: started_at = t0 - 0.5)
RT_STALLWATCH = 70
RT_RELAY = 50
RT_REFLECTOR = 40
RT_TRAFFIC = 30
RELAY_NICE = -10            # where the kernel refuses a real-time class
AGENT_NICE = -5


class RunError(RuntimeError):
    """The run could not be carried out (exit code 2)."""


@dataclass
class FlowPlan:
    name: str
    type: str
    cls: str
    src_site: str
    src_host: int
    dst_site: str
    dst_host: int
    dst_port: int
    sport: int
    start_s: float
    stop_s: float
    rate: float = 1000.0          # ticks per second
    size: int = 64
    burst: int = 1
    interval_s: float = 1.0       # http
    bandwidth_bps: float = 0.0    # tcp_bulk cap (0 = none)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sent: int = 0

    @property
    def udp(self) -> bool:
        return self.type in ("udp_cbr", "voip", "video")


class Sampler(threading.Thread):
    """Polls every agent's /paths (and, at the end, /events) from the host over the management links."""

    def __init__(self, apis: dict[str, str], token: str, period_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="patronus-lab-sampler")
        self.apis = apis
        self.h = {"Authorization": f"Bearer {token}"}
        self.period_s = period_s
        self.rows: list[list[Any]] = []
        # (site, src_ip, dst_ip, protocol, dst_port) -> policy name -> times seen in the agent's flow table
        self.policies: dict[tuple[str, str, str, int, int], Counter[str]] = {}
        self.stop_event = threading.Event()
        self.client = httpx.Client(headers=self.h, timeout=2.0)

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            t = time.time()
            if n % max(1, round(1.0 / self.period_s)) == 0:
                self.sample_flows()
            n += 1
            for site, base in self.apis.items():
                try:
                    ps = self.client.get(base + "/paths").json()
                except (httpx.HTTPError, ValueError):
                    continue
                for p in ps:
                    self.rows.append([site, p["id"], round(t, 4), p["status"], p["latency_ms"], p["jitter_ms"],
                                      p["loss_pct"], p["score"], p["probes_sent"], p["probes_timed_out"]])
            self.stop_event.wait(self.period_s)   # the sampling period, interruptible by stop()

    def sample_flows(self) -> None:
        """Which policy classified which connection, from each agent's flow table (about once a second)."""
        for site, base in self.apis.items():
            try:
                fs = self.client.get(base + "/flows").json()
            except (httpx.HTTPError, ValueError):
                continue
            for f in fs if isinstance(fs, list) else []:
                with contextlib.suppress(KeyError, TypeError):
                    key = (site, f["src_ip"], f["dst_ip"], int(f["protocol"]), int(f["dst_port"]))
                    self.policies.setdefault(key, Counter())[str(f["policy"])] += 1

    def policy_of(self, site: str, src_ip: str, dst_ip: str, protocol: int, dst_port: int) -> str | None:
        seen = self.policies.get((site, src_ip, dst_ip, protocol, dst_port))
        return seen.most_common(1)[0][0] if seen else None

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.client.close()


class Runner:
    def __init__(self, scenario: Any, out: Path, *, keep: bool = False, impairment_backend: str = "auto",
                 progress: Callable[[str], None] | None = None,
                 clock: Callable[[float, float, str], None] | None = None) -> None:
        self.sc = scenario
        self.out = Path(out)
        self.raw = self.out / "raw"
        self.keep = keep
        self.progress = progress or (lambda msg: None)
        self.clock = clock or (lambda t, total, nxt: None)     # scenario time, for a progress bar
        self.run_id = secrets.token_hex(2)
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.net: MininetNet | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.keys: dict[str, str] = {}
        self.links: dict[str, Any] = {}          # "site.uplink" -> relay/netem link handle
        self.base_impairment: dict[str, Any] = {}
        self.flows: list[FlowPlan] = []
        self.helpers: list[subprocess.Popen[bytes]] = []   # receivers, taps, servers
        self.timeline_rows: list[list[Any]] = []
        self.t0 = 0.0
        self.impairment_backend = impairment_backend
        self.site_ids: dict[str, int] = {}
        self.started_at = 0.0
        self._stopped: set[str] = set()
        self.rtt_summary: dict[str, Any] | None = None

    # -- helpers -----------------------------------------------------------------------------------

    def _ns(self, node: Any) -> str:
        assert self.net is not None
        return self.net.ns(node)

    def _popen(self, ns: str, argv: list[str], log: Path | None = None, nice: int = 0) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True,
                             preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None)
        if log:
            out.close()  # type: ignore[union-attr]
        return p

    def _api(self, site: str, path: str) -> Any:
        assert self.net is not None
        r = httpx.get(f"http://{self.net.sites[site].mgmt_ip}:{API_PORT}/api/v1{path}",
                      headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    # -- agents ------------------------------------------------------------------------------------

    def site_file(self, site: str, agent: dict[str, Any], remotes: list[str]) -> dict[str, Any]:
        """The site file of `site`'s agent (emulation.siteconf builds it the same way for every backend)."""
        assert self.net is not None
        return site_document(self.sc, site, uplink_addr={n: dict(s.uplink_addr) for n, s in self.net.sites.items()},
                             public_keys={r: public_key(self.keys[r]) for r in remotes},
                             agents_dir=self.out / "agents", api_listen=f"{self.net.sites[site].mgmt_ip}:{API_PORT}",
                             token=self.token, remotes=remotes, agent=agent, probe_realtime=RT_REFLECTOR)

    def start_agents(self, agents: dict[str, dict[str, Any]], remotes: dict[str, list[str]]) -> None:
        assert self.net is not None
        (self.out / "agents").mkdir(parents=True, exist_ok=True)
        for site in self.net.sites:
            key = self.out / "agents" / f"{site}.key"
            self.keys[site] = generate_private_key()
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.keys[site] + "\n")
        for site, nodes in self.net.sites.items():
            cfg = self.out / "agents" / f"{site}.yaml"
            cfg.write_text(yaml.safe_dump(self.site_file(site, agents.get(site, {}), remotes[site]), sort_keys=False))
            self.agents[site] = self._popen(self._ns(nodes.router),
                                            [sys.executable, "-m", "patronus.cli", "agent", "--config", str(cfg)],
                                            self.out / "agents" / f"{site}.log", nice=AGENT_NICE)

    def agent_down(self) -> str | None:
        for site, p in self.agents.items():
            if p.poll() is not None:
                log = (self.out / "agents" / f"{site}.log").read_text(errors="replace")[-2000:]
                return f"agent {site} exited with {p.returncode}:\n{log}"
        return None

    def wait_ready(self, timeout_s: float) -> None:
        """Every agent's paths are Up and lossless (an agent that exits meanwhile fails the run)."""
        pending = set(self.agents)

        def ready() -> bool:
            err = self.agent_down()
            if err:
                raise RunError(err)
            for site in list(pending):
                try:
                    ps = self._api(site, "/paths")
                except (httpx.HTTPError, ValueError):
                    continue
                if ps and all(p["status"] == "up" and p["loss_pct"] == 0 for p in ps):
                    pending.discard(site)
            return not pending
        wait_for(ready, timeout_s, lambda: f"paths not all Up after {timeout_s:g} s at: {', '.join(sorted(pending))}",
                 interval_s=0.1, error=RunError)

    def wait_tunnels(self, timeout_s: float) -> None:
        """Every WireGuard tunnel of every agent has completed a handshake (a run measures failovers,
        not the first handshake of a backup tunnel nobody had used yet)."""
        net = self.net
        assert net is not None
        pending = dict(self.site_ids)

        def handshaken() -> bool:
            for site, sid in list(pending.items()):
                out = subprocess.run(["ip", "netns", "exec", self._ns(net.sites[site].router), "wg", "show",
                                      "all", "latest-handshakes"], capture_output=True, text=True).stdout
                stamps = [int(line.split()[-1]) for line in out.splitlines() if line.startswith(f"pt{sid}p")]
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
            err = self.agent_down()
            if err:
                raise RunError(err)
            last = 0.0
            displaced = False
            for site in self.agents:
                try:
                    info, ps = self._api(site, "/site"), self._api(site, "/paths")
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

    def check_rtts(self) -> None:
        """The agents' RTTs against the scenario's delays (emulation.rttcheck): far off, the run would
        measure the host, not the network it describes: refuse (RunError); off, say so."""
        measured = [{**p, "site": site} for site in self.agents for p in self._paths_of(site)]
        checks = rttcheck.check(measured, rttcheck.expected_rtts(self.sc))
        self.rtt_summary = rttcheck.summary(checks)
        bad = [c for c in checks if c.level == "refuse"]
        if bad:
            raise RunError("the emulated network is far from the scenario before the clock starts (agents' RTTs; "
                           f"allowed {bad[0].refuse_ms:.1f} ms off for the first):\n  "
                           + "\n  ".join(c.describe() for c in bad[:10]))
        for c in checks:
            if c.level in ("warn", "unmeasured"):
                self.progress(f"warning: {c.describe()}; beyond the {c.warn_ms:.1f} ms the check allows")

    def stop_agents(self) -> None:
        """Stop every agent and remove its dataplane: SIGUSR1 (stop and clean up) to those running, then
        `patronus cleanup` for any site whose agent left one (stopped gracefully by the timeline, or
        gone): its wireguard-go and reflector processes would outlive the namespaces."""
        for p in self.agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        for p in self.agents.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        if self.net is None:
            return
        cleaners = [self._popen(self._ns(self.net.sites[site].router),
                                [sys.executable, "-m", "patronus.cli", "cleanup", "--config",
                                 str(self.out / "agents" / f"{site}.yaml")])
                    for site in self.agents if (self.out / "agents" / f"{site}.state" / "dataplane.json").exists()]
        for c in cleaners:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.pid, signal.SIGKILL)
                p.wait(5)

    # -- traffic -----------------------------------------------------------------------------------

    def start_receivers(self) -> None:
        assert self.net is not None
        tdir = self.raw / "traffic"
        tdir.mkdir(parents=True, exist_ok=True)
        for f in self.flows:
            dst = self.net.sites[f.dst_site]
            ns = self._ns(dst.hosts[f.dst_host])
            if f.udp:
                ready = tdir / f"{f.name}.ready"
                f.procs.append(self._popen(ns, [sys.executable, "-m", "emulation.udpflow", "recv", "--port",
                                                str(f.dst_port), "--out", str(tdir / f"{f.name}.json"),
                                                "--ready", str(ready), "--realtime", str(RT_TRAFFIC)]))
                self._wait_file(ready, f"receiver of {f.name}")
            elif f.type == "tcp_bulk":
                f.procs.append(self._popen(ns, ["iperf3", "-s", "-p", str(f.dst_port), "-1"]))
            elif f.type == "http":
                f.procs.append(self._popen(ns, [sys.executable, "-m", "emulation.traffic.http", "serve", "--port",
                                                str(f.dst_port)]))
        # one tap per source site router, on its tunnels
        ports_by_site: dict[str, set[int]] = {}
        for f in self.flows:
            if f.udp:
                ports_by_site.setdefault(f.src_site, set()).add(f.dst_port)
        for site, ports in ports_by_site.items():
            ready = tdir / f"tap-{site}.ready"
            self.helpers.append(self._popen(self._ns(self.net.sites[site].router),
                                            [sys.executable, "-m", "emulation.traffic.tap", "--out",
                                             str(tdir / f"tap-{site}.csv"), "--ports",
                                             ",".join(str(p) for p in sorted(ports)), "--ready", str(ready)]))
            self._wait_file(ready, f"tap at {site}")

    def _wait_file(self, path: Path, what: str, timeout_s: float = 10.0) -> None:
        wait_for(path.exists, timeout_s, lambda: f"{what} did not start within {timeout_s:g} s", interval_s=0.02,
                 error=RunError)

    def start_sender(self, f: FlowPlan) -> None:
        assert self.net is not None
        src = self.net.sites[f.src_site]
        dst = self.net.sites[f.dst_site]
        ns = self._ns(src.hosts[f.src_host])
        dst_ip = dst.host_ip(f.dst_host)
        dur = f.stop_s - f.start_s
        if f.udp:
            f.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "emulation.udpflow", "send", "--to",
                 f"{dst_ip}:{f.dst_port}", "--rate", f"{f.rate:g}", "--duration", f"{dur:g}", "--sport", str(f.sport),
                 "--size", str(f.size), "--burst", str(f.burst), "--realtime", str(RT_TRAFFIC),
                 "--start-at", f"{self.t0 + f.start_s:.6f}"],
                stdout=subprocess.PIPE, start_new_session=True))
        elif f.type == "tcp_bulk":
            argv = ["iperf3", "-c", dst_ip, "-p", str(f.dst_port), "-t", f"{max(1, round(dur))}", "-J",
                    "--cport", str(f.sport)]
            if f.bandwidth_bps:
                argv += ["-b", f"{f.bandwidth_bps:.0f}"]
            f.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                            start_new_session=True))
        elif f.type == "http":
            f.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "emulation.traffic.http", "fetch", "--url",
                 f"http://{dst_ip}:{f.dst_port}/", "--interval", f"{f.interval_s:g}", "--duration", f"{dur:g}",
                 "--out", str(self.raw / "traffic" / f"{f.name}.http.csv")], start_new_session=True))

    def finish_traffic(self) -> None:
        """Wait for the senders (they stop by themselves at their stop time), then stop the receivers
        and taps so they write their records. procs[0] is a flow's receiver or server, procs[1] its
        sender or client."""
        for f in self.flows:
            if len(f.procs) < 2:
                continue
            sender = f.procs[1]
            out, _ = sender.communicate(timeout=max(60.0, f.stop_s - f.start_s + 30))
            if f.udp:
                with contextlib.suppress(ValueError, KeyError):
                    f.sent = int(json.loads(out)["sent"])
            elif f.type == "tcp_bulk":
                (self.raw / "traffic" / f"{f.name}.iperf.json").write_bytes(out or b"{}")
        for p in [f.procs[0] for f in self.flows if f.procs] + self.helpers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def kill_all(self) -> None:
        for f in self.flows:
            for p in f.procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        for p in self.helpers:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    # -- raw data ----------------------------------------------------------------------------------

    def write_packets(self) -> None:
        """packets.csv: every sent packet of every UDP flow, its arrival (or none) and its path."""
        assert self.net is not None
        tdir = self.raw / "traffic"
        if_to_path: dict[tuple[str, str], str] = {}
        for site in self.net.sites:
            with contextlib.suppress(Exception):
                for p in self._api(site, "/paths"):
                    if_to_path[(site, p["interface"])] = p["id"]
        with open(self.raw / "packets.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(PACKET_COLUMNS)
            for f in self.flows:
                if not f.udp:
                    continue
                arrivals: dict[int, tuple[int, int]] = {}
                fp = tdir / f"{f.name}.json"
                if fp.exists():
                    for seq, sent, recv in json.loads(fp.read_text())["arrivals"]:
                        arrivals.setdefault(seq, (sent, recv))
                paths: dict[int, str] = {}
                dst_ip = self.net.sites[f.dst_site].host_ip(f.dst_host)
                tap = tdir / f"tap-{f.src_site}.csv"
                if tap.exists():
                    with open(tap) as th:
                        for row in csv.DictReader(th):
                            if (row["dst_ip"] == dst_ip and int(row["dst_port"]) == f.dst_port
                                    and int(row["src_port"]) == f.sport):
                                paths[int(row["seq"])] = if_to_path.get((f.src_site, row["ifname"]), "")
                total = max(f.sent, (max(arrivals) + 1) if arrivals else 0)
                for seq in range(total):
                    sent, recv = arrivals.get(seq, (0, 0))
                    w.writerow([f.name, seq, sent or "", recv or "", paths.get(seq, "")])

    def write_stalls(self, stalls: list[tuple[float, float]]) -> None:
        """raw/host_stalls.csv: every wake-up of the stall watcher at least `REPORT_MS` late, in scenario
        seconds; and a note when one was as long as the fastest monitor's detection time."""
        self.raw.mkdir(parents=True, exist_ok=True)
        with open(self.raw / "host_stalls.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["at_s", "lag_ms"])
            w.writerows([round(at - self.t0, 3), ms] for at, ms in stalls)
        detect_ms = min(s.agent.monitor.detection_time_s for s in self.sc.sites) * 1000.0
        worst = max(stalls, key=lambda x: x[1], default=None)
        if worst is not None and worst[1] >= detect_ms:
            self.progress(f"warning: the host stalled for {worst[1]:.0f} ms at {worst[0] - self.t0:.1f} s "
                          f"(a fast agent calls a path Down after {detect_ms:.0f} ms): {len(stalls)} stalls over "
                          f"{REPORT_MS:g} ms in raw/host_stalls.csv")

    def relay_counters(self) -> dict[str, dict[str, Any]]:
        """Every relay's cumulative counters (the platform watch reads their lateness each second)."""
        from emulation.links.relay import RelayLink

        return {name: link.counters() for name, link in list(self.links.items()) if isinstance(link, RelayLink)}

    def write_platform(self, log: PlatformLog, stalls_ms: list[float]) -> None:
        """raw/platform.csv (a row per second) and raw/platform.json (summary.json's `platform`)."""
        from emulation.links.relay import RelayLink

        sched = [link.sched for link in self.links.values() if isinstance(link, RelayLink)]
        write_platform_csv(self.raw / "platform.csv", log, self.t0)
        doc = summarize_platform(log, stalls_ms, sched)
        doc["rtt_check"] = self.rtt_summary
        (self.raw / "platform.json").write_text(json.dumps(doc, indent=2, sort_keys=True))

    def write_raw(self, sampler: Sampler, expectations: list[dict[str, Any]], links: list[dict[str, Any]]) -> None:
        assert self.net is not None
        self.raw.mkdir(parents=True, exist_ok=True)
        write_csv(self.raw / "path_metrics.csv", PATH_METRIC_COLUMNS, sampler.rows)
        write_csv(self.raw / "timeline.csv", TIMELINE_COLUMNS, self.timeline_rows)
        events: list[tuple[str, list[dict[str, Any]]]] = []
        plans: dict[str, Any] = {}
        for site in self.net.sites:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                events.append((site, list(self._api(site, "/events?limit=10000"))))
            with contextlib.suppress(httpx.HTTPError, ValueError):
                plans[site] = self._api(site, "/steering")      # the plan each dataplane follows at the end
        write_events(self.raw / "events.jsonl", events)
        write_json(self.raw / "steering.json", plans)
        tcp_rows, http_rows = [], []
        for f in self.flows:
            ip = self.raw / "traffic" / f"{f.name}.iperf.json"
            if ip.exists():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    for iv in json.loads(ip.read_text()).get("intervals", []):
                        s = iv["sum"]
                        tcp_rows.append([f.name, round(self.t0 + f.start_s + s["end"], 4), s["bits_per_second"]])
            hp = self.raw / "traffic" / f"{f.name}.http.csv"
            if hp.exists():
                with open(hp) as hh:
                    for row in csv.DictReader(hh):
                        http_rows.append([f.name, row["at"], row["latency_ms"], row["ok"]])
        if tcp_rows:
            write_csv(self.raw / "tcp.csv", TCP_COLUMNS, tcp_rows)
        if http_rows:
            write_csv(self.raw / "http.csv", HTTP_COLUMNS, http_rows)
        self.write_packets()
        flows = [{"name": f.name, "type": f.type, "class": f.cls, "src_site": f.src_site, "dst_site": f.dst_site,
                  "dst_port": f.dst_port, "rate_pps": f.rate * f.burst if f.udp else None,
                  "start_s": f.start_s, "stop_s": f.stop_s, "sent": f.sent,
                  "policy": sampler.policy_of(f.src_site, self.net.sites[f.src_site].host_ip(f.src_host),
                                              self.net.sites[f.dst_site].host_ip(f.dst_host),
                                              17 if f.udp else 6, f.dst_port)}
                 for f in self.flows]
        write_json(self.raw / "run.json", run_document(
            self.sc, backend="mininet", impairment_backend=self.impairment_backend, started_at=self.started_at,
            t0=self.t0, flows=flows, links=links, expectations=expectations))

    # -- plan and run ------------------------------------------------------------------------------

    def plan(self) -> NetSpec:
        sc = self.sc
        self.site_ids = {s.name: s.id for s in sc.sites}
        spec = NetSpec(run=self.run_id, impairment_backend=self.impairment_backend, sites=tuple(
            SiteSpec(s.name, s.id, s.lan_prefix, s.hosts,
                     tuple(UplinkSpec(u.name, u.bandwidth_bps, u.cost_per_gb) for u in s.uplinks))
            for s in sc.sites))
        self.flows = []
        for i, f in enumerate(sc.flows):
            tp = traffic_plan(f)          # the numbers the simulator models too
            self.flows.append(FlowPlan(name=f.name, type=f.type.value, cls=f.traffic_class, src_site=f.src.site,
                                       src_host=f.src.host - 1, dst_site=f.dst.site, dst_host=f.dst.host - 1,
                                       dst_port=f.dst_port, sport=41000 + i, start_s=f.start_s, stop_s=f.stop_s,
                                       rate=tp.rate, size=tp.size, burst=tp.burst, interval_s=tp.interval_s,
                                       bandwidth_bps=tp.bandwidth_bps))
        return spec

    def start_links(self) -> None:
        from emulation.links import make_link

        assert self.net is not None
        for site in self.sc.sites:
            nodes = self.net.sites[site.name]
            for u in site.uplinks:
                imp = impairment_of(u.baseline())
                if self.impairment_backend == "relay":
                    ns = self._ns(nodes.relay_node[u.name])
                    link = make_link("relay", ns_x=ns, if_x="x", ns_y=ns, if_y="y", seed=self.sc.seed + len(self.links),
                                     impairment_xy=imp, impairment_yx=imp, tag=f"pt{self.run_id}",
                                     nice=RELAY_NICE, realtime=RT_RELAY)
                else:
                    link = make_link("netem", ns_x=self._ns(nodes.router), if_x=u.name, ns_y=self._ns(self.net.core),
                                     if_y=f"s{nodes.number}-{u.name}", seed=self.sc.seed + len(self.links),
                                     impairment_xy=imp, impairment_yx=imp)
                link.start()
                self.links[f"{site.name}.{u.name}"] = link

    def stop_links(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.stop()
        self.links.clear()

    def execute(self) -> int:
        """Run the scenario; returns the exit code (0 pass, 1 an expectation failed)."""
        from emulation.links import choose_backend

        if self.impairment_backend == "auto":
            self.impairment_backend, why = choose_backend("auto")
            self.progress(f"note: impairment backend {self.impairment_backend} ({why})")
        spec = self.plan()
        self.out.mkdir(parents=True, exist_ok=True)
        self.raw.mkdir(parents=True, exist_ok=True)
        (self.out / "scenario.yaml").write_text(self.sc.to_yaml())
        sampler: Sampler | None = None
        watch = StallWatch(realtime=RT_STALLWATCH)
        cpu = CpuWatch(os.getpid(), self.relay_counters)
        try:
            self.progress(f"building {len(spec.sites)} sites (run {self.run_id})")
            self.net = MininetNet(spec).build()
            self.start_links()
            self.progress("starting agents (network built)")
            agents = {s.name: s.agent.to_dict() for s in self.sc.sites}
            self.start_agents(agents, {s.name: list(self.sc.remotes_of(s.name)) for s in self.sc.sites})
            self.wait_ready(90)
            self.wait_tunnels(60)
            self.progress("agents ready, every tunnel up; letting them settle")
            if not self.wait_settled(SETTLE_TIMEOUT_S):
                self.progress(f"warning: agents not settled after {SETTLE_TIMEOUT_S:g} s (a path not Up, or "
                              "paths or steering still changing); starting anyway")
            self.check_rtts()
            self.progress("starting traffic")
            self.start_receivers()
            sampler = Sampler({s: f"http://{n.mgmt_ip}:{API_PORT}/api/v1" for s, n in self.net.sites.items()},
                              self.token)
            # the clock's 0 is planned ahead: a UDP sender is started SENDER_LEAD_S before its flow's start
            # and sends from that instant (`--start-at`); sampling starts SAMPLE_LEAD_S before 0
            self.t0 = time.time() + SENDER_LEAD_S
            actions: list[tuple[float, int, str, Callable[[], None]]] = []
            for i, f in enumerate(self.flows):
                actions.append((f.start_s - SENDER_LEAD_S if f.udp else f.start_s, i, f"start {f.name}",
                                lambda f=f: self.start_sender(f)))  # type: ignore[misc]
            for j, step in enumerate(schedule(self.sc)):
                label = f"{self.sc.timeline[step.event].action} {step.link if hasattr(step, 'link') else step.site}"
                actions.append((step.at_s, 10_000 + j, label,
                                lambda st=step: self.apply_step(st)))  # type: ignore[misc]

            def start_watching() -> None:
                sampler.start()
                watch.start()
                cpu.start()
                self.started_at = time.time()

            actions.append((-SAMPLE_LEAD_S, -1, "sampling", start_watching))
            actions.sort(key=lambda a: (a[0], a[1]))
            total = self.sc.duration_s
            self.progress(f"running the timeline ({len(self.sc.timeline)} events, {total:g} s)")
            for at_s, _, label, act in actions:
                due = self.t0 + at_s
                while time.time() < due:
                    self.clock(max(0.0, time.time() - self.t0), total, f"{label} at {max(0.0, at_s):g} s")
                    time.sleep(min(0.05, due - time.time()))   # waiting for the scheduled instant
                err = self.agent_down()
                if err and not self._stopped_on_purpose():
                    raise RunError(err)
                act()
            end = self.t0 + total
            while time.time() < end:
                self.clock(time.time() - self.t0, total, "end")
                time.sleep(min(0.2, end - time.time()))       # waiting for the scenario's end
            self.clock(total, total, "")
            self.progress("stopping traffic, collecting data")
            self.finish_traffic()
            sampler.stop()
            stalls = watch.stop()
            self.write_stalls(stalls)
            self.write_platform(cpu.stop(), [ms for _, ms in stalls])
            links = [{"link": f"{s.name}.{u.name}",
                      "paths": [p["id"] for p in self._paths_of(s.name) if p["uplink"] == u.name]}
                     for s in self.sc.sites for u in s.uplinks]
            self.write_raw(sampler, expectations_doc(self.sc), links)
        finally:
            # the watchers and traffic first, each on its own: none of them may keep the network up
            for what, stop in (("stall watcher", watch.stop), ("platform watch", cpu.stop),
                               ("sampler", sampler.stop if sampler is not None and sampler.is_alive() else None),
                               ("traffic", self.kill_all)):
                if stop is None:
                    continue
                try:
                    stop()
                except Exception as exc:
                    self.progress(f"warning: stopping the {what} failed ({type(exc).__name__}: {exc}); "
                                  "tearing down anyway")
            if self.keep and self.net is not None:
                sockets = self.detach_links()
                self.progress(self.keep_message(sockets))
            else:
                self.progress("tearing down")
                t = time.monotonic()
                self.teardown()
                self.progress(f"note: torn down in {time.monotonic() - t:.2f} s")
        from emulation.report import report_command

        return report_command(self.out)

    def _paths_of(self, site: str) -> list[dict[str, Any]]:
        try:
            return list(self._api(site, "/paths"))
        except (httpx.HTTPError, ValueError):
            return []

    def _stopped_on_purpose(self) -> bool:
        return all(s in self._stopped for s, p in self.agents.items() if p.poll() is not None)

    def apply_step(self, step: Any) -> None:
        from emulation.scenario.timeline import AgentStep

        if isinstance(step, AgentStep):
            if step.running:
                self._stopped.discard(step.site)
                self.restart_agent(step.site)
            else:
                # graceful (SIGTERM: the dataplane stays, the next start adopts it) or, with cleanup,
                # SIGUSR1: the agent removes its tunnels, steering and reflector as it stops
                self._stopped.add(step.site)
                p = self.agents[step.site]
                if p.poll() is None:
                    p.send_signal(signal.SIGUSR1 if step.cleanup else signal.SIGTERM)
                    p.wait(20)
                elif step.cleanup:              # stopped gracefully before: remove what it left
                    assert self.net is not None
                    subprocess.run(["ip", "netns", "exec", self._ns(self.net.sites[step.site].router),
                                    sys.executable, "-m", "patronus.cli", "cleanup", "--config",
                                    str(self.out / "agents" / f"{step.site}.yaml")], capture_output=True, timeout=30)
            applied = time.time()
            self.timeline_rows.append([step.at_s, round(applied, 6), "agent_start" if step.running else "agent_stop",
                                       step.site, json.dumps({"cleanup": step.cleanup}) if not step.running else "{}"])
            return
        link = self.links[str(step.link)]
        ns = link.set("both", impairment_of(step.settings))
        event = self.sc.timeline[step.event]
        action = event.action
        self.timeline_rows.append([step.at_s, round(ns / 1e9, 6), action, str(step.link),
                                   json.dumps({"changed": list(step.changed), "up": step.settings.up,
                                               "delay_ms": step.settings.delay_s * 1e3,
                                               "loss": step.settings.loss_ratio}, sort_keys=True)])

    def restart_agent(self, site: str) -> None:
        """`agent_start`: a new agent on the same site file; it adopts the dataplane a graceful stop left."""
        assert self.net is not None
        cfg = self.out / "agents" / f"{site}.yaml"
        self.agents[site] = self._popen(self._ns(self.net.sites[site].router),
                                        [sys.executable, "-m", "patronus.cli", "agent", "--config", str(cfg)],
                                        self.out / "agents" / f"{site}.log", nice=AGENT_NICE)

    def detach_links(self) -> dict[str, str]:
        """--keep: the relays must outlive the runner; each moves its control to a Unix socket."""
        from emulation.links.relay import RelayLink

        out = {}
        for name, link in self.links.items():
            if isinstance(link, RelayLink) and link.proc is not None:
                out[name] = link.detach()
        return out

    def keep_message(self, sockets: dict[str, str] | None = None) -> str:
        assert self.net is not None
        lines = [f"network kept up (run {self.run_id}); remove it with: patronus-lab clean --run {self.run_id}"]
        for s, n in self.net.sites.items():
            lines.append(f"  {s}: ip netns exec {self._ns(n.router)} bash   (agent API http://{n.mgmt_ip}:{API_PORT}, "
                         f"token in {self.out / 'agents' / (s + '.yaml')})")
        for link, path in sorted((sockets or {}).items()):
            lines.append(f"  link {link}: relay control socket {path} (JSON lines: {{\"counters\": true}}, "
                         f"{{\"set\": ...}})")
        return "\n".join(lines)

    def teardown(self) -> None:
        self.stop_agents()
        self.stop_links()
        if self.net is not None:
            self.net.teardown()
            self.net = None
