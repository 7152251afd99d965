"""`patronus-lab sweep`: the parameter grammar, validation before anything runs, the grid, the results
table from injected runners whose numbers depend on the parameters, parquet, plots, the CLI.

`synthetic_runner` stands in for the simulator: it writes a synthetic run (emulation.measure.synthetic)
whose detection time is interval × multiplier + 1 ms, whose probes go out every interval, and which has
two unexplained path downs when interval × multiplier is below 50 ms (too aggressive timers).
"""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from emulation.cli import app
from emulation.measure.analysis import analyse
from emulation.measure.load import load_run
from emulation.measure.synthetic import SyntheticSpec, write_synthetic_run
from emulation.report.summary import build_summary
from emulation.scenario import Scenario, load
from emulation.scenario.loader import with_overrides
from emulation.sweep import (
    PROBE_WIRE_BITS,
    SweepEnvironmentError,
    explain_window,
    false_events,
    parse_param,
    parse_params,
    plan_sweep,
    point_overrides,
    run_sweep,
    sim_available,
    sweep_command,
)
from patronus.core.errors import ConfigError
from tests.emulation_unit.conftest import REPO

pytestmark = pytest.mark.unit

FILE = REPO / "scenarios" / "failover-basic.yaml"
GRID = ["monitor.interval=20ms,50ms,100ms", "monitor.multiplier=2,3"]
cli = CliRunner()


def synthetic_runner(scenario: Scenario, out: Path) -> int:
    """A stand-in for the simulator whose results depend on the monitor settings (see the docstring)."""
    m = scenario.sites[0].agent.monitor
    spec = SyntheticSpec(scenario=scenario.name, duration_s=12.0, flow_stop_s=11.0, event_at_s=4.0,
                         restore_at_s=7.0, rate_pps=200, hold_s=2.0,
                         detect_ms=m.interval_s * m.detect_multiplier * 1000.0 + 1.0, probe_interval_s=m.interval_s)
    write_synthetic_run(out, spec)
    if m.interval_s * m.detect_multiplier < 0.05:
        with (out / "raw" / "events.jsonl").open("a") as fh:
            for at in (0.5, 1.0):     # before any timeline event
                fh.write(json.dumps({"kind": "PathStatusChanged", "at": spec.t0 + at, "site": "hq",
                                     "path_id": "br:isp2-isp2", "old": "up", "new": "down"}) + "\n")
    summary = build_summary(analyse(load_run(out)))
    (out / "summary.json").write_text(summary.to_json())
    return 0 if summary.passed else 1


def failing_runner(scenario: Scenario, out: Path) -> int:
    """Raises at the 50 ms points, runs the others."""
    if scenario.sites[0].agent.monitor.interval_s == 0.05:
        raise RuntimeError("simulated crash")
    return synthetic_runner(scenario, out)


def fake_run_sim(scenario: Scenario, out: Path, *, mode: str = "auto", progress: Any = None) -> int:
    """The simulator's announced signature."""
    assert mode == "auto" and progress is None
    return synthetic_runner(scenario, out)


def quiet() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load(FILE)


# --- grammar ---------------------------------------------------------------------------------------------

def test_a_param_is_a_name_and_yaml_scalar_values() -> None:
    p = parse_param("monitor.interval=20ms, 50ms,100ms")
    assert p.name == "monitor.interval" and p.texts == ("20ms", "50ms", "100ms") and p.values == p.texts
    m = parse_param("monitor.multiplier=2,3")
    assert m.values == (2, 3) and m.texts == ("2", "3")
    assert parse_param("sites.hq.uplinks.isp1.loss=0.5,null").values == (0.5, None)


