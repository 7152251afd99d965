"""The scenario format's mesh: the `mesh:` section, site_join / site_leave, join_time / converged, and the
membership rules (emulation/scenario/meshspec.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from emulation.scenario import (
    ConfigError,
    Converged,
    JoinTime,
    MembershipStep,
    SiteJoin,
    SiteLeave,
    from_dict,
    schedule,
)
from patronus.core.mesh import Kind

pytestmark = pytest.mark.unit

UPLINKS = {"isp1": {"delay": "10ms"}, "isp2": {"delay": "30ms"}}


def mesh_doc(n: int = 4) -> dict[str, Any]:
    return {
        "version": 1, "name": "mesh", "duration": "60s", "backends": ["sim"],
        "sites": {f"s{i}": {"uplinks": copy.deepcopy(UPLINKS)} for i in range(1, n + 1)},
        "mesh": {"topology": {"kind": "full-mesh"}, "seeds": ["s1"]},
        "timeline": [{"at": "20s", "action": "site_join", "site": f"s{n}"},
                     {"at": "40s", "action": "site_leave", "site": "s2"}],
        "expectations": [{"join_time": {"site": f"s{n}", "max": "2s"}}, {"converged": {"max": "5s"}}],
    }


def errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        from_dict(doc)
    return dict(exc.value.errors)


def test_a_mesh_scenario_reads_round_trips_and_schedules_its_membership() -> None:
    sc = from_dict(mesh_doc())
    assert sc.mesh is not None and sc.mesh.topology.kind is Kind.FULL_MESH and sc.mesh.seeds == ("s1",)
    assert sc.mesh.timers.probe_interval_s == 1.0 and sc.mesh.timers.probe_timeout_s == 0.5
    assert sc.remotes_of("s1") == ()                         # discovered, not written
    assert [sc.present_at_start(s.name) for s in sc.sites] == [True, True, True, False]
    assert sc.membership() == [(0.0, frozenset({"s1", "s2", "s3"})), (20.0, frozenset({"s1", "s2", "s3", "s4"})),
                               (40.0, frozenset({"s1", "s3", "s4"}))]
    assert [type(e) for e in sc.timeline] == [SiteJoin, SiteLeave]
    assert sc.expectations == (JoinTime(site="s4", max_s=2.0), Converged(max_s=5.0))
    assert [s for s in schedule(sc) if isinstance(s, MembershipStep)] == [
        MembershipStep(20.0, 0, "s4", True), MembershipStep(40.0, 1, "s2", False)]
    again = from_dict(sc.to_dict())
    assert again == sc
    assert sc.refusal("sim") is None
    doc = mesh_doc()
    del doc["backends"]
    assert from_dict(doc).refusal("mininet") is None          # real agents discover too


def test_an_expectation_may_judge_some_backends_only() -> None:
    from emulation.siteconf import expectations_doc

    doc = mesh_doc()
    doc["backends"] = ["mininet", "sim"]
    doc["expectations"] = [{"join_time": {"site": "s4", "max": "2s", "backends": ["sim"]}},
                           {"join_time": {"site": "s4", "max": "5s", "backends": ["mininet"]}},
                           {"converged": {"max": "5s"}}]
    sc = from_dict(doc)
    assert sc.expectations == (JoinTime(site="s4", max_s=2.0, backends=("sim",)),
                               JoinTime(site="s4", max_s=5.0, backends=("mininet",)), Converged(max_s=5.0))
    assert from_dict(sc.to_dict()) == sc
    assert [(e["type"], e["max"]) for e in expectations_doc(sc, "sim")] == [("join_time", 2.0), ("converged", 5.0)]
    assert [(e["type"], e["max"]) for e in expectations_doc(sc, "mininet")] == [("join_time", 5.0),
                                                                                 ("converged", 5.0)]
    assert len(expectations_doc(sc)) == 3
    for bad, why in ((["netem"], "expectations[0].join_time.backends[0]"), ([], "expectations[0].join_time.backends"),
                     ("sim", "expectations[0].join_time.backends"),
                     (["sim", "sim"], "expectations[0].join_time.backends[1]")):
        doc["expectations"][0]["join_time"]["backends"] = bad
        assert why in errors(doc), (bad, errors(doc))
    doc["backends"] = ["sim"]                                  # a backend the scenario does not run on
    doc["expectations"][0]["join_time"]["backends"] = ["mininet"]
    assert "expectations[0].join_time.backends[0]" in errors(doc)


def test_timers_and_a_hierarchical_topology_are_read_and_checked() -> None:
    doc = mesh_doc()
    doc["sites"]["s1"]["region"] = doc["sites"]["s2"]["region"] = "eu"
    doc["mesh"] = {"topology": {"kind": "hierarchical", "hubs": {"eu": ["s1", "s2"]}}, "seeds": ["s1", "s2"],
                   "timers": {"probe_interval": "200ms", "probe_timeout": "100ms", "suspicion_mult": 3}}
    sc = from_dict(doc)
    assert sc.mesh is not None and sc.mesh.topology.region_hubs == (("eu", ("s1", "s2")),)
    assert (sc.mesh.timers.probe_interval_s, sc.mesh.timers.probe_timeout_s, sc.mesh.timers.suspicion_mult) == \
        (0.2, 0.1, 3.0)
    assert from_dict(sc.to_dict()) == sc


@pytest.mark.parametrize(("change", "where", "says"), [
    (lambda d: d["mesh"].update(seeds=["nowhere"]), "mesh.seeds[0]", "not a site"),
    (lambda d: d["mesh"].update(seeds=["s4"]), "mesh.seeds[0]", "joins only at 20s"),
    (lambda d: d["mesh"].update(seeds=[]), "mesh.seeds", "at least one"),
    (lambda d: d["mesh"].update(topology={"kind": "hub-and-spoke", "hubs": ["hq"]}), "mesh.topology.hubs",
     "hq is not a site"),
    (lambda d: d["mesh"].update(topology={"kind": "star"}), "mesh.topology.kind", "star"),
    (lambda d: d["mesh"].update(timers={"probe_timeout": "2s"}), "mesh.timers.probe_timeout", "shorter"),
    (lambda d: d["mesh"].update(timers={"suspicion_mult": 0}), "mesh.timers.suspicion_mult", "0"),
    (lambda d: d["mesh"].update(extra=1), "mesh.extra", ""),
    (lambda d: d.update(core={"topology": "hub-and-spoke", "hub": "s1"}), "core.topology", "underlay"),
    (lambda d: d["timeline"].append({"at": "30s", "action": "site_join", "site": "s4"}), "timeline[2].site",
     "already in the mesh at 30s"),
    (lambda d: d["timeline"].append({"at": "50s", "action": "site_leave", "site": "s2"}), "timeline[2].site",
     "not in the mesh at 50s"),
    (lambda d: d["timeline"].append({"at": "10s", "action": "agent_stop", "site": "s4"}), "timeline[2].site",
     "its agent is not there"),
    (lambda d: d["timeline"].append({"at": "10s", "action": "site_join", "site": "mars"}), "timeline[2].site",
     "mars"),
    (lambda d: d["expectations"].append({"join_time": {"site": "mars", "max": "1s"}}), "expectations[2].join_time.site",
     "mars"),
    (lambda d: d["expectations"].append({"converged": {"max": "-1s"}}), "expectations[2].converged.max", ""),
])
def test_a_bad_mesh_scenario_names_the_field_and_the_reason(change: Any, where: str, says: str) -> None:
    doc = mesh_doc()
    change(doc)
    errs = errors(doc)
    assert where in errs, errs
    assert says in errs[where]


def test_membership_actions_and_expectations_need_a_mesh_section() -> None:
    doc = mesh_doc()
    del doc["mesh"]
    errs = errors(doc)
    assert "needs a mesh: section" in errs["timeline[0].action"]
    assert "needs a mesh: section" in errs["timeline[1].action"]
    assert "needs a mesh: section" in errs["expectations[0].join_time"]
    assert "needs a mesh: section" in errs["expectations[1].converged"]


def test_a_mesh_section_with_errors_of_its_own_still_has_its_timeline_checked() -> None:
    doc = mesh_doc()
    doc["mesh"]["seeds"] = ["s1", "s12"]
    doc["timeline"].append({"at": "10s", "action": "agent_stop", "site": "s4"})
    errs = errors(doc)
    assert "not a site" in errs["mesh.seeds[1]"]
    assert "its agent is not there" in errs["timeline[2].site"]
    assert "timeline[0].action" not in errs          # the section is there: no "needs a mesh: section"
