"""The simulated network: every uplink is a pair of impairment models, and packets cross them hop by hop.

Topology, as the Mininet backend builds it: each site's uplink joins one core router (for every
`core.topology`; hub-and-spoke only changes which remotes an agent has). The core itself is a perfect
wire, so a packet from site S's uplink U to site R's uplink V crosses two links: S.U toward the core,
then R.V from the core, and its reply R.V toward the core, then S.U from the core. Each direction of
each uplink is one `emulation.links.impairment.ImpairmentModel` (the relay's netem-like model: delay
tables, jitter distributions, random and Gilbert-Elliott loss, rate and queue, reordering,
duplication, corruption), shared by everything that crosses it: probes of every path over that uplink
and data packets alike, so they queue behind each other as they do on the test-bed.

A packet is fed to each hop at the virtual time it gets there (one simpy event per hop), because a
model's rate queue and its "never before the previous packet" rule depend on arrival order.
Corrupted copies are dropped (WireGuard's and the probes' authentication refuse them); duplicated
copies are dropped too (WireGuard's replay window, the prober's anti-replay window), after taking their
place in the rate queue.

Flow mode's probes (`probe_shortcut`): a probe whose hops are all delay-and-rate only, none of them
changing while it crosses them (no timeline step before it leaves the last: `stable_until`), crosses
them in one step: its time out of each is its time in, plus its serialization at the link's rate,
plus the link's delay. What that leaves out is the queueing of probes behind each other at a link
(microseconds: a probe is 100 bytes, at least a millisecond of them would have to arrive together);
flow mode has no data packets in the models to queue behind anyway. It saves three of the four events
of a round trip. Any other probe, and every probe in packet mode, goes hop by hop.
Beyond that, a steady path's probes coast (`SimAgent._shortcut_home`, `PathMonitor.coast`): its
monitor sends and answers them itself with the round trip `crossing_s` gives, up to the next step,
and they cross no model at all (not counted in the models' packet counters, nothing to queue behind).

Randomness: each model is seeded from the scenario's seed, the link's name and the direction, so a
link's decisions do not depend on what else the scenario contains.

Times here are virtual seconds: scenario time, 0 at the start of the scenario.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulation.backends.sim.clock import SimEnvironment
from emulation.links.impairment import ImpairmentModel
from emulation.links.settings import impairment_of
from emulation.scenario.model import LinkSettings, Scenario
from patronus.core.model import PathId
from patronus.core.probe import BASE_LEN as PROBE_BYTES

ETHERNET_BYTES = 14
IPV4_BYTES = 20
UDP_BYTES = 8
WIREGUARD_BYTES = 32        # data message header (16) and authentication tag (16)
# what a probe is on the wire: the probe, UDP, IPv4 and Ethernet (probes travel outside the tunnels)
PROBE_WIRE_BYTES = PROBE_BYTES + UDP_BYTES + IPV4_BYTES + ETHERNET_BYTES
# a UDP datagram of payload P is P + this on the wire: inner UDP and IPv4, WireGuard, outer UDP and IPv4,
# Ethernet
TUNNEL_UDP_OVERHEAD_BYTES = UDP_BYTES + IPV4_BYTES + WIREGUARD_BYTES + UDP_BYTES + IPV4_BYTES + ETHERNET_BYTES

TO_CORE = "out"             # a link's direction from its site toward the core
FROM_CORE = "in"


@dataclass(frozen=True, slots=True)
class Hops:
    """The models a packet crosses, in order, one way."""

    models: tuple[ImpairmentModel, ...]
    links: tuple[str, ...]          # the link of each hop, "site.uplink"
    directions: tuple[str, ...]     # TO_CORE / FROM_CORE for each hop


class Network:
    """Every link of a scenario, its current settings and their history (for the flow-level models)."""

    def __init__(self, env: SimEnvironment, scenario: Scenario, *, probe_shortcut: bool = False) -> None:
        self.env = env
        self.probe_shortcut = probe_shortcut
        # no link changes before this virtual time (the simulation moves it as its timeline goes)
        self.stable_until = math.inf
        self.stable_since = -math.inf       # ... and none since this one (the last change applied)
        self.models: dict[tuple[str, str], ImpairmentModel] = {}
        self.settings: dict[str, LinkSettings] = {}
        # link -> [(from virtual time, settings)], the first entry from -inf: the baseline
        self.history: dict[str, list[tuple[float, LinkSettings]]] = {}
        for ref in scenario.links:
            name = str(ref)
            base = scenario.uplink(ref).baseline()
            imp = impairment_of(base)
            for direction in (TO_CORE, FROM_CORE):
                self.models[(name, direction)] = ImpairmentModel(imp, seed=f"sim/{scenario.seed}/{name}/{direction}")
            self.settings[name] = base
            self.history[name] = [(-math.inf, base)]

    def hops(self, *legs: tuple[str, str]) -> Hops:
        """The hops of a route given as (link, direction) pairs."""
        return Hops(tuple(self.models[leg] for leg in legs), tuple(link for link, _ in legs),
                    tuple(d for _, d in legs))

    def apply(self, link: str, settings: LinkSettings, now: float) -> None:
        """The link changes to `settings` (both directions), from the next packet on."""
        imp = impairment_of(settings)
        for direction in (TO_CORE, FROM_CORE):
            model = self.models[(link, direction)]
            model.set(imp)
        self.settings[link] = settings
        self.history[link].append((now, settings))

    def path(self, path_id: PathId, site: str, uplink: str, remote: str, remote_uplink: str) -> SimPath:
        """A path of `site` from its `uplink` to `remote`'s `remote_uplink`, with its hops both ways."""
        local, far = f"{site}.{uplink}", f"{remote}.{remote_uplink}"
        return SimPath(path_id, remote, uplink, remote_uplink, self.hops((local, TO_CORE), (far, FROM_CORE)),
                       self.hops((far, TO_CORE), (local, FROM_CORE)))

    def send(self, hops: Hops, size: int, arrive: Callable[..., None], *args: Any) -> None:
        """A packet of `size` bytes (on the wire) enters the first hop now; `arrive(*args)` is called
        when it leaves the last one, not at all if a hop drops it."""
        self._hop(hops.models, 0, size, arrive, args)

    def shortcut(self, hops: Hops, t: float, size: int) -> float | None:
        """With `probe_shortcut`: the time a packet entering `hops` at `t` leaves the last one, if
        every hop is delay-and-rate only and it gets to each before `stable_until` (counted as
        delivered by each model); None otherwise, and nothing counted: send it hop by hop."""
        if not self.probe_shortcut:
            return None
        until = self.stable_until
        for m in hops.models:
            if t >= until or not m.deterministic:
                return None
            imp = m._imp
            rate = imp.rate_bps
            t += (size * 8.0 / rate if rate > 0 else 0.0) + imp.delay_s
        for m in hops.models:
            m.packets_in += 1
            m.delivered += 1
        return t

    def crossing_s(self, hops: Hops, size: int) -> float | None:
        """What `shortcut` adds to a time: the hops' serializations and delays, when every hop is
        delay-and-rate only (None otherwise). Counts nothing."""
        total = 0.0
        for m in hops.models:
            if not m.deterministic:
                return None
            imp = m._imp
            rate = imp.rate_bps
            total += (size * 8.0 / rate if rate > 0 else 0.0) + imp.delay_s
        return total

    def _hop(self, models: tuple[ImpairmentModel, ...], i: int, size: int, arrive: Callable[..., None],
             args: tuple[Any, ...]) -> None:
        env = self.env
        now = env.now
        model = models[i]
        nxt = i + 1
        if model.deterministic:     # `_simple_release` does what `on_packet` would
            release = _simple_release(model, now, size)
            if release is None:
                return
            if nxt == len(models):
                env.later(release - now, arrive, *args)
            else:
                env.later(release - now, self._hop, models, nxt, size, arrive, args)
            return
        if model.passthrough(now):
            if nxt == len(models):
                arrive(*args)
            else:
                self._hop(models, nxt, size, arrive, args)
            return
        for release, action in model.on_packet(now, size):
            if action:      # corrupted (bit 0) or a duplicate (bit 1): refused at the far end
                continue
            if nxt == len(models):
                env.later(release - now, arrive, *args)
            else:
                env.later(release - now, self._hop, models, nxt, size, arrive, args)


