"""A run's application traffic on the LAN hosts: each flow planned (`plan_flows`, the numbers the
simulator models too), its receiver or server and the taps on the source routers started before the
clock, its sender or client at its start, and all of them stopped at the end so they write their
records to `raw/traffic/`.

procs[0] of a flow is its receiver or server, procs[1] its sender or client; every process is owned by
pid (a session of its own).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from emulation.backends.mininet.net import MininetNet
from emulation.backends.mininet.procs import RT_TRAFFIC, RunError, kill_group, popen
from emulation.scenario.model import Scenario
from emulation.traffic.plan import SOURCE_PORT_BASE, traffic_plan
from emulation.udpflow import LINGER_S
from emulation.wait import wait_for


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


def plan_flows(scenario: Scenario) -> list[FlowPlan]:
    """The scenario's flows as processes will run them (hosts numbered from 0)."""
    flows = []
    for i, f in enumerate(scenario.flows):
        tp = traffic_plan(f)          # the numbers the simulator models too
        flows.append(FlowPlan(name=f.name, type=f.type.value, cls=f.traffic_class, src_site=f.src.site,
                              src_host=f.src.host - 1, dst_site=f.dst.site, dst_host=f.dst.host - 1,
                              dst_port=f.dst_port, sport=SOURCE_PORT_BASE + i, start_s=f.start_s, stop_s=f.stop_s,
                              rate=tp.rate, size=tp.size, burst=tp.burst, interval_s=tp.interval_s,
                              bandwidth_bps=tp.bandwidth_bps))
    return flows


def linger_s(sc: Scenario) -> float:
    """How long a UDP receiver reads on once stopped, until its socket is quiet (`emulation.udpflow`):
    udpflow's own half second plus twice the slowest one-way crossing of one link the scenario sets (its
    delay and four times its jitter, at the start or after any timeline step): a datagram crosses two."""
    from emulation.scenario.timeline import LinkStep, schedule

    settings = [sc.uplink(ref).baseline() for ref in sc.links]
    settings += [st.settings for st in schedule(sc) if isinstance(st, LinkStep)]
    return LINGER_S + 2 * max((x.delay_s + 4 * x.jitter_s for x in settings), default=0.0)


class Traffic:
    """The flows' processes and the taps (`helpers`, with the servers that have no flow of their own)."""

    def __init__(self, flows: list[FlowPlan], raw: Path, linger: float = LINGER_S) -> None:
        self.flows = flows
        self.dir = raw / "traffic"
        self.linger = linger
        self.helpers: list[subprocess.Popen[bytes]] = []   # taps

    def start_receivers(self, net: MininetNet) -> None:
        """Every flow's receiver or server, then one tap per source site router, on its tunnels; each
        UDP receiver and tap is waited for (it writes a ready file)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in self.flows:
            dst = net.sites[f.dst_site]
            ns = net.ns(dst.hosts[f.dst_host])
            if f.udp:
                ready = self.dir / f"{f.name}.ready"
                f.procs.append(popen(ns, [sys.executable, "-m", "emulation.udpflow", "recv", "--port",
                                          str(f.dst_port), "--out", str(self.dir / f"{f.name}.json"),
                                          "--ready", str(ready), "--realtime", str(RT_TRAFFIC),
                                          "--linger", f"{self.linger:.3f}"]))
                _wait_file(ready, f"receiver of {f.name}")
            elif f.type == "tcp_bulk":
                f.procs.append(popen(ns, ["iperf3", "-s", "-p", str(f.dst_port), "-1"]))
            elif f.type == "http":
                f.procs.append(popen(ns, [sys.executable, "-m", "emulation.traffic.http", "serve", "--port",
                                          str(f.dst_port)]))
        ports_by_site: dict[str, set[int]] = {}
        for f in self.flows:
            if f.udp:
                ports_by_site.setdefault(f.src_site, set()).add(f.dst_port)
        for site, ports in ports_by_site.items():
            ready = self.dir / f"tap-{site}.ready"
            self.helpers.append(popen(net.ns(net.sites[site].router),
                                      [sys.executable, "-m", "emulation.traffic.tap", "--out",
                                       str(self.dir / f"tap-{site}.csv"), "--ports",
                                       ",".join(str(p) for p in sorted(ports)), "--ready", str(ready)]))
            _wait_file(ready, f"tap at {site}")

    def start_sender(self, net: MininetNet, f: FlowPlan, t0: float) -> None:
        """`f`'s sender or client (a UDP sender sends from the instant t0 + its start, `--start-at`)."""
        src = net.sites[f.src_site]
        dst = net.sites[f.dst_site]
        ns = net.ns(src.hosts[f.src_host])
        dst_ip = dst.host_ip(f.dst_host)
        dur = f.stop_s - f.start_s
        if f.udp:
            f.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "emulation.udpflow", "send", "--to",
                 f"{dst_ip}:{f.dst_port}", "--rate", f"{f.rate:g}", "--duration", f"{dur:g}", "--sport", str(f.sport),
                 "--size", str(f.size), "--burst", str(f.burst), "--realtime", str(RT_TRAFFIC),
                 "--start-at", f"{t0 + f.start_s:.6f}"],
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
                 "--out", str(self.dir / f"{f.name}.http.csv")], start_new_session=True))

    def finish(self) -> None:
        """Wait for the senders (they stop by themselves at their stop time), then stop the receivers
        and taps so they write their records: all at once (a UDP receiver reads what is still on its way
        first, `linger`), then each waited for."""
        for f in self.flows:
            if len(f.procs) < 2:
                continue
            sender = f.procs[1]
            out, _ = sender.communicate(timeout=max(60.0, f.stop_s - f.start_s + 30))
            if f.udp:
                with contextlib.suppress(ValueError, KeyError):
                    f.sent = int(json.loads(out)["sent"])
            elif f.type == "tcp_bulk":
                (self.dir / f"{f.name}.iperf.json").write_bytes(out or b"{}")
        stopping = [p for p in [f.procs[0] for f in self.flows if f.procs] + self.helpers if p.poll() is None]
        for p in stopping:
            p.send_signal(signal.SIGTERM)
        for p in stopping:
            try:
                p.wait(10 + 10 * self.linger)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def kill_all(self) -> None:
        """SIGKILL to every process still running (a run that failed midway)."""
        for f in self.flows:
            for p in f.procs:
                kill_group(p)
        for p in self.helpers:
            kill_group(p)


def _wait_file(path: Path, what: str, timeout_s: float = 10.0) -> None:
    wait_for(path.exists, timeout_s, lambda: f"{what} did not start within {timeout_s:g} s", interval_s=0.02,
             error=RunError)
