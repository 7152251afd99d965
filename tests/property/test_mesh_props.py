"""Hypothesis properties of patronus.core.mesh, over random topologies of every kind (with and without
max_peers, one or more hubs per spoke) and random live memberships:

- peering is symmetric, never with oneself or a site outside the membership, and `peers` equals `peer_map`;
- the result is the same whatever the order of the membership mapping;
- max_peers holds for the core (every site in a full mesh), and a spoke peers with at most spoke_hubs hubs;
- routes: between every two live sites when there is no spoke or a hub is live; each hop a direct peering,
  no site twice, within `route_hop_bound`, consistent hop by hop (so `next_hop` relaying follows it);
- churn changes only what it must: a spoke leaving changes only its home hubs' peer sets, a hub leaving
  no spoke that did not home to it; in an uncapped full mesh a site leaving only disappears from the others;
- `diff` applied to the old peers gives the new ones;
- settings read back exactly, and no input makes `MeshTopology.from_dict` raise anything but ConfigError;
- the static wrappers give what they gave before they were rebuilt on `peers` (a verbatim copy of the
  old code, on the scenarios a scenario's validation accepts).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patronus.core.errors import ConfigError
from patronus.core.mesh import (
    Kind,
    Member,
    MeshTopology,
    diff,
    full_mesh_peers,
    hierarchical_peers,
    hub_and_spoke_peers,
    next_hop,
    peer_map,
    peers,
    route,
    route_hop_bound,
)

pytestmark = pytest.mark.property

SITES = [f"s{i}" for i in range(14)]
REGIONS = ["r0", "r1", "r2"]


@st.composite
def topologies(draw: st.DrawFn) -> MeshTopology:
    kind = draw(st.sampled_from(list(Kind)))
    max_peers = draw(st.none() | st.integers(2, 7))
    spoke_hubs = draw(st.integers(1, 3 if max_peers is None else min(3, max_peers)))
    hubs = draw(st.lists(st.sampled_from(SITES), min_size=1, max_size=7, unique=True))
    if kind is Kind.FULL_MESH:
        return MeshTopology(max_peers=max_peers)
    if kind is Kind.HUB_AND_SPOKE:
        return MeshTopology(kind, hubs=tuple(hubs), spoke_hubs=spoke_hubs, max_peers=max_peers)
    regions = draw(st.lists(st.sampled_from(REGIONS), min_size=len(hubs), max_size=len(hubs)))
    region_hubs: dict[str, list[str]] = {}
    for h, r in zip(hubs, regions, strict=True):
        region_hubs.setdefault(r, []).append(h)
    critical = draw(st.lists(st.sampled_from(SITES), min_size=1, max_size=4, unique=True)) \
        if kind is Kind.HYBRID else []
    return MeshTopology(kind, region_hubs=tuple((r, tuple(hs)) for r, hs in region_hubs.items()),
                    critical=tuple(critical), spoke_hubs=spoke_hubs, max_peers=max_peers)


memberships = st.dictionaries(st.sampled_from(SITES), st.builds(Member, st.none() | st.sampled_from(REGIONS)),
                              max_size=len(SITES))


def core_of(members: Mapping[str, Member], t: MeshTopology) -> set[str]:
    if t.kind is Kind.FULL_MESH:
        return set(members)
    return {s for s in (*t.all_hubs, *t.critical) if s in members}


def reachable(members: Mapping[str, Member], t: MeshTopology) -> bool:
    """Every two live sites have a route (the header's promise)."""
    core = core_of(members, t)
    return set(members) <= core or any(h in members for h in t.all_hubs)


@given(topologies(), memberships)
def test_peering_is_symmetric_and_within_the_membership(t: MeshTopology, members: dict[str, Member]) -> None:
    pm = peer_map(members, t)
    assert list(pm) == sorted(members)
    for a, ps in pm.items():
        assert ps == peers(a, members, t) and list(ps) == sorted(set(ps))
        assert a not in ps and set(ps) <= set(members)
        for b in ps:
            assert a in pm[b], (a, b)


@given(topologies(), memberships, st.randoms(use_true_random=False))
def test_the_membership_order_does_not_matter(t: MeshTopology, members: dict[str, Member], rnd: Any) -> None:
    shuffled = list(members.items())
    rnd.shuffle(shuffled)
    other = dict(shuffled)
    assert peer_map(other, t) == peer_map(members, t)
    for a in members:
        for b in members:
            assert route(a, b, other, t) == route(a, b, members, t)


@given(topologies(), memberships)
def test_max_peers_and_spoke_hubs_bound_the_peer_sets(t: MeshTopology, members: dict[str, Member]) -> None:
    core = core_of(members, t)
    for a, ps in peer_map(members, t).items():
        if a in core:
            if t.max_peers is not None:
                assert len(set(ps) & core) <= t.max_peers
            elif t.kind is Kind.FULL_MESH:
                assert len(ps) == len(members) - 1
        else:
            assert 1 <= len(ps) <= t.spoke_hubs or not any(h in members for h in t.all_hubs)
            assert set(ps) <= set(t.all_hubs)


def hops_from(a: str, pm: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Breadth-first: the fewest hops from `a` to every site it can reach."""
    dist, frontier = {a: 0}, [a]
    while frontier:
        nxt = []
        for x in frontier:
            for p in pm[x]:
                if p not in dist:
                    dist[p] = dist[x] + 1
                    nxt.append(p)
        frontier = nxt
    return dist


@given(topologies(), memberships)
def test_routes_join_every_two_live_sites_over_direct_peerings(t: MeshTopology, members: dict[str, Member]) -> None:
    pm = peer_map(members, t)
    bound = route_hop_bound(members, t)
    ok = reachable(members, t)
    full_core = t.max_peers is None or len(core_of(members, t)) <= t.max_peers + 1
    longest = 0
    for a in members:
        shortest = hops_from(a, pm)
        for b in members:
            r = route(a, b, members, t)
            if not r:
                assert not ok and next_hop(a, b, members, t) is None and b not in shortest
                continue
            assert r[0] == a and r[-1] == b and len(set(r)) == len(r)
            assert all(y in pm[x] for x, y in itertools.pairwise(r))
            assert len(r) - 1 <= bound
            longest = max(longest, len(r) - 1)
            if full_core:                                           # an uncapped core: routes are shortest
                assert len(r) - 1 == shortest[b], (r, shortest[b])
            if a != b:
                assert next_hop(a, b, members, t) == r[1]
                assert route(r[1], b, members, t) == r[1:]          # hop-by-hop consistent: no relay loops
    if t.kind is Kind.FULL_MESH and len(members) > 1:
        assert longest == bound                                     # the bound is the longest route
    if t.kind is Kind.FULL_MESH and t.max_peers is None:
        assert bound <= 1
    if t.max_peers is None and t.kind is Kind.HUB_AND_SPOKE:
        assert bound <= 2
    if t.max_peers is None:
        assert bound <= 3


@given(topologies(), memberships, st.data())
def test_a_spoke_leaving_changes_only_its_home_hubs(t: MeshTopology, members: dict[str, Member], data: Any) -> None:
    spokes = sorted(set(members) - core_of(members, t))
    if not spokes:
        return
    gone = data.draw(st.sampled_from(spokes))
    before = peer_map(members, t)
    after = peer_map({s: m for s, m in members.items() if s != gone}, t)
    changed = {s for s in after if after[s] != before[s]}
    assert changed == set(before[gone])
    for h in changed:
        assert diff(before[h], after[h]).remove == (gone,) and not diff(before[h], after[h]).add


@given(topologies(), memberships, st.data())
def test_a_hub_leaving_moves_only_its_spokes(t: MeshTopology, members: dict[str, Member], data: Any) -> None:
    live_hubs = [h for h in t.all_hubs if h in members]
    if not live_hubs:
        return
    gone = data.draw(st.sampled_from(live_hubs))
    core = core_of(members, t)
    before = peer_map(members, t)
    after = peer_map({s: m for s, m in members.items() if s != gone}, t)
    for s in set(members) - core:
        if gone not in before[s]:
            assert after[s] == before[s], s
        elif t.spoke_hubs == 1:                       # re-homed to the next live hub in its order, if any
            assert len(after[s]) <= 1 and gone not in after[s]


@given(st.integers(2, 9), st.integers(0, 12))
def test_max_peers_caps_a_full_mesh_of_any_size(max_peers: int, n: int) -> None:
    members = {f"s{i:02d}": Member() for i in range(n)}
    t = MeshTopology(max_peers=max_peers)
    pm = peer_map(members, t)
    assert all(len(ps) == min(n - 1, max_peers) or (n > max_peers + 1 and len(ps) <= max_peers)
               for ps in pm.values())
    assert all(len(hops_from(a, pm)) == n for a in members)        # connected


@given(memberships, st.data())
def test_in_a_full_mesh_a_leaving_site_only_disappears(members: dict[str, Member], data: Any) -> None:
    if not members:
        return
    gone = data.draw(st.sampled_from(sorted(members)))
    t = MeshTopology()
    before, after = peer_map(members, t), peer_map({s: m for s, m in members.items() if s != gone}, t)
    assert all(after[s] == tuple(p for p in before[s] if p != gone) for s in after)


@given(st.lists(st.sampled_from(SITES), unique=True), st.lists(st.sampled_from(SITES), unique=True))
def test_diff_turns_the_old_peers_into_the_new(old: list[str], new: list[str]) -> None:
    d = diff(old, new)
    assert (set(old) - set(d.remove)) | set(d.add) == set(new)
    assert not set(d.add) & set(old) and set(d.remove) <= set(old) and bool(d) == (set(old) != set(new))


# --- settings ---------------------------------------------------------------------------------------

@given(topologies())
def test_settings_read_back_exactly(t: MeshTopology) -> None:
    if t.kind is Kind.HYBRID and not t.region_hubs:
        return
    assert MeshTopology.from_dict(t.as_dict()) == t


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(["kind", "hubs", "critical", "spoke_hubs", "max_peers", "other"])
kinds = st.sampled_from([k.value for k in Kind]) | json_values


@given(st.dictionaries(keys, json_values, max_size=5), kinds)
def test_bad_settings_are_config_errors(d: dict[str, Any], kind: Any) -> None:
    d = d | {"kind": kind}
    try:
        t = MeshTopology.from_dict(d)
    except ConfigError as exc:
        assert exc.errors and all(p.startswith("topology") for p, _ in exc.errors)
    else:
        assert MeshTopology.from_dict(t.as_dict()) == t


# --- the static wrappers against the code they replaced -----------------------------------------------

def old_full_mesh_peers(site: str, sites: Sequence[str]) -> tuple[str, ...]:
    return tuple(s for s in sites if s != site)


def old_hub_and_spoke_peers(site: str, sites: Sequence[str], hub: str) -> tuple[str, ...]:
    if site == hub:
        return old_full_mesh_peers(site, sites)
    return tuple(s for s in sites if s == hub)


def old_hierarchical_peers(site: str, sites: Sequence[str], region_of: Mapping[str, str],
                           hubs: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    region = region_of[site]
    all_hubs = {h for hs in hubs.values() for h in hs}
    if site in all_hubs:
        return tuple(s for s in sites
                     if s != site and (s in all_hubs or region_of.get(s) == region))
    mine = set(hubs.get(region, ()))
    return tuple(s for s in sites if s in mine and s != site)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """Sites in a random order, each with a region; every region has at least one hub of its own."""
    sites = draw(st.permutations(SITES))[:draw(st.integers(1, len(SITES)))]
    region_of = {s: draw(st.sampled_from(REGIONS)) for s in sites}
    hubs: dict[str, list[str]] = {}
    for s in sites:
        if region_of[s] not in hubs or (draw(st.booleans()) and len(hubs[region_of[s]]) < 3):
            hubs.setdefault(region_of[s], []).append(s)
    order = draw(st.permutations(sorted(hubs)))
    return list(sites), region_of, {r: hubs[r] for r in order}


@given(scenarios())
def test_the_static_wrappers_give_what_the_old_code_gave(sc: tuple[list[str], dict[str, str],
                                                                   dict[str, list[str]]]) -> None:
    sites, region_of, hubs = sc
    for s in sites:
        assert full_mesh_peers(s, sites) == old_full_mesh_peers(s, sites)
        assert hub_and_spoke_peers(s, sites, sites[0]) == old_hub_and_spoke_peers(s, sites, sites[0])
        assert hierarchical_peers(s, sites, region_of, hubs) == old_hierarchical_peers(s, sites, region_of, hubs)