def _simple_release(m: ImpairmentModel, now: float, size: int) -> float | None:
    """`m.on_packet(now, size)` for a model whose impairment `is_deterministic`: the release time of the one
    copy, or None when the rate queue is full. The same steps on the same state (its rate queue, last
    departure and release, counters) as the model's own code, which draws no random number for such an
    impairment; without the list of (time, action) pairs and the calls. The simulator's hot path: every
    probe crosses four of these."""
    m.packets_in += 1
    if m._identity and m._last_release <= now:
        m.delivered += 1
        return now
    imp = m._imp
    departure = now
    rate = imp.rate_bps
    if rate > 0:
        q = m._rate_queue
        while q and q[0] <= now:
            q.popleft()
        if len(q) >= imp.queue_limit:
            m.dropped["queue_full"] += 1
            return None
        last = m._last_departure
        departure = (now if now > last else last) + size * 8.0 / rate
        m._last_departure = departure
        q.append(departure)
        if len(q) > m.queue_high_water:
            m.queue_high_water = len(q)
    release = departure + imp.delay_s
    if release < m._last_release:
        release = m._last_release
    m._last_release = release
    m.delivered += 1
    return release


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Knobs of the model that a scenario does not say."""

    steering_latency_s: float = 0.0          # decision → packets on the new path (the kernel update)
    sample_period_s: float | None = None     # None: SAMPLE_PERIOD_S, coarser for huge runs
    wall_budget_s: float | None = None       # stop (raise WallBudgetExceeded) once the run has taken this long
    # flow mode: a steady path's probes coast (`PathMonitor.coast`) between timeline steps
    probe_coast: bool = True


@dataclass(frozen=True, slots=True)
class SimPath:
    """One path of a site: where it goes and the hops of its probes and packets, both ways."""

    id: PathId
    remote: str
    uplink: str
    remote_uplink: str
    forward: Hops       # local uplink toward the core, then the remote uplink from it
    reverse: Hops       # the remote uplink toward the core, then the local uplink from it
