"""The scenario format at scale: backends, site groups, regions, the hierarchical topology, regional
failures, and the pure mesh functions behind them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from emulation.scenario import ConfigError, Cut, Restore, Topology, from_dict, load, parse
from patronus.core.mesh import full_mesh_peers, hierarchical_peers, hub_and_spoke_peers, peer_pairs
from tests.emulation_unit.conftest import MINIMAL

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def errors_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        from_dict(doc)
    return exc.value.errors


def regional(**over: Any) -> dict[str, Any]:
    """Two regions, one hub each, spokes declared as groups."""
    doc: dict[str, Any] = {
        "version": 1, "name": "regional", "duration": "60s", "backends": ["sim"],
        "sites": {"eu-hub": {"region": "eu", "uplinks": {"core": {}}},
                  "us-hub": {"region": "us", "uplinks": {"core": {}}}},
        "site_groups": {"eu": {"count": 3, "region": "eu", "uplinks": {"isp1": {"delay": "10ms"}, "isp2": {}}},
                        "us": {"count": 2, "region": "us", "uplinks": {"isp1": {}}}},
        "core": {"topology": "hierarchical", "hubs": {"eu": ["eu-hub"], "us": ["us-hub"]}},
    }
    doc.update(over)
    return doc


# --- mesh -----------------------------------------------------------------------------------------

def test_mesh_functions() -> None:
    sites = ["h1", "h2", "a", "b", "c"]
    region = {"h1": "x", "a": "x", "b": "x", "h2": "y", "c": "y"}
    hubs = {"x": ["h1"], "y": ["h2"]}
    peers = {s: hierarchical_peers(s, sites, region, hubs) for s in sites}
    assert peers == {"h1": ("h2", "a", "b"), "h2": ("h1", "c"), "a": ("h1",), "b": ("h1",), "c": ("h2",)}
    assert peer_pairs(sites, peers) == [("h1", "h2"), ("h1", "a"), ("h1", "b"), ("h2", "c")]
    assert full_mesh_peers("a", sites) == ("h1", "h2", "b", "c")
    assert hub_and_spoke_peers("a", sites, "h1") == ("h1",)
    assert hub_and_spoke_peers("h1", sites, "h1") == ("h2", "a", "b", "c")
    with pytest.raises(ValueError, match="a peers with b"):
        peer_pairs(sites, {"a": ["b"], "b": []})


# --- site groups, regions, hierarchical -------------------------------------------------------------

def test_site_groups_expand_into_ordinary_sites() -> None:
    sc = from_dict(regional())
    assert [s.name for s in sc.sites] == ["eu-hub", "us-hub", "eu-1", "eu-2", "eu-3", "us-1", "us-2"]
    eu2 = sc.site("eu-2")
    assert eu2.region == "eu" and eu2.id == 4 and eu2.lan_prefix == "10.4.0.0/24"
    assert [u.name for u in eu2.uplinks] == ["isp1", "isp2"] and eu2.uplink("isp1").delay_s == 0.01
    assert sc.core.topology is Topology.HIERARCHICAL
    assert sc.remotes_of("eu-1") == ("eu-hub",)
    assert sc.remotes_of("eu-hub") == ("us-hub", "eu-1", "eu-2", "eu-3")
    assert sc.remotes_of("us-hub") == ("eu-hub", "us-1", "us-2")
    again = parse(sc.to_yaml())          # the normalized copy lists every site, and reads back equal
    assert again == sc and "site_groups" not in sc.to_dict() and sc.to_dict()["backends"] == ["sim"]


def test_big_groups_get_prefixes_past_id_255() -> None:
    doc = regional()
    doc["site_groups"]["us"]["count"] = 300
    sc = from_dict(doc)
    last = sc.site("us-300")
    assert last.id == 305 and last.lan_prefix == "172.17.49.0/24"
    assert len({s.lan_prefix for s in sc.sites}) == len(sc.sites)


def test_site_limit_depends_on_backends() -> None:
    doc = regional()
    doc["site_groups"]["us"]["count"] = 100
    del doc["backends"]
    assert ("sites", "at most 64 sites (2000 with backends: [sim]), got 105") in errors_of(doc)
    doc["backends"] = ["sim"]
    assert len(from_dict(doc).sites) == 105
    doc["site_groups"]["us"]["count"] = 2000
    assert ("sites", "at most 2000 sites, got 2005") in errors_of(doc)


def test_backends_field_and_refusal() -> None:
    assert from_dict(copy.deepcopy(MINIMAL)).refusal("mininet") is None
    sc = from_dict(regional())
    assert sc.backends == ("sim",) and sc.refusal("sim") is None
    assert "runs only on sim" in (sc.refusal("mininet") or "")
    errs = errors_of(regional(backends=["sim", "ns3", "sim"]))
    assert [p for p, _ in errs] == ["backends[1]", "backends[2]"]
    assert errors_of(regional(backends="sim"))[0][0] == "backends"


@pytest.mark.parametrize(("change", "path", "fragment"), [
    (lambda d: d["site_groups"]["eu"].update(count=0), "site_groups.eu.count", "a number of sites 1-2000"),
    (lambda d: d["site_groups"]["eu"].update(colour="red"), "site_groups.eu.colour", "unknown setting"),
    (lambda d: d["site_groups"]["eu"].update(region="EU"), "site_groups.eu.region", "region names"),
    (lambda d: d["site_groups"]["eu"]["uplinks"]["isp1"].update(delay="fast"), "site_groups.eu.uplinks.isp1.delay",
     "duration"),
    (lambda d: d["site_groups"]["eu"].pop("uplinks"), "site_groups.eu.uplinks", "required"),
    (lambda d: d["sites"].update({"eu-1": {"uplinks": {"a": {}}, "region": "eu"}}), "site_groups.eu.count",
     "generates site 'eu-1', which sites already declares"),
    (lambda d: d["sites"]["eu-hub"].update(region=5), "sites.eu-hub.region", "region names"),
    (lambda d: d["core"]["hubs"].pop("us"), "core.hubs", "region us (sites us-hub, us-1, us-2) has no hubs"),
    (lambda d: d["core"]["hubs"].update(eu=["us-hub"]), "core.hubs.eu[0]", "us-hub is in region us, not eu"),
    (lambda d: d["core"]["hubs"].update(eu=["nowhere"]), "core.hubs.eu[0]", "unknown site"),
    (lambda d: d["core"]["hubs"].update(eu=[]), "core.hubs.eu", "expected a list of hub sites"),
    (lambda d: d["core"].pop("hubs"), "core.hubs", "required with topology hierarchical"),
    (lambda d: d["sites"]["eu-hub"].pop("region"), "sites", "every site needs a region; these have none: eu-hub"),
    (lambda d: d["core"].update(topology="full-mesh"), "core.hubs", "only with topology hierarchical"),
    (lambda d: d.pop("sites") and d.pop("site_groups"), "sites", "required (or site_groups)"),
])
def test_each_scale_rule(change: Any, path: str, fragment: str) -> None:
    doc = regional()
    change(doc)
    errs = errors_of(doc)
    assert any(p == path and fragment in r for p, r in errs), errs


# --- regional failures ----------------------------------------------------------------------------

def test_region_cut_expands_into_cuts_of_every_link_of_the_region() -> None:
    doc = regional(timeline=[{"at": "10s", "action": "region_cut", "region": "eu", "uplink": "isp1"},
                             {"at": "20s", "action": "region_cut", "region": "us"},
                             {"at": "30s", "action": "region_restore", "region": "us", "note": "back"}],
                   expectations=[{"detect_time": {"link": "eu-2.isp1", "max": "5s"}},
                                 {"detect_time": {"link": "us-hub.core", "max": "5s"}}])
    sc = from_dict(doc)
    cuts = [(e.at_s, str(e.link)) for e in sc.timeline if isinstance(e, Cut)]
    assert cuts == [(10.0, "eu-1.isp1"), (10.0, "eu-2.isp1"), (10.0, "eu-3.isp1"),
                    (20.0, "us-hub.core"), (20.0, "us-1.isp1"), (20.0, "us-2.isp1")]
    restores = [e for e in sc.timeline if isinstance(e, Restore)]
    assert len(restores) == 3 and {e.note for e in restores} == {"back"}
    assert sc.timeline[0].note == "region cut eu (isp1)"
    assert len(sc.expectations) == 2
    assert parse(sc.to_yaml()) == sc


@pytest.mark.parametrize(("event", "path", "fragment"), [
    ({"at": "10s", "action": "region_cut", "region": "mars"}, "timeline[0].region", "no site is in region 'mars'"),
    ({"at": "10s", "action": "region_cut", "region": "eu", "uplink": "lte"}, "timeline[0].uplink",
     "no site of region eu has an uplink 'lte'"),
    ({"at": "10s", "action": "region_cut"}, "timeline[0].region", "required"),
    ({"at": "90s", "action": "region_restore", "region": "eu"}, "timeline[0].at", "after the end"),
    ({"at": "10s", "action": "region_cut", "region": "eu", "link": "eu-1.isp1"}, "timeline[0].link",
     "unknown setting"),
    ({"at": "10s", "action": "region_cutt", "region": "eu"}, "timeline[0].action", "did you mean 'region_cut'"),
])
def test_region_event_rules(event: dict[str, Any], path: str, fragment: str) -> None:
    errs = errors_of(regional(timeline=[event]))
    assert any(p == path and fragment in r for p, r in errs), errs


def test_detect_time_needs_a_region_cut_or_a_cut() -> None:
    doc = regional(timeline=[{"at": "10s", "action": "region_restore", "region": "eu"}],
                   expectations=[{"detect_time": {"link": "eu-2.isp1", "max": "5s"}}])
    assert any(p == "expectations[0].detect_time.link" for p, _ in errors_of(doc))


def test_scale_1000_is_shipped_and_sim_only() -> None:
    sc = load(ROOT / "scenarios" / "scale-1000.yaml")
    assert len(sc.sites) == 1000 and sc.backends == ("sim",) and sc.core.topology is Topology.HIERARCHICAL
    assert len({s.region for s in sc.sites}) == 10
    assert sc.remotes_of("eu-1") == ("eu-hub-1", "eu-hub-2")
    assert len(sc.remotes_of("eu-hub-1")) == 19 + 98
    assert sc.refusal("mininet") is not None
