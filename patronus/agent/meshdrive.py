"""The agent's mesh discovery driver (issue 14): the site's `MeshNode` (patronus/core/meshnode.py) over UDP,
and the remotes it finds turned into paths.

* **Identity.** The site file's `mesh:` section names this site's certificate, its Ed25519 signing key
  (0600) and the organisation's root (files made by `patronus ca` and `patronus keys signing`), and may
  name a revocation list to start from. The certificate must carry this site's WireGuard public key and
  name and id; the agent refuses to start otherwise, naming the field.
* **Datagrams.** One UDP socket per uplink, bound to the uplink's address and `mesh.port` (51900), marked
  with the uplink's fwmark so that it leaves by that uplink's table, as the tunnels' packets do. A
  `Transmit` to a site goes to each endpoint of its announcement, the j-th from this site's uplink j
  modulo their count; to an address (a seed "ip:port", or the source of a datagram) from the first
  uplink. A datagram's source is given to the node as "ip:port" (its rate limit and "who are you?" are
  per source). The node checks everything else: signatures, certificates, revocations, replays.
* **Paths.** The node says which sites this one peers with (`PeerUp` / `PeerChanged` / `PeerDown`); the
  driver keeps the wanted set and one task reconciles the agent's learned remotes with it
  (`learned.Learned.apply`): removals first, then additions, a peer whose key, endpoints or prefixes changed
  is removed and added again. Coalescing: a burst of changes (a push-pull admitting ten sites) is one
  reconfiguration. A remote of the site file is never replaced by a learned one.
* **Probe keys.** A learned remote's probes use the site's `probe.secret` (the organisation's, the same at
  every site): the pair key is derived from it and both site names, as for a static remote.
* **Events.** `SiteJoined`, `SiteSuspected`, `SiteLeft`, `KeyRotated` are published and stored like the
  runtime's; the node stamps them with wall time, the hub wants monotonic.
* **Leaving.** A stop that removes the site's dataplane on purpose (`--cleanup`, SIGUSR2) announces that
  the site leaves; a graceful stop (an upgrade) does not (its peers keep their paths and see it back in
  seconds), nor does SIGUSR1 (the test-bed's "the site loses its router": its peers find it failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import time
from typing import Any

from patronus.agent import keys as keymod
from patronus.agent.ca import read_object
from patronus.agent.config import EndpointConfig, MeshSettings, RemoteConfig, SiteConfig
from patronus.agent.sockets import open_path_socket
from patronus.core import identity as ident
from patronus.core.announce import Announcement, Endpoint
from patronus.core.errors import ConfigError
from patronus.core.events import Event
from patronus.core.meshnode import (
    MeshIdentity,
    MeshNode,
    MeshOptions,
    Output,
    PeerChanged,
    PeerDown,
    PeerUp,
    Transmit,
    kept_for,
)

log = logging.getLogger("patronus.agent")

_MAX_DGRAM = 65535
RETRY_MIN_S = 1.0           # a refused reconfiguration is tried again after this, doubling...
RETRY_MAX_S = 30.0          # ...up to this


def load_identity(cfg: SiteConfig, m: MeshSettings, wg_public_key: str) -> tuple[MeshIdentity, bytes | None]:
    """The site's certificate, signing key and root, and the starting revocation list (ConfigError naming
    the `mesh.*` field when a file is missing, malformed, or does not belong to this site)."""
    def obj(path: Any, fld: str) -> tuple[bytes, Any]:
        try:
            return read_object(path)
        except ConfigError as exc:
            raise ConfigError(str(exc.errors[0][1]) if exc.errors else str(exc), fld) from None

    cert_bytes, cert = obj(m.certificate, "mesh.certificate")
    root_bytes, _root = obj(m.root, "mesh.root")
    try:
        root = ident.verify_root(root_bytes)
    except ident.IdentityError as exc:
        raise ConfigError(f"{m.root} is not an organisation's root certificate: {exc}", "mesh.root") from None
    if not isinstance(cert, ident.Certificate) or cert.is_ca:
        raise ConfigError(f"{m.certificate} is not a site certificate", "mesh.certificate")
    mine = (cfg.name, cfg.id, wg_public_key)
    theirs = (cert.site_name, cert.site_id, keymod.key_text(cert.wg_public_key))
    if mine != theirs:
        raise ConfigError(f"{m.certificate} is the certificate of site {cert.site_name} (id {cert.site_id}, WireGuard "
                          f"key {theirs[2]}); this site is {cfg.name} (id {cfg.id}, key {wg_public_key})",
                          "mesh.certificate")
    key = keymod.load_signing_key(m.signing_key, "mesh.signing_key")
    if ident.public_key_bytes(key) != cert.signing_key:
        raise ConfigError(f"{m.signing_key} is not the signing key the certificate names", "mesh.signing_key")
    revocations = None
    if m.revocations is not None:
        revocations, rl = obj(m.revocations, "mesh.revocations")
        if not isinstance(rl, ident.RevocationList):
            raise ConfigError(f"{m.revocations} is not a revocation list", "mesh.revocations")
    return MeshIdentity(cert_bytes, key, root), revocations


def learned_remote(a: Announcement) -> RemoteConfig:
    """A peer's announcement as a remote of the site file would say it. An announcement lists the endpoints
    in uplink-name order; an endpoint's position there is the uplink number the WireGuard ports are
    computed from, and the far end numbers its own uplinks the same way for learned paths
    (`config.with_remotes`)."""
    return RemoteConfig(name=a.site_name, id=a.site_id, public_key=keymod.key_text(a.wg_key),
                        prefixes=tuple(str(p) for p in a.prefixes),
                        endpoints=tuple(EndpointConfig(uplink=e.uplink, uplink_no=j, address=str(e.address))
                                        for j, e in enumerate(a.endpoints)),
                        probe_secret=None, learned=True)


class MeshDriver:
    """One agent's mesh node, its sockets and timer, and the reconciliation of its peers into remotes.
    `agent` is the running `patronus.agent.daemon.Agent` (typed loosely: that module imports this one)."""

    def __init__(self, agent: Any, settings: MeshSettings, identity: MeshIdentity, revocations: bytes | None) -> None:
        self.agent = agent
        self.m = settings
        self.identity, self.revocations = identity, revocations
        self.node: MeshNode | None = None
        self.socks: list[socket.socket] = []
        self.want: dict[str, RemoteConfig] = {}
        self.kept: set[str] = set()             # kept from the previous agent, not yet found again
        self._changed = asyncio.Event()
        self.settled = asyncio.Event()          # the first peers applied (or none to wait for: no seeds)
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.sent = 0
        self.send_errors = 0
        self.apply_failures = 0          # reconfigurations refused (each retried: `_reconcile`)
        self.closed = False

    # -- start / stop ---------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, agent: Any, settings: MeshSettings) -> MeshDriver:
        """The driver of `agent`'s mesh, its files read and checked against the site (`load_identity`:
        ConfigError naming the field, before anything is built on the host); `start` it once the site is up."""
        return cls(agent, settings, *load_identity(agent.cfg, settings, agent.public_key))

    def start(self) -> None:
        cfg, m = self.agent.cfg, self.m
        identity, revocations = self.identity, self.revocations
        endpoints = [Endpoint(u.name, ipaddress.ip_address(u.address), m.port) for u in cfg.uplinks]
        now = time.time()
        self.node = MeshNode(identity, MeshOptions(topology=m.topology, swim=m.swim),
                             wg_key=keymod.key_bytes(self.agent.public_key), endpoints=endpoints,
                             prefixes=[ipaddress.ip_network(p) for p in cfg.lan_prefixes], rand=random.Random(),
                             region=m.region, sequence_floor=int(now * 1000), revocations=revocations)
        loop = asyncio.get_running_loop()
        try:
            for up in cfg.uplinks:
                sock = open_path_socket(up.address, up.interface, up.mark, m.port)
                self.socks.append(sock)
                loop.add_reader(sock.fileno(), self._readable, sock)
        except Exception:
            self.close()
            raise
        # the remotes kept from the previous agent (`Learned.keep`): wanted until the node says
        # otherwise, or until a sync period passes without the node finding them (`_expire_kept`)
        self.want = {r.name: r for r in cfg.remotes if r.learned}
        self.kept = set(self.want)
        if self.kept:
            loop.call_later(kept_for(m.swim), self._expire_kept)
        self._task = loop.create_task(self._reconcile(), name="patronus-mesh")
        if not m.seeds or self.kept:
            self.settled.set()          # nothing to wait for, or the peers are there already
        # a restarted agent asks its kept peers too (at the organisation's mesh port): they are the likeliest
        # live members, and a site that is its mesh's only seed would otherwise wait for a peer that may
        # have declared it failed meanwhile
        seeds = [f"{a}:{p}" for a, p in m.seeds]
        for r in sorted(self.want.values(), key=lambda r: r.name):
            seeds += [f"[{e.address}]:{m.port}" if ":" in e.address else f"{e.address}:{m.port}" for e in r.endpoints]
        self.perform(self.node.start(list(dict.fromkeys(seeds)), now))

    def leave(self) -> None:
        """Say that this site leaves the mesh (best effort: the datagrams go out now, once)."""
        if self.node is not None and not self.closed:
            self.perform(self.node.leave(time.time()))

    async def stop(self, leave: bool) -> None:
        """The agent stops: silent at once (saying first that the site leaves, if it does), so that a
        failed router answers no more probes and its peers suspect it from this instant; a
        reconfiguration in flight finishes (what it built is then registered for undo)."""
        if leave:
            self.leave()
        self.silence()
        async with self.agent.learned.lock:
            self.halt()

    def halt(self) -> None:
        """No more reconfiguration (the agent stops; it waited for one in flight)."""
        if self._task is not None:
            self._task.cancel()

    def silence(self) -> None:
        """No datagram in or out from now on, no timer (the reconfiguration task is `halt`'s)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.socks:
            loop = asyncio.get_running_loop()
            for s in self.socks:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(s.fileno())
                s.close()
            self.socks.clear()

    def close(self) -> None:
        self.silence()
        self.halt()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- the node's outputs ---------------------------------------------------------------------------

    def perform(self, outs: list[Output]) -> None:
        if self.closed:
            return
        for o in outs:
            if isinstance(o, Transmit):
                self._transmit(o.to, o.data)
            elif isinstance(o, PeerUp | PeerChanged):
                self._want(o.site, learned_remote(o.announcement))
            elif isinstance(o, PeerDown):
                self.kept.discard(o.site)
                if self.want.pop(o.site, None) is not None:
                    self._changed.set()
            elif isinstance(o, Event):
                ev = dataclasses.replace(o, at=o.at - self.agent.offset)      # wall -> monotonic
                self.agent.publish(ev)
                self.agent.store_events([ev])
        self._arm()

    def _expire_kept(self) -> None:
        """Kept remotes the node has not found again: gone (their tunnels and steering with them)."""
        stale = sorted(self.kept)
        self.kept.clear()
        if stale and not self.closed:
            log.info("mesh: kept remotes not found again within %.0f s: %s", kept_for(self.m.swim), ", ".join(stale))
            for name in stale:
                self.want.pop(name, None)
            self._changed.set()

    def _want(self, site: str, remote: RemoteConfig) -> None:
        if any(r.name == site and not r.learned for r in self.agent.cfg.remotes):
            return          # the site file's remote wins
        self.kept.discard(site)
        have = self.want.get(site)
        if have is not None and dataclasses.replace(have, number=remote.number) == remote:
            self.want[site] = remote        # the same remote (a kept one found again): nothing to change
        elif have != remote:
            self.want[site] = remote
            self._changed.set()

    def _transmit(self, to: str, data: bytes) -> None:
        assert self.node is not None
        if not self.socks:
            return
        eps = self.node.endpoints(to)
        if eps:
            targets = [(self.socks[j % len(self.socks)], (str(e.address), e.port)) for j, e in enumerate(eps)]
        else:
            host, _, port = to.rpartition(":")
            try:
                targets = [(self.socks[0], (host.strip("[]"), int(port)))]
            except ValueError:
                return        # a site we know no endpoint of (not yet introduced): nothing to send to
        for sock, addr in targets:
            try:
                sock.sendto(data, addr)
                self.sent += 1
            except OSError:
                self.send_errors += 1

    def _readable(self, sock: socket.socket) -> None:
        if self.node is None or self.closed:
            return
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(_MAX_DGRAM)
            except OSError:
                break
            src = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
            self.perform(self.node.on_datagram(src, data, time.time()))

    def _arm(self) -> None:
        if self.node is None or self.closed:
            return
        when = self.node.next_deadline()
        if when is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when - self.agent.offset, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.node is not None and not self.closed:
            self.perform(self.node.on_timer(time.time()))

    # -- remotes --------------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Make the agent's learned remotes what the node wants, one reconfiguration per burst. A
        reconfiguration the kernel refuses (it undid itself: `Learned.apply`) is tried again on the next
        membership change, or after a backoff (RETRY_MIN_S, doubling to RETRY_MAX_S) if none comes: the
        cause may pass (a port held for a moment, a busy kernel)."""
        backoff = 0.0
        while True:
            if backoff:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), backoff)
            else:
                await self._changed.wait()
            self._changed.clear()
            want = sorted(self.want.values(), key=lambda r: r.name)
            try:
                await self.agent.learned.apply(want)
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:       # a remote the kernel or the file refuses: logged, retried
                backoff = min(RETRY_MAX_S, max(RETRY_MIN_S, 2 * backoff))
                self.apply_failures += 1
                log.error("mesh: cannot apply the peers %s: %s (trying again in %.0f s, or at the next change)",
                          ", ".join(r.name for r in want) or "(none)", exc, backoff)
            if not self._changed.is_set():
                self.settled.set()

    def state(self) -> dict[str, Any]:
        """The mesh as this site sees it (the API's topology `mesh`): its members (and which it peers
        with), datagrams refused by reason, announcements refused by reason, datagrams sent."""
        node = self.node
        if node is None:
            return {"members": [], "rejected": {}, "refused_announcements": {}, "sent": 0, "send_errors": 0,
                    "apply_failures": 0, "kept": sorted(self.kept)}
        peers = set(node.peers())
        return {"members": [{"site": name, "site_id": a.site_id, "peer": name in peers,
                             "endpoints": [f"{e.address}:{e.port}" for e in a.endpoints]}
                            for name, a in sorted(node.members().items())],
                "rejected": dict(node.rejected), "refused_announcements": dict(node.gate.rejected),
                "revocations": node.rl_sequence, "sent": self.sent, "send_errors": self.send_errors,
                "apply_failures": self.apply_failures, "kept": sorted(self.kept)}

