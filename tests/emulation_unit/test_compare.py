"""`patronus-lab compare`: two runs of one scenario side by side, differences beyond tolerance flagged.

The runs are synthetic (emulation.measure.synthetic) with controlled differences: the detection time,
the delay pattern, a failover row removed from one summary.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from emulation.cli import app
from emulation.compare import Tolerances, compare_command, compare_runs, write_comparison
from emulation.measure.analysis import analyse
from emulation.measure.load import load_run
from emulation.measure.synthetic import SyntheticSpec, write_synthetic_run
from emulation.report.summary import build_summary
from emulation.scenario import load
from emulation.scenario.loader import with_overrides
from patronus.core.errors import ConfigError
from tests.emulation_unit.conftest import REPO

pytestmark = pytest.mark.unit

cli = CliRunner()
# a 12-second run: cut hq.isp1 at 4 s, restore at 7 s; cbr at 200 packets/s; probes every 20 ms
SHORT: dict[str, Any] = {"duration_s": 12.0, "flow_stop_s": 11.0, "event_at_s": 4.0, "restore_at_s": 7.0,
                         "rate_pps": 200, "hold_s": 2.0}
CUT = "cut hq.isp1 / cbr"


def make_run(d: Path, **changes: Any) -> Path:
    """A synthetic run directory with its summary.json (as a run leaves it)."""
    write_synthetic_run(d, SyntheticSpec(**{**SHORT, **changes}))
    (d / "summary.json").write_text(build_summary(analyse(load_run(d))).to_json())
    return d


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_runs_that_agree_within_one_probe_interval_exit_0(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", detect_ms=70.0)     # 10 ms later: within one 20 ms probe interval
    c = compare_runs(a, b)
    det = c.find("failover", CUT, "detect_ms")
    assert det.diff == pytest.approx(10.0, abs=0.01) and det.tolerance == pytest.approx(20.0)
    assert not det.flagged
    gap = c.find("failover", CUT, "gap_ms")
    assert gap.a == pytest.approx(68.0) and gap.b == pytest.approx(78.0) and not gap.flagged
    assert "raw/path_metrics.csv" in c.tolerance_source
    assert c.agree and c.exit_code == 0
    assert compare_command(a, b, console=quiet()) == 0


def test_a_detection_difference_beyond_one_probe_interval_is_flagged(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", detect_ms=100.0)    # 40 ms later: two probe intervals
    c = compare_runs(a, b)
    det = c.find("failover", CUT, "detect_ms")
    assert det.flagged and det.diff == pytest.approx(40.0, abs=0.01) and det.tolerance == pytest.approx(20.0)
    assert c.find("failover", CUT, "gap_ms").flagged           # 68 → 108 ms: beyond max(20 ms, 25 %)
    assert not any(d.flagged for d in c.differences if d.section == "sla")
    assert c.exit_code == 1
    assert compare_command(a, b, console=quiet()) == 1
    # a looser detection tolerance (the gap and lost-packet ones follow it) lets them agree
    loose = compare_runs(a, b, tolerances=Tolerances(detect_ms=50.0))
    assert loose.agree, [d for d in loose.flagged]


def test_the_probe_interval_comes_from_the_runs_scenario_copy(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", detect_ms=100.0)
    slow = with_overrides(load(REPO / "scenarios" / "failover-basic.yaml"),
        {"sites.hq.agent.monitor": "default", "sites.br.agent.monitor": "default"})    # 1 s probes
    for d in (a, b):
        (d / "scenario.yaml").write_text(slow.to_yaml())
    c = compare_runs(a, b)
    assert c.tolerances.detect_ms == pytest.approx(1000.0)
    assert "scenario.yaml" in c.tolerance_source
    assert not c.find("failover", CUT, "detect_ms").flagged


def test_runs_whose_scenario_settings_differ_are_refused_unless_allowed(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    base = load(REPO / "scenarios" / "failover-basic.yaml")
    (a / "scenario.yaml").write_text(base.to_yaml())
    (b / "scenario.yaml").write_text(with_overrides(base, {"sites.hq.agent.monitor": "default"}).to_yaml())
    with pytest.raises(ConfigError) as exc:
        compare_runs(a, b)
    assert exc.value.errors[0][0] == "scenario.yaml"
    assert "sites.hq.agent.monitor" in exc.value.errors[0][1]
    c = compare_runs(a, b, allow_changes=True)
    assert any("sites.hq.agent.monitor" in n for n in c.notes)
    assert c.tolerances.detect_ms == pytest.approx(1000.0)   # the larger interval of the two


def test_runs_of_different_scenarios_exit_2(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", scenario="brownout")
    with pytest.raises(ConfigError) as exc:
        compare_runs(a, b)
    assert exc.value.errors == [("scenario", "run A is of 'synthetic-failover', run B of 'brownout': a comparison "
                                             "needs two runs of one scenario")]
    assert compare_command(a, b, tmp_path / "out", console=quiet()) == 2
    assert not (tmp_path / "out").exists()


def test_a_missing_directory_or_one_without_a_summary_exits_2(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as exc:
        compare_runs(tmp_path / "nope", tmp_path / "empty")
    assert exc.value.errors[0] == (f"run A: {tmp_path / 'nope'}", "not a directory")
    assert exc.value.errors[1][0] == f"run B: {tmp_path / 'empty' / 'summary.json'}"
    assert exc.value.errors[1][1].startswith("missing: not a run directory")
    assert compare_command(a, tmp_path / "nope", console=quiet()) == 2
    (tmp_path / "empty" / "summary.json").write_text('{"scenario": "x"')
    with pytest.raises(ConfigError, match="not valid JSON"):
        compare_runs(a, tmp_path / "empty")


def test_a_failover_seen_in_one_run_only_is_flagged(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    doc = json.loads((b / "summary.json").read_text())
    doc["failovers"] = [f for f in doc["failovers"] if f["flow"] != "cbr"]
    (b / "summary.json").write_text(json.dumps(doc))
    c = compare_runs(a, b)
    rows = [d for d in c.flagged if d.item == CUT]
    assert {d.metric for d in rows} == {"detect_ms", "gap_ms", "lost_packets"}
    assert {d.note for d in rows} == {"only in A"}


def test_sla_differences_beyond_tolerance_are_flagged(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", jitter_ms=5.0)      # up to 5 ms more delay
    c = compare_runs(a, b)
    p95 = c.find("sla", "voip (voice)", "latency_p95_ms")
    assert p95.flagged and p95.diff == pytest.approx(5.0, abs=0.5)
    assert not c.find("sla", "web (default)", "latency_p95_ms").flagged      # http: untouched by the pattern
    assert not c.find("failover", CUT, "detect_ms").flagged


def test_the_documents_are_deterministic_and_self_contained(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", detect_ms=100.0)
    c = compare_runs(a, b)
    files = write_comparison(c, tmp_path / "out")
    assert [f.name for f in files] == ["compare.json", "compare.md", "compare.html"]
    first = {f.name: f.read_bytes() for f in files}
    write_comparison(compare_runs(a, b), tmp_path / "out")
    assert {f.name: f.read_bytes() for f in files} == first
    doc = json.loads(first["compare.json"])
    assert doc["scenario"] == "synthetic-failover" and doc["agree"] is False and doc["flagged"] == len(c.flagged)
    assert doc["tolerances"]["detect_ms"] == 20.0
    flagged = [d for d in doc["differences"] if d["flagged"]]
    assert {"section": "failover", "item": CUT, "metric": "detect_ms"}.items() <= flagged[0].items()
    md = first["compare.md"].decode()
    assert md.startswith("# synthetic-failover: A against B: ")
    assert "| ✗ | failover | cut hq.isp1 / cbr | detection (ms) | 60.0 | 100.0 | +40.0 | ±20.0 |" in md
    page = first["compare.html"].decode()
    assert "<style>" in page and 'class="fail"' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_cli_compare(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", detect_ms=100.0)
    result = cli.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "1 difference" not in result.output and "differences beyond tolerance" in result.output
    assert (tmp_path / "out" / "compare.html").is_file()
    result = cli.invoke(app, ["compare", str(a), str(b), "--detect-tol", "50ms"])
    assert result.exit_code == 0, result.output
    assert "the runs agree within tolerance" in result.output
    result = cli.invoke(app, ["compare", str(a), str(b), "--detect-tol", "fast", "--sla-tol", "-1"])
    assert result.exit_code == 2
    assert "--detect-tol: expected a duration" in result.output
    assert "--sla-tol: expected a non-negative number, got -1.0" in result.output
    result = cli.invoke(app, ["compare", str(a), str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a directory" in result.output
