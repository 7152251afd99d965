"""One runtime, one plan: a load-balanced scenario spreads its buckets over the same paths on Mininet
(real agents, nftables) as in the simulator (the kernel modelled). Both write the plan each site's
dataplane follows at the end of the run (`raw/steering.json`, the agent's `GET /steering`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.emulation, pytest.mark.timeout(300)]

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]

# Two paths from hq to br, far apart in latency; the `spread` policy balances UDP over every usable path
# (a tolerance of 100 points puts both in its tier) by flow hash (rendezvous: the map does not depend on
# which path scores a little better on a given run).
SCENARIO = """
version: 1
name: same-plan
duration: 6s
sites:
  hq:
    uplinks:
      isp1: {bandwidth: 100mbit, delay: 5ms}
      isp2: {bandwidth: 100mbit, delay: 30ms}
    agent:
      monitor: fast
      policies:
        - {name: spread, priority: 10, match: {protocol: udp}, load_balance: flow_hash, lb_tolerance: 100}
  br:
    uplinks:
      isp1: {bandwidth: 100mbit, delay: 5ms}
    agent: {monitor: fast}
traffic:
  - {name: cbr, type: udp_cbr, from: hq, to: br, rate: 50}
"""


def _plan(scenario: Path, out: Path, *backend: str) -> dict[str, dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(out), *backend],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads((out / "raw" / "steering.json").read_text())


def test_a_balancing_policy_maps_its_buckets_alike_on_mininet_and_in_the_simulator(tmp_path: Path) -> None:
    scenario = tmp_path / "same-plan.yaml"
    scenario.write_text(SCENARIO)
    real = _plan(scenario, tmp_path / "mininet")
    model = _plan(scenario, tmp_path / "sim", "--backend", "sim")

    def spread(plans: dict[str, dict[str, object]]) -> dict[int, str]:
        rows = plans["hq"]["new"]
        assert isinstance(rows, list)
        return {r["bucket"]: r["path"] for r in rows if r["policy"] == "spread" and r["remote"] == "br"}

    a, b = spread(real), spread(model)
    assert real["hq"]["buckets"] == model["hq"]["buckets"] == len(a) == 16
    assert a == b
    assert set(a.values()) == {"br:isp1-isp1", "br:isp2-isp1"}       # both paths carry some buckets
    assert not real["hq"]["held"] and not model["hq"]["held"]
