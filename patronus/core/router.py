"""Routing engine: policy match, path selection, sticky flows, failover, failback, load balancing.

What may change state here: topology (`add_path`, `remove_path`, `set_site_prefixes`), path state
(`update_path`, or `handle(event)` with the monitor's events), policies (`add_policy`, ...), flows
(`select_path`, `remove_flow`) and time (`on_timer`). A flow changes path in exactly one place,
`_move`. This module must not know how paths are measured or how steering is done: it sees path
status and metrics, and emits `FlowAssigned` / `FailoverTriggered` / `Failback` / ... events.
It composes a policy table (`policytable.py`: which policy a flow matches), a path table
(`pathtable.py`: paths, their state, site prefixes, the ranking and load-balanced choice below) and a
failback book (`failback.py`: displaced flows, their hold and timers); it alone holds the flows.

Rules:
- A new flow gets the first enabled policy (lowest priority number) that matches it, then the best
  path toward the destination's site for that policy: Up paths before Degraded ones, Down never;
  paths not suspected of sharing a sibling's failure (`set_suspect`) before suspects, then paths
  meeting the policy's hard requirements before those that do not (strict requirements exclude
  them); the preference score decides, ties by path id; with load balancing, the paths within
  `lb_tolerance` points of the best share the flows.
- Sticky: an existing flow keeps its path while that path is Up, and also while it is Degraded but
  above the policy's failover threshold.
- Failover: when a path goes Down every flow on it moves at once to the best usable path (reason
  `path_down`); when its score falls below a policy's `failover_threshold` or it stops meeting the
  policy's requirements, flows move only if a better path exists and not within
  `failover_cooldown_s` of their last move. With no usable path a flow is stranded where it is and
  moves as soon as a path becomes usable.
- Failback: a flow that failed over remembers its origin path and returns to it once the origin has
  been acceptable to the flow's policy (Up, at or above its threshold, meeting its requirements) for
  `failback_hold_s` without interruption, beats the current path by `min_improvement` preference
  points, and the flow's cooldown has passed. A flapping path never stays acceptable long enough.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from patronus.core.errors import ConfigError
from patronus.core.events import (
    Event,
    Failback,
    FailoverReason,
    FailoverTriggered,
    FlowAssigned,
    FlowExpired,
    FlowStranded,
    FlowUnroutable,
    PathMetricsUpdated,
    PathStatusChanged,
)
from patronus.core.failback import Failbacks
from patronus.core.model import FlowKey, Path, PathId, PathMetrics, PathStatus, RouteKey, SiteId
from patronus.core.pathtable import FlowState, PathEntry, PathTable
from patronus.core.policy import RoutingPolicy, default_policies
from patronus.core.policytable import IMPLICIT_DEFAULT, PolicyTable

_UP = PathStatus.UP
_DEGRADED = PathStatus.DEGRADED
_DOWN = PathStatus.DOWN


@dataclass(frozen=True, slots=True)
class RouterConfig:
    failback_hold_s: float = 10.0
    min_improvement: float = 5.0
    failover_cooldown_s: float = 5.0
    idle_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        errs = [(f"router.{n}", f"must be non-negative, got {getattr(self, n)!r}")
                for n in ("failback_hold_s", "min_improvement", "failover_cooldown_s")
                if not getattr(self, n) >= 0]
        if not self.idle_timeout_s > 0:
            errs.append(("router.idle_timeout_s", f"must be positive, got {self.idle_timeout_s!r}"))
        if errs:
            raise ConfigError(errs)


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A read-only snapshot of one flow for APIs and reports."""

    flow: RouteKey
    path_id: PathId
    policy: str
    site: SiteId
    assigned_at: float
    last_seen: float
    origin: PathId | None
    stranded: bool


