"""`patronus-lab run --repeat N --backend sim` end to end: N seeds into runs/1 … N, each a complete run,
a combined report judged by each expectation's rule, byte-identical for the same seeds, rebuilt by
`patronus-lab report DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emulation.backends.sim import run_sim
from emulation.cli import app
from emulation.scenario import load
from emulation.scenario.loader import with_overrides

pytestmark = [pytest.mark.sim, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
FAILOVER = ROOT / "scenarios" / "failover-basic.yaml"
cli = CliRunner()


def _repeat(scenario: Path, out: Path, n: int = 3) -> Any:
    return cli.invoke(app, ["run", str(scenario), "--backend", "sim", "--repeat", str(n), "--out", str(out)])


@pytest.fixture(scope="module")
def repeated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("repeat") / "fb"
    return out, _repeat(FAILOVER, out)


def test_three_seeds_three_complete_runs_and_a_combined_report(repeated: tuple[Path, Any], tmp_path: Path) -> None:
    out, result = repeated
    assert result.exit_code == 0, result.output
    assert "failover-basic: passed over 3 of 3 runs" in result.output
    doc = json.loads((out / "summary.json").read_text())
    assert (doc["scenario"], doc["backend"], doc["seed"], doc["passed"], doc["verdict"]) == \
        ("failover-basic", "sim", 1, True, "passed")
    assert [(r["dir"], r["seed"], r["passed"], r["exit_code"]) for r in doc["runs"]] == \
        [("runs/1", 1, True, 0), ("runs/2", 2, True, 0), ("runs/3", 3, True, 0)]
    sc = load(FAILOVER)
    assert [e["text"] for e in doc["expectations"]] == [e.text for e in sc.expectations]
    for e in doc["expectations"]:
        assert e["rule"] == "every_run" and len(e["values"]) == 3 and e["runs_passed"] == 3
        assert e["stats"]["n"] == 3 and e["stats"]["ci_low"] is None        # 3 runs: no interval claimed
    gaps = {(m["item"], m["metric"]): m for m in doc["metrics"]}
    cbr_gap = gaps[("cut hq.isp1 / cbr", "gap_ms")]
    assert cbr_gap["n"] == 3 and cbr_gap["min"] <= cbr_gap["median"] <= cbr_gap["max"]
    assert cbr_gap["max"] == pytest.approx(doc["expectations"][0]["value"] * 1000, abs=1e-3)
    for f in ("report.md", "report.html", "junit.xml", "repeat.json", "scenario.yaml"):
        assert (out / f).is_file(), f
    for i in (1, 2, 3):
        run = out / "runs" / str(i)
        s = json.loads((run / "summary.json").read_text())
        assert s["seed"] == i and s["backend"] == "sim"
        for f in ("report.md", "report.html", "junit.xml", "raw/run.json", "raw/packets.csv", "plots"):
            assert (run / f).exists(), (i, f)
    # runs/2 is exactly the run of seed 2 on its own
    alone = tmp_path / "seed2"
    assert run_sim(with_overrides(sc, {"seed": 2}), alone) == 0
    assert (alone / "summary.json").read_bytes() == (out / "runs" / "2" / "summary.json").read_bytes()
    # each run directory is a normal run: `report runs/3` rebuilds it
    r3 = cli.invoke(app, ["report", str(out / "runs" / "3")])
    assert r3.exit_code == 0 and "failover-basic: passed" in r3.output, r3.output


def test_report_rebuilds_the_combined_report_byte_for_byte(repeated: tuple[Path, Any]) -> None:
    out, _ = repeated
    before = {f: (out / f).read_bytes() for f in ("summary.json", "report.md", "junit.xml")}
    (out / "summary.json").unlink()
    r = cli.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert "failover-basic: passed over 3 of 3 runs" in r.output
    assert {f: (out / f).read_bytes() for f in before} == before


def test_the_same_seeds_give_a_byte_identical_summary(repeated: tuple[Path, Any], tmp_path: Path) -> None:
    out, _ = repeated
    again = _repeat(FAILOVER, tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "summary.json").read_bytes() == (out / "summary.json").read_bytes()
    assert (tmp_path / "again" / "report.md").read_bytes() == (out / "report.md").read_bytes()


def test_quantile_and_pass_rate_over_simulated_seeds(repeated: tuple[Path, Any], tmp_path: Path) -> None:
    """A limit between the median and the worst of the three seeds' gaps: every-run and the 100 %
    quantile fail it, the 50 % quantile and a two-thirds pass rate pass it."""
    out, _ = repeated
    values = json.loads((out / "summary.json").read_text())["expectations"][0]["values"]     # cbr's gap, s
    _, mid, high = sorted(values)
    assert mid < high, values               # three seeds, three gaps (the limit goes between two of them)
    limit = f"{(mid + high) / 2 * 1000:.3f}ms"
    sc = with_overrides(load(FAILOVER), {"expectations": [
        {"failover_gap": {"flow": "cbr", "max": limit}},
        {"failover_gap": {"flow": "cbr", "max": limit, "quantile": "100%"}},
        {"failover_gap": {"flow": "cbr", "max": limit, "quantile": "50%"}},
        {"failover_gap": {"flow": "cbr", "max": limit, "pass_rate": "66%"}},
        {"failover_gap": {"flow": "cbr", "max": limit, "pass_rate": "67%"}},
        {"sla_compliance": {"flow": "cbr", "min": "90%", "quantile": "90%"}},
    ]})
    path = tmp_path / "rules.yaml"
    path.write_text(sc.to_yaml())
    r = _repeat(path, tmp_path / "rules")
    assert r.exit_code == 1, r.output
    doc = json.loads((tmp_path / "rules" / "summary.json").read_text())
    got = [(e["rule"], e["verdict"], e["value"]) for e in doc["expectations"]]
    assert got[0] == ("every_run", "failed", high)
    assert got[1] == ("quantile", "failed", high)
    assert got[2] == ("quantile", "passed", mid)
    assert got[3] == ("pass_rate", "passed", pytest.approx(2 / 3))
    assert got[4] == ("pass_rate", "failed", pytest.approx(2 / 3))
    assert got[5][:2] == ("quantile", "passed")
    # one run on its own judges every expectation on itself: the runs below the limit pass
    assert doc["verdict"] == "failed" and [r["passed"] for r in doc["runs"]] == [v < high for v in values]
    junit = (tmp_path / "rules" / "junit.xml").read_text()
    assert 'tests="6" failures="3"' in junit
