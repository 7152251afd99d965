"""Flow mode's coasting probes (`PathMonitor.coast`, driven by `SimAgent._shortcut_home`): between
timeline steps, a steady path's probes are sent and answered by its monitor itself. The run must say
what it says when every probe is an event of its own, with a fraction of the events."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from emulation.backends.sim.engine import Simulation
from emulation.backends.sim.network import SimOptions
from emulation.backends.sim.synthetic import regional_mesh_doc
from emulation.report import write_reports
from emulation.scenario import from_dict

pytestmark = pytest.mark.sim


def _close(a: Any, b: Any) -> bool:
    """Equal; times (above 10⁶: wall clock) to a microsecond, other floats to a part in 10⁴ or 0.05 (ms).
    Coasted probes are not in the link models, so a probe that does not coast (around a timeline step)
    never queues behind one: its RTT can differ by a few probes' serialization, 8 µs each at
    100 Mbit/s, the fidelity flow mode's shortcut already has. The rest is float noise."""
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, int | float) and isinstance(b, int | float)):
            return False
        if abs(a) > 1e6:
            return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-6)
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=0.05)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _number(v: str) -> Any:
    try:
        return float(v)
    except ValueError:
        return v


def _run(tmp: Path, coast: bool) -> tuple[Simulation, Path]:
    doc = regional_mesh_doc(regions=2, sites_per_region=3, uplinks=2, probe_interval="100ms", duration="90s",
                            flows_per_region=1)
    doc["timeline"] = [{"at": "30s", "action": "cut", "link": "eu-1.isp1"},
                       {"at": "50s", "action": "restore", "link": "eu-1.isp1"},
                       {"at": "60s", "action": "impair", "link": "us-hub-1.isp2", "delay": "80ms"},
                       {"at": "70s", "action": "agent_stop", "site": "us-1"},
                       {"at": "75s", "action": "agent_start", "site": "us-1"}]
    out = tmp / ("coast" if coast else "every-probe")
    sim = Simulation(from_dict(doc), out, "flow", SimOptions(probe_coast=coast))
    sim.run()
    sim.write_raw()
    assert write_reports(out).passed
    return sim, out


def test_coasting_probes_tell_what_every_probe_tells_with_a_fraction_of_the_events(tmp_path: Path) -> None:
    each, each_out = _run(tmp_path, coast=False)
    coast, coast_out = _run(tmp_path, coast=True)
    assert coast.probes_sent == each.probes_sent
    assert coast.events_processed * 5 < each.events_processed
    assert _close(json.loads((coast_out / "summary.json").read_text()),
                  json.loads((each_out / "summary.json").read_text()))
    events = [[json.loads(line) for line in (out / "raw" / "events.jsonl").read_text().splitlines()]
              for out in (each_out, coast_out)]
    assert len(events[0]) == len(events[1])
    kinds = {e["kind"] for e in events[0]}
    assert {"PathStatusChanged", "FailoverTriggered", "AgentStarted"} <= kinds
    bad = [(a, b) for a, b in zip(*events, strict=True) if not _close(a, b)]
    assert not bad, bad[:2]
    rows = []
    for out in (each_out, coast_out):
        with open(out / "raw" / "path_metrics.csv") as fh:
            rows.append([[_number(v) for v in r] for r in csv.reader(fh)])
    assert len(rows[0]) == len(rows[1]) > 1000
    bad = [(a, b) for a, b in zip(*rows, strict=True) if not _close(a, b)]
    assert not bad, bad[:2]


def test_a_jittery_link_never_coasts(tmp_path: Path) -> None:
    doc = regional_mesh_doc(regions=1, sites_per_region=2, uplinks=1, probe_interval="100ms", duration="20s")
    for group in doc["site_groups"].values():
        group["uplinks"]["isp1"]["jitter"] = "1ms"
    sims = [Simulation(from_dict(doc), tmp_path / str(c), "flow", SimOptions(probe_coast=c)) for c in (False, True)]
    for sim in sims:
        sim.run()
    assert sims[0].events_processed == sims[1].events_processed
    assert all(a.logic is not None and a.logic.monitor.coasted_probes == 0 for a in sims[1].agents.values())
