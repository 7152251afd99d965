"""`patronus-lab run --repeat 2` on the Mininet backend: two compressed failover-basic runs one after
another (each network torn down before the next starts), each a complete run directory, and one
combined report judged over both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.emulation.test_scenarios_short import ROOT, _ours, _short

pytestmark = [pytest.mark.emulation, pytest.mark.timeout(900)]


def test_repeat_2_on_mininet(tmp_path: Path) -> None:
    from emulation.scenario import load, with_overrides

    # the story of test_scenarios_short's failover-basic; each expectation must hold in one of the two runs
    # at least (pass_rate), so a run the host disturbed does not decide alone, while the SD-WAN's own
    # behaviour still must show in the runs
    short = load(_short("failover-basic", tmp_path))
    exps = [{e.kind: {**e.to_dict()[e.kind], "pass_rate": "50%"}} for e in short.expectations]
    exps[0]["failover_gap"] = {**exps[0]["failover_gap"], "pass_rate": None, "quantile": "50%"}
    scenario = tmp_path / "fb-repeat.yaml"
    scenario.write_text(with_overrides(short, {"expectations": exps}).to_yaml())
    out = tmp_path / "rep"
    before = _ours()
    r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--repeat", "2", "--out",
                        str(out)], capture_output=True, text=True, timeout=850, cwd=ROOT)
    leftovers = _ours() - before
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert not leftovers, leftovers
    # one after another: run 1's network is torn down before run 2 builds its own
    lines = r.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("run ") and "(seed" in line and "→" in line]
    downs = [i for i, line in enumerate(lines) if "tearing down" in line]
    builds = [i for i, line in enumerate(lines) if "building" in line]
    assert len(starts) == len(downs) == len(builds) == 2, r.stdout[-3000:]
    assert starts[0] < builds[0] < downs[0] < starts[1] < builds[1] < downs[1]

    doc = json.loads((out / "summary.json").read_text())
    assert (doc["backend"], doc["verdict"], doc["passed"]) == ("mininet", "passed", True)
    assert doc["impairment_backend"] in ("relay", "netem")
    assert [(x["dir"], x["seed"]) for x in doc["runs"]] == [("runs/1", 1), ("runs/2", 2)]
    assert doc["repeat"]["made"] == 2
    gap = doc["expectations"][0]
    assert (gap["rule"], gap["quantile"], len(gap["values"])) == ("quantile", 0.5, 2)
    assert all(e["rule"] == "pass_rate" and e["runs_judged"] == 2 for e in doc["expectations"][1:])
    metrics = {(m["section"], m["item"], m["metric"]): m for m in doc["metrics"]}
    detect = metrics[("failover", "cut hq.isp1 / cbr", "detect_ms")]
    assert detect["n"] == 2 and detect["max"] < 200, detect
    for i in (1, 2):
        run = out / "runs" / str(i)
        s = json.loads((run / "summary.json").read_text())
        assert s["backend"] == "mininet" and s["seed"] == i
        for f in ("report.html", "junit.xml", "raw/packets.csv", "raw/events.jsonl", "raw/host_stalls.csv"):
            assert (run / f).exists(), (i, f)
    for f in ("report.md", "report.html", "junit.xml"):
        assert (out / f).is_file(), f
