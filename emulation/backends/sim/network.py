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

Randomness: each model is seeded from the scenario's seed, the link's name and the direction, so a
link's decisions do not depend on what else the scenario contains.

Times here are virtual seconds: scenario time, 0 at the start of the scenario.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import Timeout

from emulation.links.impairment import GilbertElliott, Impairment, ImpairmentModel
from emulation.scenario.model import LinkSettings, Scenario
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


def impairment_of(s: LinkSettings) -> Impairment:
    """One direction of a link in the state `s` (the Mininet runner builds the same for its relays)."""
    ge = s.loss_model
    return Impairment(delay_s=s.delay_s, jitter_s=s.jitter_s, jitter_distribution=s.jitter_distribution.value,
                      loss=s.loss_ratio, loss_model=GilbertElliott(ge.p, ge.r, ge.h, ge.k) if ge is not None else None,
                      rate_bps=s.rate_bps, queue_limit=s.queue_limit_packets, duplicate=s.duplicate_ratio,
                      reorder=s.reorder_ratio, corrupt=s.corrupt_ratio, cut=not s.up)


def later(env: simpy.Environment, delay: float, fn: Callable[[Any], None]) -> None:
    """Call `fn(event)` `delay` seconds from now: one Timeout and a callback, no process."""
    Timeout(env, delay if delay > 0.0 else 0.0).callbacks.append(fn)


@dataclass(frozen=True, slots=True)
class Hops:
    """The models a packet crosses, in order, one way."""

    models: tuple[ImpairmentModel, ...]
    links: tuple[str, ...]          # the link of each hop, "site.uplink"
    directions: tuple[str, ...]     # TO_CORE / FROM_CORE for each hop


class Network:
    """Every link of a scenario, its current settings and their history (for the flow-level models)."""

    def __init__(self, env: simpy.Environment, scenario: Scenario) -> None:
        self.env = env
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
            self.models[(link, direction)].set(imp)
        self.settings[link] = settings
        self.history[link].append((now, settings))

    def send(self, hops: Hops, size: int, arrive: Callable[[], None]) -> None:
        """A packet of `size` bytes (on the wire) enters the first hop now; `arrive()` is called when
        it leaves the last one, not at all if a hop drops it."""
        self._hop(hops.models, 0, size, arrive)

    def _hop(self, models: tuple[ImpairmentModel, ...], i: int, size: int, arrive: Callable[[], None]) -> None:
        env = self.env
        now = env.now
        model = models[i]
        nxt = i + 1
        if model.passthrough(now):
            if nxt == len(models):
                arrive()
            else:
                self._hop(models, nxt, size, arrive)
            return
        for release, action in model.on_packet(now, size):
            if action:      # corrupted (bit 0) or a duplicate (bit 1): refused at the far end
                continue
            if nxt == len(models):
                later(env, release - now, lambda _e: arrive())
            else:
                later(env, release - now, lambda _e: self._hop(models, nxt, size, arrive))