def test_every_grammar_error_is_listed() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_params(["monitor.interval", "=1", "x=", "monitor.multiplier=1,,2", "seed=1,1", "seed=2",
                      "bad name=1"])
    assert exc.value.errors == [
        ("monitor.interval", "expected NAME=V1,V2,... such as monitor.interval=20ms,50ms"),
        ("=1", "expected NAME=V1,V2,... such as monitor.interval=20ms,50ms"),
        ("x", "no values: expected NAME=V1,V2,..."),
        ("monitor.multiplier", "value 2 is empty (in '1,,2')"),
        ("seed", "value '1' is given twice"),
        ("seed", "given twice: one --param per name, with all its values"),
        ("bad name", "expected a dotted name like monitor.interval or sites.hq.uplinks.isp1.delay"),
    ]
    with pytest.raises(ConfigError, match="nothing to sweep"):
        parse_params([])


# --- names → overrides -------------------------------------------------------------------------------------

def test_monitor_shorthands_change_every_sites_profile_in_place(scenario: Scenario) -> None:
    o = point_overrides(scenario, {"monitor.interval": "50ms", "monitor.multiplier": 4})
    assert o == {f"sites.{s}.agent.monitor": {"profile": "fast", "interval": "50ms", "multiplier": 4}
                 for s in ("hq", "br")}
    monitor = with_overrides(scenario, o).site("br").agent.monitor
    assert (monitor.interval_s, monitor.detect_multiplier, monitor.report_interval_s) == (0.05, 4, 0.5)
    # a new base profile; one site only; the whole profile
    assert point_overrides(scenario, {"monitor.profile": "default", "monitor.interval": "2s"})[
        "sites.hq.agent.monitor"] == {"profile": "default", "interval": "2s"}
    assert point_overrides(scenario, {"sites.hq.agent.monitor.window": 20}) == {
        "sites.hq.agent.monitor": {"profile": "fast", "window": 20}}
    assert point_overrides(scenario, {"monitor": "default"}) == {
        "sites.hq.agent.monitor": "default", "sites.br.agent.monitor": "default"}


def test_router_sla_and_steering_shorthands_and_dotted_paths(scenario: Scenario) -> None:
    o = point_overrides(scenario, {"router.failback_hold": "1s", "sla.loss": "2%", "steering": "none",
                                   "sites.hq.uplinks.isp1.delay": "30ms", "traffic.cbr.rate": 500})
    assert o == {"sites.hq.agent.router.failback_hold": "1s", "sites.br.agent.router.failback_hold": "1s",
                 "sites.hq.agent.sla.loss": "2%", "sites.br.agent.sla.loss": "2%",
                 "sites.hq.agent.steering": "none", "sites.br.agent.steering": "none",
                 "sites.hq.uplinks.isp1.delay": "30ms", "traffic.cbr.rate": 500}
    s = with_overrides(scenario, o)
    assert s.site("br").agent.router.failback_hold_s == 1.0 and s.uplink("hq.isp1").delay_s == 0.03
    assert s.flow("cbr").rate_pps == 500


def test_unknown_names_and_conflicts_are_errors(scenario: Scenario) -> None:
    with pytest.raises(ConfigError) as exc:
        point_overrides(scenario, {"monitor.intervl": "1s", "router.hold": "1s", "sites.hq.uplinks.isp9.delay": "1ms",
                                   "sites.xx.agent.monitor.interval": "1s"})
    fields = [f for f, _ in exc.value.errors]
    assert fields == ["monitor.intervl", "router.hold", "sites.hq.uplinks.isp9.delay",
                      "sites.xx.agent.monitor.interval"]
    reasons = dict(exc.value.errors)
    assert reasons["monitor.intervl"].startswith("unknown monitor setting 'intervl'; expected one of profile, interval")
    assert "sites.hq.uplinks has no 'isp9' (it has isp1, isp2); a sweep changes settings" in \
        reasons["sites.hq.uplinks.isp9.delay"]
    with pytest.raises(ConfigError) as exc:
        point_overrides(scenario, {"monitor.interval": "1s", "sites.hq.agent.monitor.interval": "2s"})
    assert exc.value.errors == [("sites.hq.agent.monitor.interval", "sets hq's monitor interval, which "
                                                                   "monitor.interval sets too; sweep one of them")]


# --- the plan ------------------------------------------------------------------------------------------------

