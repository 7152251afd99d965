"""The scenario's traffic in the simulator: UDP flows packet by packet or computed per flow, TCP and HTTP
as models.

Each flow is planned as the Mininet backend plans it (`mininet.traffic.plan_flows`): the same 5-tuple (LAN host
addresses, source port 41000 + the flow's index, the destination port), the same packet rates, bursts
and sizes, so the sending site's router classifies it under the same policy.

UDP flows (udp_cbr, voip, video) send tick n of `rate` ticks per second at start + n/rate, `burst`
datagrams a tick, `int(rate · duration)` ticks, as `emulation.udpflow` does. A packet takes the path its
site's steering gives the flow at send time (none: lost, with no path, as the kernel's unreachable
rule drops it) and is received if it crosses both links and the destination's agent (its tunnel) is
there when it arrives.
  * packet mode: every datagram is a simulated packet crossing the links' models, queueing with the
    probes;
  * flow mode: no data packet events. After the run each flow's records are computed from the
    flow's steering history and each link's settings history: the same per-hop rules (cut, random or
    Gilbert-Elliott loss, corruption, delay, jitter from netem's tables, serialization at the link
    rate, no packet before the previous one), with the flow's own random streams and without the
    queueing between flows and probes. Packets.csv has the same rows either way.

TCP bulk (tcp_bulk) is a fluid flow, sampled on a 10 ms grid and reported per second like iperf3's
intervals (tcp.csv): its rate is min(its cap, the path's bottleneck rate × TCP/WireGuard efficiency,
the Mathis et al. loss limit MSS·√1.5 / (RTT·√p)); nothing flows while its path is missing or cut or
an end's agent is down, and after such an outage it resumes at the first retransmission timeout
(200 ms, doubling) that falls after the path is back.

HTTP (http) requests follow the client's schedule (one every `interval`, never two at once); a
request whose path is unusable retries its SYN after 1 s and fails at the client's 2 s timeout;
otherwise it takes a handshake RTT, a request RTT plus slow-start rounds (initial window 10 segments),
the response's serialization at the bottleneck, and one more RTT per lost segment (http.csv). Every
request of a flow uses the flow's one router flow (the real client opens a connection per request).

Neither TCP nor HTTP loads the links' models in packet mode: their bytes do not queue in front of
probes (the shipped scenarios cap their transfers well below the links' rates).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.network import TUNNEL_UDP_OVERHEAD_BYTES, Network, SimPath
from emulation.links.impairment import DIST_TABLE_SIZE, NETEM_DIST_SCALE, dist_table
from emulation.scenario.model import Flow, LinkSettings, Scenario
from emulation.siteconf import host_address
from emulation.traffic.plan import SOURCE_PORT_BASE, traffic_plan
from patronus.core.model import FlowKey, PathId, Slot


class Site(Protocol):
    """What a flow sees of its sites' agents (`agent.SimAgent` is one)."""

    @property
    def forwarding(self) -> bool: ...
    @property
    def paths(self) -> Mapping[PathId, SimPath]: ...
    def flow_started(self, f: SimFlow) -> None: ...


class World(Protocol):
    """What the traffic models see of the simulation (`engine.Simulation` is one)."""

    @property
    def env(self) -> SimEnvironment: ...
    @property
    def net(self) -> Network: ...
    @property
    def t0_ns(self) -> int: ...
    def link_table(self, link: str) -> LinkTable: ...
    def forwarding_table(self, site: str) -> StepTable: ...

NS = 1_000_000_000
TCP_MSS_BYTES = 1380              # in a 1420-byte WireGuard MTU
TCP_WIRE_BYTES = 1494             # that segment on the wire: + TCP/IP, WireGuard, UDP/IP, Ethernet
TCP_EFFICIENCY = TCP_MSS_BYTES / TCP_WIRE_BYTES
TCP_GRID_S = 0.01
TCP_MIN_RTO_S = 0.2
TCP_MAX_RTO_S = 120.0
HTTP_TIMEOUT_S = 2.0              # the client's socket timeout
HTTP_SYN_RETRIES_S = (0.0, 1.0)   # SYN, then its retransmission after Linux's 1 s initial RTO
HTTP_INITIAL_WINDOW = 10


