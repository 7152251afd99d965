"""Every shipped scenario, with its timeline compressed, on the Mininet backend in CI: real agents,
real relays, real packets, the scenario's own expectations. Each run must pass and leave no namespace
of ours behind."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from emulation.stallwatch import HostStallWarning

pytestmark = [pytest.mark.emulation, pytest.mark.timeout(420)]

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]

# scenario -> dotted overrides (Scenario.with_overrides) that keep its story and shorten its pauses
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
}


def _ours() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("pt")}


def _short(name: str, tmp_path: Path) -> Path:
    from emulation.scenario import load

    sc = load(ROOT / "scenarios" / f"{name}.yaml").with_overrides(SHORT[name])
    path = tmp_path / f"{name}-short.yaml"
    path.write_text(sc.to_yaml())
    return path


@pytest.mark.parametrize("name", sorted(SHORT))
def test_shipped_scenario_short_passes_and_leaves_nothing(name: str, tmp_path: Path) -> None:
    scenario = _short(name, tmp_path)
    out = tmp_path / "run"
    before = _ours()
    r = _run(scenario, out)
    leftovers = _ours() - before
    summary = json.loads((out / "summary.json").read_text())
    failed = [f"{e['text']} (measured {e['value']})" for e in summary["expectations"] if not e["passed"]]
    stall = _longest_stall_ms(out)
    if failed and stall >= _detection_ms(scenario):
        # the host, not the SD-WAN: every path misses its probes at once. Measured, so once more, and said
        warnings.warn(HostStallWarning(f"{name}: the host stalled for {stall:.0f} ms during the run and "
                      f"{'; '.join(failed)} failed; running it once more"), stacklevel=1)
        out = tmp_path / "run-again"
        r = _run(scenario, out)
        leftovers |= _ours() - before
        summary = json.loads((out / "summary.json").read_text())
        failed = [f"{e['text']} (measured {e['value']})" for e in summary["expectations"] if not e["passed"]]
    assert r.returncode == 0, "\n".join(failed) + "\n" + r.stdout[-2000:] + r.stderr[-2000:]
    assert summary["passed"] and summary["backend"] == "mininet" and not failed
    assert summary["impairment_backend"] in ("relay", "netem")
    for f in ("report.md", "report.html", "junit.xml", "raw/packets.csv", "raw/events.jsonl", "plots"):
        assert (out / f).exists(), f
    assert not leftovers, leftovers
    if name == "failover-basic":
        fo = [f for f in summary["failovers"] if f["flow"] == "cbr"]
        assert fo and fo[0]["gap_ms"] < 300 and fo[0]["detect_ms"] < 200
        _sim_agrees(scenario, out, tmp_path / "sim")
    if name == "agent-restart":
        _sim_agrees_on_restart(scenario, out, tmp_path / "sim")


def _run(scenario: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(out)],
                          capture_output=True, text=True, timeout=400, cwd=ROOT)


def _longest_stall_ms(out: Path) -> float:
    """The longest host stall the run's watcher measured (raw/host_stalls.csv), 0 when none."""
    with open(out / "raw" / "host_stalls.csv") as fh:
        return max((float(r["lag_ms"]) for r in csv.DictReader(fh)), default=0.0)


def _detection_ms(scenario: Path) -> float:
    from emulation.scenario import load

    return min(s.agent.monitor.detection_time_s for s in load(scenario).sites) * 1000.0


def _sim_agrees(scenario: Path, mininet_out: Path, sim_out: Path) -> None:
    """The same scenario in simulation detects the cut within one probe interval of the emulation."""
    from emulation.backends.sim import run_sim
    from emulation.compare import compare_runs
    from emulation.scenario import load

    sc = load(scenario)
    assert run_sim(sc, sim_out) == 0
    c = compare_runs(mininet_out, sim_out)
    interval_s = max(s.agent.monitor.interval_s for s in sc.sites)
    detections = [d for d in c.differences if d.metric == "detect_ms"]
    assert detections, c.differences
    for d in detections:
        assert d.a is not None and d.b is not None, d
        assert abs(d.a - d.b) <= interval_s * 1000.0, d


def _sim_agrees_on_restart(scenario: Path, mininet_out: Path, sim_out: Path) -> None:
    """The same restarts in simulation: the flow's lost packets within one probe window of the
    emulation's (the agents restarted gracefully on both: no failover to compare), and `compare`
    flags nothing about its loss."""
    from emulation.backends.sim import run_sim
    from emulation.compare import compare_runs
    from emulation.scenario import load

    sc = load(scenario)
    assert run_sim(sc, sim_out) == 0
    c = compare_runs(mininet_out, sim_out)
    m = sc.site("hq").agent.monitor
    window = round(100 * m.interval_s * m.window)          # the flow's 100 packets/s over one probe window
    lost = next(e for e in c.expectations if "loses" in e.text)
    assert lost.a_passed and lost.b_passed, lost
    assert lost.a_value is not None and lost.b_value is not None and abs(lost.a_value - lost.b_value) <= window, lost
    loss = [d for d in c.differences if d.metric == "loss_pct"]
    assert loss and not [d for d in loss if d.flagged], loss
    assert not [f for f in json.loads((mininet_out / "summary.json").read_text())["failovers"]]


def test_keep_leaves_the_network_running_and_clean_removes_it(tmp_path: Path) -> None:
    """--keep: agents, relays and namespaces outlive the run (the relays answer on their control
    sockets); `patronus-lab clean --run ID` then removes all of it."""
    import re
    import socket

    from emulation.scenario import load

    sc = load(ROOT / "scenarios" / "failover-basic.yaml").with_overrides(
        {"duration": "6s", "timeline.0.at": "2s", "timeline.1.at": "4s", "expectations": []})
    scenario = tmp_path / "keep.yaml"
    scenario.write_text(sc.to_yaml())
    before = _ours()
    r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(tmp_path / "run"),
                        "--keep"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    m = re.search(r"clean --run ([0-9a-f]{4})", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    run_id = m.group(1)
    try:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        kept = _ours() - before
        assert kept and all(n.startswith(f"pt{run_id}-") for n in kept)
        socks = re.findall(r"relay control socket (\S+)", r.stdout)
        assert len(socks) == 4                                   # 2 sites × 2 uplinks
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(socks[0])
            s.sendall(b'{"counters": true}\n')
            reply = json.loads(s.makefile().readline())
        assert reply["ok"] and reply["counters"]["xy"]["packets_in"] > 0
        ns = re.search(r"hq: ip netns exec (\S+) bash", r.stdout)
        assert ns, r.stdout[-2000:]
        health = subprocess.run(["ip", "netns", "exec", ns.group(1), sys.executable, "-m", "patronus.cli", "status",
                                 "--config", str(tmp_path / "run" / "agents" / "hq.yaml")],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert health.returncode == 0 and "br:isp1-isp1" in health.stdout, health.stdout + health.stderr
    finally:
        c = subprocess.run([sys.executable, "-m", "emulation.cli", "clean", "--run", run_id],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert c.returncode == 0, c.stdout + c.stderr
    assert not (_ours() - before)
    assert not any(Path(p).exists() for p in socks)
