"""The platform record of a Mininet run: the relays' lateness histogram, the per-second CPU watch by
component, and its summary."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulation.links import lateness
from emulation.platform import COLUMNS, CpuWatch, PlatformLog, component_of, summarize

pytestmark = pytest.mark.unit


@given(st.floats(min_value=0.0, max_value=2.0 ** 24, exclude_max=True, allow_nan=False))
def test_every_lateness_falls_in_its_bucket_within_a_quarter(us: float) -> None:
    i = lateness.bucket(us)
    lo = lateness.upper_us(i - 1) if i > 0 else 0.0
    hi = lateness.upper_us(i)
    assert lo <= us < hi
    assert us < 1.0 or hi <= 1.25 * max(lo, 1.0) + 1e-9


def test_lateness_quantiles_are_upper_bounds() -> None:
    hist = [0] * lateness.BUCKETS
    for us in [10.0] * 98 + [900.0, 5000.0]:
        hist[lateness.bucket(us)] += 1
    p50, p99 = lateness.quantile_us(hist, 50), lateness.quantile_us(hist, 99)
    assert p50 is not None and 10.0 <= p50 <= 12.5
    assert p99 is not None and 900.0 <= p99 <= 1024.0
    assert lateness.max_us(hist) == pytest.approx(5120.0)
    assert lateness.quantile_us([0] * lateness.BUCKETS, 99) is None
    assert lateness.upper_us(lateness.BUCKETS - 1) == math.inf


@pytest.mark.parametrize(("argv", "comm", "kind"), [
    (["/x/python", "-m", "emulation.links.relay", "--x=x"], "python", "relays"),
    (["/x/python", "-m", "patronus.cli", "agent", "--config", "a.yaml"], "python", "agents"),
    (["/x/python", "-m", "patronus.agent.reflector"], "python", "agents"),
    (["wireguard-go", "-f", "pt1p1"], "wireguard-go", "tunnels"),
    (["/x/python", "-m", "emulation.udpflow", "send"], "python", "traffic"),
    (["iperf3", "-s"], "iperf3", "traffic"),
    (["/x/python", "-m", "emulation.traffic.tap"], "python", "traffic"),
    (["/x/python", "-m", "emulation.stallwatch"], "python", "runner"),
    (["ip", "netns", "exec", "x", "wg"], "ip", "runner"),
])
def test_processes_are_told_apart_by_command_line(argv: list[str], comm: str, kind: str) -> None:
    assert component_of(argv, comm) == kind


def test_the_watch_charges_a_busy_child_to_its_component() -> None:
    """A child that burns CPU for a second shows in the host's busy time and its component's share."""
    code = "import time\nend = time.monotonic() + 1.2\nwhile time.monotonic() < end: pass\n"
    watch = CpuWatch(os.getpid(), period_s=0.3)
    watch.start()
    try:
        child = subprocess.Popen([sys.executable, "-c", code, "emulation.udpflow"])
        child.wait(10)
        deadline = time.monotonic() + 5
        while len(watch.log.rows) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)       # waiting for rows, with a deadline
    finally:
        log = watch.stop()
    col = {c: i for i, c in enumerate(COLUMNS)}
    busiest = max(r[col["runner_pct"]] + r[col["traffic_pct"]] for r in log.rows)
    ncpu = os.cpu_count() or 1
    assert busiest >= 60.0 / ncpu          # the child used most of one core in its busiest period
    assert max(r[col["host_busy_pct"]] for r in log.rows) >= busiest * 0.9


def test_summary_of_the_platform() -> None:
    hist = [0] * lateness.BUCKETS
    hist[lateness.bucket(100.0)] = 99
    hist[lateness.bucket(3000.0)] = 1
    log = PlatformLog(rows=[[1.0, 50.0, 0.0, 10.0, 8.0, 5.0, 4.0, 1.0, 100, 0.1, 3.0],
                            [2.0, 90.0, 2.0, 12.0, 9.0, 6.0, 5.0, 1.0, 100, 0.1, 0.2]],
                      relay_totals={"hq.isp1": {"xy": {"late_us_hist": hist}, "yx": {}}})
    s = summarize(log, [25.0, 41.5], ["fifo:50"])
    assert s["cpu_busy_p95_pct"] == 90.0 and s["cpu_busy_mean_pct"] == 70.0 and s["steal_max_pct"] == 2.0
    assert s["max_stall_ms"] == 41.5 and s["stalls"] == 2
    assert s["relay_late_max_ms"] == pytest.approx(3.072) and s["relay_frames_held"] == 100
    assert s["components_mean_pct"]["relays"] == 11.0 and s["relay_sched"] == ["fifo:50"]
