"""Mesh discovery in the simulator (issue 14): each site's agent runs the same `MeshNode` the agent does,
and its datagrams cross the modelled links.

* **The organisation.** `SimOrg` makes the scenario's root key and one certificate per site, deterministic
  from the scenario's seed: site id and name as the scenario gives them, its LAN prefix as the only
  prefix it may announce, valid from a day before the run to a year after it. Its WireGuard key is the
  simulator's stand-in (`sim_public_key`): no tunnel runs here.
* **Datagrams.** A `Transmit` to a site goes out once per uplink of the destination (its announcement's
  endpoints, or the scenario's uplinks for a seed not heard of yet), the j-th from this site's uplink j
  modulo its count, across the two link models (this uplink toward the core, the far one from it), as
  the agent's datagrams would leave by the default route of each uplink. A copy lost on a cut or lossy
  link is lost; the node takes duplicates as they come (a second Ack changes nothing).
* **Paths.** `PeerUp` builds the paths to the peer (this site's uplinks × its endpoints) and adds the
  remote to the site's runtime (`SiteRuntime.add_remote`); `PeerDown` removes it (`remove_remote`) and
  unclassifies the flows toward it (as conntrack entries whose mark maps to nothing, they are classified
  again when it comes back); `PeerChanged` with other endpoints or prefixes rebuilds them (a key change
  alone changes nothing here).
* **Signatures.** Every datagram is signed and checked as on a real site, but a datagram a node of this run
  signed, arriving unaltered with the sender's key, is known to verify (`SignedHere`): its check is skipped
  (it took 40 % of the simulation of a 60-site mesh forming: 16.9 s of simulation became 9.6 s, the raw data
  byte for byte the same). A datagram altered or signed by another key is still verified, and refused.
* **Clock.** The node sees wall seconds (`World.wall`, the scenario's T0 plus virtual time); its timer is
  armed on the simulation's clock as the runtime's is.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.network import FROM_CORE, IPV4_BYTES, TO_CORE, UDP_BYTES, Network, SimPath
from emulation.backends.sim.traffic import SimFlow
from emulation.scenario.model import Mesh, Scenario, Site
from emulation.siteconf import uplink_addresses
from patronus.core import identity as ident
from patronus.core.announce import Announcement, Endpoint
from patronus.core.events import Event
from patronus.core.meshnode import (
    MeshIdentity,
    MeshNode,
    MeshOptions,
    Output,
    PeerChanged,
    PeerDown,
    PeerUp,
    SignedHere,
    Transmit,
    kept_for,
)
from patronus.core.model import EndpointId, Path, PathId, SiteId
from patronus.core.runtime import SiteRuntime
from patronus.core.swim import SwimConfig


class _World(Protocol):
    @property
    def net(self) -> Network: ...
    @property
    def agents(self) -> Mapping[str, _Agent]: ...
    def wall(self, t: float) -> float: ...


class _Agent(Protocol):
    """What the mesh drives of a `SimAgent` (agent.py imports this module: a protocol, not the class)."""

    name: str
    generation: int
    runtime: SiteRuntime | None
    paths: dict[PathId, SimPath]
    flows: list[SimFlow]
    learned: dict[str, Announcement]        # the dataplane's learned remotes (kept across a graceful stop)

    @property
    def sim(self) -> _World: ...
    @property
    def env(self) -> SimEnvironment: ...
    def pump_now(self, now: float) -> None: ...
    def mesh_datagram(self, src: str, data: bytes) -> None: ...

MESH_PORT = 51900
DAY = 86_400
DATAGRAM_OVERHEAD = UDP_BYTES + IPV4_BYTES + 14      # UDP, IPv4 and Ethernet around a mesh datagram


def _seeded_key(*parts: object) -> Ed25519PrivateKey:
    raw = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=32).digest()
    return Ed25519PrivateKey.from_private_bytes(raw)


def _path_id(remote: str, uplink: str, remote_uplink: str) -> PathId:
    """The agent's path id (`patronus.agent.config`): `remote:uplink-remote_uplink`."""
    return PathId(f"{remote}:{uplink}-{remote_uplink}")


def mesh_options(mesh: Mesh) -> MeshOptions:
    t = mesh.timers
    swim = SwimConfig(probe_interval=t.probe_interval_s, probe_timeout=t.probe_timeout_s,
                      suspicion_mult=t.suspicion_mult, sync_interval=t.sync_interval_s,
                      join_interval=t.join_interval_s, gossip_interval=min(0.2, t.probe_interval_s / 2))
    return MeshOptions(topology=mesh.topology, swim=swim)


