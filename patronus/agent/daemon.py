"""The site agent: one asyncio process that drives the sans-IO core against the real host.

Start-up is plan-then-apply with rollback: the site file was validated before we get here; then the
agent opens its store, loads (or creates, 0600) its WireGuard key and API token, creates one WireGuard
interface per path, installs steering (nftables + policy routing), starts its probe reflector, opens
its probe sockets and its API. If any step fails, what was done is undone in reverse order before the
error is reported (but a dataplane the start adopted stays: see below).

Stop, and graceful restart (the decisions are in `patronus.agent.adopt`'s header):
* SIGTERM/SIGINT of `patronus agent` (no `--cleanup`): the agent closes what is its own (API, probe
  sockets, store, pid file) and leaves the dataplane (tunnels and their wireguard-go, the nft table
  with its maps, rules, routes, the reflector, `state_dir/dataplane.json`): the kernel goes on steering
  as last decided and the peers' probes are still answered. kill -9 leaves the same.
* `patronus agent --cleanup`: SIGTERM removes every interface, rule, route, table and process it
  created or adopted, as a site losing its router would (`patronus cleanup` does it afterwards).
  SIGUSR1 does the same whatever the flag (the test-bed's `agent_stop` with `cleanup: true`).
* A starting agent adopts what an earlier one left (tunnels verified and reconfigured in place, the
  table replaced atomically with the map elements that still mean the same, rules and routes kept or
  pruned) and must not disturb the steering it finds: every path starts Down in its monitor, so the
  core holds the steering (`SiteLogic.hold_steering`) until every path has a verdict (at the latest
  `steering_hold_s`), then the router is given the kept slots where the kernel has them, failed-over
  ones with their origin (they fail back after the hold, counted from then). Slots do not move at a
  restart unless a path changed while no agent ran. Nothing flushes conntrack.
* A start that fails after adopting leaves the adopted dataplane in place (without `--cleanup`): a
  failed upgrade must not take a working site down; the next start adopts it again.

Clock: the core runs on `time.monotonic()`; what leaves the process (store, API, events) carries wall
time (`time.time()`), converted with the offset measured at start.

Threads: everything runs on the event loop thread except pyroute2 work (interfaces, routes, rules,
conntrack dumps), which runs on one dedicated worker thread because pyroute2's synchronous objects
cannot run inside a running event loop. nftables map updates, the failover fast path, run on the loop
thread through libnftables (well under a millisecond).

Steering and the router: the kernel steers *slots* (remote site × policy × path the connections were
first put on; see `steering.py`), and the router holds one flow per slot, so its per-flow logic
(immediate failover on Down, threshold and cooldown, failback after the hold and a minimum
improvement) decides per slot. After every batch of core events the agent recomputes the two kernel
maps from the router's state and applies the difference in one nftables transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import logging
import os
import secrets
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, TypeVar

from patronus import __version__
from patronus.agent import keys as keymod
from patronus.agent.adopt import HostRecord, Numbering, TunnelAction, kept_maps, plan_tunnels
from patronus.agent.config import PathPlan, SiteConfig
from patronus.agent.prober import Prober, ReflectorProcess
from patronus.agent.procs import alive, argv_of, start_ticks
from patronus.agent.steering import (
    FALLBACK_POLICY_NO,
    LB_BUCKETS,
    KernelFlow,
    Steering,
    path_mark,
    slot_mark,
    split_slot,
)
from patronus.agent.store import Store
from patronus.core.errors import ConfigError
from patronus.core.events import (
    Event,
    Failback,
    FailoverTriggered,
    FlowAssigned,
    FlowExpired,
    FlowStranded,
    PathStatusChanged,
    ProbeLost,
)
from patronus.core.model import Endpoint, EndpointId, FlowKey, PathId, PathStatus, Site, SiteId
from patronus.core.policy import LoadBalance, RoutingPolicy
from patronus.core.site import SiteLogic, steering_hold_s
from patronus.core.sla import SlaMonitor

log = logging.getLogger("patronus.agent")
T = TypeVar("T")

# the API's most (`/events?limit=10000`): the test-bed reads a run's events once, at its end, and the
# first misses of probe runs (ProbeLost, published but never stored) must not push the verdicts out
_EVENT_BUFFER = 10_000
_FLOW_REFRESH_S = 1.0
_SLOT_TOUCH_S = 1.0
_TUNNEL_CHECK_S = 2.0
TUNNEL_GRACE_S = 15.0
_STORED_KINDS = (PathStatusChanged, FailoverTriggered, Failback, FlowStranded)


class AgentError(RuntimeError):
    """The agent cannot start on this host (the message says why); nothing it created is left behind."""


@dataclass(frozen=True)
class _Undo:
    """One thing a start did: how a cleanup stop (or a failed fresh start) removes it, and what a
    graceful stop does with it (None: leave it as it is)."""

    what: str
    remove: Callable[[], Any]
    keep: Callable[[], Any] | None
    on_loop: bool = False            # run on the event loop thread (else on the kernel worker)


def _wall_offset() -> float:
    return time.time() - time.monotonic()


def _public_key_of_config(cfg: SiteConfig) -> str:
    return keymod.public_key(keymod.load_or_create_private_key(cfg.wg_private_key_file))


class Agent:
    """Implements `patronus.agent.api.AgentControl` for the API."""

    def __init__(self, cfg: SiteConfig, *, cleanup: bool = False) -> None:
        self.cfg = cfg
        self.cleanup_on_stop = cleanup
        self.offset = _wall_offset()
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.kernel = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patronus-kernel")
        self.store: Store | None = None
        self.wg: Any = None
        self.wg_backend = "none"
        self.steering: Steering | None = None
        self.prober: Prober | None = None
        self.reflector: ReflectorProcess | None = None
        self.public_key = ""
        self.token = ""
        self.logic = SiteLogic(cfg.name, cfg.monitor, cfg.router, SlaMonitor(cfg.sla), ())
        self.monitor = self.logic.monitor
        self.router = self.logic.router
        self.sla = self.logic.sla
        self._undo: list[_Undo] = []
        self.adopted: dict[str, Any] = {}                # what this start found and took over (the API says)
        self.adopting = False                            # it found a dataplane of an earlier agent
        self._adopted_slots: dict[int, int] = {}         # slot mark -> path mark, until the hold ends
        self._record_sysctls: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._events: deque[dict[str, Any]] = deque(maxlen=_EVENT_BUFFER)
        self._status_since: dict[PathId, float] = {}
        self._policy_no: dict[str, int] = {}
        self._slots: dict[int, FlowKey] = {}             # slot mark -> router flow
        self._slot_of: dict[FlowKey, int] = {}
        self._kernel_flows: list[KernelFlow] = []
        self._flows_at = 0.0
        self._failovers: Counter[str] = Counter()
        self._last_steering_change: float | None = None
        self._steering_changes = 0
        self._plans = {p.id: p for p in cfg.paths}
        self._remote_no = {r.name: i + 1 for i, r in enumerate(cfg.remotes)}
        self._stopping = False
        self._up_since_wall: dict[PathId, float] = {}
        self._tunnel_checked = 0.0

    # -- helpers -----------------------------------------------------------------------------------

    async def _k(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.loop is not None
        return await self.loop.run_in_executor(self.kernel, fn, *args)

    def wall(self, mono: float) -> float:
        return mono + self.offset

    # -- start / stop ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up; on any failure undo what was done (keeping a dataplane it adopted,
        unless it cleans up on stop) and raise AgentError."""
        self.loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException as exc:
            await self.stop(cleanup=self.cleanup_on_stop or not self.adopting)
            if isinstance(exc, AgentError | ConfigError):
                raise
            if isinstance(exc, Exception):
                raise AgentError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        loop = self.loop
        assert loop is not None
        if os.geteuid() != 0 and (cfg.steering != "none" or cfg.paths):
            raise AgentError("the agent needs root (CAP_NET_ADMIN) to create tunnels, routes and rules")
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pidfile = cfg.state_dir / "agent.pid"
        other = _running_pid(pidfile)
        if other is not None and other != os.getpid():
            raise AgentError(f"another agent of site {cfg.name} is running (pid {other}, {pidfile})")
        pidfile.write_text(f"{os.getpid()}\n{start_ticks(os.getpid()) or ''}\n")
        self._undo.append(_Undo("pidfile", lambda: pidfile.unlink(missing_ok=True),
                                lambda: pidfile.unlink(missing_ok=True), on_loop=True))

        cfg.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = Store.open(cfg.database)
        store = self.store
        self._undo.append(_Undo("store", store.close, store.close, on_loop=True))
        self._init_store(store)

        private = await self._k(keymod.load_or_create_private_key, cfg.wg_private_key_file)
        self.public_key = keymod.public_key(private)
        self.token = cfg.api_token or _load_or_create_token(cfg.api_token_file)

        record: HostRecord | None = None
        try:
            record = HostRecord.load(cfg.state_dir)
        except ConfigError as exc:
            log.warning("ignoring the dataplane record: %s (kept tunnels and rules are adopted, kept slots are not)",
                        exc)
        if record is not None and record.owner != cfg.owner:
            log.warning("ignoring the dataplane record of %s (this site is %s)", record.owner, cfg.owner)
            record = None

        # policies: the store's (changed through the API) win over the file's, so they survive restarts
        stored = store.list_policies()
        policies = [RoutingPolicy.from_dict(r.spec, f"store.policies.{r.name}") for r in stored] \
            if stored else list(cfg.policies)
        if not stored:
            with store.transaction():
                for p in policies:
                    store.upsert_policy(p.name, p.priority, p.enabled, p.to_dict(), now=time.time())
        self.router.replace_policies(policies)
        if record is not None:
            # the numbers the kept slots carry in their marks, for the policies that still exist
            names = {p.name for p in policies}
            for name, n in sorted(record.policies.items(), key=lambda t: t[1]):
                if name in names and n < FALLBACK_POLICY_NO and n not in self._policy_no.values():
                    self._policy_no[name] = n
        self._number_policies()

        # kernel: what an earlier agent left, then uplink routing, tunnels, steering
        specs: dict[str, Any] = {}
        found: dict[str, Any] = {}
        maps: tuple[dict[int, int], dict[int, int]] | None = None
        if cfg.paths:
            from patronus.agent.wireguard import TunnelSpec, WireGuardManager, detect_backend

            self.wg_backend = await self._k(detect_backend, cfg.wg_backend)
            self.wg = WireGuardManager(self.wg_backend, cfg.state_dir)
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
            found = await self._k(self.wg.survey, cfg.owner)
        if cfg.steering == "nftables":
            self.steering = Steering(cfg)
            maps = await self._k(self.steering.read_maps)
        self.adopting = bool(found) or maps is not None
        if self.steering is not None:
            if record is not None:
                self.steering.remember_sysctls(record.sysctls)
            steering = self.steering
            self._undo.append(_Undo("steering", steering.teardown, None))
            await self._k(functools.partial(steering.apply_uplinks, undo=not self.adopting))
        tunnels: Counter[str] = Counter()
        if self.wg is not None:
            foreign = await self._k(_foreign_links, set(specs), cfg.owner)
            actions = plan_tunnels(set(specs), found, foreign)
            for ifname, action in actions.items():
                if action is TunnelAction.REMOVE:
                    continue                     # after the steering no longer points there (below)
                if action is TunnelAction.ADOPT:
                    changed = await self._k(self.wg.reconfigure, specs[ifname], found[ifname])
                    tunnels["reconfigured" if changed else "adopted"] += 1
                    if changed:
                        log.info("tunnel %s adopted; changed: %s", ifname, ", ".join(changed))
                else:
                    if action is TunnelAction.RECREATE:
                        await self._k(self.wg.delete, ifname)
                    await self._k(self.wg.create, specs[ifname])
                    tunnels["recreated" if action is TunnelAction.RECREATE else "created"] += 1
                self._undo.append(_Undo(f"tunnel {ifname}", functools.partial(self.wg.delete, ifname), None))
        else:
            actions = {}
        keep: tuple[dict[int, int], dict[int, int]] | None = None
        if self.steering is not None:
            if maps is not None:
                keep = kept_maps(Numbering.of(record) if record is not None else None, self._numbering(), *maps,
                                 FALLBACK_POLICY_NO)
            await self._k(functools.partial(self.steering.apply, self._numbered_policies(), keep,
                                            undo=not self.adopting))
            pruned = await self._k(self.steering.prune)
            if pruned:
                log.info("removed routing no longer wanted: %s", "; ".join(pruned))
        for ifname, action in actions.items():
            if action is TunnelAction.REMOVE:
                await self._k(self.wg.delete, ifname)
                tunnels["removed"] += 1
        self._save_record()
        self._undo.append(_Undo("dataplane record", functools.partial(HostRecord.remove, cfg.state_dir), None,
                                on_loop=True))

        # probing, and the bandwidth-test servers (one per uplink and peer site: one pair key each)
        self.reflector = ReflectorProcess(cfg)
        reflector = self.reflector
        self._undo.append(_Undo("reflector", functools.partial(reflector.close, keep=False),
                                functools.partial(reflector.close, keep=True), on_loop=True))
        how = reflector.start()
        self.prober = Prober(cfg, self._on_probe_reply)
        self.prober.start(loop)
        self._undo.append(_Undo("probes", self.prober.close, self.prober.close, on_loop=True))
        await self._start_bandwidth_servers()
        if self.adopting or how != "started":
            self.adopted = {"tunnels": dict(tunnels), "reflector": how,
                            "slots": len(keep[1]) if keep else 0,
                            "slots_dropped": (len(maps[1]) - len(keep[1])) if maps and keep else 0}
            log.info("adopted the dataplane an earlier agent left: tunnels %s, reflector %s, %d slots kept "
                     "(%d dropped)", dict(tunnels) or "none", how, self.adopted["slots"],
                     self.adopted["slots_dropped"])

        # core
        now = time.monotonic()
        for path in cfg.core_paths():
            self.logic.add_path(path, now)
            self._status_since[path.id] = self.wall(now)
        for r in cfg.remotes:
            self.logic.set_site_prefixes(r.name, r.prefixes)
        if keep is not None and (keep[0] or keep[1]):
            # the kernel steers as the previous agent left it until our paths have their verdicts
            self._adopted_slots = dict(keep[1])
            self.logic.hold_steering(now + steering_hold_s(cfg.monitor))
        self._pump(now)
        self._tasks.append(loop.create_task(self._periodic(), name="patronus-periodic"))
        if cfg.pmtu:
            self._tasks.append(loop.create_task(self._measure_mtus(), name="patronus-pmtu"))
        if cfg.bandwidth_interval_s > 0:
            self._tasks.append(loop.create_task(self._bandwidth_tests(), name="patronus-bandwidth"))
        self._publish({"kind": "AgentStarted", "at": time.time(), "site": cfg.name, "paths": len(cfg.paths),
                       "wireguard_backend": self.wg_backend, "steering": cfg.steering,
                       "adopted": self.adopted or None})
        log.info("agent %s up: %d paths, wireguard %s, steering %s", cfg.name, len(cfg.paths), self.wg_backend,
                 cfg.steering)
        # Everything allocated so far lives as long as the agent: keep it out of the cyclic collector's
        # full passes, whose pauses would otherwise grow with it (and delay probe processing).
        gc.collect()
        gc.freeze()

    async def _start_bandwidth_servers(self) -> None:
        from patronus.agent.bwtest import BandwidthServer
        from patronus.agent.config import probe_key
        from patronus.agent.ondemand import bandwidth_port
        from patronus.agent.sockets import open_path_socket

        servers: list[Any] = []

        def close() -> None:
            for srv in servers:
                srv.close()
        self._undo.append(_Undo("bandwidth servers", close, close))
        for r in self.cfg.remotes:
            key = probe_key(self.cfg, r)
            if key is None:
                continue
            for up in self.cfg.uplinks:
                sock = open_path_socket(up.address, up.interface, up.mark, bandwidth_port(self.cfg, r.id))
                servers.append(await BandwidthServer.serve(sock, key))

    async def _measure_mtus(self) -> None:
        """Path MTU of every path once it is up (RFC 4821 style search with DF probes)."""
        from patronus.agent.ondemand import path_mtu

        pending = {p.id: p for p in self.cfg.paths}
        while pending:
            for pid, plan in list(pending.items()):
                if self.monitor.status(pid) is PathStatus.DOWN:
                    continue
                try:
                    res = await path_mtu(self.cfg, plan)
                except Exception as exc:
                    log.warning("path MTU of %s: %s", pid, exc)
                    del pending[pid]
                    continue
                del pending[pid]
                if res.get("path_mtu"):
                    self.monitor.set_mtu(pid, int(res["path_mtu"]))
                    self._publish({"kind": "PathMtuMeasured", "at": time.time(), "path_id": pid, **res})
            if pending:
                await asyncio.sleep(1.0)     # re-check paths not yet up once a second

    async def _bandwidth_tests(self) -> None:
        from patronus.agent.ondemand import measure_bandwidth

        while True:
            for plan in self.cfg.paths:
                if self.monitor.status(plan.id) is PathStatus.DOWN:
                    continue
                try:
                    res = await measure_bandwidth(self.cfg, plan)
                except Exception as exc:
                    log.warning("bandwidth test of %s: %s", plan.id, exc)
                    continue
                self.monitor.set_bandwidth(plan.id, float(res["goodput_mbps"]))
                self._publish({"kind": "BandwidthMeasured", "at": time.time(), "path_id": plan.id, **res})
            await asyncio.sleep(self.cfg.bandwidth_interval_s)   # the configured period between rounds

    async def stop(self, cleanup: bool | None = None) -> None:
        """Undo what `start` did, newest first: everything (`cleanup`, by default the agent's
        `--cleanup`), or only what is the agent's own, leaving the dataplane to the next agent (see the
        module's header). Safe to call more than once."""
        cleanup = self.cleanup_on_stop if cleanup is None else cleanup
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.store is not None and self._undo:
            with contextlib.suppress(Exception):
                self._persist_flows()
        kept = []
        while self._undo:
            u = self._undo.pop()
            fn = u.remove if cleanup else u.keep
            if fn is None:
                kept.append(u.what)
                continue
            try:
                if u.on_loop:
                    fn()
                else:
                    await self._k(fn)
            except Exception as exc:
                log.error("stop: %s: %s", u.what, exc)
        self.kernel.shutdown(wait=True)
        if kept:
            log.info("stopped; left for the next agent (`patronus cleanup` removes them): %s",
                     ", ".join(reversed(kept)))
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait({"kind": "AgentStopping", "at": time.time(), "cleanup": cleanup})

    def _numbering(self) -> Numbering:
        return Numbering(remotes=dict(self._remote_no), policies=dict(self._policy_no),
                         paths={str(p.id): p.number for p in self.cfg.paths})

    def _save_record(self) -> None:
        """How the kernel state is numbered and what it changed, for the next agent (`adopt.HostRecord`)."""
        n = self._numbering()
        sysctls = self.steering.sysctls_changed if self.steering is not None else {}
        try:
            HostRecord(site=self.cfg.name, site_id=self.cfg.id, owner=self.cfg.owner, remotes=dict(n.remotes),
                       policies=dict(n.policies), paths=dict(n.paths), sysctls=sysctls).save(self.cfg.state_dir)
        except OSError as exc:
            log.error("cannot write the dataplane record in %s: %s (a next agent would not keep its slots)",
                      self.cfg.state_dir, exc)

    def _adopt_slots(self, now: float) -> None:
        """The hold is over: give the router the slots the kernel kept, on the path the kernel has each
        on, with its own path as its origin when it had failed over."""
        names = self._policy_names()
        active = {p.name for p in self.router.list_policies() if p.enabled}
        by_number = {p.number: p for p in self.cfg.paths}
        remote_of = {n: name for name, n in self._remote_no.items()}
        for mark, pmark in sorted(self._adopted_slots.items()):
            rn, pn, n = split_slot(mark)
            remote, origin, cur = remote_of.get(rn), by_number.get(n), by_number.get(pmark & 0xFF)
            if remote is None or origin is None or cur is None or pn not in names:
                continue
            name = names[pn]
            if (name is not None and name not in active) or origin.remote != remote or cur.remote != remote:
                continue
            key = FlowKey("0.0.0.0", "0.0.0.0", (rn << 8) | pn, n, 0)
            if key in self._slot_of:
                continue
            self._slots[mark] = key
            self._slot_of[key] = mark
            self.router.place(key, cur.id, now, site=SiteId(remote), policy=name,
                              origin=origin.id if origin is not cur else None)
        self._adopted_slots = {}

    def _init_store(self, store: Store) -> None:
        cfg = self.cfg
        with store.transaction():
            store.upsert_site(Site(SiteId(cfg.name), cfg.name, cfg.lan_prefixes), status="active")
            for up in cfg.uplinks:
                store.add_endpoint(Endpoint(EndpointId(f"{cfg.name}:{up.name}"), SiteId(cfg.name), up.address,
                                            cost_per_gb=up.cost_per_gb, bandwidth_mbps=up.bandwidth_mbps or None))
            for r in cfg.remotes:
                store.upsert_site(Site(SiteId(r.name), r.name, r.prefixes), public_key=r.public_key)
                for ep in r.endpoints:
                    store.add_endpoint(Endpoint(EndpointId(f"{r.name}:{ep.uplink}"), SiteId(r.name), ep.address))
            for path in cfg.core_paths():
                store.upsert_path(path, wg_interface=self._plans[path.id].ifname)

    # -- policies and slots ------------------------------------------------------------------------

    def _number_policies(self) -> None:
        used = set(self._policy_no.values())
        for p in self.router.list_policies():
            if p.name not in self._policy_no:
                n = next(i for i in range(1, FALLBACK_POLICY_NO) if i not in used)
                self._policy_no[p.name] = n
                used.add(n)

    def _numbered_policies(self) -> list[tuple[int, RoutingPolicy]]:
        return [(self._policy_no[p.name], p) for p in self.router.list_policies()]

    def _policy_names(self) -> dict[int, str | None]:
        names: dict[int, str | None] = {n: name for name, n in self._policy_no.items()}
        names[FALLBACK_POLICY_NO] = None
        return names

    def _sync_slots(self, now: float) -> None:
        """One router flow per (remote, policy, path) slot: placed on its path, then left to the router."""
        if self.logic.steering_held:
            return          # the kernel's slots are adopted when the hold ends (`_adopt_slots`)
        active = {p.name for p in self.router.list_policies() if p.enabled}
        for pn, name in self._policy_names().items():
            if name is not None and name not in active:
                continue
            for p in self.cfg.paths:
                rn = self._remote_no[p.remote]
                mark = slot_mark(rn, pn, p.number)
                if mark in self._slots and self.router.flow_path(self._slots[mark]) is not None:
                    continue
                if self.router.path_status(p.id) is PathStatus.DOWN:
                    # No connection can be on a path that has never been usable: new flows only go to
                    # usable paths. Its slots appear when it first comes up (else they would be
                    # "rescued" onto the first path up and kept there by the failback rules).
                    continue
                key = FlowKey("0.0.0.0", "0.0.0.0", (rn << 8) | pn, p.number, 0)
                self._slots[mark] = key
                self._slot_of[key] = mark
                self.router.place(key, p.id, now, site=SiteId(p.remote), policy=name)

    def _desired_maps(self) -> tuple[dict[int, int], dict[int, int]]:
        new_slot: dict[int, int] = {}
        slot_path: dict[int, int] = {}
        names = self._policy_names()
        active = {p.name for p in self.router.list_policies() if p.enabled}
        for r in self.cfg.remotes:
            rn = self._remote_no[r.name]
            for pn, name in names.items():
                if name is not None and name not in active:
                    continue
                pol = self.router.policy_named(name)
                if pol.load_balance is LoadBalance.NONE:
                    best = self.router.preview(SiteId(r.name), name)
                    if best is not None:
                        new_slot[slot_mark(rn, pn, 0)] = slot_mark(rn, pn, self._plans[best].number)
                    continue
                tier = self.router.preview_tier(SiteId(r.name), name)
                if tier:
                    for bucket, pid in enumerate(lb_buckets(pol.load_balance, tier, LB_BUCKETS)):
                        new_slot[slot_mark(rn, pn, bucket)] = slot_mark(rn, pn, self._plans[pid].number)
        for mark, key in self._slots.items():
            cur = self.router.flow_path(key)
            info = self.router.flow_info(key)
            if cur is not None and info is not None and not info.stranded:
                slot_path[mark] = path_mark(self._plans[cur].number)
        return new_slot, slot_path

    def _sync_kernel(self, trigger: list[Event]) -> None:
        if self.steering is None or not self.steering.applied or self.logic.steering_held:
            return
        # Invariant: every slot `new_slot` can send a connection to exists in the router (and so in
        # `slot_path`). A path's status can reach the router through a metrics update as well as a
        # status change, so the slots are checked here, before the maps are computed.
        self._sync_slots(time.monotonic())
        new_slot, slot_path = self._desired_maps()
        begun = time.monotonic()
        done = self.steering.update(new_slot, slot_path)
        if done is None:
            return
        self._steering_changes += 1
        self._last_steering_change = self.wall(done)
        moves = [e for e in trigger if isinstance(e, FailoverTriggered | Failback)]
        if moves:
            first = min(e.at for e in moves)
            # the kernel switched at some instant between `begun_at` (the transaction handed over) and
            # `at` (it returned): a packet may take the new path from the first
            self._publish({"kind": "SteeringApplied", "at": self.wall(done), "begun_at": self.wall(begun),
                           "moves": len(moves), "latency_ms": round((done - first) * 1000, 3),
                           "paths": sorted({str(e.to_path) for e in moves})})

    # -- the core loop -----------------------------------------------------------------------------

    def _on_probe_reply(self, path_id: PathId, seq: int, sent_at: float, now: float) -> None:
        self.logic.on_probe_reply(path_id, seq, sent_at, now)
        self._pump(now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.prober is not None:
            # replies already in the socket buffers first, with their kernel arrival times: a pause of
            # this loop must not turn an answered probe into a timed-out one
            self.prober.drain()
        self._pump(time.monotonic())

    def _pump(self, now: float) -> None:
        """Feed timers and events through monitor → router → kernel until quiet, then re-arm."""
        if self._stopping:
            return
        step = self.logic.pump(now)
        if self.prober is not None:
            for probe in step.probes:
                self.prober.send(probe.path_id, probe.seq)
        for lost in step.lost:
            # published only (not stored: one a run of misses, but a lossy path has many runs)
            self._publish(self._event_dict(lost))
        for sc in step.status:
            self._status_since[sc.path_id] = self.wall(sc.at)
            self._publish(self._event_dict(sc))
        rev = step.router
        if step.released:
            self._adopt_slots(now)
            rev = rev + self.router.drain_events()
            log.info("steering hold over: %d slots adopted", len(self._slots))
        for ev in rev:
            if isinstance(ev, FailoverTriggered):
                self._failovers[ev.reason.value] += 1
            if isinstance(ev, FlowExpired) and ev.flow in self._slot_of:
                mark = self._slot_of.pop(ev.flow)
                self._slots.pop(mark, None)
            if isinstance(ev, FlowAssigned) and ev.flow in self._slot_of:
                continue
            self._publish(self._event_dict(ev))
        for sev in step.sla:
            self._publish(self._event_dict(sev))
        status_changed = bool(step.status)
        if step.routing_changed:
            try:
                self._sync_kernel(rev)
            except Exception as exc:     # a refused kernel update must not kill the agent
                log.error("steering update failed: %s", exc)
                self._publish({"kind": "SteeringError", "at": time.time(), "error": str(exc)})
        if self.store is not None:
            stored: list[Event] = [e for e in rev if isinstance(e, _STORED_KINDS)]
            if status_changed or stored:
                self._store_events(stored)
        self._arm()

    def _arm(self) -> None:
        assert self.loop is not None
        when = self.logic.next_deadline()
        if when is None:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= when:
                return
            self._timer.cancel()
        # asyncio's clock is time.monotonic() on Linux, the same clock as the core's
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    async def _periodic(self) -> None:
        """Slow duties: keep slots alive, refresh the flow table, record metrics history."""
        next_metrics = time.monotonic() + self.cfg.metrics_interval_s
        while True:
            await asyncio.sleep(min(_SLOT_TOUCH_S, self.cfg.metrics_interval_s))
            now = time.monotonic()
            for key in list(self._slot_of):
                self.router.touch(key, now)
            self._sync_slots(now)
            self._pump(now)
            if self.steering is not None and self.steering.applied and now - self._flows_at >= _FLOW_REFRESH_S:
                try:
                    self._kernel_flows = await self._k(self.steering.flows)
                    self._flows_at = now
                except Exception as exc:
                    log.warning("conntrack dump failed: %s", exc)
            if now >= next_metrics:
                next_metrics = now + self.cfg.metrics_interval_s
                self._record_metrics(now)
            if self.wg is not None and now - self._tunnel_checked >= _TUNNEL_CHECK_S:
                self._tunnel_checked = now
                try:
                    shakes = await self._k(self._handshakes)
                except Exception as exc:
                    log.warning("tunnel check failed: %s", exc)
                else:
                    self._check_tunnels(shakes, time.monotonic())
            if self.reflector is not None and not self.reflector.alive():
                # it lives apart from the agent now (it outlives restarts), so it can die apart too
                log.error("the probe reflector is gone; starting a new one")
                try:
                    how = await self._k(self.reflector.start)
                except Exception as exc:
                    log.error("probe reflector: %s", exc)
                else:
                    self._publish({"kind": "ReflectorRestarted", "at": time.time(), "how": how})

    def _handshakes(self) -> dict[PathId, float | None]:
        """Latest WireGuard handshake (wall time) of every path's tunnel (kernel thread)."""
        out: dict[PathId, float | None] = {}
        for p in self.cfg.paths:
            try:
                out[p.id] = self.wg.status(p.ifname).latest_handshake
            except Exception:
                out[p.id] = None
        return out

    def _check_tunnels(self, shakes: dict[PathId, float | None], now: float) -> None:
        """A path whose probes pass but whose tunnel has no live WireGuard session would black-hole
        every packet steered onto it: such a path counts as Down for routing until its tunnel
        handshakes. "No live session": no handshake at all although the path has been Up for
        TUNNEL_GRACE_S, or none for longer than WireGuard's session lifetime (180 s) plus the grace.
        A dead tunnel is also nudged (a fresh handshake initiation) on every check."""
        wall = time.time()
        changed = False
        for p in self.cfg.paths:
            pid = p.id
            if self.monitor.status(pid) is PathStatus.DOWN:
                self._up_since_wall.pop(pid, None)
                self.logic.set_tunnel_dead(pid, False, now)
                continue
            up_since = self._up_since_wall.setdefault(pid, wall)
            last = shakes.get(pid)
            dead = (last is None and wall - up_since > TUNNEL_GRACE_S) or \
                   (last is not None and wall - last > 180.0 + TUNNEL_GRACE_S)
            if dead and not self.logic.tunnel_dead(pid):
                self.logic.set_tunnel_dead(pid, True, now)
                changed = True
                log.warning("path %s: probes pass but tunnel %s has no WireGuard session; routing around it",
                            pid, p.ifname)
                self._publish({"kind": "TunnelDown", "at": wall, "path_id": pid, "interface": p.ifname,
                               "latest_handshake": last})
            elif not dead and self.logic.tunnel_dead(pid):
                self.logic.set_tunnel_dead(pid, False, now)
                changed = True
                self._publish({"kind": "TunnelUp", "at": wall, "path_id": pid, "interface": p.ifname,
                               "latest_handshake": last})
            # nudged from one end only (the lower site id), for the reason in WireGuardManager.create
            if self.logic.tunnel_dead(pid) and self.loop is not None and self.cfg.id < self.cfg.remote(p.remote).id:
                self.loop.run_in_executor(self.kernel, self._nudge, p)
        if changed:
            self._pump(now)

    def _nudge(self, plan: PathPlan) -> None:
        with contextlib.suppress(Exception):
            self.wg.kick(plan.ifname, self.cfg.wg_keepalive_s)

    def _record_metrics(self, now: float) -> None:
        if self.store is None:
            return
        samples = []
        for pid in self.monitor.path_ids:
            m = self.monitor.metrics(pid, now)
            samples.append((pid, m.with_(measured_at=self.wall(now))))
        try:
            with self.store.transaction():
                self.store.record_metrics_many(samples)
                for pid in self.monitor.path_ids:
                    self.store.set_path_status(pid, self.monitor.status(pid), at=self._status_since.get(pid))
            self._persist_flows()
        except Exception as exc:
            log.error("store: cannot record metrics: %s", exc)

    def _persist_flows(self) -> None:
        if self.store is None:
            return
        flows = self.list_flows()
        keep = set()
        now = time.time()
        with self.store.transaction():
            for f in flows:
                key = FlowKey(f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"], f["protocol"])
                keep.add(key)
                prev = self.store.get_flow(key)
                self.store.upsert_flow(key, started_at=prev.started_at if prev else now, last_seen=now,
                                       path_id=f["path"], policy=f["policy"])
            for rec in self.store.list_flows():
                if rec.flow not in keep:
                    self.store.remove_flow(rec.flow)

    def _store_events(self, events: Sequence[Event]) -> None:
        assert self.store is not None
        if not events:
            return
        try:
            self.store.record_events([e.__class__(**{**_fields(e), "at": self.wall(e.at)}) for e in events])
        except Exception as exc:
            log.error("store: cannot record events: %s", exc)

    # -- events out --------------------------------------------------------------------------------

    def _event_dict(self, ev: Event) -> dict[str, Any]:
        d = ev.as_dict()
        d["at"] = self.wall(ev.at)
        if isinstance(ev, ProbeLost):
            d["sent_at"] = self.wall(ev.sent_at)
        return d

    def _publish(self, d: dict[str, Any]) -> None:
        self._events.append(d)
        for q in list(self._subscribers):
            try:
                q.put_nowait(d)
            except asyncio.QueueFull:
                # a consumer that does not keep up loses its oldest event, never the agent's memory
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(d)

    # -- AgentControl (the API) --------------------------------------------------------------------

    def site_info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"name": cfg.name, "id": cfg.id, "lan_prefixes": list(cfg.lan_prefixes),
                "public_key": self.public_key,
                "uplinks": [{"name": u.name, "interface": u.interface, "address": u.address,
                             "gateway": u.gateway, "cost_per_gb": u.cost_per_gb,
                             "bandwidth_mbps": u.bandwidth_mbps or None} for u in cfg.uplinks],
                "remotes": [{"name": r.name, "id": r.id, "prefixes": list(r.prefixes),
                             "endpoints": [{"uplink": e.uplink, "address": e.address} for e in r.endpoints]}
                            for r in cfg.remotes],
                "wireguard_backend": self.wg_backend, "steering": cfg.steering, "started_at": self.started_at,
                "version": __version__, "monitor_profile": cfg.monitor.name,
                "steering_changes": self._steering_changes, "last_steering_change": self._last_steering_change,
                "displaced_slots": self.displaced_slots(), "pending_failbacks": self.router.pending_failbacks(),
                "adopted": self.adopted or None, "steering_held": self.logic.steering_held}

    def displaced_slots(self) -> int:
        """Slots away from the path they started on, waiting to fail back (0 when the site is settled)."""
        return sum(1 for key in self._slot_of if (info := self.router.flow_info(key)) is not None
                   and info.origin is not None)

    def _path_dict(self, plan: PathPlan, now: float) -> dict[str, Any]:
        pid = plan.id
        m = self.monitor.metrics(pid, now)
        c = self.monitor.counters(pid)
        sender = self.prober.senders.get(pid) if self.prober else None
        rejected = dict(sender.counters.rejected) if sender else {}
        return {"id": pid, "remote": plan.remote, "uplink": plan.uplink.name, "remote_uplink": plan.endpoint.uplink,
                "interface": plan.ifname, "status": self.monitor.status(pid).value,
                "status_since": self._status_since.get(pid), "latency_ms": m.measured_latency_ms,
                "jitter_ms": m.measured_jitter_ms,
                "loss_pct": m.loss_pct, "score": m.score, "bandwidth_mbps": m.bandwidth_mbps or None,
                "mtu_bytes": m.mtu_bytes or None, "cost_per_gb": plan.uplink.cost_per_gb,
                "probes_sent": sender.counters.sent if sender else c.sent, "probes_received": c.received,
                "probes_timed_out": c.timed_out, "probes_late": c.late, "probes_duplicate": c.duplicates,
                "probes_rejected": sum(rejected.values()), "probes_rejected_by_reason": rejected,
                "probe_timeout_ms": round(self.monitor.current_timeout_s(pid) * 1000, 3),
                "flows": sum(1 for f in self.list_flows() if f["path"] == pid),
                "local_address": plan.uplink.address, "remote_address": plan.endpoint.address}

    def list_paths(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [self._path_dict(p, now) for p in self.cfg.paths]

    def path_history(self, path_id: str, since: float | None, until: float | None, limit: int) -> list[dict[str, Any]]:
        if path_id not in self._plans:
            raise KeyError(path_id)
        assert self.store is not None
        rows = self.store.metrics_history(path_id, since, until, limit)
        return [{"measured_at": m.measured_at, "latency_ms": m.latency_ms, "jitter_ms": m.jitter_ms,
                 "loss_pct": m.loss_pct, "score": m.score, "bandwidth_mbps": m.bandwidth_mbps or None,
                 "mtu_bytes": m.mtu_bytes or None} for m in rows]

    def list_policies(self) -> list[RoutingPolicy]:
        return self.router.list_policies()

    def _apply_policies(self, policies: list[RoutingPolicy]) -> None:
        """Router, kernel classifier and store change together, or not at all."""
        old = self.router.list_policies()
        if len(policies) >= FALLBACK_POLICY_NO - 1:
            raise ConfigError(f"at most {FALLBACK_POLICY_NO - 2} policies", "policies")
        self.router.replace_policies(policies)
        self._number_policies()
        try:
            if self.steering is not None and self.steering.applied:
                self.steering.set_policies(self._numbered_policies())
        except Exception:
            self.router.replace_policies(old)
            raise
        self._save_record()
        if self.store is not None:
            with self.store.transaction():
                names = {p.name for p in policies}
                for rec in self.store.list_policies():
                    if rec.name not in names:
                        self.store.delete_policy(rec.name)
                for p in policies:
                    self.store.upsert_policy(p.name, p.priority, p.enabled, p.to_dict(), now=time.time())
        now = time.monotonic()
        self._sync_slots(now)
        self._pump(now)
        self._publish({"kind": "PoliciesChanged", "at": time.time(), "policies": [p.name for p in policies]})

    def put_policy(self, policy: RoutingPolicy) -> bool:
        current = self.router.list_policies()
        created = all(p.name != policy.name for p in current)
        self._apply_policies([p for p in current if p.name != policy.name] + [policy])
        return created

    def delete_policy(self, name: str) -> None:
        current = self.router.list_policies()
        if all(p.name != name for p in current):
            raise KeyError(name)
        self._apply_policies([p for p in current if p.name != name])

    def list_flows(self) -> list[dict[str, Any]]:
        names = self._policy_names()
        by_number = {p.number: p for p in self.cfg.paths}
        now = time.time()
        out = []
        for f in self._kernel_flows:
            _rn, pn, n = split_slot(f.slot)
            key = self._slots.get(f.slot)
            cur = self.router.flow_path(key) if key is not None else None
            origin = by_number.get(n)
            pol = names.get(pn, None)
            out.append({"src_ip": f.src_ip, "dst_ip": f.dst_ip, "src_port": f.src_port, "dst_port": f.dst_port,
                        "protocol": f.protocol, "policy": pol if pol is not None else "implicit-default",
                        "path": cur, "origin_path": origin.id if origin else None,
                        "bytes": f.bytes, "packets": f.packets,
                        "age_s": round(now - f.started_at, 3) if f.started_at else None,
                        "expires_in_s": f.timeout_s})
        return out

    def topology(self) -> dict[str, Any]:
        nodes = [{"id": self.cfg.name, "kind": "local", "prefixes": list(self.cfg.lan_prefixes)}]
        nodes += [{"id": r.name, "kind": "remote", "prefixes": list(r.prefixes)} for r in self.cfg.remotes]
        now = time.monotonic()
        links = [{"path": p.id, "from": self.cfg.name, "to": p.remote, "uplink": p.uplink.name,
                  "remote_uplink": p.endpoint.uplink, "status": self.monitor.status(p.id).value,
                  "score": self.monitor.metrics(p.id, now).score} for p in self.cfg.paths]
        return {"nodes": nodes, "links": links}

    async def test_path(self, path_id: str, probes: int, bandwidth: bool) -> dict[str, Any]:
        from patronus.agent.ondemand import test_path

        plan = self._plans.get(PathId(path_id))
        if plan is None:
            raise KeyError(path_id)
        if not 1 <= probes <= 1000:
            raise ValueError("probes must be 1-1000")
        return await test_path(self.cfg, plan, probes=probes, bandwidth=bandwidth)

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return list(self._events)[-limit:] if limit > 0 else []

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    def prometheus_snapshot(self) -> Any:
        from patronus.agent.metrics import MetricsSnapshot, PathSample

        rows = []
        for d in self.list_paths():
            rows.append(PathSample(
                path=d["id"], remote=d["remote"], uplink=d["uplink"], status=d["status"],
                latency_ms=_finite(d["latency_ms"]), jitter_ms=_finite(d["jitter_ms"]),
                loss_ratio=None if _finite(d["loss_pct"]) is None else d["loss_pct"] / 100.0,
                score=_finite(d["score"]), flows=d["flows"], probes_sent=d["probes_sent"],
                probes_received=d["probes_received"], probes_rejected=d["probes_rejected_by_reason"]))
        unattributed: Counter[str] = self.reflector.rejected() if self.reflector is not None else Counter()
        return MetricsSnapshot(paths=rows, failovers=dict(self._failovers),
                               unattributed_rejections=dict(unattributed))


def lb_buckets(mode: LoadBalance, tier: list[tuple[PathId, float, float]], n: int) -> list[PathId]:
    """Which tier path each of `n` hash buckets sends new connections to.

    flow_hash: rendezvous hashing, so losing a path moves only its buckets; weighted_round_robin:
    shares proportional to bandwidth (largest remainder); round_robin and least_connections: an even
    spread (the kernel cannot count connections per path at classification time)."""
    if mode is LoadBalance.FLOW_HASH:
        def weight(bucket: int, pid: PathId) -> int:
            return int.from_bytes(hashlib.blake2b(f"{bucket}|{pid}".encode(), digest_size=8).digest(), "big")
        return [max(tier, key=lambda t: (weight(b, t[0]), t[0]))[0] for b in range(n)]
    if mode is LoadBalance.WEIGHTED_ROUND_ROBIN:
        weights = [bw if bw > 0 else 1.0 for _, _, bw in tier]
        total = sum(weights)
        exact = [w * n / total for w in weights]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(tier)), key=lambda i: exact[i] - counts[i], reverse=True)[:n - sum(counts)]:
            counts[i] += 1
        out: list[PathId] = []
        for (pid, _, _), c in zip(tier, counts, strict=True):
            out += [pid] * c
        return out
    return [tier[b % len(tier)][0] for b in range(n)]


