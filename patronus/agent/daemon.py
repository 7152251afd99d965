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
  SIGUSR1 does the same whatever the flag (the test-bed's `agent_stop` with `cleanup: true`). A mesh site
  (`mesh:`) stopping with `--cleanup` announces that it leaves the mesh; on SIGUSR1 it says nothing (the
  site failed: its peers find out); SIGUSR2 announces the leave, stops and removes everything (the
  test-bed's `site_leave`, or decommissioning a site now).
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
thread through libnftables (well under a millisecond). Each undo step of a start names its thread
(`lifecycle.Thread`).

Parts: `lifecycle` (the undo steps on an AsyncExitStack), `dataplane` (tunnels, uplink routing,
steering, the host record), `numbering` (the plan in kernel marks), `duties` (the periodic round,
path MTU, bandwidth tests), `hub` (events out), `control` (what the API reads and changes).

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
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from patronus.agent import duties
from patronus.agent import keys as keymod
from patronus.agent.adopt import HostRecord
from patronus.agent.config import SiteConfig
from patronus.agent.control import AgentApi
from patronus.agent.dataplane import Built, Dataplane
from patronus.agent.hub import EventHub
from patronus.agent.learned import Learned
from patronus.agent.lifecycle import Lifecycle, Thread
from patronus.agent.meshdrive import MeshDriver
from patronus.agent.numbering import KernelNumbers
from patronus.agent.ports import reserve_site_ports
from patronus.agent.prober import Prober, ReflectorProcess
from patronus.agent.procs import running_agent_pid, start_ticks
from patronus.agent.steering import FALLBACK_POLICY_NO, LB_BUCKETS, KernelFlow
from patronus.agent.store import Store
from patronus.core.errors import ConfigError
from patronus.core.events import (
    AgentStarted,
    AgentStopping,
    Event,
    PathStatusChanged,
    SteeringFailed,
    TunnelDown,
)
from patronus.core.model import Endpoint, EndpointId, FlowKey, PathId, PathStatus, Site, SiteId
from patronus.core.plan import SteeringPlan
from patronus.core.policy import RoutingPolicy
from patronus.core.runtime import Actions, SiteRuntime
from patronus.core.sla import SlaMonitor

log = logging.getLogger("patronus.agent")


API_AFTER_MESH_S = 5.0     # a joining site's API waits at most this for its first peers to be applied


class AgentError(RuntimeError):
    """The agent cannot start on this host (the message says why); nothing it created is left behind."""


class Agent:
    """The site's asyncio driver: starts and stops the host side (`Lifecycle`, `Dataplane`), feeds the
    runtime its probe replies, timers and the host's readings, and performs its actions (probes out,
    the plan numbered into the kernel, events published and stored). The API sees it through
    `control.AgentApi`."""

    def __init__(self, cfg: SiteConfig, *, cleanup: bool = False) -> None:
        self.cfg = cfg
        self.cleanup_on_stop = cleanup
        self.offset = time.time() - time.monotonic()      # wall - monotonic: what leaves carries wall time
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.life = Lifecycle()
        self.numbers = KernelNumbers(cfg)
        self.dataplane = Dataplane(cfg, self.numbers, self.life)
        self.hub = EventHub(self.offset)
        self.store: Store | None = None
        self.prober: Prober | None = None
        self.reflector: ReflectorProcess | None = None
        self.public_key = ""
        self.token = ""
        self.runtime = SiteRuntime(cfg.name, (), {r.name: r.prefixes for r in cfg.remotes}, profile=cfg.monitor,
                                   router=cfg.router, sla=SlaMonitor(cfg.sla), policies=(),
                                   buckets=LB_BUCKETS, now=time.monotonic())
        self.router = self.runtime.logic.router
        self.adopted: dict[str, Any] = {}                # what this start found and took over (the API says)
        self.status_since: dict[PathId, float] = {}
        self.kernel_flows: list[KernelFlow] = []         # the last conntrack dump
        self.last_steering_change: float | None = None
        self.steering_changes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = False
        self.private_key = ""
        self.cleanup_on_stop_now = cleanup
        self.leave_on_stop: bool | None = None          # announce a mesh leave on stop (None: when cleaning up)
        self.mesh: MeshDriver | None = None              # with `mesh:` (patronus.agent.meshdrive)
        self.learned = Learned(self, self._pump)         # mesh discovery's remotes, applied at run time

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
            await self.stop(cleanup=self.cleanup_on_stop or not self.dataplane.adopting)
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
        private = await self.life.on_kernel(keymod.load_or_create_private_key, cfg.wg_private_key_file)
        self.private_key = private
        self.public_key = keymod.public_key(private)
        mesh = MeshDriver.prepare(self, cfg.mesh) if cfg.mesh is not None else None   # checked before building
        self.token = cfg.api_token or keymod.load_or_create_token(cfg.api_token_file)
        record = self._dataplane_record()
        if record is not None and record.learned and mesh is not None:
            self.learned.keep(record)
        self._load_policies(store, record)
        built = await self.dataplane.build(private, record, self.router.list_policies())
        await self._start_probing(built)
        self._start_core(time.monotonic(), built.kept_slots)
        if mesh is not None:
            self.mesh = mesh
            mesh.start()
            self.life.add("mesh", mesh.close, mesh.close, Thread.LOOP)   # `stop` has silenced it already
        self._tasks.append(loop.create_task(duties.periodic(self), name="patronus-periodic"))
        if cfg.pmtu:
            self._tasks.append(loop.create_task(duties.measure_mtus(self), name="patronus-pmtu"))
        if cfg.bandwidth_interval_s > 0:
            self._tasks.append(loop.create_task(duties.bandwidth_tests(self), name="patronus-bandwidth"))
        self.publish(AgentStarted(at=time.monotonic(), site=cfg.name, paths=len(cfg.paths),
                                  wireguard_backend=self.dataplane.wg_backend, steering=cfg.steering,
                                  adopted=self.adopted or None))
        log.info("agent %s up: %d paths, wireguard %s, steering %s, %.2f s after its process started", cfg.name,
                 len(cfg.paths), self.dataplane.wg_backend, cfg.steering, _process_age())
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
            self.status_since[path.id] = self.wall(now)
        if kept_slots is not None:
            self.runtime.adopt(self.numbers.slots_of_marks(kept_slots), now)
        self._pump(now)

    def _claim_host(self) -> None:
        """Root where the site needs it, the state directory, the pid file no other agent holds, and the
        site's ports out of the kernel's ephemeral pool."""
        cfg = self.cfg
        if os.geteuid() != 0 and (cfg.steering != "none" or cfg.paths):
            raise AgentError("the agent needs root (CAP_NET_ADMIN) to create tunnels, routes and rules")
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pidfile = cfg.state_dir / "agent.pid"
        other = running_agent_pid(pidfile)
        if other is not None and other != os.getpid():
            raise AgentError(f"another agent of site {cfg.name} is running (pid {other}, {pidfile})")
        pidfile.write_text(f"{os.getpid()}\n{start_ticks(os.getpid()) or ''}\n")
        unlink = functools.partial(pidfile.unlink, missing_ok=True)
        self.life.add("pidfile", unlink, unlink, Thread.LOOP)
        reserve_site_ports(cfg, self.life)       # before any socket of ours binds port 0 (patronus.agent.ports)

    def _open_store(self) -> Store:
        self.cfg.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = store = Store.open(self.cfg.database)
        self.life.add("store", store.close, store.close, Thread.LOOP)
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
                store.upsert_path(path, wg_interface=self.numbers.plans[path.id].ifname)
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
        policies = [RoutingPolicy.from_dict(r.spec, f"store.policies.{r.name}", stored=True) for r in stored] \
            if stored else list(self.cfg.policies)
        if not stored:
            with store.transaction():
                for p in policies:
                    store.upsert_policy(p.name, p.priority, p.enabled, p.to_dict(), now=time.time())
        self.router.replace_policies(policies)
        if record is not None:
            self.numbers.keep_record(record, {p.name for p in policies})
        self.numbers.number(policies)

    async def _start_probing(self, built: Built) -> None:
        """The reflector (started, or adopted from an earlier agent), the prober and the bandwidth-test
        servers (one per uplink and peer site: one pair key each)."""
        assert self.loop is not None
        self.reflector = reflector = ReflectorProcess(self.cfg)
        self.life.add("reflector", functools.partial(reflector.close, keep=False),
                      functools.partial(reflector.close, keep=True), Thread.LOOP)
        how = reflector.start()
        self.prober = Prober(self.cfg, self._on_probe_reply)
        self.prober.start(self.loop)
        self.life.add("probes", self.prober.close, self.prober.close, Thread.LOOP)
        await self._start_bandwidth_servers()
        if self.dataplane.adopting or how != "started":
            self.adopted = {"tunnels": dict(built.tunnels), "reflector": how, "slots": built.slots,
                            "slots_dropped": built.slots_dropped}
            log.info("adopted the dataplane an earlier agent left: tunnels %s, reflector %s, %d slots kept "
                     "(%d dropped)", self.adopted["tunnels"] or "none", how, built.slots, built.slots_dropped)

    async def _start_bandwidth_servers(self) -> None:
        from patronus.agent.bwtest import BandwidthServer
        from patronus.agent.config import probe_key
        from patronus.agent.ondemand import bandwidth_port
        from patronus.agent.sockets import open_path_socket

        servers: list[Any] = []

        def close() -> None:
            for srv in servers:
                srv.close()
        self.life.add("bandwidth servers", close, close, Thread.LOOP)     # their readers are the loop's
        for r in self.cfg.remotes:
            key = probe_key(self.cfg, r)
            if key is None:
                continue
            for up in self.cfg.uplinks:
                sock = open_path_socket(up.address, up.interface, up.mark, bandwidth_port(self.cfg, r.id))
                servers.append(await BandwidthServer.serve(sock, key))

    async def stop(self, cleanup: bool | None = None) -> None:
        """Undo what `start` did, newest first: everything (`cleanup`, by default the agent's
        `--cleanup`), or only what is the agent's own, leaving the dataplane to the next agent (see the
        module's header). Safe to call more than once."""
        cleanup = self.cleanup_on_stop if cleanup is None else cleanup
        self.cleanup_on_stop_now = cleanup
        self.stopping = True
        if self.mesh is not None:
            await self.mesh.stop(self.cleanup_on_stop_now if self.leave_on_stop is None else self.leave_on_stop)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.store is not None and self.life.steps:
            with contextlib.suppress(Exception):
                self._persist_flows()
        kept = await self.life.close(cleanup)
        if kept:
            log.info("stopped; left for the next agent (`patronus cleanup` removes them): %s", ", ".join(kept))
        self.hub.last_word(AgentStopping(at=time.monotonic(), cleanup=cleanup))

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
        if not self.stopping:
            self._perform(self.runtime.on_timer(time.monotonic(), due))

    def _pump(self, now: float) -> None:
        """One step of the runtime, performed; then re-arm."""
        if not self.stopping:
            self._perform(self.runtime.pump(now))

    def _perform(self, act: Actions) -> None:
        if self.prober is not None:
            for probe in act.probes:
                self.prober.send(probe.path_id, probe.seq)
        for ev in act.events:
            if isinstance(ev, PathStatusChanged):
                self.status_since[ev.path_id] = self.wall(ev.at)
                if ev.new is PathStatus.UP:
                    self.learned.warm(ev.path_id)
            elif isinstance(ev, TunnelDown):
                log.warning("path %s: probes pass but tunnel %s has no WireGuard session; routing around it",
                            ev.path_id, ev.interface)
            self.publish(ev)
        if act.released:
            log.info("steering hold over: %d slots adopted", len(self.runtime.slots))
        if act.replan:
            try:
                self._steer(self.runtime.plan(), act.moves)
            except Exception as exc:     # a refused kernel update must not kill the agent
                log.error("steering update failed: %s", exc)
                self.publish(SteeringFailed(at=time.monotonic(), error=str(exc)))
        if self.store is not None and (act.status_changed or act.stored):
            self.store_events(act.stored)
        self._arm()

    def _steer(self, plan: SteeringPlan, moves: list[Event]) -> None:
        """The plan numbered into the kernel's maps, the difference applied in one transaction."""
        steering = self.dataplane.steering
        if steering is None or not steering.applied:
            return
        new_slot, slot_path = self.numbers.kernel_maps(plan)
        begun = time.monotonic()
        done = steering.update(new_slot, slot_path)
        if done is None:
            return
        self.steering_changes += 1
        self.last_steering_change = self.wall(done)
        # the kernel switched at some instant between `begun` (the transaction handed over) and `done`
        # (it returned): a packet may take the new path from the first
        applied = self.runtime.steering_applied(moves, begun, done)
        if applied is not None:
            self.publish(applied)

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

    # -- what the host tells it, and what it keeps -------------------------------------------------

    def check_tunnels(self, shakes: dict[PathId, float | None], now: float) -> None:
        """The runtime's tunnel-liveness rule on the handshakes just read; a dead tunnel is nudged (a
        fresh handshake initiation) on every check, from one end only (the lower site id), for the
        reason in WireGuardManager.create."""
        dead = self.runtime.on_handshakes(shakes, time.time(), now, {p.id: p.ifname for p in self.cfg.paths})
        for pid in dead:
            plan = self.numbers.plans[pid]
            if self.loop is not None and self.cfg.id < self.cfg.remote(plan.remote).id:
                self.loop.run_in_executor(self.life.kernel, self.dataplane.nudge, plan)
        if self.runtime.has_news():
            self._pump(now)

    def record_metrics(self, now: float) -> None:
        if self.store is None:
            return
        monitor = self.runtime.logic.monitor
        samples = [(pid, monitor.metrics(pid, now).with_(measured_at=self.wall(now))) for pid in monitor.path_ids]
        try:
            with self.store.transaction():
                self.store.record_metrics_many(samples)
                for pid in monitor.path_ids:
                    self.store.set_path_status(pid, monitor.status(pid), at=self.status_since.get(pid))
            self._persist_flows()
        except Exception as exc:
            log.error("store: cannot record metrics: %s", exc)

    def _persist_flows(self) -> None:
        if self.store is None:
            return
        keep = set()
        now = time.time()
        with self.store.transaction():
            for f in self.flow_table():
                key = FlowKey(f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"], f["protocol"])
                keep.add(key)
                prev = self.store.get_flow(key)
                self.store.upsert_flow(key, started_at=prev.started_at if prev else now, last_seen=now,
                                       path_id=f["path"], policy=f["policy"])
            for rec in self.store.list_flows():
                if rec.flow not in keep:
                    self.store.remove_flow(rec.flow)

    def store_events(self, events: Sequence[Event]) -> None:
        """Record `events` (their `at` monotonic) in the store, if there is one."""
        if self.store is None or not events:
            return
        try:
            self.store.record_events([dataclasses.replace(e, at=self.wall(e.at)) for e in events])
        except Exception as exc:
            log.error("store: cannot record events: %s", exc)

    def publish(self, ev: Event) -> None:
        self.hub.publish(ev)

    def flow_table(self) -> list[dict[str, Any]]:
        """The kernel's connections, each with its slot's policy and paths (the API's flow table)."""
        return self.numbers.flow_rows(self.kernel_flows, self.runtime.slots, self.router.flow_path, time.time())

    def apply_policies(self, policies: list[RoutingPolicy]) -> None:
        """Kernel classifier, router and store change together, or not at all."""
        if len(policies) >= FALLBACK_POLICY_NO - 1:
            raise ConfigError(f"at most {FALLBACK_POLICY_NO - 2} policies", "policies")
        numbers = dict(self.numbers.policies)
        self.numbers.number(policies)
        try:
            if self.dataplane.steering_applied:
                assert self.dataplane.steering is not None
                self.dataplane.steering.set_policies(self.numbers.numbered(policies))
        except Exception:
            self.numbers.policies = numbers
            raise
        self.dataplane.save_record()
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


async def serve(cfg: SiteConfig, *, ready: Callable[[Agent], None] | None = None, cleanup: bool = False) -> int:
    """Run the agent until SIGTERM/SIGINT; return the exit code. The API runs in the same loop.
    `cleanup`: remove the dataplane on stop (else the next agent adopts it). SIGUSR1 stops it and
    removes the dataplane whatever `cleanup` says (a test-bed's "the site loses its router": a mesh site
    says nothing), SIGUSR2 too after saying that the site leaves the mesh."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg, cleanup=cleanup)

    def stop_and_clean(leave: bool) -> None:
        agent.cleanup_on_stop = True
        agent.leave_on_stop = leave
        stop.set()
    loop.add_signal_handler(signal.SIGUSR1, stop_and_clean, False)
    loop.add_signal_handler(signal.SIGUSR2, stop_and_clean, True)
    await agent.start()
    server: Any = None
    api_task: asyncio.Task[Any] | None = None
    serving = False
    try:
        host, port = cfg.api_listen
        # The API stack (FastAPI, pydantic models: most of a second of CPU) is imported and built on a worker
        # thread once the site is up, and a joining site's first peers are applied first (at most
        # API_AFTER_MESH_S): the control plane before the management plane, so that neither competes with
        # the join for the CPU.
        if agent.mesh is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.mesh.settled.wait(), API_AFTER_MESH_S)
        server = await loop.run_in_executor(None, _api_server, agent, host, port)
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
        await agent.stop(cleanup=None if serving or agent.cleanup_on_stop else not agent.dataplane.adopting)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(sig)


def _process_age() -> float:
    """Seconds since this process started (the "agent up" log line)."""
    ticks = start_ticks(os.getpid())
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK") if ticks else float("nan")


def _api_server(agent: Agent, host: str, port: int) -> Any:
    import uvicorn

    from patronus.agent.api import create_app

    config = uvicorn.Config(create_app(AgentApi(agent), agent.token), host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False, ws="websockets-sansio" if _has_ws_sansio() else "auto")
    return _QuietServer(config)


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
