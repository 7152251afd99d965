"""Host stalls during an emulation run: how late a process that does nothing but sleep wakes up.

The Mininet test-bed runs real agents in real time; a fast monitor profile calls a path Down after
about 60 ms without replies. When the host itself stalls for that long (a VM's steal time, a burst of
other work on two cores), every path of every agent misses its probes at once, and the run measures the
host, not the SD-WAN. This watcher makes that visible: `python -m emulation.stallwatch` sleeps
`PERIOD_S` at a time (SCHED_FIFO with `--realtime PRIO`: above the test-bed's own real-time
processes, so what it sees is the host not running anything, not them being busy) and prints
`wall time,lag ms` for every wake-up at least `REPORT_MS` late, until it is terminated or its parent
(`--parent PID`) dies: a runner killed with kill -9 leaves no watcher behind (the kernel sends it
SIGTERM, PR_SET_PDEATHSIG). `StallWatch` runs it beside a scenario and returns what it saw; the runner
writes it to `raw/host_stalls.csv` and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from patronus.agent import sched

PERIOD_S = 0.005
REPORT_MS = 20.0


class HostStallWarning(UserWarning):
    """A run failed while the host stalled longer than an agent's detection time (said, not raised)."""


def _end_with_parent(parent: int) -> bool:
    """SIGTERM when the parent dies (Linux); False if it is gone already."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m emulation.stallwatch")
    ap.add_argument("--realtime", type=int, default=None, help="SCHED_FIFO priority")
    ap.add_argument("--parent", type=int, default=None, help="end when this process (our parent) ends")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if a.realtime is not None:
        sched.apply(realtime=a.realtime)
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if a.parent is not None and not _end_with_parent(a.parent):
        return 0
    last = time.monotonic()         # before saying so: from "watching" on, every stall is measured
    print("watching", flush=True)
    while True:
        if not stop:
            time.sleep(PERIOD_S)    # the measurement itself: how much later than asked do we wake?
        now = time.monotonic()
        # a stop that ends a stall (the watcher stopped, resumed and told to end at once) still reports it
        lag_ms = (now - last - PERIOD_S) * 1000.0
        last = now
        if lag_ms >= REPORT_MS:
            print(f"{time.time():.4f},{lag_ms:.1f}", flush=True)
        if stop:
            break
    return 0


class StallWatch:
    """The watcher as a child process: `start()`, then `stop()` returns [(wall time, lag ms)]."""

    def __init__(self, realtime: int | None = None) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.realtime = realtime

    def start(self) -> None:
        argv = [sys.executable, "-m", "emulation.stallwatch", "--parent", str(os.getpid())]
        if self.realtime is not None:
            argv += ["--realtime", str(self.realtime)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        self._proc.stdout.readline()        # "watching": it measures from now on

    def stop(self) -> list[tuple[float, float]]:
        proc, self._proc = self._proc, None
        if proc is None:
            return []
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        stalls = []
        for line in out.splitlines():
            at, _, ms = line.partition(",")
            try:
                stalls.append((float(at), float(ms)))
            except ValueError:
                continue
        return stalls


if __name__ == "__main__":
    sys.exit(main())
