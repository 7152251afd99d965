"""Mesh discovery on the simulator (issue 14): sites with no remote written find each other and build
their paths, a newcomer joins, a site that leaves takes its paths with it everywhere, and a site whose
certificate is not the organisation's never gets a path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from emulation.backends.sim import Simulation
from emulation.scenario import load, parse
from patronus.core import identity as ident
from patronus.core.meshnode import MeshIdentity
from tests.unit.meshlab import key

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]

SMALL = """
version: 1
name: small-mesh
seed: 3
duration: 12s
backends: [sim]
mesh:
  topology: {kind: full-mesh}
  seeds: [a]
  timers: {probe_interval: 300ms, probe_timeout: 150ms}
sites:
  a: {uplinks: {isp1: {delay: 5ms}, isp2: {delay: 20ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
  b: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
  c: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
  d: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
traffic:
  - {name: ab, type: voip, from: a, to: b}
timeline:
  - {at: 3s, action: site_join, site: d}
  - {at: 7s, action: site_leave, site: c}
"""


def _paths(sim: Simulation, site: str) -> set[str]:
    rt = sim.agents[site].runtime
    return set() if rt is None else {str(p) for p in rt.paths}


def _up(sim: Simulation, site: str) -> bool:
    logic = sim.agents[site].logic
    return logic is not None and all(logic.monitor.status(p).value == "up" for p in logic.path_ids)


def test_sites_find_each_other_a_newcomer_joins_and_a_leaver_is_gone_everywhere(tmp_path: Path) -> None:
    sim = Simulation(parse(SMALL), tmp_path, "packet")
    sim.run()
    # at the end: a, b and d in a full mesh (a has two uplinks: two paths to each single-homed site)
    assert _paths(sim, "a") == {"b:isp1-isp1", "b:isp2-isp1", "d:isp1-isp1", "d:isp2-isp1"}
    assert _paths(sim, "b") == {"a:isp1-isp1", "a:isp1-isp2", "d:isp1-isp1"}
    assert _paths(sim, "d") == {"a:isp1-isp1", "a:isp1-isp2", "b:isp1-isp1"}
    assert all(_up(sim, s) for s in "abd")
    assert sim.agents["c"].runtime is None and not sim.agents["c"].forwarding
    # c said it left: the others took its paths away within a second of its leaving, not after a suspicion
    for s in "abd":
        removed = [e for e in sim.agents[s].events if e["kind"] == "PathRemoved" and e["remote"] == "c"]
        assert removed and all(e["at"] - sim.wall(7.0) < 1.0 for e in removed), (s, removed)
        left = [e for e in sim.agents[s].events if e["kind"] == "SiteLeft" and e["member"] == "c"]
        assert [e["reason"] for e in left] == ["left"]
    # d joined at 3 s (its agent runs 0.7 s later): its paths (to a, b and c, still there) were Up within
    # 1.5 s of the join
    ups = [e["at"] - sim.wall(3.0) for e in sim.agents["d"].events
           if e["kind"] == "PathStatusChanged" and e["new"] == "up"]
    assert len(ups) == 4 and max(ups) < 1.5, ups
    # every datagram was authentic: nothing refused by anyone
    for s in "abd":
        mesh = sim.agents[s].mesh
        assert mesh is not None and not mesh.node.gate.rejected
        assert set(mesh.node.rejected) <= {"unknown_sender"}
    # the call between a and b never changed path
    moved = [e for e in sim.agents["a"].events if e["kind"] in ("FailoverTriggered", "Failback")]
    assert moved == []


def test_a_run_is_the_same_every_time(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        sim = Simulation(parse(SMALL), tmp_path / str(i), "packet")
        sim.run()
        runs.append({s: [(e["kind"], round(e["at"], 9), e.get("path_id"), e.get("member"), e.get("new"))
                         for e in a.events] for s, a in sim.agents.items()})
    assert runs[0] == runs[1]


@pytest.mark.parametrize("what", ["foreign", "expired", "revoked-by-the-others"])
def test_a_site_whose_certificate_is_not_good_never_gets_a_path(tmp_path: Path, what: str) -> None:
    sim = Simulation(parse(SMALL), tmp_path, "packet")
    assert sim.org is not None
    good = sim.org.identities["d"]
    cert = ident.decode(good.certificate)
    if what == "foreign":
        ca = key(777)
        root = ident.self_sign_root(ca, "other", [ipaddress.ip_network("0.0.0.0/0")],
                                    not_before=cert.not_before, not_after=cert.not_after, serial=9)
        forged = ident.sign_site(ca, root, site_id=cert.site_id, site_name="d", signing_key=cert.signing_key,
                                 wg_public_key=cert.wg_public_key, prefixes=cert.prefixes,
                                 not_before=cert.not_before, not_after=cert.not_after, serial=cert.serial)
        sim.org.identities["d"] = MeshIdentity(ident.encode(forged), good.signing_key, root)
    elif what == "expired":
        # valid when d starts (3.7 s), expired at 5 s: the others drop it at their next check
        expiring = ident.sign_site(sim.org.ca, sim.org.root, site_id=cert.site_id, site_name="d",
                                   signing_key=cert.signing_key, wg_public_key=cert.wg_public_key,
                                   prefixes=cert.prefixes, not_before=cert.not_before,
                                   not_after=int(sim.wall(5.0)), serial=cert.serial)
        sim.org.identities["d"] = MeshIdentity(ident.encode(expiring), good.signing_key, sim.org.root)
    else:
        rl = ident.encode_revocations(ident.sign_revocations(sim.org.ca, sim.org.root, sequence=1,
                                                             issued_at=int(sim.wall(0.0)), serials=[cert.serial]))
        original = sim.start_mesh

        def start_mesh(agent, kept):          # type: ignore[no-untyped-def]
            mesh = original(agent, kept)
            if mesh is not None and agent.name != "d":
                mesh.node.set_revocations(rl, sim.wall(agent.env.now))
            return mesh
        sim.start_mesh = start_mesh     # type: ignore[method-assign]
    sim.run()
    for s in "ab":
        assert not any(p.startswith("d:") for p in _paths(sim, s)), (s, _paths(sim, s))
        assert all(_up(sim, x) for x in "ab")
    reasons = {"foreign": "wrong_organisation", "expired": "expired", "revoked-by-the-others": "revoked"}
    counted = sum(sim.agents[s].mesh.node.gate.rejected[reasons[what]] for s in "ab"      # type: ignore[union-attr]
                  if sim.agents[s].mesh is not None)
    if what == "expired":
        left = [e for s in "ab" for e in sim.agents[s].events if e["kind"] == "SiteLeft" and e["member"] == "d"]
        assert {e["reason"] for e in left} == {"expired"} and len(left) == 2
    else:
        assert counted >= 1


def test_the_shipped_mesh_scenarios_form_their_meshes(tmp_path: Path) -> None:
    sc = load(ROOT / "scenarios" / "hierarchical-20.yaml")
    sim = Simulation(sc, tmp_path, "auto")
    sim.run()
    for i in range(1, 9):
        assert {p.split(":")[0] for p in _paths(sim, f"eu-{i}")} == {"eu-hub-2"}
        assert {p.split(":")[0] for p in _paths(sim, f"us-{i}")} == {"us-hub-1"}
    assert {p.split(":")[0] for p in _paths(sim, "eu-hub-2")} == {"us-hub-1", "us-hub-2"} | {f"eu-{i}" for i in
                                                                                             range(1, 9)}
    assert all(_up(sim, s.name) for s in sc.sites if s.name != "eu-hub-1")


def test_mesh_join_passes_and_reports_its_join_and_convergence_times(tmp_path: Path) -> None:
    import json

    from emulation.backends.sim import run_sim

    assert run_sim(load(ROOT / "scenarios" / "mesh-join.yaml"), tmp_path) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    join, converged = summary["expectations"][:2]          # the file's first two
    assert join["text"].startswith("s11 joins the mesh") and converged["text"].startswith("the mesh converges")
    values = {"join_time": join["value"], "converged": converged["value"]}
    # s11's agent starts 0.7 s after its join; a join round trip, then 3 probes 100 ms apart bring its paths Up
    assert 0.7 < values["join_time"] < 1.5, values
    assert values["converged"] < 3.0, values
    report = (tmp_path / "report.md").read_text()
    assert "## Mesh" in report and "site_join s11" in report


RESTART = """
version: 1
name: mesh-restart
seed: 5
duration: 16s
backends: [sim]
mesh:
  topology: {kind: full-mesh}
  seeds: [a]
  timers: {probe_interval: 300ms, probe_timeout: 150ms, sync_interval: 6s}
sites:
  a: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
  b: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
  c: {uplinks: {isp1: {delay: 5ms}}, agent: {monitor: {profile: fast, interval: 100ms}}}
traffic:
  - {name: ab, type: voip, from: a, to: b}
timeline:
  - {at: 4s, action: agent_stop, site: a, note: a graceful restart of a begins}
  - {at: 4.1s, action: agent_stop, site: c, cleanup: true, note: c fails while a is away}
  - {at: 4.5s, action: agent_start, site: a}
"""


def test_a_graceful_restart_keeps_the_learned_peers_and_drops_one_not_found_again(tmp_path: Path) -> None:
    """As the agent does (`Learned.keep`, `MeshDriver`): a's restarted agent starts with the peers its
    dataplane kept. b is found again by the new node and nothing about it changes; c failed while a was
    away, is never found again, and goes `kept_for` (the sync period, 6 s) after a's start."""
    from patronus.core.meshnode import kept_for
    from patronus.core.swim import SwimConfig

    sim = Simulation(parse(RESTART), tmp_path, "packet")
    sim.run()
    a = sim.agents["a"]
    started = [e["at"] for e in a.events if e["kind"] == "AgentStarted"][-1]
    assert started >= sim.wall(4.5)
    after = [e for e in a.events if e["at"] >= started]
    assert not [e for e in after if e.get("remote") == "b" and e["kind"] in ("PathRemoved", "PathAdded")], after
    gone = [e["at"] - started for e in after if e["kind"] == "PathRemoved" and e["remote"] == "c"]
    wait = kept_for(SwimConfig(sync_interval=6.0))
    assert gone and all(wait <= g < wait + 0.5 for g in gone), gone
    assert _paths(sim, "a") == {"b:isp1-isp1"} and _up(sim, "a")
    mesh = a.mesh
    assert mesh is not None and not mesh.kept
    (flow,) = a.flows
    assert flow.sent > 0 and all(flow.recv_ns), "the call from a to b lost packets across a's restart"
