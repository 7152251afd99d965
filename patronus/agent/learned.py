"""Mesh discovery's remotes applied to a running agent (issue 14): what `meshdrive` found becomes remotes,
tunnels, steering, probes and runtime state, and goes away again, without moving any other remote's flow.

`Learned.apply(remotes)` makes the agent's learned remotes exactly `remotes`, under one lock (one
reconfiguration at a time; the agent's stop waits for the one in flight):

1. the set is checked first (`config.with_remotes`: a clash with this site or a remote of the site file,
   overlapping prefixes, numbers or ports run out): ConfigError, nothing changed;
2. remotes gone, or changed (key, endpoints, prefixes: removed and added again), leave the runtime first
   (their slots out of the kernel maps in the next step), their connections are forgotten (conntrack:
   `steering.forget_remote`, so their number can be given to another), then their steering and tunnels go
   (`Dataplane.change_remotes`);
3. new remotes get their tunnels, steering, probe senders and reflector keys, then enter the runtime (each
   path Down until its probes bring it up).

Numbers stay: a remote or path that stays keeps its number (its marks, its tunnel's name), a new one takes
the lowest free (`config.with_remotes`), so the kernel state of the others is untouched.

`keep(record)`, at start: the remotes an earlier agent had learned, from its dataplane record (graceful restart).

`warm(path)`: a path came Up; the tunnel's handshake is started if it has none (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from patronus.agent.adopt import HostRecord
from patronus.agent.config import RemoteConfig, SiteConfig, with_remotes
from patronus.agent.dataplane import Dataplane
from patronus.agent.numbering import KernelNumbers
from patronus.agent.steering import forget_remote
from patronus.core.errors import ConfigError
from patronus.core.model import Endpoint, EndpointId, PathId, Site, SiteId

log = logging.getLogger("patronus.agent")

WARM_RESPONDER_S = 1.0     # a tunnel's far end (the higher site id) starts a handshake after this, if none came


class Learned:
    """The learned remotes of one agent. `agent` is the running `patronus.agent.daemon.Agent` (typed
    loosely: that module imports this one); `pump(now)` runs a step of its runtime and performs it."""

    def __init__(self, agent: Any, pump: Callable[[float], None]) -> None:
        self.agent = agent
        self.pump = pump
        self.lock = asyncio.Lock()

    def keep(self, record: HostRecord) -> None:
        """At start: the remotes the previous agent had learned (its dataplane record), numbered as it
        numbered them, so their tunnels and steering are adopted as they are (the mesh driver keeps them
        while its node finds them again: `MeshDriver.start`). Ones that no longer fit the site file are
        left out, and their tunnels go like any the site no longer has."""
        a = self.agent
        try:
            cfg = with_remotes(a.cfg, record.learned, numbers=(record.remotes, record.paths))
        except ConfigError as exc:
            log.warning("not keeping the learned remotes of the dataplane record: %s", exc)
            return
        now = time.monotonic()
        for r in cfg.remotes:
            if r.learned:
                a.runtime.add_remote(r.name, r.prefixes, [], now)      # its paths come with the others
        a.cfg = cfg
        a.numbers = KernelNumbers(cfg)
        a.dataplane = Dataplane(cfg, a.numbers, a.life)
        log.info("kept the learned remotes %s from the dataplane record", ", ".join(r.name for r in record.learned))

    async def apply(self, learned: Sequence[RemoteConfig]) -> None:
        """Make the agent's learned remotes `learned` (see the module's header)."""
        a = self.agent
        async with self.lock:
            if a.stopping:
                return
            old: SiteConfig = a.cfg
            have = {r.name: r for r in old.remotes if r.learned}
            wanted = {r.name: dataclasses.replace(r, number=have[r.name].number) if r.name in have else r
                      for r in learned}
            with_remotes(old, list(wanted.values()))              # checked before anything changes
            stay = [r for n, r in have.items() if n in wanted and wanted[n] == r]
            gone = [r for n, r in have.items() if not (n in wanted and wanted[n] == r)]
            if gone:
                now = time.monotonic()
                for r in gone:
                    if SiteId(r.name) in a.runtime.remotes:      # (not after a removal the kernel refused)
                        a.runtime.remove_remote(r.name, now)
                self.pump(now)                    # the kernel maps lose their slots
                for r in gone:
                    forgotten = await a.life.on_kernel(self._forget, r.number)
                    log.info("mesh: remote %s removed (%d connections forgotten)", r.name, forgotten)
                await self._retarget(with_remotes(old, stay))
            added = [r for n, r in wanted.items() if not any(s.name == n for s in stay)]
            if not added:
                return
            final = with_remotes(a.cfg, list(wanted.values()))
            began = time.monotonic()
            await self._retarget(final)
            now = time.monotonic()
            n = 0
            for r in added:
                paths = [p for p in final.core_paths() if p.dst_site == r.name]
                a.runtime.add_remote(r.name, r.prefixes, paths, now)
                for p in paths:
                    a.status_since[p.id] = a.wall(now)
                n += len(paths)
            steps = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in a.dataplane.last_change.items())
            log.info("mesh: %d remotes added (%s), %d paths, in %.2f s (%s)", len(added),
                     ", ".join(r.name for r in added), n, now - began, steps)
            self._store(final, added)
            self.pump(now)

    def _forget(self, number: int) -> int:
        steering = self.agent.dataplane.steering
        return forget_remote(number) if steering is not None and steering.applied else 0

    async def _retarget(self, cfg: SiteConfig) -> None:
        """Everything that reads the site's remotes and paths, moved to `cfg` (kernel first)."""
        a = self.agent
        old = a.numbers.plans, a.numbers.remotes
        a.numbers.retarget(cfg)
        try:
            await a.dataplane.change_remotes(cfg, a.private_key, a.numbers.numbered(a.router.list_policies()))
        except Exception:
            a.numbers.plans, a.numbers.remotes = old
            raise
        a.cfg = cfg
        if a.prober is not None:
            a.prober.retarget(cfg)
        if a.reflector is not None:
            a.reflector.set_peers(cfg)

    def _store(self, cfg: SiteConfig, added: Sequence[RemoteConfig]) -> None:
        store = self.agent.store
        if store is None:
            return
        names = {r.name for r in added}
        try:
            with store.transaction():
                for r in added:
                    store.upsert_site(Site(SiteId(r.name), r.name, r.prefixes), public_key=r.public_key)
                    for ep in r.endpoints:
                        store.add_endpoint(Endpoint(EndpointId(f"{r.name}:{ep.uplink}"), SiteId(r.name), ep.address))
                for path in cfg.core_paths():
                    if path.dst_site in names:
                        store.upsert_path(path, wg_interface=self.agent.numbers.plans[path.id].ifname)
        except Exception as exc:
            log.error("store: cannot record the learned remotes: %s", exc)

    def warm(self, pid: PathId) -> None:
        """A path came Up: its probes are answered, so the far end has its tunnel (an agent creates its
        tunnels before its reflector answers a new remote). If the tunnel has never had a handshake, the
        end that initiates (the lower site id) starts one at once: its first initiation may have reached
        the far end before that tunnel existed (a site that just joined), and WireGuard would retry only
        after its 5 s rekey timeout. The other end waits `WARM_RESPONDER_S` and starts one itself if there
        is still none: the initiator may hold a session with this site's previous tunnel (removed and
        built again when the mesh thought it dead), which it keeps using until its 2-minute rekey, sending
        keepalives our new tunnel cannot read; one initiation from here replaces it."""
        a = self.agent
        plan = a.numbers.plans.get(pid)
        if plan is None or a.loop is None or a.dataplane.wg is None:
            return
        with contextlib.suppress(KeyError):
            initiator = a.cfg.id < a.cfg.remote(plan.remote).id
            warm = functools.partial(a.loop.run_in_executor, a.life.kernel, a.dataplane.warm, plan)
            if initiator:
                warm()
            else:
                a.loop.call_later(WARM_RESPONDER_S, lambda: None if a.stopping or
                                  a.numbers.plans.get(pid) != plan else warm())
