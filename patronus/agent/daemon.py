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

Decisions: the site's runtime (`patronus.core.runtime.SiteRuntime`) decides everything -- probes,
verdicts, slots, the steering plan, tunnel liveness, housekeeping; this module is its asyncio driver.
The kernel steers *slots* (remote site × policy × path the connections were first put on), and the
runtime's router holds one flow per slot. After every step that may change routing the agent numbers
the runtime's plan into the two kernel maps (`steering.py`) and applies the difference in one nftables
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import secrets
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
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
    slot_gen,
    slot_mark,
    split_slot,
)
from patronus.agent.store import Store
from patronus.core.errors import ConfigError
from patronus.core.events import (
    AgentStarted,
    AgentStopping,
    BandwidthMeasured,
    Event,
    PathMtuMeasured,
    PathStatusChanged,
    ReflectorRestarted,
    SteeringFailed,
    TunnelDown,
)
from patronus.core.model import Endpoint, EndpointId, FlowKey, PathId, PathStatus, Site, SiteId, Slot
from patronus.core.plan import SteeringPlan
from patronus.core.policy import RoutingPolicy
from patronus.core.runtime import Actions, SiteRuntime
from patronus.core.sla import SlaMonitor

log = logging.getLogger("patronus.agent")
T = TypeVar("T")