class SimOrg:
    """The scenario's organisation: its root and each site's identity (see the module's header)."""

    def __init__(self, scenario: Scenario, t0: float) -> None:
        self.ca = _seeded_key("patronus-sim-ca", scenario.name, scenario.seed)
        nets = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        self.root = ident.self_sign_root(self.ca, "sim", nets, not_before=int(t0) - DAY,
                                         not_after=int(t0) + 365 * DAY, serial=1)
        self.identities: dict[str, MeshIdentity] = {}
        self.signed_here = SignedHere()          # the datagrams this run's nodes signed
        for site in scenario.sites:
            key = _seeded_key("patronus-sim-site", scenario.name, scenario.seed, site.name)
            cert = ident.sign_site(self.ca, self.root, site_id=site.id, site_name=site.name,
                                   signing_key=ident.public_key_bytes(key),
                                   wg_public_key=wg_key(scenario, site.name),
                                   prefixes=[ipaddress.ip_network(site.lan_prefix)], not_before=int(t0) - DAY,
                                   not_after=int(t0) + 30 * DAY, serial=1000 + site.id)
            self.identities[site.name] = MeshIdentity(ident.encode(cert), key, self.root)


def sim_public_key(scenario: Scenario, site: str) -> str:
    """A deterministic stand-in for a site's WireGuard public key (no tunnel runs in the simulator)."""
    raw = hashlib.blake2b(f"patronus-sim-key|{scenario.name}|{site}".encode(), digest_size=32).digest()
    return base64.b64encode(raw).decode("ascii")


def wg_key(scenario: Scenario, site: str) -> bytes:
    return base64.b64decode(sim_public_key(scenario, site))


