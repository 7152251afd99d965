"""Join and convergence times of a mesh (emulation/measure/meshtimes.py): run.json's `mesh` section, the
replay of the agents' path events, the join_time / converged expectations and the report's Mesh table."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from emulation.measure.analysis import analyse
from emulation.measure.errors import RawDataError
from emulation.measure.load import load_run
from emulation.measure.meshtimes import convergence, expected, join_times
from emulation.measure.rundata import MeshRun, RunData
from emulation.measure.synthetic import write_raw_dir
from emulation.report.documents import render_html, render_markdown
from emulation.report.tables import expectation_value
from emulation.scenario import from_dict
from emulation.siteconf import expectations_doc, mesh_doc
from patronus.core.mesh import Member, peers
from tests.emulation_unit.test_scenario_mesh import mesh_doc as scenario_doc

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
UPLINKS = {"s1": ["isp1", "isp2"], "s2": ["isp1"], "s3": ["isp1"], "s4": ["isp1"]}
FULL = {"kind": "full-mesh"}


def mesh_section(changes: list[tuple[float, list[str], str]], topology: dict[str, Any] | None = None,
                 sites: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"topology": topology or FULL,
            "sites": sites or {s: {"uplinks": u, "region": None} for s, u in UPLINKS.items()},
            "changes": [{"at": at, "live": live, "cause": cause} for at, live, cause in changes]}


def run_doc(mesh: dict[str, Any] | None, expectations: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    doc: dict[str, Any] = {
        "scenario": "mesh", "backend": "sim", "impairment_backend": "model", "seed": 1, "started_at": T0 - 5,
        "t0": T0, "duration_s": 60.0, "flows": [], "links": [], "sla_targets": {},
        "expectations": list(expectations)}
    if mesh is not None:
        doc["mesh"] = mesh
    return doc


def ev(t: float, site: str, kind: str, path: str | None = None, new: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"at": T0 + t, "site": site, "kind": kind}
    if path is not None:
        e["path_id"] = path
        e["remote"] = path.split(":")[0]
    if kind == "PathStatusChanged":
        e.update(old="down", new=new)
    return e


def paths_of(site: str, remote: str) -> list[str]:
    return [f"{remote}:{lu}-{ru}" for lu in UPLINKS[site] for ru in UPLINKS[remote]]


def come_up(t_add: float, t_up: float, site: str, *remotes: str) -> list[dict[str, Any]]:
    """The site adds its paths to `remotes` at t_add and sees them up at t_up."""
    out = []
    for r in remotes:
        for p in paths_of(site, r):
            out += [ev(t_add, site, "PathAdded", p), ev(t_up, site, "PathStatusChanged", p, "up")]
    return out


def remove(t: float, site: str, remote: str) -> list[dict[str, Any]]:
    return [ev(t, site, "PathRemoved", p) for p in paths_of(site, remote)]


def formed(t: float = -1.0, sites: tuple[str, ...] = ("s1", "s2", "s3")) -> list[dict[str, Any]]:
    """Every one of `sites` starts and has every path to the others up at `t`."""
    out = [ev(-2.0, s, "AgentStarted") for s in sites]
    for s in sites:
        out += come_up(-1.5, t, s, *(r for r in sites if r != s))
    return out


def load(tmp: Path, mesh: dict[str, Any] | None, events: list[dict[str, Any]],
         expectations: list[dict[str, Any]] = ()) -> RunData:  # type: ignore[assignment]
    return load_run(write_raw_dir(tmp / "run", run_doc(mesh, expectations), events=events))


START = (-2.0, ["s1", "s2", "s3"], "start")
JOIN4 = (10.0, ["s1", "s2", "s3", "s4"], "site_join s4")
LEAVE2 = (20.0, ["s1", "s3", "s4"], "site_leave s2")


def times(run: RunData) -> list[float | None]:
    return [None if c.time_s is None else round(c.time_s, 6) for c in convergence(run)]


# --- what a site should have --------------------------------------------------------------------------

def test_expected_is_every_uplink_pair_to_every_peer_among_the_live_sites(tmp_path: Path) -> None:
    mesh = load(tmp_path, mesh_section([START]), []).run.mesh
    assert mesh is not None
    assert expected(mesh, "s1", ["s1", "s2", "s3"]) == {"s2:isp1-isp1", "s2:isp2-isp1", "s3:isp1-isp1", "s3:isp2-isp1"}
    assert expected(mesh, "s2", ["s1", "s2", "s3"]) == {"s1:isp1-isp1", "s1:isp1-isp2", "s3:isp1-isp1"}
    assert expected(mesh, "s4", ["s1", "s2", "s3"]) == set()          # not live
    assert expected(mesh, "s2", ["s2"]) == set()                       # alone


def _hier() -> dict[str, Any]:
    sites = {"h1": {"uplinks": ["isp1"], "region": "eu"}, "h2": {"uplinks": ["isp1"], "region": "eu"},
             "e1": {"uplinks": ["isp1", "isp2"], "region": "eu"}, "e2": {"uplinks": ["isp1"], "region": "eu"}}
    return mesh_section([(0.0, ["e1", "e2", "h1", "h2"], "start"), (10.0, ["e1", "e2", "h2"], "site_leave h1")],
                        topology={"kind": "hierarchical", "hubs": {"eu": ["h1", "h2"]}}, sites=sites)


def test_a_hierarchical_mesh_expects_the_spokes_on_their_first_live_hub_and_rehomes_them(tmp_path: Path) -> None:
    events = [ev(0.0, s, "AgentStarted") for s in ("h1", "h2", "e1", "e2")]
    hier = {("h1", "h2"), ("h2", "h1"), ("e1", "h1"), ("h1", "e1"), ("e2", "h1"), ("h1", "e2")}
    for a, b in sorted(hier):
        ups = {"h1": ["isp1"], "h2": ["isp1"], "e1": ["isp1", "isp2"], "e2": ["isp1"]}
        for p in (f"{b}:{lu}-{ru}" for lu in ups[a] for ru in ups[b]):
            events += [ev(0.5, a, "PathAdded", p), ev(2.0 if a != "e2" else 3.0, a, "PathStatusChanged", p, "up")]
    # h1 leaves at 10: the spokes re-home to h2 by 14, h2 drops h1 and takes the spokes
    for spoke, ups in (("e1", ["isp1", "isp2"]), ("e2", ["isp1"])):
        events += [ev(11.0, spoke, "PathRemoved", f"h1:{u}-isp1") for u in ups]
        events += [ev(11.0, spoke, "PathAdded", f"h2:{u}-isp1") for u in ups]
        events += [ev(14.0, spoke, "PathStatusChanged", f"h2:{u}-isp1", "up") for u in ups]
        events += [ev(11.0, "h2", "PathAdded", f"{spoke}:isp1-{u}") for u in ups]
        events += [ev(13.0, "h2", "PathStatusChanged", f"{spoke}:isp1-{u}", "up") for u in ups]
    events.append(ev(12.0, "h2", "PathRemoved", "h1:isp1-isp1"))
    run = load(tmp_path, _hier(), events)
    assert run.run.mesh is not None
    mesh = run.run.mesh
    assert expected(mesh, "e1", ["e1", "e2", "h1", "h2"]) == {"h1:isp1-isp1", "h1:isp2-isp1"}
    assert expected(mesh, "h2", ["e1", "e2", "h1", "h2"]) == {"h1:isp1-isp1"}
    assert expected(mesh, "h2", ["e1", "e2", "h2"]) == {"e1:isp1-isp1", "e1:isp1-isp2", "e2:isp1-isp1"}
    members = {s: Member("eu") for s in ("e1", "e2", "h2")}
    assert expected(mesh, "e2", members) == {f"{p}:isp1-isp1" for p in peers("e2", members, mesh.topology)}
    assert times(run) == [3.0, 4.0]                        # e2's paths up at 3; the spokes on h2 at 14
    assert [j.time_s for j in join_times(run, "e1")] == [2.0]
    assert [j.time_s for j in join_times(run, "e2")] == [3.0]


# --- convergence and joins --------------------------------------------------------------------------

def test_formation_a_join_and_a_leave(tmp_path: Path) -> None:
    events = formed()
    events += [ev(10.0, "s4", "AgentStarted"), *come_up(10.5, 11.0, "s4", "s1", "s2", "s3")]
    for s in ("s1", "s2", "s3"):
        events += come_up(10.5, 11.5, s, "s4")
    events += remove(21.0, "s1", "s2") + remove(22.0, "s3", "s2") + remove(21.5, "s4", "s2")
    run = load(tmp_path, mesh_section([START, JOIN4, LEAVE2]), events)
    assert times(run) == [1.0, 1.5, 2.0]
    c = convergence(run)
    assert [x.cause for x in c] == ["start", "site_join s4", "site_leave s2"]
    assert [x.until for x in c] == [10.0, 20.0, None] and c[2].live == {"s1", "s3", "s4"}
    (j,) = join_times(run, "s4")
    assert (j.at, j.cause, j.time_s) == (10.0, "site_join s4", pytest.approx(1.0))
    (j1,) = join_times(run, "s1")                           # there from the start: from the agents' spawn
    assert (j1.at, j1.index, j1.time_s) == (-2.0, 0, pytest.approx(1.0))


def test_a_path_that_never_comes_up_leaves_the_change_unconverged(tmp_path: Path) -> None:
    events = formed()
    events += [ev(10.0, "s4", "AgentStarted"), *come_up(10.5, 11.0, "s4", "s1", "s2", "s3")]
    events += come_up(10.5, 11.5, "s1", "s4") + come_up(10.5, 11.5, "s2", "s4")
    events += [ev(10.5, "s3", "PathAdded", "s4:isp1-isp1")]           # never up
    run = load(tmp_path, mesh_section([START, JOIN4]), events)
    (_, join) = convergence(run)
    assert (join.time_s, join.pending) == (None, ("s3",))
    assert [j.time_s for j in join_times(run, "s4")] == [pytest.approx(1.0)]   # s4's own paths are fine


def test_a_leaving_site_must_be_dropped_by_the_others_and_its_own_paths_do_not_count(tmp_path: Path) -> None:
    events = formed() + remove(21.0, "s1", "s2")                      # s3 keeps its path to s2
    run = load(tmp_path, mesh_section([START, (20.0, ["s1", "s3"], "site_leave s2")]), events)
    assert times(run) == [1.0, None] and convergence(run)[1].pending == ("s3",)
    run2 = load(tmp_path / "b", mesh_section([START, (20.0, ["s1", "s3"], "site_leave s2")]),
                events + remove(23.0, "s3", "s2"))
    assert times(run2) == [1.0, 3.0]


def test_an_agent_restart_clears_its_paths_and_the_stop_drops_it_at_the_others(tmp_path: Path) -> None:
    changes = [START, (30.0, ["s1", "s2"], "agent_stop s3"), (40.0, ["s1", "s2", "s3"], "agent_start s3")]
    events = formed() + remove(31.0, "s1", "s3") + remove(32.0, "s2", "s3")
    events += [ev(40.5, "s3", "AgentStarted")]                       # every path of s3 gone...
    events += come_up(41.0, 43.0, "s3", "s1", "s2")                  # ... and built again
    events += come_up(41.0, 42.0, "s1", "s3") + come_up(41.0, 42.0, "s2", "s3")
    run = load(tmp_path, mesh_section(changes), events)
    assert times(run) == [1.0, 2.0, 3.0]
    assert [(j.cause, j.time_s) for j in join_times(run, "s3")] == [("start", 1.0), ("agent_start s3", 3.0)]
    # without the rebuild the restarted agent has nothing: not converged, not joined
    cut = [e for e in events if not (e["site"] == "s3" and e["at"] > T0 + 40.6)]
    run2 = load(tmp_path / "b", mesh_section(changes), cut)
    assert times(run2)[2] is None and convergence(run2)[2].pending == ("s3",)
    assert join_times(run2, "s3")[1].time_s is None


def test_a_change_before_the_previous_converged_cuts_it_short(tmp_path: Path) -> None:
    changes = [START, JOIN4, (10.5, ["s1", "s2", "s3"], "site_leave s4")]
    events = [*formed(), ev(10.0, "s4", "AgentStarted"), *come_up(10.2, 12.0, "s1", "s4")]
    events += remove(12.5, "s1", "s4")
    run = load(tmp_path, mesh_section(changes), events)
    assert times(run) == [1.0, None, 2.0]
    assert convergence(run)[1].pending == ("s1", "s2", "s3", "s4") and convergence(run)[1].until == 10.5
    assert [j.time_s for j in join_times(run, "s4")] == [None]


def test_a_degraded_path_is_not_up(tmp_path: Path) -> None:
    events = formed()
    events += [ev(5.0, "s2", "PathStatusChanged", "s3:isp1-isp1", "degraded")]
    run = load(tmp_path, mesh_section([START, (4.0, ["s1", "s2", "s3"], "agent_start s1")]), events)
    assert times(run) == [1.0, 0.0]          # converged at the change already; degrading later does not undo it
    run2 = load(tmp_path / "b", mesh_section([START]),
                [e for e in events if not (e["kind"] == "PathStatusChanged" and e["new"] == "up" and
                                           e["site"] == "s1" and e["path_id"] == "s3:isp1-isp1")] +
                [ev(0.0, "s1", "PathStatusChanged", "s3:isp1-isp1", "degraded"),
                 ev(3.0, "s1", "PathStatusChanged", "s3:isp1-isp1", "up")])
    assert times(run2) == [5.0]               # s1's path degraded at 0 does not count (2.0); up at 3 does


def test_simultaneous_changes_are_measured_together_and_a_lone_site_converges_at_once(tmp_path: Path) -> None:
    changes = [(-2.0, ["s2"], "start"), (5.0, ["s1", "s2"], "site_join s1"), (5.0, ["s1", "s2", "s3"], "site_join s3")]
    events = [ev(-2.0, "s2", "AgentStarted"), ev(5.0, "s1", "AgentStarted"), ev(5.0, "s3", "AgentStarted")]
    for s in ("s1", "s2", "s3"):
        events += come_up(5.5, 7.0, s, *(r for r in ("s1", "s2", "s3") if r != s))
    run = load(tmp_path, mesh_section(changes), events)
    assert times(run) == [0.0, 2.0, 2.0]
    assert [(j.site, j.index, j.time_s) for j in join_times(run, "s1") + join_times(run, "s3")] == \
        [("s1", 1, 2.0), ("s3", 2, 2.0)]


def _naive(mesh: MeshRun, events: list[dict[str, Any]]) -> list[float | None]:
    """The definition, from scratch: for each change, the state after every event at or before T, for T its
    `at` and then each later event time before the next change."""
    evs = sorted(events, key=lambda e: e["at"])
    out: list[float | None] = []
    for k, c in enumerate(mesh.changes):
        until = mesh.changes[k + 1].at if k + 1 < len(mesh.changes) else None
        later = {e["at"] - T0 for e in evs if c.at < e["at"] - T0 and (until is None or e["at"] - T0 < until)}
        moments = [c.at, *sorted(later)]
        found: float | None = None
        for when in moments:
            state: dict[str, dict[str, str]] = {s: {} for s in mesh.sites}
            steps = [(e["at"] - T0, 1, e) for e in evs] + [
                (d.at, 0, {"site": s, "kind": "AgentStarted"}) for j, d in enumerate(mesh.changes)
                for s in d.live - (mesh.changes[j - 1].live if j else frozenset())]    # entering: no path
            for _, _, e in sorted((x for x in steps if x[0] <= when), key=lambda x: (x[0], x[1])):
                have = state[e["site"]]
                if e["kind"] == "AgentStarted":
                    have.clear()
                elif e["kind"] == "PathAdded":
                    have[e["path_id"]] = "down"
                elif e["kind"] == "PathRemoved":
                    have.pop(e["path_id"], None)
                elif e["path_id"] in have:
                    have[e["path_id"]] = e["new"]
            if all(set(state[s]) == expected(mesh, s, c.live) and all(v == "up" for v in state[s].values())
                   for s in c.live):
                found = round(when - c.at, 6)
                break
        out.append(found)
    return out


def _random_events(rng: random.Random, mesh: MeshRun) -> list[dict[str, Any]]:
    """After each change, each live site builds the paths it should have and drops the others, at random
    delays (some late, beyond the next change), with noise: paths that degrade, go down, never come up,
    agents that restart."""
    have: dict[str, set[str]] = {s: set() for s in mesh.sites}
    out: list[dict[str, Any]] = []
    for k, c in enumerate(mesh.changes):
        before = mesh.changes[k - 1].live if k else frozenset()
        for s in sorted(c.live):
            t = c.at
            if s not in before:
                have[s] = set()
                out.append(ev(t + round(rng.uniform(0, 0.5), 1), s, "AgentStarted"))
            want = expected(mesh, s, c.live)
            for p in sorted(have[s] - want):
                out.append(ev(t + round(rng.uniform(0.5, 5), 1), s, "PathRemoved", p))
            for p in sorted(want - have[s]):
                added = t + round(rng.uniform(0.5, 4), 1)
                out.append(ev(added, s, "PathAdded", p))
                if rng.random() > 0.03:
                    out.append(ev(added + round(rng.uniform(0, 4), 1), s, "PathStatusChanged", p, "up"))
            have[s] = want
            for p in sorted(want):
                if rng.random() < 0.05:
                    bad = t + round(rng.uniform(0, 9), 1)
                    out.append(ev(bad, s, "PathStatusChanged", p, rng.choice(["degraded", "down"])))
                    out.append(ev(bad + round(rng.uniform(0, 3), 1), s, "PathStatusChanged", p, "up"))
    return out


def test_the_incremental_replay_agrees_with_the_definition_on_random_runs(tmp_path: Path) -> None:
    changes = [START, JOIN4, LEAVE2, (30.0, ["s1", "s3"], "agent_stop s4"),
               (40.0, ["s1", "s3", "s4"], "agent_start s4"), (40.0, ["s1", "s2", "s3", "s4"], "site_join s2")]
    seen: set[bool] = set()
    for seed in range(12):
        mesh = load(tmp_path / f"m{seed}", mesh_section(changes), []).run.mesh
        assert mesh is not None
        events = _random_events(random.Random(seed), mesh)
        run = load(tmp_path / str(seed), mesh_section(changes), events)
        got = times(run)
        want = _naive(mesh, events)
        want[4] = want[5]           # simultaneous changes: measured together, after the last of them
        assert got == want, seed
        seen.update(t is None for t in got)
    assert seen == {True, False}    # both outcomes were compared


# --- run.json's mesh section -------------------------------------------------------------------------

def _problems(tmp: Path, mesh: Any) -> dict[str, str]:
    with pytest.raises(RawDataError) as exc:
        load(tmp, mesh, [])
    out = {}
    for where, reason in exc.value.errors:
        assert where == "raw/run.json"
        path, _, why = reason.partition(": ")
        out[path] = why
    return out


def test_a_bad_mesh_section_names_every_problem_by_its_path(tmp_path: Path) -> None:
    m = mesh_section([START, JOIN4, (5.0, ["s1", "s3", "s4"], "site_leave s2"), (30.0, ["s1", "s9"], "agent_stop s3")],
                     topology={"kind": "hub-and-spoke", "hubs": ["hq"]})
    m["sites"]["s2"] = {"uplinks": "isp1"}
    m["sites"]["s3"]["region"] = "Europe"
    m["changes"].append({"at": 40.0, "live": [], "cause": "reboot s1"})
    m["changes"].append({"at": 50.0, "live": ["s1"]})
    m["extra"] = 1
    got = _problems(tmp_path, m)
    assert set(got) == {"mesh.extra", "mesh.topology", "mesh.sites.s2.uplinks", "mesh.sites.s3.region",
                        "mesh.changes[2].at", "mesh.changes[3].live", "mesh.changes[4].cause",
                        "mesh.changes[5].cause"}
    assert "hq is not a site" in got["mesh.topology"] and "s9" in got["mesh.changes[3].live"]
    assert got["mesh.changes[5].cause"] == "missing"
    assert "site_join, site_leave, agent_stop, agent_start" in got["mesh.changes[4].cause"]
    first = _problems(tmp_path / "b", mesh_section([JOIN4]))
    assert first == {"mesh.changes[0].cause": "expected start, got 'site_join s4'"}
    wrong = _problems(tmp_path / "c", mesh_section([START, (10.0, ["s1", "s2", "s3"], "site_join s4")]))
    assert "site_join s4 does not turn" in wrong["mesh.changes[1].live"]
    assert set(_problems(tmp_path / "d", {"topology": {"kind": "ring"}, "sites": {}, "changes": []})) == \
        {"mesh.topology.kind", "mesh.changes"}


# --- expectations and the report ---------------------------------------------------------------------

EXPECT = [{"type": "join_time", "site": "s4", "max": 1.5, "text": "s4 joins within 1.5 s"},
          {"type": "join_time", "site": "s4", "max": 0.5, "text": "s4 joins within 500 ms"},
          {"type": "converged", "max": 2.0, "text": "converges within 2 s"},
          {"type": "converged", "max": 1.9, "text": "converges within 1.9 s"},
          {"type": "join_time", "site": "s2", "max": 9.0, "text": "s2 joins within 9 s"}]


def _joined_run(tmp: Path, never: bool = False) -> RunData:
    events = formed()
    events += [ev(10.0, "s4", "AgentStarted"), *come_up(10.5, 11.0, "s4", "s1", "s2", "s3")]
    for s in ("s1", "s2", "s3"):
        events += come_up(10.5, 11.5 if s != "s3" else 12.0, s, "s4")
    if never:
        events = [e for e in events if not (e["site"] == "s4" and e.get("new") == "up" and "s3:" in e["path_id"])]
    return load(tmp, mesh_section([START, JOIN4]), events, EXPECT)


def test_join_time_and_converged_are_judged_on_the_slowest(tmp_path: Path) -> None:
    a = analyse(_joined_run(tmp_path))
    got = [(e.verdict, e.value) for e in a.expectations]
    assert got == [("passed", pytest.approx(1.0)), ("failed", pytest.approx(1.0)), ("passed", pytest.approx(2.0)),
                   ("failed", pytest.approx(2.0)), ("passed", pytest.approx(1.0))]
    assert expectation_value(a.expectations[0]) == "1000.0 ms"
    b = analyse(_joined_run(tmp_path / "never", never=True))
    assert [(e.verdict, e.value) for e in b.expectations][:4] == [("failed", None)] * 4
    assert expectation_value(b.expectations[0]) == "–"


def test_mesh_expectations_need_a_mesh_and_a_site_of_it(tmp_path: Path) -> None:
    with pytest.raises(RawDataError) as exc:
        load(tmp_path, None, [], [EXPECT[2]])
    assert [r.split(":")[0] for _, r in exc.value.errors] == ["expectations[0].type"]
    with pytest.raises(RawDataError) as exc:
        load(tmp_path / "b", mesh_section([START]), [], [{"type": "join_time", "site": "s9", "max": 1, "text": "x"},
                                                         {"type": "join_time", "text": "y"}])
    assert {r.split(":")[0] for _, r in exc.value.errors} == {"expectations[0].site", "expectations[1].site",
                                                              "expectations[1].max"}


def test_the_report_has_a_mesh_table_with_changes_and_joins(tmp_path: Path) -> None:
    a = analyse(_joined_run(tmp_path, never=True))
    md = render_markdown(a, {})
    assert "## Mesh" in md
    assert "| -2.000 | start | s1, s2, s3 | 1000.0 ms |" in md
    assert "| 10.000 | site_join s4 | s1, s2, s3, s4 | not converged: s4 |" in md
    assert "| 10.000 | join s4 | s4 | not joined |" in md
    assert "| -2.000 | join s2 | s2 | 1000.0 ms |" in md        # named by a join_time expectation
    assert "join s1" not in md
    assert "<h2>Mesh</h2>" in render_html(a, {})
    plain = analyse(load(tmp_path / "plain", None, []))
    assert "## Mesh" not in render_markdown(plain, {})


# --- run.json's mesh, from the scenario ---------------------------------------------------------------

def test_mesh_doc_lists_the_membership_changes_of_the_scenario() -> None:
    doc = scenario_doc()
    doc["sites"]["s1"]["region"] = "eu"
    doc["timeline"] += [{"at": "30s", "action": "agent_stop", "site": "s3"},
                        {"at": "31s", "action": "agent_stop", "site": "s3"},      # a no-op
                        {"at": "35s", "action": "agent_start", "site": "s3"},
                        {"at": "35s", "action": "agent_start", "site": "s1"},     # a no-op
                        {"at": "50s", "action": "site_join", "site": "s2"},
                        {"at": "50s", "action": "agent_stop", "site": "s4"}]
    sc = from_dict(doc)
    got = mesh_doc(sc, -3.0)
    assert got is not None
    assert got["topology"] == {"kind": "full-mesh"}
    assert got["sites"]["s1"] == {"uplinks": ["isp1", "isp2"], "region": "eu"}
    assert got["sites"]["s4"] == {"uplinks": ["isp1", "isp2"], "region": None}
    assert got["changes"] == [
        {"at": -3.0, "live": ["s1", "s2", "s3"], "cause": "start"},
        {"at": 20.0, "live": ["s1", "s2", "s3", "s4"], "cause": "site_join s4"},
        {"at": 30.0, "live": ["s1", "s2", "s4"], "cause": "agent_stop s3"},
        {"at": 35.0, "live": ["s1", "s2", "s3", "s4"], "cause": "agent_start s3"},
        {"at": 40.0, "live": ["s1", "s3", "s4"], "cause": "site_leave s2"},
        {"at": 50.0, "live": ["s1", "s2", "s3", "s4"], "cause": "site_join s2"},
        {"at": 50.0, "live": ["s1", "s2", "s3"], "cause": "agent_stop s4"},
    ]
    assert expectations_doc(sc)[0] == {"type": "join_time", "text": "s4 joins the mesh within 2 s", "site": "s4",
                                       "max": 2.0}
    plain = copy.deepcopy(doc)
    del plain["mesh"], plain["expectations"]
    plain["timeline"] = [e for e in plain["timeline"] if e["action"].startswith("agent_")]
    assert mesh_doc(from_dict(plain), -3.0) is None


def test_a_run_json_with_mesh_doc_reads_back(tmp_path: Path) -> None:
    sc = from_dict(scenario_doc())
    run = load(tmp_path, mesh_doc(sc, -3.0), [], expectations_doc(sc))
    assert run.run.mesh is not None and [c.cause for c in run.run.mesh.changes] == \
        ["start", "site_join s4", "site_leave s2"]
    assert run.run.mesh.sites["s4"].uplinks == ("isp1", "isp2")
