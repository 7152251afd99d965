"""Topologies (patronus.core.mesh): the settings and their checks, the peer sets of each kind, a hub's
failure moving its spokes to their secondary hub, relay routes, max_peers, and diff. The properties
(symmetry, connectivity, churn, determinism) are in tests/property/test_mesh_props.py."""

from __future__ import annotations

from typing import Any

import pytest

from patronus.core.errors import ConfigError
from patronus.core.mesh import (
    Kind,
    Member,
    MeshTopology,
    PeerDiff,
    diff,
    next_hop,
    peer_map,
    peers,
    route,
    route_hop_bound,
)

pytestmark = pytest.mark.unit


def members(spec: dict[str, list[str]]) -> dict[str, Member]:
    """region → its sites."""
    return {s: Member(region) for region, sites in spec.items() for s in sites}


def errors_of(d: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        MeshTopology.from_dict(d)
    return exc.value.errors


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [
    {"kind": "full-mesh"},
    {"kind": "full-mesh", "max_peers": 20},
    {"kind": "hub-and-spoke", "hubs": ["hq", "dr"], "spoke_hubs": 1},
    {"kind": "hierarchical", "hubs": {"eu": ["eu-hub-1", "eu-hub-2"], "us": ["us-hub"]}, "spoke_hubs": 2,
     "max_peers": 8},
    {"kind": "hybrid", "hubs": {"eu": ["eu-hub"], "us": ["hq"]}, "critical": ["hq", "dr"], "spoke_hubs": 1},
])
def test_settings_read_back_exactly(d: dict[str, Any]) -> None:
    t = MeshTopology.from_dict(d)
    assert t.as_dict() == d
    assert MeshTopology.from_dict(t.as_dict()) == t


def test_settings_defaults_and_shapes() -> None:
    t = MeshTopology.from_dict({"kind": "hierarchical", "hubs": {"eu": ["a", "b"]}})
    assert t == MeshTopology(Kind.HIERARCHICAL, region_hubs=(("eu", ("a", "b")),))
    assert t.spoke_hubs == 1 and t.max_peers is None and t.all_hubs == ("a", "b")
    assert t.as_dict() == {"kind": "hierarchical", "hubs": {"eu": ["a", "b"]}, "spoke_hubs": 1}
    hs = MeshTopology.from_dict({"kind": "hub-and-spoke", "hubs": ["hq", "dr"]})
    assert hs.hubs == ("hq", "dr") and hs.hubs_of("anything") == ("hq", "dr") and hs.hubs_of(None) == ("hq", "dr")


def test_every_settings_error_at_once_with_its_path() -> None:
    errs = errors_of({"kind": "hybrid", "hubs": {"eu": ["a", "a"], "Bad": ["b"], "us": []},
                      "critical": "hq", "spoke_hubs": 0, "max_peers": 1, "colour": "red"})
    assert ("topology.colour", "unknown setting; expected one of critical, hubs, kind, max_peers, spoke_hubs") \
        in errs
    paths = [p for p, _ in errs]
    assert paths == ["topology.colour", "topology.hubs.eu[1]", "topology.hubs.Bad", "topology.hubs.us",
                     "topology.critical", "topology.spoke_hubs", "topology.max_peers"], errs
    assert "already listed at topology.hubs.eu[0]" in dict(errs)["topology.hubs.eu[1]"]


@pytest.mark.parametrize(("d", "path", "reason"), [
    (None, "topology", "expected a mapping"),
    ({}, "topology.kind", "required"),
    ({"kind": "star"}, "topology.kind", "expected one of full-mesh, hub-and-spoke, hierarchical, hybrid"),
    ({"kind": "full-mesh", "hubs": ["a"]}, "topology.hubs", "not with kind full-mesh"),
    ({"kind": "full-mesh", "spoke_hubs": 2}, "topology.spoke_hubs", "only with kind hub-and-spoke"),
    ({"kind": "hub-and-spoke"}, "topology.hubs", "required: the hub sites"),
    ({"kind": "hub-and-spoke", "hubs": []}, "topology.hubs", "expected a list of at least one of hub site"),
    ({"kind": "hub-and-spoke", "hubs": {"eu": ["a"]}}, "topology.hubs", "expected a list"),
    ({"kind": "hub-and-spoke", "hubs": ["a"], "critical": ["b"]}, "topology.critical", "only with kind hybrid"),
    ({"kind": "hierarchical", "hubs": ["a"]}, "topology.hubs", "expected a mapping"),
    ({"kind": "hierarchical", "hubs": {}}, "topology.hubs", "at least one region"),
    ({"kind": "hierarchical", "hubs": {"eu": ["a"], "us": ["a"]}}, "topology.hubs.us[0]", "already listed"),
    ({"kind": "hierarchical", "hubs": {"eu": ["A"]}}, "topology.hubs.eu[0]", "site names are lowercase"),
    ({"kind": "hybrid", "hubs": {"eu": ["a"]}}, "topology.critical", "required with kind hybrid"),
    ({"kind": "hybrid", "hubs": {"eu": ["a"]}, "critical": ["a", "a"]}, "topology.critical[1]", "already"),
    ({"kind": "full-mesh", "max_peers": 1}, "topology.max_peers", "a whole number 2-100000, got 1"),
    ({"kind": "full-mesh", "max_peers": True}, "topology.max_peers", "expected a whole number"),
    ({"kind": "hub-and-spoke", "hubs": ["a", "b", "c"], "spoke_hubs": 3, "max_peers": 2}, "topology.spoke_hubs",
     "at most max_peers (2), got 3"),
])
def test_settings_errors(d: object, path: str, reason: str) -> None:
    errs = errors_of(d)
    assert any(p == path and reason in r for p, r in errs), errs