class SimMesh:
    """One running agent's mesh node and what it drives (see the module's header). Made at each start of
    the agent (a new process, a new node), dropped at its stop."""

    def __init__(self, agent: _Agent, scenario: Scenario, identity: MeshIdentity, options: MeshOptions,
                 publish: Callable[[Event], None], signed_here: SignedHere | None = None,
                 kept: Iterable[str] = ()) -> None:
        self.agent = agent
        self.sim = agent.sim
        self.sc = scenario
        self.site = scenario.site(agent.name)
        self.publish = publish
        addrs = uplink_addresses(scenario)[agent.name]
        endpoints = [Endpoint(u.name, ipaddress.ip_address(addrs[u.name][0]), MESH_PORT) for u in self.site.uplinks]
        now = agent.env.now
        wall = self.sim.wall(now)
        rand = random.Random(f"sim/{scenario.seed}/mesh/{agent.name}/{agent.generation}")
        self.node = MeshNode(identity, options, wg_key=wg_key(scenario, agent.name), endpoints=endpoints,
                             prefixes=[ipaddress.ip_network(self.site.lan_prefix)], rand=rand,
                             region=self.site.region, sequence_floor=int(wall * 1000), signed_here=signed_here)
        self._token = 0
        self._timer_at: float | None = None
        self.alive = True
        # peers an earlier run of this agent had, kept with the dataplane (`SimAgent.start` put them back
        # in the runtime): kept until the node finds them again, at most `kept_for`
        self.kept = set(kept)
        self._kept_token = 0
        if self.kept:
            agent.env.later(kept_for(options.swim), self._expire_kept, self._kept_token)
        assert scenario.mesh is not None
        # a restarted agent asks its kept peers too: they are the likeliest live members, and a site that is
        # its mesh's only seed would otherwise wait for a peer that may have declared it failed meanwhile
        seeds = [s for s in scenario.mesh.seeds if s != agent.name]
        seeds += [s for s in sorted(self.kept) if s not in seeds]
        self.perform(self.node.start(seeds, wall))

    # -- the node's outputs -------------------------------------------------------------------------------

    def perform(self, outs: list[Output]) -> None:
        agent = self.agent
        now = agent.env.now
        changed = False
        for o in outs:
            if isinstance(o, Transmit):
                self._transmit(o.to, o.data)
            elif isinstance(o, PeerUp):
                rt = agent.runtime
                if o.site in self.kept and rt is not None and SiteId(o.site) in rt.remotes:
                    self.kept.discard(o.site)       # found again: as kept, unless it changed meanwhile
                    if self._paths_of(o.site, o.announcement) != \
                            {p.id for p in rt.paths.values() if p.dst_site == o.site}:
                        self._remove(o.site, now)
                        self._add(o.site, o.announcement, now)
                        changed = True
                    continue
                self._add(o.site, o.announcement, now)
                changed = True
            elif isinstance(o, PeerDown):
                self.kept.discard(o.site)
                self._remove(o.site, now)
                changed = True
            elif isinstance(o, PeerChanged):
                rt = agent.runtime
                if rt is not None and SiteId(o.site) in rt.remotes and self._paths_of(o.site, o.announcement) != \
                        {p.id for p in rt.paths.values() if p.dst_site == o.site}:
                    self._remove(o.site, now)
                    self._add(o.site, o.announcement, now)
                    changed = True
            else:
                self.publish(o)         # stamped with wall time, as the node sees it
        if changed and agent.runtime is not None:
            agent.pump_now(now)
        self._arm()

    def _transmit(self, to: str, data: bytes) -> None:
        if to not in self.sim.agents:
            return
        mine = [u.name for u in self.site.uplinks]
        theirs = [e.uplink for e in self.node.endpoints(to)] or [u.name for u in self.sc.site(to).uplinks]
        net = self.sim.net
        target = self.sim.agents[to]
        for j, far in enumerate(theirs):
            hops = net.hops((f"{self.agent.name}.{mine[j % len(mine)]}", TO_CORE), (f"{to}.{far}", FROM_CORE))
            net.send(hops, len(data) + DATAGRAM_OVERHEAD, target.mesh_datagram, self.agent.name, data)

    def _paths_of(self, remote: str, a: Announcement) -> set[PathId]:
        return {_path_id(remote, u.name, e.uplink) for u in self.site.uplinks for e in a.endpoints}

    def _add(self, remote: str, a: Announcement, now: float) -> None:
        add_learned(self.agent, self.site, remote, a, now)

    def _expire_kept(self, token: int) -> None:
        """Kept peers the node has not found again within `kept_for`: removed, as a PeerDown would."""
        if token != self._kept_token or not self.alive or not self.kept:
            return
        now = self.agent.env.now
        for name in sorted(self.kept):
            self._remove(name, now)
        self.kept.clear()
        if self.agent.runtime is not None:
            self.agent.pump_now(now)

    def _remove(self, remote: str, now: float) -> None:
        agent = self.agent
        agent.learned.pop(remote, None)
        rt = agent.runtime
        if rt is None or SiteId(remote) not in rt.remotes:
            return
        rt.remove_remote(remote, now)
        for f in agent.flows:
            if f.dst_site == remote and f.classified:
                f.classified = False
                f.slot = None
                f.pending_path = None
                f.set_path(None, now)

    # -- input and timer --------------------------------------------------------------------------------

    def datagram(self, src: str, data: bytes) -> None:
        if self.alive:
            self.perform(self.node.on_datagram(src, data, self.sim.wall(self.agent.env.now)))

    def leave(self) -> None:
        """The site leaves the mesh: it says so (the datagrams are on their way), then its node is gone."""
        if self.alive:
            self.perform(self.node.leave(self.sim.wall(self.agent.env.now)))
            self.stop()

    def stop(self) -> None:
        self.alive = False
        self._token += 1

    def _arm(self) -> None:
        if not self.alive:
            return
        when = self.node.next_deadline()
        if when is None:
            return
        at = when - self.sim.wall(0.0)
        if self._timer_at is not None and self._timer_at <= at:
            return
        self._token += 1
        self._timer_at = at
        env = self.agent.env
        env.later(max(at - env.now, 0.0), self._on_timer, self._token, at)

    def _on_timer(self, token: int, at: float) -> None:
        if token != self._token or not self.alive:
            return
        self._timer_at = None
        now = max(self.agent.env.now, at)
        self.perform(self.node.on_timer(self.sim.wall(now)))


def add_learned(agent: _Agent, site: Site, remote: str, a: Announcement, now: float, *, kept: bool = False) -> None:
    """The paths to a peer (the site's uplinks × its endpoints) into the agent's runtime, and the peer
    into its dataplane's learned remotes (kept across a graceful restart). `kept`: a peer the dataplane
    kept across a restart, whose paths exist already (no `PathAdded`, as the agent adopts them)."""
    rt = agent.runtime
    if rt is None:
        return
    agent.learned[remote] = a
    net = agent.sim.net
    paths: list[Path] = []
    for up in site.uplinks:
        for e in a.endpoints:
            pid = _path_id(remote, up.name, e.uplink)
            if pid not in agent.paths:
                agent.paths[pid] = net.path(pid, agent.name, up.name, remote, e.uplink)
            bw = up.bandwidth_bps / 1e6 if up.bandwidth_bps else None
            paths.append(Path(id=pid, src_site=SiteId(agent.name), dst_site=SiteId(remote),
                              src_endpoint=EndpointId(f"{agent.name}:{up.name}"),
                              dst_endpoint=EndpointId(f"{remote}:{e.uplink}"), cost_per_gb=up.cost_per_gb,
                              bandwidth_mbps=bw))
    if kept:
        rt.add_remote(remote, [str(p) for p in a.prefixes], [], now)
        for path in paths:
            rt.add_path(path, now)
    else:
        rt.add_remote(remote, [str(p) for p in a.prefixes], paths, now)
