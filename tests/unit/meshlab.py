"""A deterministic lab of `MeshNode`s for tests: an organisation (root key, site certificates), a network
that delivers datagrams after a fixed delay (optionally dropping some, or all to and from a dead site),
and virtual Unix time. Each node's outputs are kept: its peers as PeerUp / PeerDown say, and its events."""

from __future__ import annotations

import heapq
import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patronus.core import identity as ident
from patronus.core.announce import Announcement, Endpoint
from patronus.core.events import Event
from patronus.core.mesh import MeshTopology
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
)
from patronus.core.swim import SwimConfig

T0 = 1_800_000_000.0
DAY = 86_400


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(n.to_bytes(32, "big"))


class Org:
    def __init__(self, name: str = "acme", seed: int = 1) -> None:
        self.ca = key(10_000 + seed)
        self.root = ident.self_sign_root(self.ca, name, [ipaddress.ip_network("10.0.0.0/8")],
                                         not_before=int(T0) - DAY, not_after=int(T0) + 365 * DAY, serial=seed)
        self.serials: dict[str, int] = {}

    def identity(self, name: str, site_id: int, *, not_after: int | None = None) -> MeshIdentity:
        k = key(site_id)
        serial = 1000 + site_id
        cert = ident.sign_site(self.ca, self.root, site_id=site_id, site_name=name,
                               signing_key=ident.public_key_bytes(k), wg_public_key=wg_key(site_id, 0),
                               prefixes=[prefix_of(site_id)], not_before=int(T0) - DAY,
                               not_after=not_after if not_after is not None else int(T0) + 30 * DAY, serial=serial)
        self.serials[name] = serial
        return MeshIdentity(ident.encode(cert), k, self.root)

    def revoke(self, names: Iterable[str], sequence: int = 1) -> bytes:
        rl = ident.sign_revocations(self.ca, self.root, sequence=sequence, issued_at=int(T0),
                                    serials=[self.serials[n] for n in names])
        return ident.encode_revocations(rl)


def wg_key(site_id: int, generation: int) -> bytes:
    return bytes([site_id % 256, generation % 256]) + bytes(range(1, 31))


def prefix_of(site_id: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{site_id // 256}.{site_id % 256}.0/24")


@dataclass
class Site:
    node: MeshNode
    peers: dict[str, Announcement] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    changes: list[tuple[float, str, str]] = field(default_factory=list)   # (time, "up"/"down"/"changed", peer)
    alive: bool = True


class MeshLab:
    def __init__(self, *, topology: MeshTopology | None = None, swim: SwimConfig | None = None, delay: float = 0.005,
                 loss: float = 0.0, seed: int = 1, signed_here: SignedHere | None = None) -> None:
        self.org = Org()
        self.options = MeshOptions(topology=topology or MeshTopology(), swim=swim or SwimConfig())
        self.delay, self.loss = delay, loss
        self.signed_here = signed_here          # shared by every node, as in the simulator
        self.rand = random.Random(seed)
        self.now = T0
        self.sites: dict[str, Site] = {}
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._n = 0
        self.drop: Callable[[str, str, bytes], bool] = lambda _src, _dst, _data: False
        self.sent: list[tuple[float, str, str, bytes]] = []        # every datagram put on the wire

    def add(self, name: str, site_id: int, *, seeds: Iterable[str] = (), region: str | None = None,
            identity: MeshIdentity | None = None, revocations: bytes | None = None,
            options: MeshOptions | None = None) -> Site:
        endpoint = Endpoint("isp1", ipaddress.ip_address(f"192.0.2.{site_id}"), 51900)
        node = MeshNode(identity or self.org.identity(name, site_id), options or self.options,
                        wg_key=wg_key(site_id, 0), endpoints=[endpoint], prefixes=[prefix_of(site_id)],
                        rand=random.Random(site_id), region=region,
                        sequence_floor=int(self.now * 1000), revocations=revocations, signed_here=self.signed_here)
        site = self.sites[name] = Site(node)
        self.handle(name, node.start(list(seeds), self.now))
        return site

    def handle(self, name: str, outs: list[Output]) -> None:
        site = self.sites[name]
        for o in outs:
            if isinstance(o, Transmit):
                self.send(name, o.to, o.data)
            elif isinstance(o, PeerUp | PeerChanged):
                site.peers[o.site] = o.announcement
                site.changes.append((self.now, "up" if isinstance(o, PeerUp) else "changed", o.site))
            elif isinstance(o, PeerDown):
                site.peers.pop(o.site, None)
                site.changes.append((self.now, "down", o.site))
            else:
                site.events.append(o)

    def send(self, src: str, dst: str, data: bytes) -> None:
        self.sent.append((self.now, src, dst, data))
        if not self.sites[src].alive or (self.loss and self.rand.random() < self.loss):
            return
        self._n += 1
        heapq.heappush(self._queue, (self.now + self.delay, self._n, src, dst, data))

    def kill(self, name: str) -> None:
        """The site dies: silent (what it sent before is still delivered), deaf, no timers."""
        self.sites[name].alive = False

    def run_until(self, t: float) -> None:
        while True:
            timers = [(s.node.next_deadline(), n) for n, s in self.sites.items() if s.alive]
            due = min(((d, n) for d, n in timers if d is not None), default=None)
            nxt_msg = self._queue[0][0] if self._queue else None
            nxt = min(x for x in (due[0] if due else None, nxt_msg, t) if x is not None)
            if nxt >= t and (nxt_msg is None or nxt_msg > t) and (due is None or due[0] > t):
                self.now = t
                return
            self.now = max(self.now, nxt)
            if nxt_msg is not None and nxt_msg <= self.now:
                _, _, src, dst, data = heapq.heappop(self._queue)
                site = self.sites.get(dst)
                if site is not None and site.alive and not self.drop(src, dst, data):
                    self.handle(dst, site.node.on_datagram(src, data, self.now))
                continue
            assert due is not None
            self.handle(due[1], self.sites[due[1]].node.on_timer(self.now))

    def run_for(self, s: float) -> None:
        self.run_until(self.now + s)

    def when(self, cond: Callable[[], bool], within: float, step: float = 0.01) -> float | None:
        """Run until `cond()` holds (checked every `step`); the time it took, or None if not within."""
        start = self.now
        while self.now - start <= within:
            if cond():
                return self.now - start
            self.run_for(step)
        return None

    def live(self) -> list[str]:
        return [n for n, s in self.sites.items() if s.alive]

    def full_mesh(self, names: Iterable[str] | None = None) -> bool:
        names = list(self.live() if names is None else names)
        return all(set(self.sites[n].peers) == set(names) - {n} for n in names)