# the API's most (`/events?limit=10000`): the test-bed reads a run's events once, at its end, and the
# first misses of probe runs (ProbeLost, published but never stored) must not push the verdicts out
_EVENT_BUFFER = 10_000
_FLOW_REFRESH_S = 1.0
_PERIODIC_S = 1.0
_TUNNEL_CHECK_S = 2.0


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
        self.runtime = SiteRuntime(cfg.name, (), {r.name: r.prefixes for r in cfg.remotes}, profile=cfg.monitor,
                                   router=cfg.router, sla=SlaMonitor(cfg.sla), policies=(),
                                   buckets=LB_BUCKETS, now=time.monotonic())
        self.logic = self.runtime.logic
        self.monitor = self.logic.monitor
        self.router = self.logic.router
        self.sla = self.logic.sla
        self._undo: list[_Undo] = []
        self.adopted: dict[str, Any] = {}                # what this start found and took over (the API says)
        self.adopting = False                            # it found a dataplane of an earlier agent
        self._record_sysctls: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._events: deque[dict[str, Any]] = deque(maxlen=_EVENT_BUFFER)
        self._status_since: dict[PathId, float] = {}
        self._policy_no: dict[str, int] = {}
        self._kernel_flows: list[KernelFlow] = []
        self._flows_at = 0.0
        self._last_steering_change: float | None = None
        self._steering_changes = 0
        self._plans = {p.id: p for p in cfg.paths}
        self._remote_no = {r.name: i + 1 for i, r in enumerate(cfg.remotes)}
        self._stopping = False
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
        """Bring the site up, each step registering its undo: the host (pid file, store, keys), the
        kernel (what an earlier agent left, uplink routing, tunnels, steering), probing, then the core."""
        cfg = self.cfg
        loop = self.loop
        assert loop is not None
        self._claim_host()
        store = self._open_store()
        private = await self._k(keymod.load_or_create_private_key, cfg.wg_private_key_file)
        self.public_key = keymod.public_key(private)
        self.token = cfg.api_token or _load_or_create_token(cfg.api_token_file)
        record = self._dataplane_record()
        self._load_policies(store, record)
        keep, kept = await self._build_dataplane(private, record)
        await self._start_probing(kept)
        self._start_core(time.monotonic(), keep[1] if keep is not None and (keep[0] or keep[1]) else None)
        self._tasks.append(loop.create_task(self._periodic(), name="patronus-periodic"))
        if cfg.pmtu:
            self._tasks.append(loop.create_task(self._measure_mtus(), name="patronus-pmtu"))
        if cfg.bandwidth_interval_s > 0:
            self._tasks.append(loop.create_task(self._bandwidth_tests(), name="patronus-bandwidth"))
        self._publish_event(AgentStarted(at=time.monotonic(), site=cfg.name, paths=len(cfg.paths),
                                         wireguard_backend=self.wg_backend, steering=cfg.steering,
                                         adopted=self.adopted or None))
        log.info("agent %s up: %d paths, wireguard %s, steering %s", cfg.name, len(cfg.paths), self.wg_backend,
                 cfg.steering)
        # Everything allocated so far lives as long as the agent: keep it out of the cyclic collector's
        # full passes, whose pauses would otherwise grow with it (and delay probe processing).
        gc.collect()
        gc.freeze()

    def _start_core(self, now: float, kept_slots: dict[int, int] | None) -> None:
        """The site's paths into the runtime and its first step. With `kept_slots` (slot marks → path
        marks an earlier agent left in the kernel), the kernel steers as it was until the paths have
        their verdicts (`SiteRuntime.adopt`)."""
        for path in self.cfg.core_paths():
            self.runtime.add_path(path, now)
            self._status_since[path.id] = self.wall(now)
        if kept_slots is not None:
            self.runtime.adopt(self._slots_of_marks(kept_slots), now)
        self._pump(now)

    def _claim_host(self) -> None:
        """Root where the site needs it, the state directory, and the pid file no other agent holds."""
        cfg = self.cfg
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

    def _open_store(self) -> Store:
        self.cfg.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = store = Store.open(self.cfg.database)
        self._undo.append(_Undo("store", store.close, store.close, on_loop=True))
        self._init_store(store)
        return store

    def _dataplane_record(self) -> HostRecord | None:
        """What an earlier agent of this site recorded of its dataplane (None: nothing usable)."""
        cfg = self.cfg
        try:
            record = HostRecord.load(cfg.state_dir)
        except ConfigError as exc:
            log.warning("ignoring the dataplane record: %s (kept tunnels and rules are adopted, kept slots are not)",
                        exc)
            return None
        if record is not None and record.owner != cfg.owner:
            log.warning("ignoring the dataplane record of %s (this site is %s)", record.owner, cfg.owner)
            return None
        return record

    def _load_policies(self, store: Store, record: HostRecord | None) -> None:
        """The store's policies (changed through the API) win over the file's, so they survive restarts;
        the numbers kept slots carry in their marks stay with the policies that still exist."""
        stored = store.list_policies()
        policies = [RoutingPolicy.from_dict(r.spec, f"store.policies.{r.name}") for r in stored] \
            if stored else list(self.cfg.policies)
        if not stored:
            with store.transaction():
                for p in policies:
                    store.upsert_policy(p.name, p.priority, p.enabled, p.to_dict(), now=time.time())
        self.router.replace_policies(policies)
        if record is not None:
            names = {p.name for p in policies}
            for name, n in sorted(record.policies.items(), key=lambda t: t[1]):
                if name in names and n < FALLBACK_POLICY_NO and n not in self._policy_no.values():
                    self._policy_no[name] = n
        self._number_policies()

    def _tunnel_specs(self, private: str) -> dict[str, Any]:
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

    async def _build_dataplane(self, private: str, record: HostRecord | None) -> tuple[Any, dict[str, Any]]:
        """What an earlier agent left, then uplink routing, tunnels and steering. Returns the kept
        steering maps to adopt (None: none) and what was adopted of the dataplane, for `adopted`."""
        cfg = self.cfg
        specs: dict[str, Any] = {}
        found: dict[str, Any] = {}
        maps: tuple[dict[int, int], dict[int, int]] | None = None
        if cfg.paths:
            from patronus.agent.wireguard import WireGuardManager, detect_backend

            self.wg_backend = await self._k(detect_backend, cfg.wg_backend)
            self.wg = WireGuardManager(self.wg_backend, cfg.state_dir)
            specs = self._tunnel_specs(private)
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
        actions = await self._apply_tunnels(specs, found, tunnels) if self.wg is not None else {}
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
        for ifname, action in actions.items():      # after the steering no longer points there
            if action is TunnelAction.REMOVE:
                assert self.wg is not None
                await self._k(self.wg.delete, ifname)
                tunnels["removed"] += 1
        self._save_record()
        self._undo.append(_Undo("dataplane record", functools.partial(HostRecord.remove, cfg.state_dir), None,
                                on_loop=True))
        return keep, {"tunnels": dict(tunnels), "slots": len(keep[1]) if keep else 0,
                      "slots_dropped": (len(maps[1]) - len(keep[1])) if maps and keep else 0}

    async def _apply_tunnels(self, specs: dict[str, Any], found: dict[str, Any],
                             tunnels: Counter[str]) -> dict[str, TunnelAction]:
        """Create, adopt or recreate each tunnel (counted in `tunnels`); the ones to remove are
        returned with the rest and removed later, once the steering no longer points there."""
        assert self.wg is not None
        foreign = await self._k(_foreign_links, set(specs), self.cfg.owner)
        actions = plan_tunnels(set(specs), found, foreign)
        for ifname, action in actions.items():
            if action is TunnelAction.REMOVE:
                continue
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
        return actions

    async def _start_probing(self, kept: dict[str, Any]) -> None:
        """The reflector (started, or adopted from an earlier agent), the prober and the bandwidth-test
        servers (one per uplink and peer site: one pair key each)."""
        assert self.loop is not None
        self.reflector = reflector = ReflectorProcess(self.cfg)
        self._undo.append(_Undo("reflector", functools.partial(reflector.close, keep=False),
                                functools.partial(reflector.close, keep=True), on_loop=True))
        how = reflector.start()
        self.prober = Prober(self.cfg, self._on_probe_reply)
        self.prober.start(self.loop)
        self._undo.append(_Undo("probes", self.prober.close, self.prober.close, on_loop=True))
        await self._start_bandwidth_servers()
        if self.adopting or how != "started":
            self.adopted = {"tunnels": kept["tunnels"], "reflector": how, "slots": kept["slots"],
                            "slots_dropped": kept["slots_dropped"]}
            log.info("adopted the dataplane an earlier agent left: tunnels %s, reflector %s, %d slots kept "
                     "(%d dropped)", kept["tunnels"] or "none", how, self.adopted["slots"],
                     self.adopted["slots_dropped"])

    async def _start_bandwidth_servers(self) -> None:
        from patronus.agent.bwtest import BandwidthServer
        from patronus.agent.config import probe_key
        from patronus.agent.ondemand import bandwidth_port
        from patronus.agent.sockets import open_path_socket

        servers: list[Any] = []

        def close() -> None:
            for srv in servers:
                srv.close()
        self._undo.append(_Undo("bandwidth servers", close, close, on_loop=True))     # they live on the loop
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
                    self._publish_event(PathMtuMeasured(at=time.monotonic(), path_id=pid, result=res))
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
                self._publish_event(BandwidthMeasured(at=time.monotonic(), path_id=plan.id, result=res))
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
        stopping = AgentStopping(at=time.monotonic(), cleanup=cleanup).as_dict(self.offset)
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(stopping)

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

    def _slots_of_marks(self, kept: Mapping[int, int]) -> dict[Slot, PathId]:
        """The kernel's slot → path map (marks, as an earlier agent numbered them and `kept_maps`
        renumbered them) in the runtime's terms; marks that name no remote, policy or path of ours are left out."""
        names = self._policy_names()
        by_number = {p.number: p for p in self.cfg.paths}
        remote_of = {n: name for name, n in self._remote_no.items()}
        out: dict[Slot, PathId] = {}
        for mark, pmark in sorted(kept.items()):
            rn, pn, n = split_slot(mark)
            remote, origin, cur = remote_of.get(rn), by_number.get(n), by_number.get(pmark & 0xFF)
            if remote is None or origin is None or cur is None or pn not in names:
                continue
            out[Slot(SiteId(remote), names[pn], origin.id, slot_gen(mark))] = cur.id
        return out

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

    def _number_policies(self, policies: Sequence[RoutingPolicy] | None = None) -> None:
        """A kernel number for every policy that has none (numbers stay with their names)."""
        used = set(self._policy_no.values())
        for p in _in_order(self.router.list_policies() if policies is None else policies):
            if p.name not in self._policy_no:
                n = next(i for i in range(1, FALLBACK_POLICY_NO) if i not in used)
                self._policy_no[p.name] = n
                used.add(n)

    def _numbered_policies(self, policies: Sequence[RoutingPolicy] | None = None) -> list[tuple[int, RoutingPolicy]]:
        return [(self._policy_no[p.name], p)
                for p in _in_order(self.router.list_policies() if policies is None else policies)]

    def _policy_names(self) -> dict[int, str | None]:
        names: dict[int, str | None] = {n: name for name, n in self._policy_no.items()}
        names[FALLBACK_POLICY_NO] = None
        return names

    def _policy_number(self, name: str | None) -> int:
        return FALLBACK_POLICY_NO if name is None else self._policy_no[name]

    def _slot_mark(self, slot: Slot) -> int:
        return slot_mark(self._remote_no[slot.remote], self._policy_number(slot.policy),
                         self._plans[slot.origin].number, slot.gen)

    def _slot_by_mark(self) -> dict[int, Slot]:
        return {self._slot_mark(s): s for s in self.runtime.slots}

    def _kernel_maps(self, plan: SteeringPlan) -> tuple[dict[int, int], dict[int, int]]:
        """The plan numbered into the kernel's two maps: new_slot (bucket mark → slot mark) and
        slot_path (slot mark → path mark)."""
        new_slot: dict[int, int] = {}
        for b, slot in plan.new.items():
            new_slot[slot_mark(self._remote_no[b.remote], self._policy_number(b.policy), b.index)] = \
                self._slot_mark(slot)
        slot_path = {self._slot_mark(s): path_mark(self._plans[pid].number) for s, pid in plan.slots.items()}
        return new_slot, slot_path

    def _steer(self, plan: SteeringPlan, moves: list[Event]) -> None:
        if self.steering is None or not self.steering.applied:
            return
        new_slot, slot_path = self._kernel_maps(plan)
        begun = time.monotonic()
        done = self.steering.update(new_slot, slot_path)
        if done is None:
            return
        self._steering_changes += 1
        self._last_steering_change = self.wall(done)
        # the kernel switched at some instant between `begun` (the transaction handed over) and `done`
        # (it returned): a packet may take the new path from the first
        applied = self.runtime.steering_applied(moves, begun, done)
        if applied is not None:
            self._publish_event(applied)

    # -- the core loop -----------------------------------------------------------------------------

    def _on_probe_reply(self, path_id: PathId, seq: int, sent_at: float, now: float) -> None:
        self.runtime.on_probe_reply(path_id, seq, sent_at, now)
        self._pump(now)

    def _on_timer(self) -> None:
        due = self._timer_at
        self._timer = None
        self._timer_at = None
        if self.prober is not None:
            # replies already in the socket buffers first, with their kernel arrival times: a pause of
            # this loop must not turn an answered probe into a timed-out one
            self.prober.drain()
        if not self._stopping:
            self._perform(self.runtime.on_timer(time.monotonic(), due))

    def _pump(self, now: float) -> None:
        """One step of the runtime, performed; then re-arm."""
        if not self._stopping:
            self._perform(self.runtime.pump(now))

    def _perform(self, act: Actions) -> None:
        if self.prober is not None:
            for probe in act.probes:
                self.prober.send(probe.path_id, probe.seq)
        for ev in act.events:
            if isinstance(ev, PathStatusChanged):
                self._status_since[ev.path_id] = self.wall(ev.at)
            elif isinstance(ev, TunnelDown):
                log.warning("path %s: probes pass but tunnel %s has no WireGuard session; routing around it",
                            ev.path_id, ev.interface)
            self._publish_event(ev)
        if act.released:
            log.info("steering hold over: %d slots adopted", len(self.runtime.slots))
        if act.replan:
            try:
                self._steer(self.runtime.plan(), act.moves)
            except Exception as exc:     # a refused kernel update must not kill the agent
                log.error("steering update failed: %s", exc)
                self._publish_event(SteeringFailed(at=time.monotonic(), error=str(exc)))
        if self.store is not None and (act.status_changed or act.stored):
            self._store_events(act.stored)
        self._arm()

    def _arm(self) -> None:
        assert self.loop is not None
        when = self.runtime.next_deadline()
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
        """Slow duties of the host: refresh the flow table, record metrics history, check the tunnels
        and the reflector (the runtime's own housekeeping is on its deadline)."""
        next_metrics = time.monotonic() + self.cfg.metrics_interval_s
        while True:
            await asyncio.sleep(min(_PERIODIC_S, self.cfg.metrics_interval_s))
            now = time.monotonic()
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
                    self._publish_event(ReflectorRestarted(at=time.monotonic(), how=how))

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
        """The runtime's tunnel-liveness rule on the handshakes just read; a dead tunnel is nudged (a
        fresh handshake initiation) on every check, from one end only (the lower site id), for the
        reason in WireGuardManager.create."""
        dead = self.runtime.on_handshakes(shakes, time.time(), now, {p.id: p.ifname for p in self.cfg.paths})
        for pid in dead:
            plan = self._plans[pid]
            if self.loop is not None and self.cfg.id < self.cfg.remote(plan.remote).id:
                self.loop.run_in_executor(self.kernel, self._nudge, plan)
        if self.runtime.has_news():
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
            self.store.record_events([dataclasses.replace(e, at=self.wall(e.at)) for e in events])
        except Exception as exc:
            log.error("store: cannot record events: %s", exc)

    # -- events out --------------------------------------------------------------------------------

    def _publish_event(self, ev: Event) -> None:
        self._publish(ev.as_dict(self.offset))     # monotonic times out as wall times

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
                "displaced_slots": self.runtime.displaced_slots(),
                "pending_failbacks": self.router.pending_failbacks(),
                "adopted": self.adopted or None, "steering_held": self.logic.steering_held}

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
        """Kernel classifier, router and store change together, or not at all."""
        if len(policies) >= FALLBACK_POLICY_NO - 1:
            raise ConfigError(f"at most {FALLBACK_POLICY_NO - 2} policies", "policies")
        numbers = dict(self._policy_no)
        self._number_policies(policies)
        try:
            if self.steering is not None and self.steering.applied:
                self.steering.set_policies(self._numbered_policies(policies))
        except Exception:
            self._policy_no = numbers
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
        self.runtime.set_policies(policies, now)
        self._pump(now)

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
        slots = self._slot_by_mark()
        now = time.time()
        out = []
        for f in self._kernel_flows:
            _rn, pn, n = split_slot(f.slot)
            key = slots.get(f.slot)
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

    def steering_plan(self) -> dict[str, Any]:
        rt = self.runtime
        return {"held": rt.steering_held, "buckets": rt.buckets, **rt.plan().as_dict()}

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
        return MetricsSnapshot(paths=rows, failovers=dict(self.runtime.failovers),
                               unattributed_rejections=dict(unattributed))


def _in_order(policies: Sequence[RoutingPolicy]) -> list[RoutingPolicy]:
    """The router's match order."""
    return sorted(policies, key=lambda p: (p.priority, p.name))


def _finite(x: float | None) -> float | None:
    import math

    return None if x is None or not math.isfinite(x) else x


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