class Router:
    def __init__(self, config: RouterConfig | None = None,
                 policies: Iterable[RoutingPolicy] | None = None) -> None:
        self.config = config or RouterConfig()
        self._table = PathTable()
        self._paths = self._table.entries     # the table's own dict: read here, changed by the table only
        self._policies = PolicyTable()
        self._flows: dict[RouteKey, FlowState] = {}
        self._events: list[Event] = []
        self._failbacks = Failbacks()
        self._displaced = self._failbacks.displaced   # the book's own dict: read here, changed by the book only
        self._next_sweep: float | None = None
        self._flow_version: dict[SiteId, int] = {}    # a site's flows: one placed, moved, stranded or gone
        for p in default_policies() if policies is None else policies:
            self.add_policy(p)

    # -- events -----------------------------------------------------------------------------------

    def drain_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # -- policies ---------------------------------------------------------------------------------

    def add_policy(self, policy: RoutingPolicy) -> None:
        self._policies.add(policy)
        self._policies_changed()

    def upsert_policy(self, policy: RoutingPolicy) -> None:
        self._policies.upsert(policy)
        self._policies_changed()

    def remove_policy(self, name: str) -> RoutingPolicy:
        p = self._policies.remove(name)
        self._policies_changed()
        return p

    def set_policy_enabled(self, name: str, enabled: bool) -> None:
        self._policies.set_enabled(name, enabled)
        self._policies_changed()

    def replace_policies(self, policies: Iterable[RoutingPolicy]) -> None:
        self._policies.replace_all(policies)
        self._policies_changed()

    def list_policies(self) -> list[RoutingPolicy]:
        return self._policies.in_order()

    def _policies_changed(self) -> None:
        self._table.invalidate()
        self._table.reset_balancing()      # a policy's load-balancing mode (and so its state's shape) may change
        # Existing flows keep their path (sticky); they take the policy that now matches them, so
        # thresholds and requirements of the new policy apply from here on.
        pols = self._policies
        by_name = {p.name: p for p in pols.active}
        for f in self._flows.values():
            cur = by_name.get(f.policy.name)
            if cur is not f.policy:
                if cur is not None:
                    f.policy = cur
                else:       # a slot keeps its own policy's name; one whose policy went is ranked as the default
                    f.policy = pols.match(f.key, f.dscp, f.app_class) if isinstance(f.key, FlowKey) \
                        else IMPLICIT_DEFAULT

    # -- topology ---------------------------------------------------------------------------------

    def add_path(self, path: Path, now: float, status: PathStatus = _DOWN,
                 metrics: PathMetrics | None = None) -> None:
        self._table.add(path, now, status, metrics)
        if status is not _DOWN:
            self._rescue_stranded(path.dst_site, now)

    def remove_path(self, path_id: PathId, now: float) -> None:
        entry = self._table.entry(path_id)     # ConfigError if there is none
        entry.status = _DOWN
        self._table.invalidate(entry.path.dst_site)
        self._evacuate(entry, now, FailoverReason.PATH_REMOVED)
        self._table.drop(entry)
        self._gone(entry, now)

    def remove_site(self, site: SiteId, now: float) -> list[PathId]:
        """A remote left: its prefixes and paths go, with the flows to it (`FlowExpired`: nowhere to go)."""
        entries = self._table.drop_site(site)
        for e in entries:
            self._gone(e, now)
        return [e.path.id for e in entries]

    def _gone(self, entry: PathEntry, now: float) -> None:
        self._failbacks.forget(entry.path.id)
        for f in list(entry.flows.values()):   # stranded: nowhere to go, and their path is gone
            self._forget(f, now, idle_s=0.0)

    def set_site_prefixes(self, site: SiteId, prefixes: Iterable[str]) -> None:
        self._table.set_site_prefixes(site, prefixes)

    def site_for(self, address: str) -> SiteId | None:
        """Longest-prefix match of a destination address onto the site that owns it."""
        return self._table.site_for(address)

    def path_status(self, path_id: PathId) -> PathStatus:
        return self._table.entry(path_id).status

    def path_metrics(self, path_id: PathId) -> PathMetrics:
        return self._table.entry(path_id).metrics

    @property
    def path_ids(self) -> list[PathId]:
        return list(self._paths)

    def flows_on(self, path_id: PathId) -> list[RouteKey]:
        return list(self._table.entry(path_id).flows)

    def flow_count(self, path_id: PathId) -> int:
        return len(self._table.entry(path_id).flows)

    # -- path state -------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Consume a monitor event (PathStatusChanged / PathMetricsUpdated); others are ignored."""
        if isinstance(event, PathStatusChanged):
            if event.path_id in self._paths:
                self.update_path(event.path_id, event.at, status=event.new, metrics=event.metrics)
        elif isinstance(event, PathMetricsUpdated) and event.path_id in self._paths:
            self.update_path(event.path_id, event.at, status=event.status, metrics=event.metrics)

    def update_path(self, path_id: PathId, now: float, *, status: PathStatus | None = None,
                    metrics: PathMetrics | None = None) -> None:
        """New status and/or metrics for a path; moves flows as the rules above require."""
        e = self._table.entry(path_id)
        old = e.status
        if metrics is not None:
            self._table.set_metrics(e, metrics)
        if status is not None:
            e.status = status
        self._table.invalidate(e.path.dst_site)
        if e.status is _DOWN:
            if old is not _DOWN:
                self._evacuate(e, now, FailoverReason.PATH_DOWN)
            if path_id in self._displaced:
                self._try_failback(path_id, now)
            return
        if old is _DOWN:
            for f in e.flows.values():      # flows stranded on this path simply resume on it
                if f.stranded:
                    f.stranded = False
                    self._flows_changed(f.site)
                    if f.origin == path_id:
                        self._failbacks.clear_origin(f)
            self._rescue_stranded(e.path.dst_site, now)
        self._check_quality(e, now)
        if path_id in self._displaced:
            self._try_failback(path_id, now)

    def set_suspect(self, path_id: PathId, suspect: bool) -> None:
        """Fate sharing, decided by the driver: a suspected path is chosen for no flow while a path not
        suspected can take it, and no flow fails back onto it. Flows already on it stay: suspicion
        is a guess, only the path's own probes may evict them."""
        e = self._table.entry(path_id)
        if e.suspect != suspect:
            e.suspect = suspect
            self._table.invalidate(e.path.dst_site)

    def pending_failbacks(self) -> int:
        """Origins with a failback timer running: flows will move back when it fires."""
        return self._failbacks.pending()

    def is_suspect(self, path_id: PathId) -> bool:
        return self._table.entry(path_id).suspect

    # -- flows ------------------------------------------------------------------------------------

    def select_path(self, flow: FlowKey, now: float, *, dscp: int | None = None, app_class: str | None = None,
                    site: SiteId | None = None) -> PathId | None:
        """The path for `flow` (a packet of it was seen at `now`); None if there is no usable path."""
        f = self._flows.get(flow)
        if f is not None:
            f.last_seen = now
            # Down: stranded (it moves once a path is usable); Degraded: kept unless its threshold says not
            return None if f.entry.status is _DOWN else f.entry.path.id
        return self._new_flow(flow, now, dscp, app_class, site)

    def preview(self, site: SiteId, policy: str | None = None) -> PathId | None:
        """The path a new flow of `policy` (a name; None = the implicit default) toward `site` would be
        given now, load balancing aside (the best-ranked usable path). Changes nothing: drivers that
        compile decisions into a kernel table (the agent's nftables steering) ask this per policy."""
        ranked, _ = self._table.ranking(self._policies.named(policy), site)
        return ranked[0].path.id if ranked else None

    def preview_tier(self, site: SiteId, policy: str | None = None) -> list[tuple[PathId, float, float]]:
        """The paths a load-balancing `policy` spreads new flows toward `site` over now (its best path
        and every usable path within `lb_tolerance` points of it), best first, as (path, score,
        bandwidth in Mbit/s or 0). Changes nothing."""
        return self._table.tier(self._policies.named(policy), site)

    def place(self, flow: RouteKey, path_id: PathId, now: float, *, site: SiteId,
              policy: str | None = None, origin: PathId | None = None) -> PathId | None:
        """Register `flow` as already on `path_id` (the kernel sent it there, or it arrived over that
        path) under `policy` (a name; None = the implicit default). From here on it is an ordinary
        sticky flow: it fails over, is stranded and fails back like any other. `origin`: the path the
        flow had failed over from before it was placed (a restarted agent adopting the kernel's
        state); it fails back there as any displaced flow does, after the hold, which starts now. A
        flow placed on a Down path is evacuated at once, keeping that path (or `origin`) as its
        origin. Returns the flow's path, or None if it is stranded. A flow the router already has is
        left where it is."""
        f = self._flows.get(flow)
        if f is not None:
            return f.entry.path.id
        e = self._table.entry(path_id)
        pol = self._policies.named(policy)
        f = self._register(FlowState(flow, e, pol, site, now, None, None), now)
        if origin is not None and origin != path_id and origin in self._paths:
            self._failbacks.displace(f, origin)
        if e.status is _DOWN:
            self._evacuate_one(f, e, now)
        if f.origin is not None:
            self._try_failback(f.origin, now)
        return None if f.stranded else f.entry.path.id

    def policy_for(self, flow: FlowKey, dscp: int | None = None, app_class: str | None = None) -> RoutingPolicy:
        """The enabled policy a connection matches (the implicit default when none does), as a
        dataplane's classifier decides it; the router does not take the flow."""
        return self._policies.match(flow, dscp, app_class)

    def policy_named(self, name: str | None) -> RoutingPolicy:
        """The enabled policy called `name` (None = the implicit default); KeyError if there is none."""
        return self._policies.named(name)

    def touch(self, flow: RouteKey, now: float) -> None:
        f = self._flows.get(flow)
        if f is not None:
            f.last_seen = now

    def remove_flow(self, flow: RouteKey, now: float) -> bool:
        f = self._flows.get(flow)
        if f is None:
            return False
        self._forget(f, now, idle_s=now - f.last_seen)
        return True

    def site_state(self, site: SiteId) -> tuple[int, int, int]:
        """A fingerprint of everything the router knows toward `site` that a steering plan reads: the
        policies, that site's paths (as their rankings' cache sees them) and where its flows are. Equal
        fingerprints, equal answers from `preview`, `preview_tier`, `flow_path` and `flow_info` for that
        site (the runtime keeps each remote's part of its plan until its fingerprint changes)."""
        return (*self._table.site_state(site), self._flow_version.get(site, 0))

    def _flows_changed(self, site: SiteId) -> None:
        self._flow_version[site] = self._flow_version.get(site, 0) + 1

    def flow_path(self, flow: RouteKey) -> PathId | None:
        f = self._flows.get(flow)
        return None if f is None or f.stranded else f.entry.path.id

    def flow_info(self, flow: RouteKey) -> FlowInfo | None:
        f = self._flows.get(flow)
        return None if f is None else self._info(f)

    def flows(self) -> list[FlowInfo]:
        return [self._info(f) for f in self._flows.values()]

    def __len__(self) -> int:
        return len(self._flows)

    def expire_idle(self, now: float) -> int:
        limit = now - self.config.idle_timeout_s
        old = [f for f in self._flows.values() if f.last_seen <= limit]
        for f in old:
            self._forget(f, now, idle_s=now - f.last_seen)
        return len(old)

    # -- time -------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        t = self._next_sweep if self._flows else None
        when = self._failbacks.next_due(self._paths)
        return when if when is not None and (t is None or when < t) else t

    def on_timer(self, now: float) -> None:
        due = self._failbacks.pop_due
        pid = due(now)
        while pid is not None:
            self._try_failback(pid, now)
            pid = due(now)
        if self._next_sweep is not None and now >= self._next_sweep:
            self.expire_idle(now)
            self._next_sweep = now + self._sweep_period() if self._flows else None

    # -- internals --------------------------------------------------------------------------------

    def _sweep_period(self) -> float:
        return max(self.config.idle_timeout_s / 4.0, 0.1)

    def _info(self, f: FlowState) -> FlowInfo:
        return FlowInfo(f.key, f.entry.path.id, f.policy.name, f.site, f.assigned_at, f.last_seen, f.origin,
                        f.stranded)

    def _new_flow(self, flow: FlowKey, now: float, dscp: int | None, app_class: str | None,
                  site: SiteId | None) -> PathId | None:
        policy = self._policies.match(flow, dscp, app_class)
        if site is None:
            site = self._table.site_for(flow.dst_ip)
            if site is None:
                self._events.append(FlowUnroutable(at=now, flow=flow, policy=policy.name,
                                                   reason=f"no site owns destination {flow.dst_ip}"))
                return None
        e = self._table.choose(policy, site, flow)
        if e is None:
            self._events.append(FlowUnroutable(at=now, flow=flow, policy=policy.name,
                                               reason=f"no usable path to site {site}"))
            return None
        return self._register(FlowState(flow, e, policy, site, now, dscp, app_class), now).entry.path.id

    def _register(self, f: FlowState, now: float) -> FlowState:
        self._flows[f.key] = f
        f.entry.flows[f.key] = f
        self._flows_changed(f.site)
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_period()
        self._events.append(FlowAssigned(at=now, flow=f.key, path_id=f.entry.path.id, policy=f.policy.name))
        return f

    def _move(self, f: FlowState, to: PathEntry, now: float, reason: FailoverReason | None) -> None:
        """The one place a flow changes path. `reason` None means failback to its origin."""
        frm = f.entry
        del frm.flows[f.key]
        to.flows[f.key] = f
        f.entry = to
        f.stranded = False
        f.moved_at = now
        self._flows_changed(f.site)
        if reason is None:
            self._events.append(Failback(at=now, flow=f.key, from_path=frm.path.id, to_path=to.path.id,
                                         policy=f.policy.name))
            self._failbacks.clear_origin(f)
            return
        if f.origin is None:        # a new origin; moves that keep the origin keep its hold running
            self._failbacks.displace(f, frm.path.id)
        elif f.origin == to.path.id:
            self._failbacks.clear_origin(f)
        self._events.append(FailoverTriggered(at=now, flow=f.key, from_path=frm.path.id, to_path=to.path.id,
                                              reason=reason, policy=f.policy.name))

    def _forget(self, f: FlowState, now: float, idle_s: float) -> None:
        del self._flows[f.key]
        f.entry.flows.pop(f.key, None)
        self._flows_changed(f.site)
        self._failbacks.clear_origin(f)
        self._events.append(FlowExpired(at=now, flow=f.key, path_id=f.entry.path.id, idle_s=idle_s))

    def _evacuate(self, e: PathEntry, now: float, reason: FailoverReason) -> None:
        """Every flow on a failed path moves to its best usable path, or is stranded."""
        for f in list(e.flows.values()):
            self._evacuate_one(f, e, now, reason)

    def _evacuate_one(self, f: FlowState, e: PathEntry, now: float,
                      reason: FailoverReason = FailoverReason.PATH_DOWN) -> None:
        to = self._table.choose(f.policy, f.site, f.key, exclude=e)
        if to is not None:
            self._move(f, to, now, reason)
        elif not f.stranded:
            f.stranded = True
            self._flows_changed(f.site)
            self._events.append(FlowStranded(at=now, flow=f.key, from_path=e.path.id, reason=reason,
                                             policy=f.policy.name))

    def _rescue_stranded(self, site: SiteId, now: float) -> None:
        for e in list(self._table.by_site.get(site, ())):
            if e.status is not _DOWN or not e.flows:
                continue
            for f in list(e.flows.values()):
                if f.stranded:
                    to = self._table.choose(f.policy, f.site, f.key, exclude=e)
                    if to is not None:
                        self._move(f, to, now, FailoverReason.PATH_DOWN)

    def _check_quality(self, e: PathEntry, now: float) -> None:
        """Flows whose policy threshold or requirements this path no longer meets move, if a
        better path exists and their cooldown has passed."""
        if not e.flows:
            return
        cfg = self.config
        for f in list(e.flows.values()):
            reason = _quality_failure(f.policy, e.metrics)
            if reason is None or (f.moved_at is not None and now - f.moved_at < cfg.failover_cooldown_s):
                continue
            to = self._table.choose(f.policy, f.site, f.key, exclude=e)
            if to is not None and _worth_moving(f, e, to, reason, now, cfg):
                self._move(f, to, now, reason)

    def _try_failback(self, origin_id: PathId, now: float) -> None:
        """Called whenever the origin path's state changes and at failback timers: the flows that
        `Failbacks.returning` says are ready go back to their origin."""
        origin = self._paths.get(origin_id)
        if origin is None:
            return
        cfg = self.config
        for f in self._failbacks.returning(origin, now, cfg.failback_hold_s, cfg.failover_cooldown_s,
                                           cfg.min_improvement):
            self._move(f, origin, now, None)


