"""The CI versions of the shipped scenarios: each with its timeline compressed, keeping its story.

CI (`tests/emulation/test_scenarios_short.py`) and the stability benchmark (`benchmarks/bench_stability`)
run these; the full-length files in `scenarios/` are what `patronus-lab run` runs by default.

    sc = short_version("brownout")                  # the Scenario, validated like a file
    SHORT["brownout"]                               # its overrides (Scenario.with_overrides)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emulation.scenario.loader import with_overrides
from emulation.scenario.model import Scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# scenario -> dotted overrides that keep its story and shorten its pauses
SHORT: dict[str, dict[str, Any]] = {
    "failover-basic": {"duration": "22s", "timeline.0.at": "8s", "timeline.1.at": "14s"},
    "brownout": {"duration": "34s", "timeline.0.at": "6s", "timeline.0.over": "10s", "timeline.0.steps": 10,
                 "timeline.1.at": "20s", "expectations.2.flow_stays.during": ["6s", "20s"]},
    "flapping": {"duration": "28s", "timeline.0.at": "6s", "timeline.0.count": 3},
    "voip-sla": {"duration": "36s", "timeline.0.at": "5s", "timeline.1.at": "12s", "timeline.2.at": "24s"},
    "six-sites": {"duration": "34s", "timeline.0.at": "8s", "timeline.1.at": "14s", "timeline.2.at": "20s",
                  "timeline.3.at": "26s", "expectations.9.flow_stays.during": ["5s", "13s"]},
    "agent-restart": {"duration": "24s", "timeline.0.at": "5s", "timeline.1.at": "9s", "timeline.2.at": "13s",
                      "timeline.3.at": "17s"},
    "mesh-join": {"duration": "26s", "timeline.0.at": "8s", "traffic.1.start": "18s"},
    "hierarchical-20": {"duration": "22s", "timeline.0.at": "8s"},
}


def full_version(name: str) -> Scenario:
    from emulation.scenario import load

    return load(SCENARIOS / f"{name}.yaml")


def short_version(name: str) -> Scenario:
    """The shipped scenario `name` with its CI overrides (KeyError: it has none)."""
    return with_overrides(full_version(name), SHORT[name])