def test_the_grid_is_the_cartesian_product_first_axis_slowest(scenario: Scenario) -> None:
    plan = plan_sweep(scenario, parse_params(GRID))
    assert len(plan.points) == 6
    assert [p.assignment for p in plan.points[:3]] == [
        (("monitor.interval", "20ms"), ("monitor.multiplier", "2")),
        (("monitor.interval", "20ms"), ("monitor.multiplier", "3")),
        (("monitor.interval", "50ms"), ("monitor.multiplier", "2"))]
    assert [p.slug for p in plan.points[:2]] == ["000-interval-20ms_multiplier-2", "001-interval-20ms_multiplier-3"]
    last = plan.points[-1].scenario
    assert {(s.agent.monitor.interval_s, s.agent.monitor.detect_multiplier) for s in last.sites} == {(0.1, 3)}
    three = plan_sweep(scenario, parse_params([*GRID, "router.failback_hold=1s,2s"]))
    assert len(three.points) == 12


def test_validation_lists_every_error_before_anything_runs(scenario: Scenario, tmp_path: Path) -> None:
    specs = ["monitor.interval=5ms,20ms", "monitor.multiplier=three,3", "monitor.bogus=1",
             "sites.hq.uplinks.isp1.delay=fast,10ms"]
    with pytest.raises(ConfigError) as exc:
        plan_sweep(scenario, parse_params(specs))
    assert exc.value.errors == [
        ("monitor.bogus", "unknown monitor setting 'bogus'; expected one of profile, interval, multiplier, "
                          "detect_multiplier, up_count, window, timeout, max_timeout, report_interval, jitter"),
        ("monitor.interval=5ms", "must be at least 10ms, got 5ms"),
        ("monitor.multiplier=three", "expected a whole number, got 'three'"),
        ("sites.hq.uplinks.isp1.delay=fast", "expected a duration like \"20ms\", got 'fast'"),
    ]
    # combinations are checked too: up_count may not exceed the window
    with pytest.raises(ConfigError) as exc:
        plan_sweep(scenario, parse_params(["monitor.window=3,10", "monitor.up_count=1,4"]))
    assert exc.value.errors == [("point 1 (monitor.window=3, monitor.up_count=4)",
                                 f"sites.{s}.agent.monitor.up_count: must not exceed the window (3), got 4")
                                for s in ("hq", "br")]
    calls: list[str] = []

    def recording_runner(s: Scenario, out: Path) -> int:
        calls.append(str(out))
        return 0

    con, buf = quiet()
    code = sweep_command(FILE, specs, tmp_path / "out", runner=recording_runner, workers=0, console=con)
    assert code == 2 and calls == [] and not (tmp_path / "out").exists()
    assert "nothing was run — 4 problems" in buf.getvalue()


# --- running ------------------------------------------------------------------------------------------------

