"""The platform's noise during a run, and whether it could have decided an expectation.

A Mininet run shares this machine with everything it emulates. Two kinds of noise are measured
(`emulation.platform`, `emulation.stallwatch`) and read back here from `raw/`:

* **host stalls** (`host_stalls.csv`): a real-time process that only sleeps woke up late; for that
  long nothing of the test-bed ran, wire included. A stall is the interval [woke − lag, woke].
* **relay lateness** (`platform.csv`): per second, the most any relay released a held frame after its
  emulated release time: delay the scenario did not ask for, on every frame of that second.

`Noise.disturbance(lo, hi)` is how much of the interval [lo, hi] (scenario seconds) the platform took:
the stall time overlapping it plus the worst relay lateness within it. An expectation that failed is
*inconclusive* when that disturbance, where the expectation was decided, is enough to explain the
miss (`emulation.measure.expectations` asks, per kind, the counterfactual question); a miss the noise
cannot account for stays a failure, however noisy the host was elsewhere. Noise only ever makes an
SD-WAN look worse (later detection, longer gaps, more losses, extra path changes), so it can turn a
pass into a fail but never the reverse: a passed expectation is passed.

Sim runs have no platform: `NO_NOISE`, nothing is ever inconclusive there.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A disturbance smaller than this is not noise worth naming: the stall watcher reports wake-ups 20 ms
# or more late, and a relay 20 ms late is far outside its measured error (0.17 ms mean, 1.2 ms p99).
NOTABLE_S = 0.020
RELAY_LATE_FLOOR_S = 0.001      # relay lateness below 1 ms is the relay's normal error, not noise


@dataclass(frozen=True, slots=True)
class Noise:
    stalls: tuple[tuple[float, float], ...] = ()          # (from_s, to_s), scenario seconds
    relay_late: tuple[tuple[float, float, float], ...] = ()   # (from_s, to_s, late max s), late ≥ floor

    def disturbance(self, lo: float, hi: float) -> float:
        """Seconds of [lo, hi] the platform took: stall overlap, plus the worst relay lateness there."""
        stalled = sum(max(0.0, min(hi, b) - max(lo, a)) for a, b in self.stalls)
        late = max((s for a, b, s in self.relay_late if a < hi and b > lo), default=0.0)
        return stalled + late

    def notable(self, lo: float, hi: float) -> bool:
        return self.disturbance(lo, hi) >= NOTABLE_S

    def describe(self, lo: float, hi: float) -> str:
        """What the platform did in [lo, hi], for a verdict's reason."""
        parts = [f"the host stalled {1000.0 * (b - a):.0f} ms at {b:.2f} s" for a, b in self.stalls
                 if a < hi and b > lo]
        late = [(s, a) for a, b, s in self.relay_late if a < hi and b > lo]
        if late:
            worst, at = max(late)
            parts.append(f"relays released frames up to {1000.0 * worst:.1f} ms late (at {at:.0f}-{at + 1:.0f} s)")
        return "; ".join(parts) if parts else "no platform noise"

    @property
    def empty(self) -> bool:
        return not self.stalls and not self.relay_late


NO_NOISE = Noise()      # the simulator's platform: none


def load_noise(raw: Path) -> Noise:
    """The noise recorded in a run's raw/ directory (none for a run without platform records)."""
    stalls: list[tuple[float, float]] = []
    p = raw / "host_stalls.csv"
    if p.exists():
        with open(p) as fh:
            for row in csv.DictReader(fh):
                try:
                    at, lag = float(row["at_s"]), float(row["lag_ms"]) / 1000.0
                except (KeyError, TypeError, ValueError):
                    continue
                stalls.append((at - lag, at))
    late: list[tuple[float, float, float]] = []
    p = raw / "platform.csv"
    if p.exists():
        with open(p) as fh:
            for row in csv.DictReader(fh):
                try:
                    at = float(row["at"])
                    mx = float(row["relay_late_max_ms"]) / 1000.0 if row.get("relay_late_max_ms") else 0.0
                except (KeyError, TypeError, ValueError):
                    continue
                if mx >= RELAY_LATE_FLOOR_S:
                    late.append((at - 1.0, at, mx))
    return Noise(tuple(sorted(stalls)), tuple(sorted(late)))


def load_platform(raw: Path) -> dict[str, Any] | None:
    """summary.json's `platform`, as the runner summarized it into raw/platform.json (None: no record,
    e.g. a simulated run)."""
    p = raw / "platform.json"
    if not p.exists():
        return None
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def spans_disturbance(noise: Noise, spans: Sequence[tuple[float, float]]) -> float:
    return sum(noise.disturbance(a, b) for a, b in spans)
