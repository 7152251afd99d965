"""A router's path table: its paths and their state, which site owns which prefix, and the ranking
of the paths toward a site for a policy, with the load-balanced choice among the best of them.

What may change state here: `add` / `drop` (topology), `set_metrics` and the entries' `status` and
`suspect` (which the router sets, then calls `invalidate`), `set_site_prefixes`, and `choose` (a
load-balancing policy's turn). This module must not know why a path's state changes nor move a flow:
the router (`router.py`) composes the table and owns the flows; an entry only lists the flows on it.

Ranking (cached per policy and site until `invalidate`: of the one site whose path changed, or of all
after a policy change): Up paths before Degraded ones, Down never; paths not suspected
of sharing a sibling's failure before suspects, then paths meeting the policy's hard requirements
before those that do not (strict requirements exclude them); the preference score decides, ties by
path id. With load balancing, the paths within `lb_tolerance` points of the best share the flows.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from patronus.core.errors import ConfigError
from patronus.core.model import Path, PathId, PathMetrics, PathStatus, RouteKey, SiteId, Slot
from patronus.core.policy import LoadBalance, RoutingPolicy, address_int

_UP = PathStatus.UP
_DOWN = PathStatus.DOWN
_MASK64 = (1 << 64) - 1
_SITE_CACHE_MAX = 1 << 16


class PathEntry:
    __slots__ = ("flows", "metrics", "path", "salt", "status", "suspect")

    def __init__(self, path: Path, status: PathStatus, metrics: PathMetrics) -> None:
        self.path = path
        self.status = status
        self.metrics = metrics
        self.suspect = False     # probably failed with a sibling: not a target while another path is
        self.flows: dict[RouteKey, FlowState] = {}    # insertion-ordered: deterministic iteration
        self.salt = int.from_bytes(hashlib.blake2b(path.id.encode(), digest_size=8).digest(), "big")


class FlowState:
    """One flow the router holds, on the path entry it is on (the router changes it, in `_move`)."""

    __slots__ = ("app_class", "assigned_at", "dscp", "entry", "key", "last_seen", "moved_at", "ok_since",
                 "origin", "policy", "site", "stranded")

    def __init__(self, key: RouteKey, entry: PathEntry, policy: RoutingPolicy, site: SiteId, now: float,
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


class PathTable:
    def __init__(self) -> None:
        self.entries: dict[PathId, PathEntry] = {}
        self.by_site: dict[SiteId, list[PathEntry]] = {}
        self._prefixes: list[tuple[int, int, int, int, SiteId]] = []  # (-len, version, net, mask, site)
        self._site_cache: dict[str, SiteId | None] = {}
        self._version = 0                              # every ranking: a policy or the topology changed
        self._site_version: dict[SiteId, int] = {}     # one site's rankings: one of its paths changed
        self._rank_cache: dict[tuple[str, SiteId], tuple[tuple[int, int], list[PathEntry], list[float]]] = {}
        self._lb_state: dict[tuple[str, SiteId], Any] = {}

    # -- topology ---------------------------------------------------------------------------------

    def add(self, path: Path, now: float, status: PathStatus, metrics: PathMetrics | None) -> None:
        if path.id in self.entries:
            raise ConfigError(f"path {path.id!r} already exists", "path.id")
        m = metrics or PathMetrics(latency_ms=0.0, jitter_ms=0.0, loss_pct=100.0, score=0.0, measured_at=now,
                                   bandwidth_mbps=path.bandwidth_mbps or 0.0, cost_per_gb=path.cost_per_gb)
        entry = PathEntry(path, status, _with_static(path, m))
        self.entries[path.id] = entry
        self.by_site.setdefault(path.dst_site, []).append(entry)
        self.invalidate(path.dst_site)

    def drop(self, entry: PathEntry) -> None:
        del self.entries[entry.path.id]
        self.by_site[entry.path.dst_site].remove(entry)
        self.invalidate(entry.path.dst_site)

    def drop_site(self, site: SiteId) -> list[PathEntry]:
        """Every path to `site` and its prefixes, and what the rankings kept for it; returns its paths."""
        gone = self.by_site.pop(site, [])
        for e in gone:
            del self.entries[e.path.id]
        self._prefixes = [r for r in self._prefixes if r[4] != site]
        self._site_cache.clear()
        for key in [k for k in (*self._rank_cache, *self._lb_state) if k[1] == site]:
            self._rank_cache.pop(key, None)
            self._lb_state.pop(key, None)
        self.invalidate(site)       # not reset: a site that comes back must not match what was kept for it
        return gone

    def entry(self, path_id: PathId) -> PathEntry:
        try:
            return self.entries[path_id]
        except KeyError:
            raise ConfigError(f"no path {path_id!r}", "path_id") from None

    @staticmethod
    def set_metrics(entry: PathEntry, metrics: PathMetrics) -> None:
        entry.metrics = _with_static(entry.path, metrics)

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

    # -- ranking ----------------------------------------------------------------------------------

    def invalidate(self, site: SiteId | None = None) -> None:
        """A path toward `site` changed (added, dropped, its status, metrics or suspicion): that site's
        rankings are computed again. Without a site (a policy changed, or a change the caller cannot
        attribute to one site), every ranking is. A ranking reads only the paths toward its own site,
        so a change to one site's paths cannot change another's."""
        if site is None:
            self._version += 1
        else:
            self._site_version[site] = self._site_version.get(site, 0) + 1

    def site_state(self, site: SiteId) -> tuple[int, int]:
        """The version `ranking` keys its cache for `site` by: it changes whenever that site's rankings
        may (see `invalidate`)."""
        return self._version, self._site_version.get(site, 0)

    def reset_balancing(self) -> None:
        """Forget every policy's load-balancing state (its mode, so its state's shape, may change)."""
        self._lb_state.clear()

    def ranking(self, policy: RoutingPolicy, site: SiteId) -> tuple[list[PathEntry], list[float]]:
        """Usable paths toward `site` for `policy`, best first, with their preference scores.
        Cached until a path toward `site` or a policy changes."""
        key = (policy.name, site)
        version = self.site_state(site)
        hit = self._rank_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        usable = [e for e in self.by_site.get(site, ()) if e.status is not _DOWN]
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
        self._rank_cache[key] = (version, ranked, scores)
        return ranked, scores

    def tier(self, policy: RoutingPolicy, site: SiteId) -> list[tuple[PathId, float, float]]:
        """The paths `policy` spreads new flows toward `site` over (its best path and every usable
        path within `lb_tolerance` points of it), best first, as (path, score, bandwidth in Mbit/s
        or 0)."""
        ranked, scores = self.ranking(policy, site)
        if not ranked:
            return []
        floor = scores[0] - policy.lb_tolerance
        return [(e.path.id, s, e.metrics.bandwidth_mbps if e.metrics.bandwidth_mbps > 0 else 0.0)
                for e, s in zip(ranked, scores, strict=True) if s >= floor]

    def choose(self, policy: RoutingPolicy, site: SiteId, flow: RouteKey,
               exclude: PathEntry | None = None) -> PathEntry | None:
        """The path for `flow` (new, or leaving `exclude`): the best ranked, or with load balancing
        the policy's pick among its tier; None if no path is usable."""
        ranked, scores = self.ranking(policy, site)
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
            best: PathEntry | None = None
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


def _with_static(path: Path, m: PathMetrics) -> PathMetrics:
    """Fill in what the path's configuration knows and probes do not (cost, nominal bandwidth)."""
    changes: dict[str, Any] = {}
    if m.cost_per_gb == 0.0 and path.cost_per_gb:
        changes["cost_per_gb"] = path.cost_per_gb
    if m.bandwidth_mbps == 0.0 and path.bandwidth_mbps:
        changes["bandwidth_mbps"] = path.bandwidth_mbps
    return m.with_(**changes) if changes else m


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