def test_the_results_table_follows_the_parameters(scenario: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(scenario, parse_params(GRID))
    seen: list[int] = []
    result = run_sweep(plan, tmp_path, runner=synthetic_runner, workers=2, on_point=lambda r: seen.append(r["index"]))
    t = result.table
    assert sorted(seen) == list(range(6)) and list(t["index"]) == list(range(6))
    assert (t["error"] == "").all(), t["error"].tolist()
    for r in t.to_dict("records"):
        interval_s, mult = r["monitor.interval"], r["monitor.multiplier"]
        assert r["interval_ms"] == {"20ms": 20.0, "50ms": 50.0, "100ms": 100.0}[interval_s]
        assert r["multiplier"] == mult
        nominal = r["interval_ms"] * mult
        assert r["detect_mean_ms"] == pytest.approx(nominal + 1.0, abs=0.01)
        assert r["gap_max_ms"] == pytest.approx(nominal + 8.0, abs=0.01)     # the synthetic run adds 7 ms
        # cbr (200 packets/s) loses what it sends between the cut and the steering change
        assert abs(r["lost_packets"] - (nominal + 3.0) * 0.2) <= 1
        # the short run misses its SLA expectation; detection and gap expectations fail as the timers grow
        assert r["expectations_failed"] == 1 + (nominal + 1.0 > 100.0) + (r["gap_max_ms"] > 300.0)
        assert r["false_path_downs"] == (2 if nominal < 50 else 0) and r["false_failovers"] == 0
        assert r["probe_overhead_bps"] == pytest.approx(PROBE_WIRE_BITS / (r["interval_ms"] / 1000.0), rel=0.02)
        assert r["probe_overhead_nominal_bps"] == pytest.approx(PROBE_WIRE_BITS / (r["interval_ms"] / 1000.0))
        assert (tmp_path / r["dir"] / "summary.json").is_file()
        assert (tmp_path / r["dir"] / "scenario.yaml").is_file()
    assert not t["passed"].any() and result.exit_code == 1


def test_parquet_round_trip_plots_and_summary(scenario: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(scenario, parse_params(GRID))
    result = run_sweep(plan, tmp_path, runner=synthetic_runner, workers=0)
    back = pd.read_parquet(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(back, result.table)
    assert str(back["monitor.multiplier"].dtype) == "Int64" and back["monitor.interval"].tolist()[:2] == ["20ms"] * 2
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.columns) == list(result.table.columns) and len(csv) == 6
    for name in ("detection-vs-interval.png", "false-failovers-vs-interval.png", "overhead-vs-interval.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    md = (tmp_path / "sweep.md").read_text()
    assert md.startswith("# Sweep of failover-basic: 6 points")
    assert "| 000-interval-20ms_multiplier-2 | 20ms | 2 |" in md and "41.0/41.0" in md
    assert "![Detection time against probe interval](plots/detection-vs-interval.png)" in md


def test_a_point_that_cannot_run_is_reported_and_the_rest_run(scenario: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(scenario, parse_params(GRID))
    result = run_sweep(plan, tmp_path, runner=failing_runner, workers=0)
    bad = result.errors
    assert list(bad["monitor.interval"]) == ["50ms", "50ms"]
    assert set(bad["error"]) == {"the runner raised RuntimeError: simulated crash"}
    assert "simulated crash" in (tmp_path / bad["dir"].iloc[0] / "error.txt").read_text()
    assert result.table["detect_mean_ms"].notna().sum() == 4
    assert result.exit_code == 2


def test_false_events_are_those_no_timeline_edge_explains(tmp_path: Path) -> None:
    spec = SyntheticSpec(duration_s=12.0, flow_stop_s=11.0, event_at_s=4.0, restore_at_s=7.0, rate_pps=100,
                         hold_s=2.0)
    write_synthetic_run(tmp_path, spec)
    extra = [("FailoverTriggered", -1.0, {}), ("FailoverTriggered", 1.0, {}), ("FailoverTriggered", 4.5, {}),
             ("PathStatusChanged", 1.5, {"new": "down"}), ("PathStatusChanged", 2.0, {"new": "degraded"}),
             ("PathStatusChanged", 10.5, {"new": "down"})]
    with (tmp_path / "raw" / "events.jsonl").open("a") as fh:
        for kind, at, more in extra:
            ev = {"kind": kind, "at": spec.t0 + at, "site": "hq", "from_path": "br:isp1-isp1",
                  "to_path": "br:isp2-isp2", "path_id": "br:isp1-isp1", "old": "up", **more}
            ev.setdefault("new", "up")
            fh.write(json.dumps(ev) + "\n")
    # window 2 s: the cut (4 s) explains 4.5; the restore (7 s) does not reach 10.5
    assert false_events(tmp_path, 2.0) == (1, 2)
    # window 4 s: the restore explains 10.5 too
    assert false_events(tmp_path, 4.0) == (1, 1)
    # window 0: the synthetic run's own failovers (2 slots) and path downs (2 sites × 2 paths) are unexplained
    assert false_events(tmp_path, 0.0) == (4, 6)


def test_the_explanation_window_follows_the_monitor_profile(scenario: Scenario) -> None:
    s = with_overrides(scenario, point_overrides(scenario, {"monitor": {"interval": "100ms", "multiplier": 3,
                                                                      "window": 10, "max_timeout": "1s"}}))
    assert explain_window(s) == pytest.approx((10 + 3) * 0.1 + 1.0)


# --- the default runner and Dask -------------------------------------------------------------------------------

def test_the_default_runner_is_the_simulators_run_sim(scenario: Scenario, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("emulation.backends.sim")
    module.run_sim = fake_run_sim  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "emulation.backends.sim", module)
    assert sim_available() is None
    plan = plan_sweep(scenario, parse_params(["monitor.interval=20ms,100ms"]))
    result = run_sweep(plan, tmp_path, workers=0)
    assert list(result.table["detect_mean_ms"].round(1)) == [61.0, 301.0]
    assert "sim (emulation.backends.sim.run_sim)" in (tmp_path / "sweep.md").read_text()


def test_a_missing_simulator_or_dask_exits_2_with_what_to_install(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "emulation.backends.sim", None)
    assert "cannot be imported" in (sim_available() or "")
    con, buf = quiet()
    assert sweep_command(FILE, ["monitor.interval=20ms"], tmp_path / "a", workers=0, console=con) == 2
    assert "the simulation backend (emulation.backends.sim.run_sim) cannot be imported" in buf.getvalue()
    monkeypatch.setitem(sys.modules, "distributed", None)
    con, buf = quiet()
    assert sweep_command(FILE, ["monitor.interval=20ms"], tmp_path / "b", runner=synthetic_runner,
                         dask_address="tcp://127.0.0.1:8786", console=con) == 2
    assert "pip install 'dask[distributed]'" in buf.getvalue()
    assert not (tmp_path / "b" / "points").exists()
    plan = plan_sweep(load(FILE), parse_params(["monitor.interval=20ms"]))
    with pytest.raises(SweepEnvironmentError):
        run_sweep(plan, tmp_path / "c", runner=synthetic_runner, dask_address="tcp://127.0.0.1:8786")


def test_dask_runs_the_same_points(scenario: Scenario, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed here")
    plan = plan_sweep(scenario, parse_params(["monitor.interval=20ms,100ms"]))
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        result = run_sweep(plan, tmp_path, runner=synthetic_runner, dask_address=cluster.scheduler_address)
    assert list(result.table["detect_mean_ms"].round(1)) == [61.0, 301.0]


# --- the command line -------------------------------------------------------------------------------------------

def test_cli_sweep_bad_input_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli.invoke(app, ["sweep", str(FILE), "-p", "monitor.interval=5ms", "-p", "monitor.bogus=1",
                              "-p", "sites.hq.uplinks.isp9.delay=5ms", "--explain-window", "soon", "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == "patronus-lab sweep: nothing was run — 4 problems"
    assert lines[1].startswith("  --explain-window: expected a duration")
    assert lines[2].startswith("  monitor.bogus: unknown monitor setting 'bogus'")
    assert lines[3].startswith("  sites.hq.uplinks.isp9.delay: sites.hq.uplinks has no 'isp9'")
    assert lines[4] == "  monitor.interval=5ms: must be at least 10ms, got 5ms"
    assert not out.exists()
    assert cli.invoke(app, ["sweep", str(FILE)]).exit_code == 2          # --param is required
    result = cli.invoke(app, ["sweep", str(tmp_path / "nope.yaml"), "-p", "seed=1"])
    assert result.exit_code == 2 and "cannot read the scenario file" in result.output


def test_cli_sweep_runs_the_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("emulation.backends.sim")
    module.run_sim = fake_run_sim  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "emulation.backends.sim", module)
    out = tmp_path / "out"
    result = cli.invoke(app, ["sweep", str(FILE), "-p", "monitor.interval=20ms,50ms", "-p", "monitor.multiplier=3",
                              "--workers", "0", "--out", str(out)])
    t = pd.read_parquet(out / "results.parquet")
    assert result.exit_code == 1, result.output      # the short synthetic run misses its SLA expectation
    assert "failover-basic: 2 points (2 × 1)" in result.output
    assert "000-interval-20ms_multiplier-3:" in result.output
    assert list(t["detect_mean_ms"].round(1)) == [61.0, 151.0]