def _finite(x: float | None) -> float | None:
    import math

    return None if x is None or not math.isfinite(x) else x


def _fields(e: Event) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(e, f.name) for f in fields(e)}


def _foreign_links(names: set[str], owner: str) -> set[str]:
    """Which of `names` exist as interfaces here not tagged with `owner` (kernel thread)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()
                if link.get("ifname") in names and (link.get("ifalias") or "") != owner}


def _running_pid(pidfile: FsPath) -> int | None:
    """The pid of the agent recorded in `pidfile` if it still runs (same pid, same start time when
    recorded, a patronus command line), else None."""
    try:
        lines = pidfile.read_text().split()
        pid = int(lines[0])
        start = int(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    cmd = b" ".join(argv_of(pid))
    return pid if b"patronus" in cmd and b"reflector" not in cmd and alive(pid, start) else None


def _load_or_create_token(path: FsPath) -> str:
    try:
        tok = path.read_text().strip()
        if len(tok) >= 16:
            return tok
    except OSError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tok = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tok + "\n")
    os.replace(tmp, path)
    return tok


async def serve(cfg: SiteConfig, *, ready: Callable[[Agent], None] | None = None, cleanup: bool = False) -> int:
    """Run the agent until SIGTERM/SIGINT; return the exit code. The API runs in the same loop.
    `cleanup`: remove the dataplane on stop (else the next agent adopts it). SIGUSR1 stops it and
    removes the dataplane whatever `cleanup` says (a test-bed's "the site loses its router")."""
    import uvicorn

    from patronus.agent.api import create_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg, cleanup=cleanup)

    def stop_and_clean() -> None:
        agent.cleanup_on_stop = True
        stop.set()
    loop.add_signal_handler(signal.SIGUSR1, stop_and_clean)
    await agent.start()
    server: uvicorn.Server | None = None
    api_task: asyncio.Task[Any] | None = None
    serving = False
    try:
        host, port = cfg.api_listen
        config = uvicorn.Config(create_app(agent, agent.token), host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False, ws="websockets-sansio"
                                if _has_ws_sansio() else "auto")
        server = _QuietServer(config)
        api_task = loop.create_task(server.serve())
        while not server.started:
            if api_task.done():
                exc = api_task.exception()
                raise AgentError(f"API cannot listen on {host}:{port}: {exc or 'it stopped at start'}")
            await asyncio.sleep(0.01)
        if ready is not None:
            ready(agent)
        serving = True
        stopper = loop.create_task(stop.wait())
        await asyncio.wait({stopper, api_task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        return 0
    finally:
        if server is not None:
            server.should_exit = True
        if api_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(api_task, 5)
        # an agent that never served (its API could not listen) removes what it created, as a failed
        # start does; a dataplane it adopted stays
        await agent.stop(cleanup=None if serving or agent.cleanup_on_stop else not agent.adopting)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


def _has_ws_sansio() -> bool:
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    except ImportError:
        return False
    return True


class _QuietServer:
    """uvicorn.Server without its own signal handling (the agent owns SIGTERM/SIGINT)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class S(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        return S(config)
