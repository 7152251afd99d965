"""The simulator at scale: the fast hop path and event loop are exact, regional failures apply at their
virtual time, hierarchical meshes build the right paths, the wall budget stops a run, generated
scenarios are valid."""

from __future__ import annotations

import csv
import random
from collections.abc import Generator
from pathlib import Path

import pytest
import simpy

from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.engine import Simulation, WallBudgetExceeded, run_sim
from emulation.backends.sim.network import SimOptions, _simple_release
from emulation.backends.sim.synthetic import regional_mesh_doc
from emulation.links.impairment import Impairment, ImpairmentModel
from emulation.scenario import from_dict

pytestmark = pytest.mark.sim


def test_the_fast_hop_is_the_models_own_arithmetic() -> None:
    """Delay, rate and a short queue: `_simple_release` gives the times (and drops) `on_packet` gives,
    on the same model state, for a random arrival pattern."""
    imp = Impairment(delay_s=0.01, rate_bps=1e6, queue_limit=5)
    assert imp.is_deterministic and not Impairment(delay_s=0.01, jitter_s=0.001).is_deterministic
    assert not Impairment(loss=0.01).is_deterministic and not Impairment(cut=True).is_deterministic
    a, b = ImpairmentModel(imp, seed="x"), ImpairmentModel(imp, seed="x")
    rng = random.Random(7)
    now = 0.0
    for _ in range(2000):
        now += rng.expovariate(800.0)
        size = rng.choice((100, 600, 1400))
        got = _simple_release(a, now, size)
        want = b.on_packet(now, size)
        assert (got is None and want == []) or [(got, 0)] == [(t, int(x)) for t, x in want]
    assert a.counters() == b.counters() and a.counters()["dropped"]["queue_full"] > 0


def test_play_runs_what_simpy_runs_in_the_same_order() -> None:
    """`later` callbacks, and a simpy process of a researcher's own among them: `play` runs what
    `env.run` runs, in the same order, and the process's timeouts interleave with the callbacks."""
    orders = []
    for runner in ("simpy", "play"):
        env = SimEnvironment(initial_time=-1.0)
        seen: list[tuple[float, int | str]] = []

        def note(i: int | str, env: SimEnvironment = env, seen: list[tuple[float, int | str]] = seen) -> None:
            seen.append((env.now, i))

        def nested(env: SimEnvironment = env) -> None:
            env.later(0.0, note, 99)

        def process(env: SimEnvironment = env) -> Generator[simpy.Event, None, None]:
            for k in range(10):
                yield env.timeout(0.4)
                note(f"p{k}")
        for i, t in enumerate([0.5, 0.1, 0.5, 2.0, 3.0, 0.1, -0.5]):
            env.later(t + 1.0, note, i)
        env.later(0.2, nested)
        env.process(process())
        if runner == "simpy":
            env.run(until=2.0)
        else:
            env.play(2.0)
        assert env.now == 2.0
        orders.append(seen)
    assert orders[0] == orders[1] and (2.0, 3) not in orders[1]
    assert [x for _, x in orders[1] if isinstance(x, str)] == [f"p{k}" for k in range(7)]   # 2.2 s: after
    env = SimEnvironment()
    before = env.events_scheduled()
    assert env.events_scheduled() == before                 # counting schedules nothing
    env.later(1.0, note, 0)
    env.later(1.0, note, 1)
    assert env.events_scheduled() == before + 2


def test_play_crashes_on_a_failed_event_as_run_does() -> None:
    for runner in ("simpy", "play"):
        env = SimEnvironment()

        def fail(env: SimEnvironment = env) -> Generator[simpy.Event, None, None]:
            yield env.timeout(0.1)
            raise ValueError("a researcher's process failed")
        env.process(fail())
        with pytest.raises(ValueError, match="researcher"):
            env.run(until=1.0) if runner == "simpy" else env.play(1.0)


def test_a_regional_failure_cuts_every_link_of_the_region_at_its_time(tmp_path: Path) -> None:
    doc = regional_mesh_doc(regions=2, sites_per_region=4, uplinks=2, probe_interval="100ms", duration="12s",
                            flows_per_region=1)
    doc["timeline"] = [{"at": "4s", "action": "region_cut", "region": "eu", "uplink": "isp1"},
                       {"at": "8s", "action": "region_restore", "region": "eu", "uplink": "isp1"}]
    doc["expectations"] = [{"detect_time": {"link": "eu-2.isp1", "max": "1s"}},
                           {"failover_gap": {"flow": "eu1", "max": "1s"}}]
    sc = from_dict(doc)
    out = tmp_path / "run"
    code = run_sim(sc, out)
    with open(out / "raw" / "timeline.csv") as fh:
        rows = list(csv.DictReader(fh))
    cuts = [r["target"] for r in rows if r["action"] == "cut"]
    assert cuts == ["eu-hub-1.isp1", "eu-1.isp1", "eu-2.isp1", "eu-3.isp1"]
    assert {float(r["at_s"]) for r in rows} == {4.0, 8.0} and len(rows) == 8
    assert code == 0


def test_a_hierarchical_mesh_builds_paths_between_peers_only(tmp_path: Path) -> None:
    sc = from_dict(regional_mesh_doc(regions=3, sites_per_region=5, uplinks=2, duration="5s"))
    sim = Simulation(sc, tmp_path, "auto")
    remotes = {name: {p.remote for p in a.paths.values()} for name, a in sim.agents.items()}
    assert remotes["eu-1"] == {"eu-hub-1"}
    assert remotes["eu-hub-1"] == {"us-hub-1", "as-hub-1", "eu-1", "eu-2", "eu-3", "eu-4"}
    assert sum(len(a.paths) for a in sim.agents.values()) == (12 * 1 + 3 * 6) * 4


def test_the_wall_budget_stops_a_run_and_says_how_far_it_got(tmp_path: Path) -> None:
    sc = from_dict(regional_mesh_doc(regions=2, sites_per_region=3, uplinks=1, duration="30s"))
    sim = Simulation(sc, tmp_path, "auto", SimOptions(wall_budget_s=0.0))
    with pytest.raises(WallBudgetExceeded) as exc:
        sim.run()
    assert 0 < exc.value.simulated_s < exc.value.total_s


def test_generated_scenarios_respect_the_agents_path_limit() -> None:
    sc = from_dict(regional_mesh_doc(regions=5, sites_per_region=20, uplinks=3, probe_interval="100ms",
                                     duration="10s", flows_per_region=1))
    assert len(sc.sites) == 100 and len(sc.flows) == 5
    worst = max(len(sc.remotes_of(s.name)) * 9 for s in sc.sites)
    assert worst == 207 <= 250
    with pytest.raises(ValueError):
        regional_mesh_doc(regions=0, sites_per_region=3, uplinks=1)


def test_scale_1000_builds_every_agent_within_the_path_limit(tmp_path: Path) -> None:
    from emulation.scenario import load

    sim = Simulation(load(Path(__file__).resolve().parents[2] / "scenarios" / "scale-1000.yaml"), tmp_path, "auto")
    paths = {name: len(a.paths) for name, a in sim.agents.items()}
    assert len(paths) == 1000 and sum(paths.values()) == 8220
    assert paths["eu-hub-1"] == 215 and paths["jp-98"] == 4
    assert sim.sample_period_s == 0.5         # 8,220 paths × 60 s: sampled every 0.5 s, not every 0.25 s
