"""Routing engine: policy match, path selection, sticky flows, failover, failback, load balancing.

What may change state here: topology (`add_path`, `remove_path`, `set_site_prefixes`), path state
(`update_path`, or `handle(event)` with the monitor's events), policies (`add_policy`, ...), flows
(`select_path`, `remove_flow`) and time (`on_timer`). A flow changes path in exactly one place,
`_move`. This module must not know how paths are measured or how steering is done: it sees path
status and metrics, and emits `FlowAssigned` / `FailoverTriggered` / `Failback` / ... events.

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

import hashlib
import heapq
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

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
from patronus.core.model import FlowKey, Path, PathId, PathMetrics, PathStatus, RouteKey, SiteId, Slot
from patronus.core.policy import LoadBalance, RoutingPolicy, address_int, default_policies

_UP = PathStatus.UP
_DEGRADED = PathStatus.DEGRADED
_DOWN = PathStatus.DOWN
_MASK64 = (1 << 64) - 1
_SITE_CACHE_MAX = 1 << 16


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


class _PathEntry:
    __slots__ = ("flows", "metrics", "path", "salt", "status", "suspect")

    def __init__(self, path: Path, status: PathStatus, metrics: PathMetrics) -> None:
        self.path = path
        self.status = status
        self.metrics = metrics
        self.suspect = False     # probably failed with a sibling: not a target while another path is
        self.flows: dict[RouteKey, _Flow] = {}    # insertion-ordered: deterministic iteration
        self.salt = int.from_bytes(hashlib.blake2b(path.id.encode(), digest_size=8).digest(), "big")


class _Flow:
    __slots__ = ("app_class", "assigned_at", "dscp", "entry", "key", "last_seen", "moved_at", "ok_since",
                 "origin", "policy", "site", "stranded")

    def __init__(self, key: RouteKey, entry: _PathEntry, policy: RoutingPolicy, site: SiteId, now: float,
                 dscp: int | None, app_class: str | None) -> None:
        self.key = key
        self.entry = entry
        self.policy = policy
        self.site = site
        self.assigned_at = now
        self.last_seen = now
        self.moved_at: float | None = None
        self.origin: PathId | None = None
        self.ok_since: float | None = None    # since when the origin has been acceptable again
        self.stranded = False
        self.dscp = dscp
        self.app_class = app_class


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
        self._paths: dict[PathId, _PathEntry] = {}
        self._by_site: dict[SiteId, list[_PathEntry]] = {}
        self._flows: dict[RouteKey, _Flow] = {}
        self._policies: list[RoutingPolicy] = []
        self._active: list[RoutingPolicy] = []      # enabled policies, in match order
        self._needs_addrs = False
        self._prefixes: list[tuple[int, int, int, int, SiteId]] = []  # (-len, version, net, mask, site)
        self._site_cache: dict[str, SiteId | None] = {}
        self._events: list[Event] = []
        self._version = 0
        self._rank_cache: dict[tuple[str, SiteId], tuple[int, list[_PathEntry], list[float]]] = {}
        self._lb_state: dict[tuple[str, SiteId], Any] = {}
        self._displaced: dict[PathId, dict[RouteKey, _Flow]] = {}   # origin path -> flows away from it
        self._timers: list[tuple[float, int, str, PathId]] = []
        self._armed: dict[PathId, float] = {}
        self._tie = 0
        self._next_sweep: float | None = None
        for p in default_policies() if policies is None else policies:
            self.add_policy(p)

    # -- events -----------------------------------------------------------------------------------

    def drain_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    # -- policies ---------------------------------------------------------------------------------

    def add_policy(self, policy: RoutingPolicy) -> None:
        if any(p.name == policy.name for p in self._policies):
            raise ConfigError(f"a policy named {policy.name!r} already exists", "policy.name")
        self._set_policies([*self._policies, policy])

    def upsert_policy(self, policy: RoutingPolicy) -> None:
        self._set_policies([p for p in self._policies if p.name != policy.name] + [policy])

    def remove_policy(self, name: str) -> RoutingPolicy:
        for p in self._policies:
            if p.name == name:
                self._set_policies([q for q in self._policies if q.name != name])
                return p
        raise ConfigError(f"no policy named {name!r}", "policy.name")

    def set_policy_enabled(self, name: str, enabled: bool) -> None:
        for p in self._policies:
            if p.name == name:
                self.upsert_policy(replace(p, enabled=enabled))
                return
        raise ConfigError(f"no policy named {name!r}", "policy.name")

    def replace_policies(self, policies: Iterable[RoutingPolicy]) -> None:
        pols = list(policies)
        names = [p.name for p in pols]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate policy names: {', '.join(dup)}", "policies")
        self._set_policies(pols)

    def list_policies(self) -> list[RoutingPolicy]:
        return list(self._policies)

    def _set_policies(self, pols: list[RoutingPolicy]) -> None:
        self._policies = sorted(pols, key=lambda p: (p.priority, p.name))
        self._active = [p for p in self._policies if p.enabled]
        self._needs_addrs = any(p.match.needs_addresses for p in self._active)
        self._invalidate()
        self._lb_state.clear()      # a policy's load-balancing mode (and so its state's shape) may change
        # Existing flows keep their path (sticky); they take the policy that now matches them, so
        # thresholds and requirements of the new policy apply from here on.
        by_name = {p.name: p for p in self._active}
        for f in self._flows.values():
            cur = by_name.get(f.policy.name)
            if cur is not f.policy:
                if cur is not None:
                    f.policy = cur
                else:       # a slot keeps its own policy's name; one whose policy went is ranked as the default
                    f.policy = self._match(f.key, f.dscp, f.app_class) if isinstance(f.key, FlowKey) else _FALLBACK

    # -- topology ---------------------------------------------------------------------------------

    def add_path(self, path: Path, now: float, status: PathStatus = _DOWN,
                 metrics: PathMetrics | None = None) -> None:
        if path.id in self._paths:
            raise ConfigError(f"path {path.id!r} already exists", "path.id")
        m = metrics or PathMetrics(latency_ms=0.0, jitter_ms=0.0, loss_pct=100.0, score=0.0, measured_at=now,
                                   bandwidth_mbps=path.bandwidth_mbps or 0.0, cost_per_gb=path.cost_per_gb)
        entry = _PathEntry(path, status, self._with_static(path, m))
        self._paths[path.id] = entry
        self._by_site.setdefault(path.dst_site, []).append(entry)
        self._invalidate()
        if status is not _DOWN:
            self._rescue_stranded(path.dst_site, now)

    def remove_path(self, path_id: PathId, now: float) -> None:
        entry = self._paths.get(path_id)
        if entry is None:
            raise ConfigError(f"no path {path_id!r}", "path.id")
        entry.status = _DOWN
        self._invalidate()
        self._evacuate(entry, now, FailoverReason.PATH_REMOVED)
        del self._paths[path_id]
        self._by_site[entry.path.dst_site].remove(entry)
        for f in self._displaced.pop(path_id, {}).values():
            f.origin = None
        for f in list(entry.flows.values()):   # stranded: nowhere to go, and their path is gone
            self._forget(f, now, idle_s=0.0)

    def set_site_prefixes(self, site: SiteId, prefixes: Iterable[str]) -> None:
        rows = [r for r in self._prefixes if r[4] != site]
        errors: list[tuple[str, str]] = []
        for i, text in enumerate(prefixes):
            try:
                n = ipaddress.ip_network(text, strict=False)
            except (ValueError, TypeError):
                errors.append((f"sites.{site}.prefixes[{i}]", f"expected a prefix like 10.1.0.0/16, got {text!r}"))
                continue
            rows.append((-n.prefixlen, n.version, int(n.network_address), int(n.netmask), site))
        if errors:
            raise ConfigError(errors)     # nothing changed
        self._prefixes = sorted(rows)
        self._site_cache.clear()

    def site_for(self, address: str) -> SiteId | None:
        """Longest-prefix match of a destination address onto the site that owns it."""
        cache = self._site_cache
        if address in cache:
            return cache[address]
        try:
            version, value = address_int(address)
        except ValueError:
            return None
        site = None
        for _, v, net, mask, s in self._prefixes:
            if v == version and value & mask == net:
                site = s
                break
        if len(cache) >= _SITE_CACHE_MAX:
            cache.clear()
        cache[address] = site
        return site

    def path_status(self, path_id: PathId) -> PathStatus:
        return self._entry(path_id).status

    def path_metrics(self, path_id: PathId) -> PathMetrics:
        return self._entry(path_id).metrics

    @property
    def path_ids(self) -> list[PathId]:
        return list(self._paths)

    def flows_on(self, path_id: PathId) -> list[RouteKey]:
        return list(self._entry(path_id).flows)

    def flow_count(self, path_id: PathId) -> int:
        return len(self._entry(path_id).flows)

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
        e = self._entry(path_id)
        old = e.status
        if metrics is not None:
            e.metrics = self._with_static(e.path, metrics)
        if status is not None:
            e.status = status
        self._invalidate()
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
                    if f.origin == path_id:
                        self._clear_origin(f)
            self._rescue_stranded(e.path.dst_site, now)
        self._check_quality(e, now)
        if path_id in self._displaced:
            self._try_failback(path_id, now)

    def set_suspect(self, path_id: PathId, suspect: bool) -> None:
        """Fate sharing, decided by the driver: a suspected path is chosen for no flow while a path not
        suspected can take it, and no flow fails back onto it. Flows already on it stay: suspicion
        is a guess, only the path's own probes may evict them."""
        e = self._entry(path_id)
        if e.suspect != suspect:
            e.suspect = suspect
            self._invalidate()

    def pending_failbacks(self) -> int:
        """Origins with a failback timer running: flows will move back when it fires."""
        return len(self._armed)

    def is_suspect(self, path_id: PathId) -> bool:
        return self._entry(path_id).suspect

    # -- flows ------------------------------------------------------------------------------------

    def select_path(self, flow: FlowKey, now: float, *, dscp: int | None = None, app_class: str | None = None,
                    site: SiteId | None = None) -> PathId | None:
        """The path for `flow` (a packet of it was seen at `now`); None if there is no usable path."""
        f = self._flows.get(flow)
        if f is not None:
            e = f.entry
            if e.status is _UP:
                f.last_seen = now
                return e.path.id
            f.last_seen = now
            if e.status is _DOWN:
                return None         # stranded: it moves as soon as a path is usable
            return e.path.id        # Degraded: kept unless the policy's threshold said otherwise
        return self._new_flow(flow, now, dscp, app_class, site)

    def preview(self, site: SiteId, policy: str | None = None) -> PathId | None:
        """The path a new flow of `policy` (a name; None = the implicit default) toward `site` would be
        given now, load balancing aside (the best-ranked usable path). Changes nothing: drivers that
        compile decisions into a kernel table (the agent's nftables steering) ask this per policy."""
        pol = self.policy_named(policy)
        ranked, _ = self._ranking(pol, site)
        return ranked[0].path.id if ranked else None

    def preview_tier(self, site: SiteId, policy: str | None = None) -> list[tuple[PathId, float, float]]:
        """The paths a load-balancing `policy` spreads new flows toward `site` over now (its best path
        and every usable path within `lb_tolerance` points of it), best first, as (path, score,
        bandwidth in Mbit/s or 0). Changes nothing."""
        pol = self.policy_named(policy)
        ranked, scores = self._ranking(pol, site)
        if not ranked:
            return []
        floor = scores[0] - pol.lb_tolerance
        return [(e.path.id, s, e.metrics.bandwidth_mbps if e.metrics.bandwidth_mbps > 0 else 0.0)
                for e, s in zip(ranked, scores, strict=True) if s >= floor]

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
        e = self._entry(path_id)
        pol = self.policy_named(policy)
        f = _Flow(flow, e, pol, site, now, None, None)
        self._flows[flow] = f
        e.flows[flow] = f
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_period()
        self._events.append(FlowAssigned(at=now, flow=flow, path_id=path_id, policy=pol.name))
        if origin is not None and origin != path_id and origin in self._paths:
            f.origin = origin
            self._displaced.setdefault(origin, {})[flow] = f
        if e.status is _DOWN:
            self._evacuate_one(f, e, now)
        if f.origin is not None:
            self._try_failback(f.origin, now)
        return None if f.stranded else f.entry.path.id

    def policy_for(self, flow: FlowKey, dscp: int | None = None, app_class: str | None = None) -> RoutingPolicy:
        """The enabled policy a connection matches (the implicit default when none does), as a
        dataplane's classifier decides it; the router does not take the flow."""
        return self._match(flow, dscp, app_class)

    def policy_named(self, name: str | None) -> RoutingPolicy:
        """The enabled policy called `name` (None = the implicit default); KeyError if there is none."""
        if name is None or name == _FALLBACK.name:
            return _FALLBACK
        for p in self._active:
            if p.name == name:
                return p
        raise KeyError(name)

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

    def reevaluate_all_flows(self, now: float) -> None:
        """Re-check every flow against current path state and policies (after a topology or metric
        change the driver could not attribute to one path)."""
        self._invalidate()
        for e in list(self._paths.values()):
            if e.status is _DOWN:
                self._evacuate(e, now, FailoverReason.PATH_DOWN)
            else:
                self._check_quality(e, now)
        for site in list(self._by_site):
            self._rescue_stranded(site, now)
        for origin in list(self._displaced):
            self._try_failback(origin, now)

    # -- time -------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        t = self._next_sweep if self._flows else None
        timers = self._timers
        while timers:
            when, _, kind, pid = timers[0]
            e = self._paths.get(pid)
            if kind == "failback" and e is not None and pid in self._displaced and e.status is _UP \
                    and self._armed.get(pid) == when:
                t = when if t is None or when < t else t
                break
            heapq.heappop(timers)
            if kind == "failback" and self._armed.get(pid) == when:
                del self._armed[pid]      # a timer nothing waits for any more is no failback pending
        return t

    def on_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, kind, pid = heapq.heappop(timers)
            if kind == "failback" and self._armed.get(pid) == when:
                del self._armed[pid]
                self._try_failback(pid, now)
        if self._next_sweep is not None and now >= self._next_sweep:
            self.expire_idle(now)
            self._next_sweep = now + self._sweep_period() if self._flows else None

    # -- internals --------------------------------------------------------------------------------

    def _entry(self, path_id: PathId) -> _PathEntry:
        try:
            return self._paths[path_id]
        except KeyError:
            raise ConfigError(f"no path {path_id!r}", "path_id") from None

    @staticmethod
    def _with_static(path: Path, m: PathMetrics) -> PathMetrics:
        """Fill in what the path's configuration knows and probes do not (cost, nominal bandwidth)."""
        changes: dict[str, Any] = {}
        if m.cost_per_gb == 0.0 and path.cost_per_gb:
            changes["cost_per_gb"] = path.cost_per_gb
        if m.bandwidth_mbps == 0.0 and path.bandwidth_mbps:
            changes["bandwidth_mbps"] = path.bandwidth_mbps
        return m.with_(**changes) if changes else m

    def _sweep_period(self) -> float:
        return max(self.config.idle_timeout_s / 4.0, 0.1)

    def _arm(self, when: float, kind: str, pid: PathId) -> None:
        self._tie += 1
        heapq.heappush(self._timers, (when, self._tie, kind, pid))

    def _invalidate(self) -> None:
        self._version += 1

    def _info(self, f: _Flow) -> FlowInfo:
        return FlowInfo(f.key, f.entry.path.id, f.policy.name, f.site, f.assigned_at, f.last_seen, f.origin,
                        f.stranded)

    def _match(self, flow: FlowKey, dscp: int | None, app_class: str | None) -> RoutingPolicy:
        addrs = (address_int(flow.src_ip), address_int(flow.dst_ip)) if self._needs_addrs else None
        for p in self._active:
            if p.match.matches(flow, dscp, app_class, addrs):
                return p
        return _FALLBACK

    def _ranking(self, policy: RoutingPolicy, site: SiteId) -> tuple[list[_PathEntry], list[float]]:
        """Usable paths toward `site` for `policy`, best first, with their preference scores.
        Cached until any path, policy or topology changes."""
        key = (policy.name, site)
        hit = self._rank_cache.get(key)
        if hit is not None and hit[0] == self._version:
            return hit[1], hit[2]
        usable = [e for e in self._by_site.get(site, ()) if e.status is not _DOWN]
        # suspicion first: a suspect's metrics are those of before its sibling failed (its own losses
        # have not timed out yet), so it would meet any requirement; a live path that misses one (a
        # probe or two lost) still beats a path that is probably dead
        pool = [e for e in usable if not e.suspect] or usable
        req = policy.requirements
        if req is not None:
            meets = [e for e in pool if req.met_by(e.metrics)]
            if not meets and req.strict and len(pool) < len(usable):
                meets = [e for e in usable if req.met_by(e.metrics)]   # strict: a suspect before nothing
            pool = meets if (meets or req.strict) else pool
        up = [e for e in pool if e.status is _UP]
        group = up or pool
        scored = sorted(((-policy.score(e.metrics), e.path.id, e) for e in group), key=lambda t: (t[0], t[1]))
        ranked = [t[2] for t in scored]
        scores = [-t[0] for t in scored]
        self._rank_cache[key] = (self._version, ranked, scores)
        return ranked, scores

    def _choose(self, policy: RoutingPolicy, site: SiteId, flow: RouteKey,
                exclude: _PathEntry | None = None) -> _PathEntry | None:
        ranked, scores = self._ranking(policy, site)
        if exclude is not None and exclude in ranked:
            i = ranked.index(exclude)
            ranked = ranked[:i] + ranked[i + 1:]
            scores = scores[:i] + scores[i + 1:]
        if not ranked:
            return None
        mode = policy.load_balance
        if mode is LoadBalance.NONE or len(ranked) == 1:
            return ranked[0]
        floor = scores[0] - policy.lb_tolerance
        tier = [e for e, s in zip(ranked, scores, strict=True) if s >= floor]
        if len(tier) == 1:
            return tier[0]
        key = (policy.name, site)
        if mode is LoadBalance.ROUND_ROBIN:
            n: int = self._lb_state.get(key, 0)
            self._lb_state[key] = n + 1
            return tier[n % len(tier)]
        if mode is LoadBalance.LEAST_CONNECTIONS:
            return min(tier, key=lambda e: (len(e.flows), e.path.id))
        if mode is LoadBalance.WEIGHTED_ROUND_ROBIN:
            # Smooth weighted round-robin (as in nginx): deterministic, proportional to bandwidth.
            cur: dict[PathId, float] = self._lb_state.setdefault(key, {})
            total = 0.0
            best: _PathEntry | None = None
            for e in tier:
                w = e.metrics.bandwidth_mbps if e.metrics.bandwidth_mbps > 0 else 1.0
                total += w
                c = cur.get(e.path.id, 0.0) + w
                cur[e.path.id] = c
                if best is None or c > cur[best.path.id]:
                    best = e
            assert best is not None
            cur[best.path.id] -= total
            return best
        # FLOW_HASH: rendezvous (highest random weight) hashing. The same flow maps to the same path
        # while the tier is unchanged, and losing a path moves only the flows that were on it.
        h = _flow_hash(flow)
        return max(tier, key=lambda e: (_mix64(h ^ e.salt), e.path.id))

    def _new_flow(self, flow: FlowKey, now: float, dscp: int | None, app_class: str | None,
                  site: SiteId | None) -> PathId | None:
        policy = self._match(flow, dscp, app_class)
        if site is None:
            site = self.site_for(flow.dst_ip)
            if site is None:
                self._events.append(FlowUnroutable(at=now, flow=flow, policy=policy.name,
                                                   reason=f"no site owns destination {flow.dst_ip}"))
                return None
        e = self._choose(policy, site, flow)
        if e is None:
            self._events.append(FlowUnroutable(at=now, flow=flow, policy=policy.name,
                                               reason=f"no usable path to site {site}"))
            return None
        f = _Flow(flow, e, policy, site, now, dscp, app_class)
        self._flows[flow] = f
        e.flows[flow] = f
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_period()
        pid = e.path.id
        self._events.append(FlowAssigned(at=now, flow=flow, path_id=pid, policy=policy.name))
        return pid

    def _move(self, f: _Flow, to: _PathEntry, now: float, reason: FailoverReason | None) -> None:
        """The one place a flow changes path. `reason` None means failback to its origin."""
        frm = f.entry
        del frm.flows[f.key]
        to.flows[f.key] = f
        f.entry = to
        f.stranded = False
        f.moved_at = now
        if reason is None:
            self._events.append(Failback(at=now, flow=f.key, from_path=frm.path.id, to_path=to.path.id,
                                         policy=f.policy.name))
            self._clear_origin(f)
            return
        if f.origin is None:
            f.origin = frm.path.id
            f.ok_since = None       # a new origin; moves that keep the origin keep its hold running
            self._displaced.setdefault(frm.path.id, {})[f.key] = f
        elif f.origin == to.path.id:
            self._clear_origin(f)
        self._events.append(FailoverTriggered(at=now, flow=f.key, from_path=frm.path.id, to_path=to.path.id,
                                              reason=reason, policy=f.policy.name))

    def _clear_origin(self, f: _Flow) -> None:
        if f.origin is not None:
            d = self._displaced.get(f.origin)
            if d is not None:
                d.pop(f.key, None)
                if not d:
                    del self._displaced[f.origin]
            f.origin = None

    def _forget(self, f: _Flow, now: float, idle_s: float) -> None:
        del self._flows[f.key]
        f.entry.flows.pop(f.key, None)
        self._clear_origin(f)
        self._events.append(FlowExpired(at=now, flow=f.key, path_id=f.entry.path.id, idle_s=idle_s))

    def _evacuate(self, e: _PathEntry, now: float, reason: FailoverReason) -> None:
        """Every flow on a failed path moves to its best usable path, or is stranded."""
        for f in list(e.flows.values()):
            self._evacuate_one(f, e, now, reason)

    def _evacuate_one(self, f: _Flow, e: _PathEntry, now: float,
                      reason: FailoverReason = FailoverReason.PATH_DOWN) -> None:
        to = self._choose(f.policy, f.site, f.key, exclude=e)
        if to is not None:
            self._move(f, to, now, reason)
        elif not f.stranded:
            f.stranded = True
            self._events.append(FlowStranded(at=now, flow=f.key, from_path=e.path.id, reason=reason,
                                             policy=f.policy.name))

    def _rescue_stranded(self, site: SiteId, now: float) -> None:
        for e in list(self._by_site.get(site, ())):
            if e.status is not _DOWN or not e.flows:
                continue
            for f in list(e.flows.values()):
                if f.stranded:
                    to = self._choose(f.policy, f.site, f.key, exclude=e)
                    if to is not None:
                        self._move(f, to, now, FailoverReason.PATH_DOWN)

    def _check_quality(self, e: _PathEntry, now: float) -> None:
        """Flows whose policy threshold or requirements this path no longer meets move, if a
        better path exists and their cooldown has passed."""
        if not e.flows:
            return
        m = e.metrics
        cooldown = self.config.failover_cooldown_s
        for f in list(e.flows.values()):
            p = f.policy
            thr = p.failover_threshold
            reason: FailoverReason | None = None
            if thr is not None and m.score < thr:
                reason = FailoverReason.BELOW_THRESHOLD
            elif p.requirements is not None and not p.requirements.met_by(m):
                reason = FailoverReason.SLA_VIOLATION
            if reason is None or (f.moved_at is not None and now - f.moved_at < cooldown):
                continue
            to = self._choose(p, f.site, f.key, exclude=e)
            if to is None or to.status is not _UP:
                continue
            # Going back to the path it failed away from is a failback, whatever the trigger: it waits
            # for the failback hold (else a flapping origin pulls its flows back at every "up", the
            # very thing the hold is for).
            if f.origin is not None and to.path.id == f.origin != e.path.id and \
                    (f.ok_since is None or now - f.ok_since < self.config.failback_hold_s):
                continue
            if reason is FailoverReason.BELOW_THRESHOLD:
                # a target also below the threshold must be clearly better (min_improvement), or flows
                # ping-pong between two poor paths whose scores take turns being higher
                if thr is not None and to.metrics.score < thr \
                        and to.metrics.score < m.score + self.config.min_improvement:
                    continue
            elif p.requirements is not None and not p.requirements.met_by(to.metrics):
                continue
            self._move(f, to, now, reason)

    def _origin_acceptable(self, f: _Flow, origin: _PathEntry) -> bool:
        """Would the flow's policy accept its origin path right now?"""
        if origin.status is not _UP or origin.suspect:
            return False
        p = f.policy
        m = origin.metrics
        if p.failover_threshold is not None and m.score < p.failover_threshold:
            return False
        return p.requirements is None or p.requirements.met_by(m)

    def _try_failback(self, origin_id: PathId, now: float) -> None:
        """Called whenever the origin path's state changes and at failback timers: track, per
        displaced flow, since when the origin has been acceptable, and move the flow back once that
        has lasted `failback_hold_s`, its cooldown has passed and the gain is `min_improvement`."""
        flows = self._displaced.get(origin_id)
        origin = self._paths.get(origin_id)
        if not flows or origin is None:
            return
        cfg = self.config
        wake: float | None = None
        for f in list(flows.values()):
            cur = f.entry
            if cur is origin:
                self._clear_origin(f)
                continue
            if not self._origin_acceptable(f, origin):
                f.ok_since = None
                continue
            if f.ok_since is None:
                f.ok_since = now
            ready = f.ok_since + cfg.failback_hold_s
            if f.moved_at is not None and f.moved_at + cfg.failover_cooldown_s > ready:
                ready = f.moved_at + cfg.failover_cooldown_s
            if now < ready:
                wake = ready if wake is None or ready < wake else wake
                continue
            p = f.policy
            gain = p.score(origin.metrics) - p.score(cur.metrics)
            if f.stranded or cur.status is _DOWN or gain >= cfg.min_improvement:
                self._move(f, origin, now, None)
        if wake is None:
            self._armed.pop(origin_id, None)          # nothing waits on this origin now
        elif self._armed.get(origin_id) != wake:
            self._armed[origin_id] = wake
            self._arm(wake, "failback", origin_id)


_FALLBACK = RoutingPolicy("implicit-default", 1_000_001)


def _flow_hash(flow: RouteKey) -> int:
    if isinstance(flow, Slot):
        data = f"{flow.remote}|{flow.policy}|{flow.origin}".encode()
    else:
        data = f"{flow.src_ip}|{flow.dst_ip}|{flow.src_port}|{flow.dst_port}|{flow.protocol}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a well-mixed, deterministic 64-bit hash of `x`."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)