class SimFlow:
    """One scenario flow: its plan, its steering state and history, and (UDP) its packet records."""

    def __init__(self, index: int, flow: Flow, scenario: Scenario, src: Site, dst: Site) -> None:
        self.flow = flow
        self.name = flow.name
        self.type = flow.type.value
        self.cls = flow.traffic_class
        self.src_site = flow.src.site
        self.dst_site = flow.dst.site
        self.src = src
        self.dst = dst
        self.start_s = flow.start_s
        self.stop_s = flow.stop_s
        self.plan = traffic_plan(flow)
        self.udp = flow.type.is_packet_flow
        self.key = FlowKey(host_address(scenario, flow.src.site, flow.src.host),
                           host_address(scenario, flow.dst.site, flow.dst.host),
                           SOURCE_PORT_BASE + index, flow.dst_port, 17 if flow.protocol == "udp" else 6)
        self.ticks = int(self.plan.rate * (self.stop_s - self.start_s)) if self.udp else 0
        self.sent = self.ticks * self.plan.burst
        self.wire_bytes = self.plan.size + TUNNEL_UDP_OVERHEAD_BYTES
        # steering
        self.active = False
        self.classified = False
        self.slot: Slot | None = None              # the dataplane's slot of its connection, once classified
        self.policy: str | None = None             # the router policy that first classified it
        self.path: PathId | None = None            # applied: what its packets take
        self.pending_path: PathId | None = None    # decided, maybe not applied yet
        self.history: list[tuple[float, PathId | None]] = [(-math.inf, None)]
        # packet records, by seq (packet mode fills them as packets go; flow mode after the run)
        self.recv_ns = array("q")          # 0: not received
        self.path_no = array("h")          # index in path_names, -1: none
        self.path_names: list[str] = []
        self._path_numbers: dict[str, int] = {}

    def set_path(self, pid: PathId | None, now: float) -> None:
        if pid != self.path:
            self.path = pid
            self.history.append((now, pid))
        if pid is None:
            self.pending_path = None

    def path_index(self, pid: str) -> int:
        n = self._path_numbers.get(pid)
        if n is None:
            n = self._path_numbers[pid] = len(self.path_names)
            self.path_names.append(pid)
        return n

    def allocate(self) -> None:
        """Room for every packet's record: none received, no path."""
        self.recv_ns = array("q", bytes(8 * self.sent))
        self.path_no = array("h", [-1]) * self.sent

    def send_times(self) -> np.ndarray:
        """Virtual send time of every packet, by seq."""
        t = self.start_s + np.arange(self.ticks, dtype=np.float64) / self.plan.rate
        return np.repeat(t, self.plan.burst)


# --- packet mode ---------------------------------------------------------------------------------

def start_packets(sim: World, f: SimFlow) -> None:
    """Send the flow's datagrams as simulated packets (called at the flow's start)."""
    env = sim.env
    net = sim.net
    f.allocate()
    rate, burst = f.plan.rate, f.plan.burst
    size = f.wire_bytes
    recv_ns, path_no = f.recv_ns, f.path_no
    src, dst = f.src, f.dst
    t0_ns = sim.t0_ns

    def send(seq: int) -> None:
        pid = f.path
        if pid is None or not src.forwarding:
            return              # no path (stranded, or no dataplane): the kernel drops it
        path = src.paths[pid]
        path_no[seq] = f.path_index(pid)

        def arrive() -> None:
            if dst.forwarding and not recv_ns[seq]:
                recv_ns[seq] = t0_ns + round(env.now * NS)
        net.send(path.forward, size, arrive)

    def tick(n: int) -> None:
        for b in range(burst):
            send(n * burst + b)
        n += 1
        if n < f.ticks:
            env.later(f.start_s + n / rate - env.now, tick, n)

    if f.ticks:
        tick(0)