def test_the_constructor_refuses_what_the_functions_cannot_use() -> None:
    with pytest.raises(ValueError, match="spoke_hubs"):
        MeshTopology(Kind.HUB_AND_SPOKE, hubs=("a",), spoke_hubs=0)
    with pytest.raises(ValueError, match="max_peers"):
        MeshTopology(max_peers=1)


# --- full mesh --------------------------------------------------------------------------------------

def test_full_mesh() -> None:
    m = members({"x": ["c", "a", "b"]})
    assert peers("a", m, MeshTopology()) == ("b", "c")
    assert peers("gone", m, MeshTopology()) == ()
    assert route("a", "c", m, MeshTopology()) == ("a", "c") and route("a", "a", m, MeshTopology()) == ("a",)
    assert route_hop_bound(m, MeshTopology()) == 1


def test_full_mesh_capped_by_max_peers_is_a_ring_with_chords() -> None:
    names = [f"s{i:02d}" for i in range(12)]
    m = dict.fromkeys(names, Member())
    t = MeshTopology(max_peers=4)                                # distances 1 and 2 on a ring of 12
    assert peers("s00", m, t) == ("s01", "s02", "s10", "s11")
    assert all(len(ps) == 4 for ps in peer_map(m, t).values())
    assert route("s00", "s06", m, t) == ("s00", "s02", "s04", "s06")   # greedy: 2 + 2 + 2
    assert route("s00", "s07", m, t) == ("s00", "s10", "s08", "s07")   # the shorter way round
    assert route_hop_bound(m, t) == 3                        # (12 // 2) // 2 + 1
    small = dict.fromkeys(names[:5], Member())               # 5 ≤ max_peers + 1: still a full mesh
    assert peers("s00", small, t) == ("s01", "s02", "s03", "s04")
    six = dict.fromkeys(names[:6], Member())                 # 6: a ring, distances 1 and 2
    assert peers("s00", six, t) == ("s01", "s02", "s04", "s05")
    odd = MeshTopology(max_peers=5)                              # J = 5 // 2 = 2: distances 1 and 2
    assert peers("s00", m, odd) == peers("s00", m, t)


# --- hub and spoke ----------------------------------------------------------------------------------

HS = MeshTopology(Kind.HUB_AND_SPOKE, hubs=("hq", "dr"))


def test_hub_and_spoke_and_the_secondary_hub() -> None:
    m = members({"x": ["hq", "dr", "a", "b"]})
    assert peer_map(m, HS) == {"a": ("hq",), "b": ("hq",), "dr": ("hq",), "hq": ("a", "b", "dr")}
    assert route("a", "b", m, HS) == ("a", "hq", "b") and next_hop("a", "b", m, HS) == "hq"
    assert route("a", "dr", m, HS) == ("a", "hq", "dr")
    del m["hq"]                                              # the primary hub fails
    assert peer_map(m, HS) == {"a": ("dr",), "b": ("dr",), "dr": ("a", "b")}
    assert route("a", "b", m, HS) == ("a", "dr", "b")
    assert diff(("hq",), peers("a", m, HS)) == PeerDiff(add=("dr",), remove=("hq",))
    del m["dr"]                                              # no hub left: spokes are cut off
    assert peers("a", m, HS) == () and route("a", "b", m, HS) == () and next_hop("a", "b", m, HS) is None


def test_two_hubs_per_spoke_keep_the_secondary_up() -> None:
    t = MeshTopology(Kind.HUB_AND_SPOKE, hubs=("hq", "dr", "dr2"), spoke_hubs=2)
    m = members({"x": ["hq", "dr", "dr2", "a", "b"]})
    assert peers("a", m, t) == ("dr", "hq") and peers("dr2", m, t) == ("dr", "hq")
    assert route("a", "b", m, t) == ("a", "hq", "b")
    del m["hq"]
    assert peers("a", m, t) == ("dr", "dr2") and route("a", "b", m, t) == ("a", "dr", "b")


# --- hierarchical -----------------------------------------------------------------------------------

HIER = MeshTopology(Kind.HIERARCHICAL, region_hubs=(("eu", ("eu-h1", "eu-h2")), ("us", ("us-h1",))))


