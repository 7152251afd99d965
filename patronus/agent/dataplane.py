"""The agent's dataplane on the host: WireGuard tunnels, uplink routing and steering (nftables +
policy routing), and the record of how they are numbered for the next agent (`adopt.HostRecord`).

A start builds it plan-then-apply: what an earlier agent of this site left is surveyed (tunnels by
owner tag, the nft table's maps), then uplink routing, tunnels (created, adopted in place or
recreated) and steering are applied, keeping the map elements that still mean the same slot; a
tunnel no longer wanted is removed only once the steering no longer points there. Every step
registers its undo with the agent's `Lifecycle`, on the kernel worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from patronus.agent.adopt import HostRecord, Numbering, TunnelAction, kept_maps, plan_tunnels
from patronus.agent.config import PathPlan, SiteConfig
from patronus.agent.lifecycle import Lifecycle, Thread
from patronus.agent.numbering import KernelNumbers
from patronus.agent.steering import FALLBACK_POLICY_NO, Steering, change_routes
from patronus.core.model import PathId
from patronus.core.policy import RoutingPolicy

log = logging.getLogger("patronus.agent")


@dataclass
class Built:
    """What a start found of an earlier agent's dataplane: the steering maps it keeps (slot marks →
    path marks, None: nothing to keep) and the counts the API reports under `adopted`."""

    kept_slots: dict[int, int] | None = None
    tunnels: Counter[str] = field(default_factory=Counter)
    slots: int = 0
    slots_dropped: int = 0


class Dataplane:
    def __init__(self, cfg: SiteConfig, numbers: KernelNumbers, life: Lifecycle) -> None:
        self.cfg = cfg
        self.numbers = numbers
        self.life = life
        self.wg: Any = None
        self.wg_backend = "none"
        self.steering: Steering | None = None
        self.adopting = False          # it found a dataplane of an earlier agent
        self.last_change: dict[str, float] = {}     # how long the last `change_remotes` took, by step

    @property
    def steering_applied(self) -> bool:
        return self.steering is not None and self.steering.applied

    def tunnel_specs(self, private: str) -> dict[str, Any]:
        from patronus.agent.wireguard import TunnelSpec

        cfg = self.cfg
        specs: dict[str, Any] = {}
        for plan in cfg.paths:
            remote = cfg.remote(plan.remote)
            specs[plan.ifname] = TunnelSpec(
                ifname=plan.ifname, private_key=private, listen_port=plan.listen_port, fwmark=plan.uplink.mark,
                mtu=cfg.wg_mtu, peer_public_key=remote.public_key,
                peer_endpoint=(plan.endpoint.address, plan.peer_port), allowed_ips=tuple(remote.prefixes),
                # One end of each tunnel (the lower site id) initiates and keeps it warm; if both did,
                # their keepalive timers (set at the same moment by agents started together) would make
                # their handshake initiations cross every time, each end discarding the other's response.
                keepalive_s=cfg.wg_keepalive_s if cfg.id < remote.id else 0,
                owner=cfg.owner, initiate=cfg.id < remote.id)
        return specs

    async def build(self, private: str, record: HostRecord | None, policies: Sequence[RoutingPolicy]) -> Built:
        """What an earlier agent left, then uplink routing, tunnels and steering."""
        cfg, k = self.cfg, self.life.on_kernel
        specs: dict[str, Any] = {}
        found: dict[str, Any] = {}
        maps: tuple[dict[int, int], dict[int, int]] | None = None
        if cfg.paths or cfg.mesh is not None:
            from patronus.agent.wireguard import WireGuardManager, detect_backend

            self.wg_backend = await k(detect_backend, cfg.wg_backend)
            self.wg = WireGuardManager(self.wg_backend, cfg.state_dir)
            specs = self.tunnel_specs(private)
            found = await k(self.wg.survey, cfg.owner)
        if cfg.steering == "nftables":
            self.steering = Steering(cfg)
            maps = await k(self.steering.read_maps)
        self.adopting = bool(found) or maps is not None
        built = Built()
        if self.steering is not None:
            if record is not None:
                self.steering.remember_sysctls(record.sysctls)
            self.life.add("steering", self.steering.teardown, None, Thread.KERNEL)
            await k(functools.partial(self.steering.apply_uplinks, undo=not self.adopting))
        actions = await self._apply_tunnels(specs, found, built.tunnels) if self.wg is not None else {}
        if self.steering is not None:
            await self._apply_steering(record, maps, policies, built)
        for ifname, action in actions.items():      # after the steering no longer points there
            if action is TunnelAction.REMOVE:
                await k(self.wg.delete, ifname)
                built.tunnels["removed"] += 1
        self.save_record()
        self.life.add("dataplane record", functools.partial(HostRecord.remove, cfg.state_dir), None, Thread.LOOP)
        return built

    async def _apply_steering(self, record: HostRecord | None, maps: tuple[dict[int, int], dict[int, int]] | None,
                              policies: Sequence[RoutingPolicy], built: Built) -> None:
        """The steering table, keeping the map elements an earlier agent left that still mean the same."""
        assert self.steering is not None
        keep: tuple[dict[int, int], dict[int, int]] | None = None
        if maps is not None:
            keep = kept_maps(Numbering.of(record) if record is not None else None, self.numbers.record(), *maps,
                             FALLBACK_POLICY_NO)
            built.slots, built.slots_dropped = len(keep[1]), len(maps[1]) - len(keep[1])
            if keep[0] or keep[1]:
                built.kept_slots = keep[1]
        await self.life.on_kernel(functools.partial(self.steering.apply, self.numbers.numbered(policies), keep,
                                                    undo=not self.adopting))
        pruned = await self.life.on_kernel(self.steering.prune)
        if pruned:
            log.info("removed routing no longer wanted: %s", "; ".join(pruned))

    async def _apply_tunnels(self, specs: dict[str, Any], found: dict[str, Any],
                             tunnels: Counter[str]) -> dict[str, TunnelAction]:
        """Create, adopt or recreate each tunnel (counted in `tunnels`); the ones to remove are
        returned with the rest and removed later, once the steering no longer points there."""
        k = self.life.on_kernel
        foreign = await k(foreign_links, set(specs), self.cfg.owner)
        actions = plan_tunnels(set(specs), found, foreign)
        for ifname, action in actions.items():
            if action is TunnelAction.REMOVE:
                continue
            if action is TunnelAction.ADOPT:
                changed = await k(self.wg.reconfigure, specs[ifname], found[ifname])
                tunnels["reconfigured" if changed else "adopted"] += 1
                if changed:
                    log.info("tunnel %s adopted; changed: %s", ifname, ", ".join(changed))
            else:
                if action is TunnelAction.RECREATE:
                    await k(self.wg.delete, ifname)
                await k(self.wg.create, specs[ifname])
                tunnels["recreated" if action is TunnelAction.RECREATE else "created"] += 1
            self.life.add(f"tunnel {ifname}", functools.partial(self.wg.delete, ifname), None, Thread.KERNEL)
        return actions

    async def change_remotes(self, cfg: SiteConfig, private: str,
                             policies: Sequence[tuple[int, RoutingPolicy]]) -> list[str]:
        """The site's remotes changed (mesh discovery; `config.with_remotes` kept the numbers of what stays):
        tunnels of new paths created, the steering reloaded around them (`Steering.reload`), then the
        tunnels of paths gone removed. Returns the routing objects pruned. On failure the tunnels it
        created are removed again and `cfg` stays the old one."""
        k = self.life.on_kernel
        old = self.cfg
        assert self.wg is not None
        had = {p.ifname for p in old.paths}
        self.cfg = cfg
        specs = self.tunnel_specs(private)
        created = sorted(set(specs) - had)
        t = time.monotonic()
        self.last_change = {}
        try:
            await k(self.wg.create_many, [specs[i] for i in created])
            self.last_change["tunnels_s"] = time.monotonic() - t
            for ifname in created:
                self.life.add(f"tunnel {ifname}", functools.partial(self.wg.delete, ifname), None, Thread.KERNEL)
            steering = self.steering
            pruned: list[str] = []
            if steering is not None and steering.applied:
                t = time.monotonic()
                steering.reload(cfg, policies)          # nft on the loop thread, as every map update is
                self.last_change["table_s"] = time.monotonic() - t
                pruned = await k(change_routes, old, cfg)
                self.last_change["routes_s"] = time.monotonic() - t - self.last_change["table_s"]
        except Exception:
            self.cfg = old
            if self.steering is not None and self.steering.cfg is not old:
                with contextlib.suppress(Exception):
                    self.steering.reload(old, policies)     # the table back as it was, before its tunnels go
            for ifname in created:
                with contextlib.suppress(Exception):
                    await k(self.wg.delete, ifname)
            raise
        for ifname in sorted(had - set(specs)):
            await k(self.wg.delete, ifname)
        self.save_record()
        return pruned

    def save_record(self) -> None:
        """How the kernel state is numbered and what it changed, for the next agent."""
        n = self.numbers.record()
        sysctls = self.steering.sysctls_changed if self.steering is not None else {}
        try:
            HostRecord(site=self.cfg.name, site_id=self.cfg.id, owner=self.cfg.owner, remotes=dict(n.remotes),
                       policies=dict(n.policies), paths=dict(n.paths), sysctls=sysctls,
                       learned=tuple(r for r in self.cfg.remotes if r.learned)).save(self.cfg.state_dir)
        except OSError as exc:
            log.error("cannot write the dataplane record in %s: %s (a next agent would not keep its slots)",
                      self.cfg.state_dir, exc)

    def handshakes(self) -> dict[PathId, float | None]:
        """Latest WireGuard handshake (wall time) of every path's tunnel (kernel thread)."""
        out: dict[PathId, float | None] = {}
        for p in self.cfg.paths:
            try:
                out[p.id] = self.wg.status(p.ifname).latest_handshake
            except Exception:
                out[p.id] = None
        return out

    def warm(self, plan: PathPlan) -> None:
        """A handshake now, if the tunnel has never had one (kernel thread); the tunnel keeps the keepalive
        its spec gives it (none at the end that does not initiate: see `tunnel_specs`)."""
        with contextlib.suppress(Exception):
            if not self.wg.status(plan.ifname).latest_handshake:
                keeps = self.cfg.wg_keepalive_s if self.cfg.id < self.cfg.remote(plan.remote).id else 0
                self.wg.kick(plan.ifname, self.cfg.wg_keepalive_s, then=keeps)

    def nudge(self, plan: PathPlan) -> None:
        """A fresh handshake initiation on a dead tunnel (kernel thread)."""
        with contextlib.suppress(Exception):
            self.wg.kick(plan.ifname, self.cfg.wg_keepalive_s)


def foreign_links(names: set[str], owner: str) -> set[str]:
    """Which of `names` exist as interfaces here not tagged with `owner` (kernel thread)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()
                if link.get("ifname") in names and (link.get("ifalias") or "") != owner}
