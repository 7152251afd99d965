"""scenarios/scale-1000.yaml in the simulator: wall time and peak memory. Goals ≤ 10 min, ≤ 8 GB.

Runs `patronus-lab run scenarios/scale-1000.yaml --backend sim` as a child process (what a user runs:
simulation, raw data, reports) and measures its wall time and its peak resident memory (the child's
`ru_maxrss`). Two records: `sim_scale1000_wall` (s) and `sim_scale1000_peak_memory` (MB); both say
whether the scenario's expectations passed (exit 0) and where the run directory was.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write

ROOT = Path(__file__).resolve().parent.parent
GOAL_WALL_S = 600.0
GOAL_MEMORY_MB = 8 * 1024.0


def main() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="patronus-bench-scale-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "emulation.cli", "run", str(ROOT / "scenarios" / "scale-1000.yaml"),
               "--backend", "sim", "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    details = {"exit_code": proc.returncode, "expectations_passed": proc.returncode == 0,
               "output_tail": proc.stdout.strip().splitlines()[-8:] + proc.stderr.strip().splitlines()[-5:]}
    return [write("sim_scale1000_wall", wall, "s", GOAL_WALL_S, higher_is_better=False, **details),
            write("sim_scale1000_peak_memory", peak_mb, "MB", GOAL_MEMORY_MB, higher_is_better=False, **details)]


if __name__ == "__main__":
    for rec in main():
        print(rec)