def regional() -> dict[str, Member]:
    return members({"eu": ["eu-h1", "eu-h2", "eu-1", "eu-2"], "us": ["us-h1", "us-1"]})


def test_hierarchical() -> None:
    m = regional()
    assert peer_map(m, HIER) == {
        "eu-1": ("eu-h1",), "eu-2": ("eu-h1",), "eu-h1": ("eu-1", "eu-2", "eu-h2", "us-h1"),
        "eu-h2": ("eu-h1", "us-h1"), "us-1": ("us-h1",), "us-h1": ("eu-h1", "eu-h2", "us-1")}
    assert route("eu-1", "eu-2", m, HIER) == ("eu-1", "eu-h1", "eu-2")
    assert route("eu-1", "us-1", m, HIER) == ("eu-1", "eu-h1", "us-h1", "us-1")
    assert route("us-1", "eu-h2", m, HIER) == ("us-1", "us-h1", "eu-h2")
    assert route_hop_bound(m, HIER) == 3


def test_a_regional_hub_failure_moves_its_spokes_to_the_secondary_then_abroad() -> None:
    m = regional()
    del m["eu-h1"]
    assert peers("eu-1", m, HIER) == ("eu-h2",) and peers("eu-h2", m, HIER) == ("eu-1", "eu-2", "us-h1")
    assert route("eu-1", "us-1", m, HIER) == ("eu-1", "eu-h2", "us-h1", "us-1")
    del m["eu-h2"]                                           # the region has no live hub: fall back abroad
    assert peers("eu-1", m, HIER) == ("us-h1",) and peers("us-h1", m, HIER) == ("eu-1", "eu-2", "us-1")
    m["eu-h2"] = Member("eu")                                # back home as soon as the region has a hub
    assert peers("eu-1", m, HIER) == ("eu-h2",)


def test_spokes_sharing_a_hub_meet_there() -> None:
    t = MeshTopology(Kind.HIERARCHICAL, region_hubs=(("r1", ("h1",)), ("r2", ("h2",))), spoke_hubs=2)
    m = {"h1": Member(), "h2": Member(), "f": Member("r0"), "s": Member("r2")}
    assert peers("f", m, t) == ("h1", "h2")                  # r0 has no hub: the first two abroad
    assert route("f", "s", m, t) == ("f", "h2", "s")         # not f → h1 → h2 → s


def test_spokes_without_a_served_region_use_every_hub_in_order() -> None:
    m = regional() | {"x-1": Member("mars"), "y-1": Member(None)}
    assert peers("x-1", m, HIER) == ("eu-h1",) and peers("y-1", m, HIER) == ("eu-h1",)
    two = MeshTopology(Kind.HIERARCHICAL, region_hubs=HIER.region_hubs, spoke_hubs=2)
    assert peers("x-1", m, two) == ("eu-h1", "eu-h2") and peers("us-1", m, two) == ("us-h1",)


def test_the_core_capped_in_a_hierarchy() -> None:
    hubs = tuple((f"r{i}", (f"h{i}",)) for i in range(8))
    t = MeshTopology(Kind.HIERARCHICAL, region_hubs=hubs, max_peers=2)     # a ring of 8 hubs
    m = {f"h{i}": Member() for i in range(8)} | {f"s{i}": Member(f"r{i}") for i in range(8)}
    assert peers("h0", m, t) == ("h1", "h7", "s0")           # 2 core peers, and its spoke
    assert route("s0", "s4", m, t) == ("s0", "h0", "h1", "h2", "h3", "h4", "s4")
    assert route_hop_bound(m, t) == 6                         # 2 + (8 // 2) // 1


# --- hybrid -----------------------------------------------------------------------------------------

HYB = MeshTopology(Kind.HYBRID, region_hubs=(("east", ("east-hub", "hq")), ("west", ("west-hub",))),
               critical=("hq", "dr"))


def test_hybrid() -> None:
    m = members({"east": ["hq", "east-hub", "e1"], "west": ["dr", "west-hub", "w1"]})
    assert peer_map(m, HYB) == {
        "dr": ("east-hub", "hq", "west-hub"), "e1": ("east-hub",), "east-hub": ("dr", "e1", "hq", "west-hub"),
        "hq": ("dr", "east-hub", "west-hub"), "w1": ("west-hub",), "west-hub": ("dr", "east-hub", "hq", "w1")}
    assert route("e1", "w1", m, HYB) == ("e1", "east-hub", "west-hub", "w1")
    assert route("dr", "e1", m, HYB) == ("dr", "east-hub", "e1")
    del m["east-hub"]                                        # the critical hq is east's secondary hub
    assert peers("e1", m, HYB) == ("hq",) and route("e1", "dr", m, HYB) == ("e1", "hq", "dr")


# --- diff -------------------------------------------------------------------------------------------

def test_diff() -> None:
    assert diff(("a", "b"), ("c", "b")) == PeerDiff(add=("c",), remove=("a",))
    assert not diff(("a", "b"), ["b", "a"]) and diff((), ("a",))
