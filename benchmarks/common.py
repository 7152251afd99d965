"""Shared helpers of the benchmarks: timing on one core, and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent.parent / "reports" / "bench"


def pin_one_core() -> int | None:
    """Run on one CPU so that 'per second on one core' means what it says."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def best_rate(run: Callable[[], int], repeats: int = 5) -> tuple[float, list[float]]:
    """Call `run` (which returns how many operations it did) `repeats` times; the best rate is the
    figure (the least disturbed by the rest of the machine), all rates are kept as detail."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run()
        dt = time.perf_counter() - t0
        rates.append(n / dt)
    return max(rates), rates


def write(name: str, value: float, unit: str, goal: float, *, higher_is_better: bool = True,
          ok: bool | None = None, **details: Any) -> dict[str, Any]:
    """Write reports/bench/NAME.json. `ok` defaults to value against goal; a benchmark whose verdict is
    more than one figure (several bars) says it itself."""
    if ok is None:
        ok = value >= goal if higher_is_better else value <= goal
    rec = {"name": name, "value": round(value, 3), "unit": unit, "goal": goal, "ok": ok,
           "higher_is_better": higher_is_better, "python": platform.python_version(),
           "machine": platform.machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **details}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec
