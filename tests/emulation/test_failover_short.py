"""A short failover-basic on the Mininet backend, in CI: real agents, real relays, real packets."""

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


def short_failover(tmp_path: Path) -> Path:
    """failover-basic with the timeline compressed: cut at 8 s, restore at 14 s, end at 22 s."""
    from emulation.scenario import load

    sc = load(ROOT / "scenarios" / "failover-basic.yaml")
    text = sc.to_yaml().replace("duration: 60s", "duration: 22s").replace("at: 20s", "at: 8s") \
        .replace("at: 40s", "at: 14s")
    path = tmp_path / "failover-short.yaml"
    path.write_text(text)
    assert load(path).duration_s == 22.0
    return path


def test_failover_basic_short_passes_and_leaves_nothing(tmp_path: Path) -> None:
    scenario = short_failover(tmp_path)
    out = tmp_path / "run"
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(out)],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert summary["passed"] and summary["backend"] == "mininet"
    assert all(e["passed"] for e in summary["expectations"])
    fo = [f for f in summary["failovers"] if f["flow"] == "cbr"]
    assert fo and fo[0]["gap_ms"] < 300 and fo[0]["detect_ms"] < 200
    for name in ("report.md", "report.html", "junit.xml", "raw/packets.csv", "raw/events.jsonl"):
        assert (out / name).exists(), name
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ours = [line for line in after.splitlines() if line.startswith("pt") and line not in before]
    assert not ours, ours