def _quality_failure(p: RoutingPolicy, m: PathMetrics) -> FailoverReason | None:
    """Why a path with metrics `m` no longer suits policy `p` (None: it still does)."""
    if p.failover_threshold is not None and m.score < p.failover_threshold:
        return FailoverReason.BELOW_THRESHOLD
    if p.requirements is not None and not p.requirements.met_by(m):
        return FailoverReason.SLA_VIOLATION
    return None


def _worth_moving(f: FlowState, e: PathEntry, to: PathEntry, reason: FailoverReason, now: float,
                  cfg: RouterConfig) -> bool:
    """Whether flow `f`, failing its policy on `e` for `reason`, should move to `to`."""
    if to.status is not _UP:
        return False
    # Going back to the path it failed away from is a failback, whatever the trigger: it waits for the
    # failback hold (else a flapping origin pulls its flows back at every "up", the very thing the
    # hold is for).
    if f.origin is not None and to.path.id == f.origin != e.path.id and \
            (f.ok_since is None or now - f.ok_since < cfg.failback_hold_s):
        return False
    p = f.policy
    thr = p.failover_threshold
    if reason is FailoverReason.BELOW_THRESHOLD:
        # a target also below the threshold must be clearly better (min_improvement), or flows
        # ping-pong between two poor paths whose scores take turns being higher
        return not (thr is not None and to.metrics.score < thr
                    and to.metrics.score < e.metrics.score + cfg.min_improvement)
    return p.requirements is None or p.requirements.met_by(to.metrics)