# --- histories, for the flow-level models -------------------------------------------------------

class LinkTable:
    """A link's settings over time as arrays, looked up by virtual time."""

    def __init__(self, history: list[tuple[float, LinkSettings]]) -> None:
        self.times = np.array([t for t, _ in history], dtype=np.float64)
        s = [x for _, x in history]
        self.settings = s
        self.up = np.array([x.up for x in s], dtype=bool)
        self.delay = np.array([x.delay_s for x in s], dtype=np.float64)
        self.jitter = np.array([x.jitter_s for x in s], dtype=np.float64)
        self.loss = np.array([x.loss_ratio for x in s], dtype=np.float64)
        self.mean_loss = np.array([x.loss_model.mean_loss_ratio if x.loss_model else x.loss_ratio for x in s],
                                  dtype=np.float64)
        self.corrupt = np.array([x.corrupt_ratio for x in s], dtype=np.float64)
        self.rate = np.array([x.rate_bps for x in s], dtype=np.float64)

    def index(self, t: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.searchsorted(self.times, t, side="right") - 1
        return out


class StepTable:
    """A piecewise-constant value over time (a flow's path number, a site forwarding or not)."""

    def __init__(self, history: list[tuple[float, int]]) -> None:
        self.times = np.array([t for t, _ in history], dtype=np.float64)
        self.values = np.array([v for _, v in history], dtype=np.int64)

    def at(self, t: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.values[np.searchsorted(self.times, t, side="right") - 1]
        return out


def _ge_chain(n: int, p: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Gilbert-Elliott states (True = bad) of n consecutive packets, starting good: runs of good packets
    are geometric with p, of bad ones with r (the model's per-packet transitions)."""
    bad = np.zeros(n, dtype=bool)
    i, state = 0, False
    while i < n:
        q = r if state else p
        run = int(rng.geometric(q)) if q > 0 else n
        if state:
            bad[i:i + run] = True
        i += run
        state = not state
    return bad


def _cross(table: LinkTable, t: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Packets entering one direction of a link at times `t` (ascending): (release times, lost)."""
    n = len(t)
    idx = table.index(t)
    up = table.up[idx]
    u_loss, u_cor, u_jit = rng.random(n), rng.random(n), rng.random(n)
    lost = ~up | (u_loss < table.loss[idx]) | (u_cor < table.corrupt[idx])
    for k in np.unique(idx):
        ge = table.settings[k].loss_model
        if ge is None:
            continue
        sel = np.flatnonzero((idx == k) & up)
        if len(sel):
            bad = _ge_chain(len(sel), ge.p, ge.r, rng)
            u = rng.random(len(sel))
            lost[sel] |= np.where(bad, u < ge.h, u < ge.k)
    rate = table.rate[idx]
    departure = t + np.where(rate > 0, size * 8.0 / np.where(rate > 0, rate, 1.0), 0.0)
    jit = np.zeros(n)
    sigma = table.jitter[idx]
    for k in np.unique(idx):
        s = table.settings[k]
        if not s.jitter_s:
            continue
        sel = idx == k
        dist = s.jitter_distribution.value
        if dist == "uniform":
            jit[sel] = (u_jit[sel] * 2.0 - 1.0) * sigma[sel]
        else:
            tab = np.asarray(dist_table(dist), dtype=np.float64)
            jit[sel] = tab[(u_jit[sel] * DIST_TABLE_SIZE).astype(np.int64)] * sigma[sel] / NETEM_DIST_SCALE
    release = np.maximum(departure + table.delay[idx] + jit, departure)
    return release, lost


def _in_order(release: np.ndarray, arrival: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """No packet leaves before one that entered earlier (among those kept): the models' ordering."""
    out = release.copy()
    sel = np.flatnonzero(keep)
    if len(sel):
        order = sel[np.argsort(arrival[sel], kind="stable")]
        out[order] = np.maximum.accumulate(release[order])
    return out


def synthesize_packets(sim: World, f: SimFlow, rng: np.random.Generator) -> None:
    """Flow mode: fill the flow's records from its steering history and the links' histories."""
    if not f.sent:
        return
    t = f.send_times()
    names: list[str] = []
    hist: list[tuple[float, int]] = []
    for at, pid in f.history:
        if pid is None:
            hist.append((at, -1))
        else:
            if pid not in names:
                names.append(pid)
            hist.append((at, names.index(pid)))
    f.path_names = names
    path_no = StepTable(hist).at(t)
    src_up = sim.forwarding_table(f.src_site).at(t).astype(bool)
    path_no = np.where(src_up, path_no, -1)
    alive = path_no >= 0
    release1 = np.full(len(t), np.nan)
    lost = ~alive
    # first hop: the local uplink toward the core, per link
    links1 = {f.src.paths[PathId(p)].forward.links[0] for p in names}
    for link in sorted(links1):
        sel = np.flatnonzero(alive & np.isin(path_no, [i for i, p in enumerate(names)
                                                      if f.src.paths[PathId(p)].forward.links[0] == link]))
        if not len(sel):
            continue
        rel, lo = _cross(sim.link_table(link), t[sel], f.wire_bytes, rng)
        release1[sel] = rel
        lost[sel] |= lo
        keep = np.zeros(len(t), dtype=bool)
        keep[sel] = ~lo
        release1 = np.where(keep, _in_order(np.nan_to_num(release1), t, keep), release1)
    release2 = np.full(len(t), np.nan)
    links2 = {f.src.paths[PathId(p)].forward.links[1] for p in names}
    for link in sorted(links2):
        sel = np.flatnonzero(~lost & np.isin(path_no, [i for i, p in enumerate(names)
                                                       if f.src.paths[PathId(p)].forward.links[1] == link]))
        if not len(sel):
            continue
        order = sel[np.argsort(release1[sel], kind="stable")]
        rel, lo = _cross(sim.link_table(link), release1[order], f.wire_bytes, rng)
        release2[order] = rel
        lost[order] |= lo
        keep = np.zeros(len(t), dtype=bool)
        keep[order] = ~lo
        release2 = np.where(keep, _in_order(np.nan_to_num(release2), np.nan_to_num(release1), keep), release2)
    got = ~lost
    dst_up = np.zeros(len(t), dtype=bool)
    if got.any():
        dst_up[got] = sim.forwarding_table(f.dst_site).at(release2[got]).astype(bool)
    got &= dst_up
    recv = np.zeros(len(t), dtype=np.int64)
    recv[got] = sim.t0_ns + np.round(release2[got] * NS).astype(np.int64)
    f.recv_ns = array("q", recv.tobytes())
    f.path_no = array("h", path_no.astype(np.int16).tobytes())


# --- TCP and HTTP ---------------------------------------------------------------------------------

def _path_state(sim: World, f: SimFlow, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """(usable, rtt_s, loss, bottleneck_bps) of the flow's route at times `t`."""
    names: list[str] = []
    hist: list[tuple[float, int]] = []
    for at, pid in f.history:
        if pid is not None and pid not in names:
            names.append(pid)
        hist.append((at, -1 if pid is None else names.index(pid)))
    path_no = StepTable(hist).at(t)
    n = len(t)
    usable = (path_no >= 0) & sim.forwarding_table(f.src_site).at(t).astype(bool) \
        & sim.forwarding_table(f.dst_site).at(t).astype(bool)
    rtt = np.zeros(n)
    keep = np.ones(n)
    bottleneck = np.full(n, np.inf)
    for i, name in enumerate(names):
        sel = path_no == i
        if not sel.any():
            continue
        for link in f.src.paths[PathId(name)].forward.links:
            tab = sim.link_table(link)
            idx = tab.index(t[sel])
            usable[sel] &= tab.up[idx]
            rtt[sel] += 2.0 * tab.delay[idx]
            keep[sel] *= (1.0 - tab.mean_loss[idx]) * (1.0 - tab.corrupt[idx])
            rate = tab.rate[idx]
            bottleneck[sel] = np.minimum(bottleneck[sel], np.where(rate > 0, rate, np.inf))
    return usable, rtt, 1.0 - keep, bottleneck


def _rto_resume(outage_start: float, back: float) -> float:
    """When a TCP sender whose last packet went out at `outage_start` retransmits after `back`: its
    timeouts fire at 200 ms, then doubling."""
    t, rto = outage_start, TCP_MIN_RTO_S
    while True:
        t += rto
        if t >= back:
            return t
        rto = min(rto * 2.0, TCP_MAX_RTO_S)


def tcp_rows(sim: World, f: SimFlow) -> list[tuple[float, float]]:
    """(virtual end of each 1-s interval, bits per second), like iperf3's intervals."""
    secs = max(1, round(f.stop_s - f.start_s))
    steps = round(secs / TCP_GRID_S)
    t = f.start_s + np.arange(steps, dtype=np.float64) * TCP_GRID_S
    usable, rtt, loss, bottleneck = _path_state(sim, f, t)
    rate = bottleneck * TCP_EFFICIENCY
    with np.errstate(divide="ignore", invalid="ignore"):
        mathis = np.where((loss > 0) & (rtt > 0), TCP_MSS_BYTES * 8.0 * math.sqrt(1.5) / (rtt * np.sqrt(loss)), np.inf)
    rate = np.minimum(rate, mathis)
    if f.plan.bandwidth_bps:
        rate = np.minimum(rate, f.plan.bandwidth_bps)
    rate = np.where(usable, rate, 0.0)
    # after each outage, nothing until the retransmission timer fires after the path is back
    down = np.flatnonzero(~usable)
    if len(down):
        starts = down[np.concatenate(([True], np.diff(down) > 1))]
        ends = down[np.concatenate((np.diff(down) > 1, [True]))] + 1
        for a, b in zip(starts, ends, strict=True):
            resume = _rto_resume(t[a], t[b] if b < steps else math.inf)
            rate[(t >= t[a]) & (t < resume)] = 0.0
    rate = np.where(np.isfinite(rate), rate, 0.0)
    per = rate.reshape(secs, steps // secs).mean(axis=1)
    return [(f.start_s + k + 1, float(v)) for k, v in enumerate(per)]


def http_rows(sim: World, f: SimFlow, rng: np.random.Generator) -> list[tuple[float, float, bool]]:
    """(virtual start, latency_ms, ok) of each request, on the client's schedule."""
    out: list[tuple[float, float, bool]] = []
    size = f.plan.response_bytes
    segments = max(1, -(-size // TCP_MSS_BYTES))
    rounds, cwnd, sent = 0, HTTP_INITIAL_WINDOW, 0
    while sent < segments:
        sent += cwnd
        cwnd *= 2
        rounds += 1
    free = f.start_s
    n = 0
    while True:
        a = max(f.start_s + n * f.plan.interval_s, free)
        if a >= f.stop_s:
            break
        tries = np.array([a + d for d in HTTP_SYN_RETRIES_S])
        usable, rtt, loss, bottleneck = _path_state(sim, f, tries)
        ok, latency = False, HTTP_TIMEOUT_S
        for i in range(len(tries)):
            if usable[i]:
                transfer = size * 8.0 / (bottleneck[i] * TCP_EFFICIENCY) if np.isfinite(bottleneck[i]) else 0.0
                lost = int(rng.binomial(segments + 3, min(1.0, float(loss[i]))))
                lat = HTTP_SYN_RETRIES_S[i] + (2 + rounds + lost) * float(rtt[i]) + transfer
                if lat <= HTTP_TIMEOUT_S:
                    ok, latency = True, lat
                break
        out.append((a, round(latency * 1000.0, 3), ok))
        free = a + latency
        n += 1
    return out
