"""Who peers with whom, and how a packet crosses sites that do not peer: the pure functions behind a
topology (issue 14, "Topologies").

A site's agent builds paths (tunnels) to each of its *peers*. The peer set is a pure function of the
live membership (`Mapping[str, Member]`: site name → what is known of it; a dead or departed site is
simply absent) and the topology settings (`MeshTopology`). Nothing here keeps state, reads a clock or
knows files, scenarios or backends: it sees names only. Every result is sorted by site name, so the
order of the membership mapping never matters. No agent uses this for discovery yet: today the scenario
builder and the simulator call the three static wrappers at the bottom (`full_mesh_peers`, ...).

The rules, exactly:

* **Core and spokes.** Each live site is in the *core* or is a *spoke*. The core is every site
  (`full-mesh`); the hubs (`hub-and-spoke`, `hierarchical`); the hubs and the critical sites (`hybrid`).
  The live core members peer with each other: a full mesh (but see `max_peers`).
* **A spoke's hubs.** A spoke's *preference list* is `hubs` in order (`hub-and-spoke`: one list for every
  spoke), or its region's hubs in order (`hierarchical`, `hybrid`: `Member.region`). Its *home* is the
  first `spoke_hubs` hubs of that list that are live (in the membership); it peers with exactly those,
  and each of them with it. So with `spoke_hubs: 1` (the default) a spoke peers with its primary hub and,
  when that hub is gone from the membership, with its secondary (the next one in order); with
  `spoke_hubs: 2` it keeps both tunnels up and a hub failure needs no new tunnel. In `hierarchical` and
  `hybrid`, a spoke whose region has no live hub (or that has no region, or one no hub serves) falls
  back to the other regions' live hubs, in the order the settings list the regions and their hubs; it
  never leaves its region while that region has a live hub. With no live hub to home to, a spoke has
  no peers and no route (`route` gives `()`).
* **`hybrid`**: the critical sites and the regional hubs are one full mesh; the other sites are spokes
  of their region's hubs as above ("nearest hub" = first live hub of the site's own region, falling
  back as above). A critical site need not be a hub; one that is also listed as a hub serves spokes.
  `hierarchical` is `hybrid` without critical sites; `hub-and-spoke` is one list of hubs for everyone.
  A hub's region is the one the settings list it under; its `Member.region` is not consulted.
* **`max_peers`** (optional, at least 2) caps the core mesh, the only part that grows as O(n²): while
  the live core has at most `max_peers + 1` members it is a full mesh; beyond that, its members sorted
  by name form a ring, and each peers with the members 1, 2, 4, ... 2^(J-1) places away on either side
  (J = max_peers // 2; distances above half the ring left out). Symmetric, at most `max_peers` core
  peers each, always connected (distance 1 is the ring), and a route crosses the core in at most
  H ≤ floor((n // 2) / 2^T) + T hops (n live core members, 2^T the longest distance used; J ≥ log2 n
  makes it logarithmic). A spoke's `spoke_hubs` must not exceed `max_peers`. Spokes are not capped: a
  hub serves every spoke that homes to it (add hubs to spread them), so a hub may exceed `max_peers`.
  A core member joining or leaving renumbers the ring: it changes the core peers of the members
  around it at each distance (and, if it is a hub, the homes of the spokes it serves or would serve).

Routes (`route`): when two live sites do not peer, a packet goes up to a hub, across the core and
down: src → src's first home hub → (core ring steps, greedy: the longest distance that does not
overshoot, in the shorter direction) → dst, stopping as soon as a site on the way peers with dst; if
src and dst share a home hub, src → that hub (the first in src's order) → dst. Each hop is a direct
peering, no site appears twice, and the route is consistent hop by hop (the route from its second site
is the rest of it), so relaying on `next_hop` at every site follows it without loops. Longest routes
(hops): `full-mesh` 1; `hub-and-spoke` 2; `hierarchical` and `hybrid` 3 (spoke → hub → hub → spoke);
with the core capped by `max_peers`, H core hops (above) instead of 1: full-mesh H, hub-and-spoke
max(2, H + 1), the others H + 2 (`route_hop_bound`). A route exists between every two live sites when
there is no spoke or at least one hub is live.

Membership churn changes only what it must: a spoke joining or leaving changes its home hubs' peer sets
and no other; a hub leaving re-homes the spokes it served (to their next live hub) and changes the core
peers of the other core members; `diff` says what an agent adds and removes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from patronus.core.validate import Errors, choice, field, integer, item, items, join, mapping, name

__all__ = [
    "Kind", "Member", "MeshTopology", "PeerDiff", "diff", "full_mesh_peers", "hierarchical_peers",
    "hub_and_spoke_peers", "next_hop", "peer_map", "peer_pairs", "peers", "route", "route_hop_bound",
]


class Kind(enum.StrEnum):
    FULL_MESH = "full-mesh"
    HUB_AND_SPOKE = "hub-and-spoke"
    HIERARCHICAL = "hierarchical"
    HYBRID = "hybrid"


_HUB_KINDS = (Kind.HUB_AND_SPOKE, Kind.HIERARCHICAL, Kind.HYBRID)
_REGIONAL = (Kind.HIERARCHICAL, Kind.HYBRID)
_KEYS = ("kind", "hubs", "critical", "spoke_hubs", "max_peers")
MAX_PEERS_LIMIT = 100_000     # no mesh of ours has more sites; bounds what a file may ask for


@dataclass(frozen=True)
class Member:
    """What the topology needs to know of a live site: its region (hierarchical, hybrid)."""

    region: str | None = None


@dataclass(frozen=True)
class MeshTopology:
    """The topology settings (see the module's header for the rules). `hubs` serves `hub-and-spoke`
    (every hub, in preference order); `region_hubs` serves `hierarchical` and `hybrid` (region → its hubs
    in preference order, regions in the order of the fallback); `critical`, `hybrid` only. Read one with
    `from_dict`, which checks everything; the constructor checks only what the functions rely on."""

    kind: Kind = Kind.FULL_MESH
    hubs: tuple[str, ...] = ()
    region_hubs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    critical: tuple[str, ...] = ()
    spoke_hubs: int = 1
    max_peers: int | None = None

    def __post_init__(self) -> None:
        if self.spoke_hubs < 1 or (self.max_peers is not None and self.max_peers < 2):
            raise ValueError(f"spoke_hubs must be at least 1 and max_peers at least 2: {self}")

    @property
    def all_hubs(self) -> tuple[str, ...]:
        """Every hub, in the settings' order."""
        if self.kind is Kind.HUB_AND_SPOKE:
            return self.hubs
        if self.kind in _REGIONAL:
            return tuple(h for _, hs in self.region_hubs for h in hs)
        return ()

    def hubs_of(self, region: str | None) -> tuple[str, ...]:
        """The hubs a spoke of `region` prefers, in order (before any fallback)."""
        if self.kind is Kind.HUB_AND_SPOKE:
            return self.hubs
        return next((hs for r, hs in self.region_hubs if r == region), ())

    # --- files ----------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: object, path: str = "topology") -> MeshTopology:
        """Read and check settings like `{kind: hybrid, critical: [hq, dr], hubs: {eu: [eu-hub-1, eu-hub-2]},
        spoke_hubs: 1, max_peers: 20}`; `hubs` is a list for `hub-and-spoke`. Raises one `ConfigError`
        listing every problem, each under its field's path."""
        errs = Errors()
        t = cls.read(d, path, errs)
        errs.check()
        assert t is not None
        return t

    @classmethod
    def read(cls, d: object, path: str, errs: Errors) -> MeshTopology | None:
        """`from_dict` as a reader of `patronus.core.validate`: None after recording the errors."""
        m = mapping(d, path, errs, _KEYS, ("kind",))
        if m is None:
            return None
        n = len(errs)
        raw_kind = field(m, "kind", path, errs, choice, [k.value for k in Kind], optional=True)
        kind = Kind(raw_kind) if raw_kind is not None else None
        kw: dict[str, Any] = {}
        if kind is not None:
            _read_roles(m, kind, path, errs, kw)
        spoke_hubs = field(m, "spoke_hubs", path, errs, integer, 1, MAX_PEERS_LIMIT, optional=True)
        max_peers = field(m, "max_peers", path, errs, integer, 2, MAX_PEERS_LIMIT, optional=True)
        if spoke_hubs is not None:
            if kind is Kind.FULL_MESH:
                errs.add(join(path, "spoke_hubs"), "only with kind hub-and-spoke, hierarchical or hybrid")
            elif max_peers is not None and spoke_hubs > max_peers:
                errs.add(join(path, "spoke_hubs"), f"at most max_peers ({max_peers}), got {spoke_hubs}")
            kw["spoke_hubs"] = spoke_hubs
        if len(errs) > n or kind is None:
            return None
        return cls(kind, max_peers=max_peers, **kw)

    def as_dict(self) -> dict[str, Any]:
        """The settings as `from_dict` reads them (every setting of the kind written out)."""
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is Kind.HUB_AND_SPOKE:
            out["hubs"] = list(self.hubs)
        elif self.kind in _REGIONAL:
            out["hubs"] = {region: list(hs) for region, hs in self.region_hubs}
        if self.kind is Kind.HYBRID:
            out["critical"] = list(self.critical)
        if self.kind in _HUB_KINDS:
            out["spoke_hubs"] = self.spoke_hubs
        if self.max_peers is not None:
            out["max_peers"] = self.max_peers
        return out


def _names(raw: object, path: str, errs: Errors, what: str, taken: dict[str, str]) -> tuple[str, ...]:
    """A non-empty list of distinct site names; `taken` (name → where it was listed) spans lists."""
    listed = items(raw, path, errs, f"{what} site names", nonempty=True) or []
    out: list[str] = []
    for i, h in enumerate(listed):
        where = item(path, i)
        if name(h, where, errs, "site") is None:
            continue
        if h in taken:
            errs.add(where, f"{h} is already listed at {taken[h]}")
            continue
        taken[h] = where
        out.append(h)
    return tuple(out)


def _read_roles(m: Mapping[str, Any], kind: Kind, path: str, errs: Errors, kw: dict[str, Any]) -> None:
    """`hubs` (and `critical`) for `kind`, into `kw`."""
    hubs_path, crit_path = join(path, "hubs"), join(path, "critical")
    if kind is Kind.FULL_MESH:
        for key in ("hubs", "critical"):
            if m.get(key) is not None:
                errs.add(join(path, key), f"not with kind {kind.value} (every site peers with every other)")
        return
    if m.get("critical") is not None and kind is not Kind.HYBRID:
        errs.add(crit_path, f"only with kind hybrid (the kind is {kind.value})")
    if m.get("hubs") is None:
        errs.add(hubs_path, "required: " + ("the hub sites, in preference order" if kind is Kind.HUB_AND_SPOKE
                                           else "region → its hub sites, in preference order"))
        return
    taken: dict[str, str] = {}
    if kind is Kind.HUB_AND_SPOKE:
        kw["hubs"] = _names(m["hubs"], hubs_path, errs, "hub", taken)
        return
    regions = mapping(m["hubs"], hubs_path, errs, what="region")
    if regions is not None:
        if not regions:
            errs.add(hubs_path, "expected at least one region → its hub sites")
        kw["region_hubs"] = tuple(
            (region, _names(hs, join(hubs_path, region), errs, "hub", taken))
            for region, hs in regions.items() if name(region, join(hubs_path, region), errs, "region") is not None)
    if kind is Kind.HYBRID:
        if m.get("critical") is None:
            errs.add(crit_path, "required with kind hybrid: the critical sites (a full mesh with the hubs)")
        else:
            kw["critical"] = _names(m["critical"], crit_path, errs, "critical", {})


# --- one membership under one topology ------------------------------------------------------------

class _Layout:
    """The core (sorted), its ring distances (None: a full mesh) and the spokes' homes, for one live
    membership under one topology."""

    def __init__(self, members: Mapping[str, Member], topo: MeshTopology) -> None:
        self.members, self.topo = members, topo
        if topo.kind is Kind.FULL_MESH:
            core = sorted(members)
        else:
            core = sorted({s for s in (*topo.all_hubs, *topo.critical) if s in members})
        self.core = core
        self.pos = {s: i for i, s in enumerate(core)}
        self.chords: tuple[int, ...] | None = None
        n = len(core)
        if topo.max_peers is not None and n > topo.max_peers + 1:
            self.chords = tuple(_powers(topo.max_peers // 2, n // 2))
        self._homes: dict[str, tuple[str, ...]] | None = None

    def spokes(self) -> Iterator[str]:
        return (s for s in self.members if s not in self.pos)

    def home(self, spoke: str) -> tuple[str, ...]:
        """A spoke's live home hubs, primary first (see the header)."""
        topo, members = self.topo, self.members
        own = topo.hubs_of(members[spoke].region)
        live = [h for h in own if h in members]
        if not live and topo.kind in _REGIONAL:
            live = [h for h in topo.all_hubs if h in members]
        return tuple(live[:topo.spoke_hubs])

    def homes(self) -> dict[str, tuple[str, ...]]:
        if self._homes is None:
            self._homes = {s: self.home(s) for s in self.spokes()}
        return self._homes

    def up(self, site: str) -> tuple[str, ...]:
        """Where a route from `site` enters the core: itself, or its home hubs."""
        return (site,) if site in self.pos else self.home(site)

    def core_peers(self, site: str) -> list[str]:
        if self.chords is None:
            return [s for s in self.core if s != site]
        i, n = self.pos[site], len(self.core)
        return list({self.core[(i + sign * d) % n] for d in self.chords for sign in (1, -1)} - {site})

    def peers(self, site: str) -> tuple[str, ...]:
        if site not in self.members:
            return ()
        if site not in self.pos:
            return tuple(sorted(self.home(site)))
        served = [s for s, hs in self.homes().items() if site in hs]
        return tuple(sorted(self.core_peers(site) + served))

    def adjacent(self, a: str, b: str) -> bool:
        if a == b:
            return False
        if a in self.pos and b in self.pos:
            if self.chords is None:
                return True
            n = len(self.core)
            d = (self.pos[b] - self.pos[a]) % n
            return min(d, n - d) in self.chords
        if a in self.pos:
            return a in self.home(b)
        if b in self.pos:
            return b in self.home(a)
        return False

    def step(self, node: str, target: str) -> str:
        """One greedy hop across the core from `node` towards `target` (≠ node)."""
        if self.chords is None:
            return target
        n, i = len(self.core), self.pos[node]
        d = (self.pos[target] - i) % n
        sign, r = (1, d) if d <= n - d else (-1, n - d)
        hop = max(c for c in self.chords if c <= r)
        return self.core[(i + sign * hop) % n]

    def route(self, src: str, dst: str) -> tuple[str, ...]:
        if src not in self.members or dst not in self.members:
            return ()
        if src == dst:
            return (src,)
        if self.adjacent(src, dst):
            return (src, dst)
        hs, hd = self.up(src), self.up(dst)
        if not hs or not hd:
            return ()
        shared = next((h for h in hs if h in hd), None)
        if shared is not None:
            return (src, shared, dst)
        node = hs[0]
        out = [node] if node == src else [src, node]
        while not self.adjacent(node, dst):
            node = self.step(node, hd[0])
            out.append(node)
        out.append(dst)
        return tuple(out)

    def hop_bound(self) -> int:
        n = len(self.core)
        if n <= 1:
            core = 0
        elif self.chords is None:
            core = 1
        else:
            longest = max(self.chords)        # the greedy walk's hops over each ring distance, at worst
            core = max(r // longest + (r % longest).bit_count() for r in range(1, n // 2 + 1))
        if not any(True for _ in self.spokes()):
            return core
        if self.topo.kind is Kind.HUB_AND_SPOKE:
            return max(2, core + 1)
        return core + 2


def _powers(count: int, at_most: int) -> Iterator[int]:
    """1, 2, 4, ...: the first `count` powers of two, none above `at_most`."""
    d = 1
    for _ in range(count):
        if d > at_most:
            return
        yield d
        d *= 2


# --- the functions -------------------------------------------------------------------------------

def peers(site: str, members: Mapping[str, Member], topology: MeshTopology) -> tuple[str, ...]:
    """The live sites `site` peers with, sorted by name (none when `site` is not a live member)."""
    return _Layout(members, topology).peers(site)


def peer_map(members: Mapping[str, Member], topology: MeshTopology) -> dict[str, tuple[str, ...]]:
    """`peers` of every live member at once (site → peers, sites sorted by name)."""
    layout = _Layout(members, topology)
    out: dict[str, list[str]] = {s: [] for s in sorted(members)}
    for s in layout.core:
        out[s] = layout.core_peers(s)
    for spoke, hs in layout.homes().items():
        out[spoke] = list(hs)
        for h in hs:
            out[h].append(spoke)
    return {s: tuple(sorted(ps)) for s, ps in out.items()}


def route(src: str, dst: str, members: Mapping[str, Member], topology: MeshTopology) -> tuple[str, ...]:
    """The sites a packet from `src` to `dst` crosses, both included (see the header): `(src, dst)` when
    they peer, `(src,)` when they are one site, `()` when either is not live or no route exists."""
    return _Layout(members, topology).route(src, dst)


def next_hop(src: str, dst: str, members: Mapping[str, Member], topology: MeshTopology) -> str | None:
    """The site `src` hands a packet for `dst` to (`dst` itself when they peer); None without a route."""
    r = route(src, dst, members, topology)
    return r[1] if len(r) > 1 else None


def route_hop_bound(members: Mapping[str, Member], topology: MeshTopology) -> int:
    """The most hops any `route` in this membership takes (see the header)."""
    return _Layout(members, topology).hop_bound()


@dataclass(frozen=True)
class PeerDiff:
    """What an agent does when its peer set changes: tunnels to build and to tear down (sorted)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def diff(old: Sequence[str], new: Sequence[str]) -> PeerDiff:
    """The peers in `new` and not `old` (to add) and in `old` and not `new` (to remove)."""
    before, after = set(old), set(new)
    return PeerDiff(tuple(sorted(after - before)), tuple(sorted(before - after)))


# --- the static layouts of a scenario (the scenario builder's and the simulator's) -----------------
# Every site is live; results keep the order of `sites` (the scenario's order).

class _Everyone(Mapping[str, Member]):
    """Every site of a scenario as a live member, its `Member` made when asked for: a wrapper runs once
    per site, and most runs need a few members' regions, not a thousand."""

    def __init__(self, sites: Sequence[str], region_of: Mapping[str, str] | None = None) -> None:
        self._sites, self._names, self._region_of = sites, set(sites), region_of or {}

    def __getitem__(self, site: str) -> Member:
        if site not in self._names:
            raise KeyError(site)
        return Member(self._region_of.get(site))

    def __contains__(self, site: object) -> bool:
        return site in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._names)


def _in_order(sites: Sequence[str], chosen: Sequence[str]) -> tuple[str, ...]:
    keep = set(chosen)
    return tuple(s for s in sites if s in keep)


def full_mesh_peers(site: str, sites: Sequence[str]) -> tuple[str, ...]:
    """Every site but `site`."""
    return _in_order(sites, peers(site, _Everyone(sites), MeshTopology()))


def hub_and_spoke_peers(site: str, sites: Sequence[str], hub: str) -> tuple[str, ...]:
    """The hub's peers are every spoke; a spoke's peer is the hub."""
    topo = MeshTopology(Kind.HUB_AND_SPOKE, hubs=(hub,))
    return _in_order(sites, peers(site, _Everyone(sites), topo))


def hierarchical_peers(site: str, sites: Sequence[str], region_of: Mapping[str, str],
                       hubs: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """A spoke peers with every hub of its region; a hub with every other hub and its region's spokes
    (`hierarchical` with `spoke_hubs` as large as the largest region's hub list). `region_of`: site → its
    region; `hubs`: region → its hub sites, each a site of that region and every region with sites
    having one (as a scenario's validation ensures). Raises KeyError for a site without a region."""
    if site not in region_of:
        raise KeyError(site)
    region_hubs = tuple((r, tuple(hs)) for r, hs in hubs.items())
    topo = MeshTopology(Kind.HIERARCHICAL, region_hubs=region_hubs,
                    spoke_hubs=max((len(hs) for _, hs in region_hubs), default=1) or 1)
    return _in_order(sites, peers(site, _Everyone(sites, region_of), topo))


def peer_pairs(sites: Sequence[str], peers_of: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Each peering once, as (a, b) with a before b in `sites`; checks that peering is symmetric
    (raises ValueError naming the first one-sided pair)."""
    order = {s: i for i, s in enumerate(sites)}
    out = []
    for a in sites:
        for b in peers_of.get(a, ()):
            if a not in peers_of.get(b, ()):
                raise ValueError(f"{a} peers with {b} but not the reverse")
            if order[a] < order[b]:
                out.append((a, b))
    return out
