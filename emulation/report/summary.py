"""summary.json: the stable contract of a run's result.

    {
      "scenario": str, "backend": "mininet"|"sim", "impairment_backend": "netem"|"relay"|"model",
      "seed": int, "started_at": wall s, "duration_s": float, "passed": bool,
      "verdict": "passed"|"failed"|"inconclusive",
      "expectations": [{"text": str, "passed": bool, "value": number|null,      # run.json's order
                        "verdict": "passed"|"failed"|"inconclusive", "reason": str|null}],
      "failovers": [{"flow": str, "event": "cut hq.isp1" | "flap hq.isp1 down 2/3" | ...,
                     "at_s": scheduled scenario s, "gap_ms": float|null, "lost_packets": int|null,
                     "detect_ms": float|null,
                     "ledger": {"impairment_applied_ms": 0.0, "first_probe_lost_ms", "path_declared_ms",
                                "routing_decision_ms", "steering_changed_ms", "first_packet_new_path_ms",
                                "sla_restored_ms": float|null (ms after the impairment took effect),
                                "sla_violated_ms": float|null, "from_path", "to_path": str|null,
                                "declared": "down"|"degraded"|null}}],
      "sla": [{"flow", "class", "compliance_pct", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
               "jitter_ms", "loss_pct"}],
      "paths": [{"site", "path", "links": [str], "samples", "first_s", "last_s", "latency_mean_ms",
                 "latency_min_ms", "latency_max_ms", "jitter_mean_ms", "loss_mean_pct", "loss_max_pct",
                 "score_mean", "score_min", "score_max", "time_in_status_s": {"up", "degraded", "down"},
                 "status_changes", "probes_sent", "probes_timed_out", "sla_compliance_pct": {class: pct}}],
      "platform": null (simulation) | {"cpus", "seconds", "cpu_busy_mean_pct", "cpu_busy_p95_pct",
                   "cpu_busy_max_pct", "steal_max_pct", "components_mean_pct": {relays, agents, tunnels,
                   traffic, runner}, "components_p95_pct": {...}, "max_stall_ms", "stalls",
                   "relay_late_p99_ms", "relay_late_max_ms", "relay_frames_held", "relay_sched"}
    }

`passed` is true only for the verdict "passed". "inconclusive" (Mininet runs only): no expectation
failed on its own, but at least one missed where the platform's measured noise accounts for the miss
(each such expectation has `passed: false`, `verdict: "inconclusive"` and its `reason`); see
emulation.measure.platform.

Expectation values are in the unit of the parameter they are compared with (seconds, counts, ratios
0..1); `null` when there was nothing to measure. The top-level keys are exactly SUMMARY_KEYS. The file is
deterministic: keys sorted, lists in a defined order (expectations as run.json lists them; failovers by
at_s, event, flow; sla by flow; paths by site, path), floats rounded (3 decimals for `*_ms` and `*_pct`
and their children, 6 for everything else), NaN → null, and nothing from the wall clock of the report
itself. Equal raw data gives a byte-identical file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emulation.measure.analysis import Analysis
from emulation.measure.ledger import STAGES

SUMMARY_KEYS = ("scenario", "backend", "impairment_backend", "seed", "started_at", "duration_s", "passed",
                "verdict", "expectations", "failovers", "sla", "paths", "platform")


def clean_value(value: Any, key: str = "") -> Any:
    """JSON-ready and deterministic: rounded floats, no NaN, no numpy scalars, tuples as lists."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return None
        v = round(v, 3 if key.endswith(("_ms", "_pct")) else 6)
        return 0.0 if v == 0 else v
    if isinstance(value, dict):
        # the children of a mapping with a unit in its name have that unit (time_in_status_s: {"up": ...})
        inherit = key.endswith(("_ms", "_pct", "_s"))
        return {str(k): clean_value(v, key if inherit else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(v, key) for v in value]
    raise TypeError(f"{key}: cannot put {type(value).__name__} in summary.json")


@dataclass(frozen=True)
class Summary:
    scenario: str
    backend: str
    impairment_backend: str
    seed: int
    started_at: float
    duration_s: float
    passed: bool
    verdict: str                         # passed | failed | inconclusive
    expectations: list[dict[str, Any]]   # text, passed, value, verdict, reason
    failovers: list[dict[str, Any]]      # flow, event, at_s, gap_ms, lost_packets, detect_ms, ledger
    sla: list[dict[str, Any]]            # flow, class, compliance_pct, latency_p50/p95/p99_ms, jitter_ms, loss_pct
    paths: list[dict[str, Any]]          # site, path, links, ... (PathSummary)
    platform: dict[str, Any] | None      # what the host did (None: simulation)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = clean_value({k: getattr(self, k) for k in SUMMARY_KEYS})
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Summary:
        """From a summary.json; one written before `verdict` and `platform` existed reads as passed or
        failed, with no platform."""
        d: dict[str, Any] = {k: doc.get(k) for k in SUMMARY_KEYS}
        if d["verdict"] is None:
            d["verdict"] = "passed" if doc["passed"] else "failed"
        return cls(**d)


def failover_records(analysis: Analysis) -> list[dict[str, Any]]:
    out = []
    for e in analysis.ledger:
        ledger: dict[str, Any] = {f"{s}_ms": e.stages_ms[s] for s in STAGES}
        ledger.update({"sla_violated_ms": e.sla_violated_ms, "from_path": e.from_path, "to_path": e.to_path,
                       "declared": e.declared})
        out.append({"flow": e.flow, "event": e.event, "at_s": e.at_s, "gap_ms": e.gap_ms,
                    "lost_packets": e.lost_packets, "detect_ms": e.detect_ms, "ledger": ledger})
    out.sort(key=lambda r: (r["at_s"], r["event"], r["flow"]))
    return out


def build_summary(analysis: Analysis) -> Summary:
    info = analysis.run.run
    sla = [{"flow": s.flow, "class": s.traffic_class, "compliance_pct": s.compliance_pct,
            "latency_p50_ms": s.latency_p50_ms, "latency_p95_ms": s.latency_p95_ms,
            "latency_p99_ms": s.latency_p99_ms, "jitter_ms": s.jitter_ms, "loss_pct": s.loss_pct}
           for s in sorted(analysis.sla, key=lambda s: s.flow)]
    paths = [asdict(p) for p in sorted(analysis.paths, key=lambda p: (p.site, p.path))]
    return Summary(
        scenario=info.scenario, backend=info.backend, impairment_backend=info.impairment_backend, seed=info.seed,
        started_at=info.started_at, duration_s=info.duration_s, passed=analysis.verdict == "passed",
        verdict=analysis.verdict,
        expectations=[{"text": e.text, "passed": e.passed, "value": e.value, "verdict": e.verdict,
                       "reason": e.reason} for e in analysis.expectations],
        failovers=failover_records(analysis), sla=sla, paths=paths, platform=analysis.platform)
