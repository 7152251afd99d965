"""Who peers with whom: the pure functions behind a topology's remotes.

A site's agent builds paths to each of its *peers*. Three shapes:

  * full mesh: every other site;
  * hub and spoke: a spoke peers with the hub only, the hub with every spoke;
  * hierarchical (regions): each site belongs to one region, each region has one or more hub sites.
    A spoke peers with the hubs of its own region; a hub peers with every other hub (of every region,
    a full mesh of hubs) and with the spokes of its own region. Peering is symmetric.

Results keep the order of `sites` (the scenario's order), so they are deterministic.

What this module must not know: files, scenarios, backends; it sees names only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def full_mesh_peers(site: str, sites: Sequence[str]) -> tuple[str, ...]:
    """Every site but `site`."""
    return tuple(s for s in sites if s != site)


def hub_and_spoke_peers(site: str, sites: Sequence[str], hub: str) -> tuple[str, ...]:
    """The hub's peers are every spoke; a spoke's peer is the hub."""
    if site == hub:
        return full_mesh_peers(site, sites)
    return tuple(s for s in sites if s == hub)


def hierarchical_peers(site: str, sites: Sequence[str], region_of: Mapping[str, str],
                       hubs: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The peers of `site` in a hierarchical mesh (see the module's header).

    `region_of`: site → its region; `hubs`: region → its hub sites. Raises KeyError for a site without
    a region."""
    region = region_of[site]
    all_hubs = {h for hs in hubs.values() for h in hs}
    if site in all_hubs:
        return tuple(s for s in sites
                     if s != site and (s in all_hubs or region_of.get(s) == region))
    mine = set(hubs.get(region, ()))
    return tuple(s for s in sites if s in mine and s != site)


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
