"""Everything measured about one run, in one value: `analyse(load_run(DIR))`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from emulation.measure.expectations import FAILED, INCONCLUSIVE, PASSED, ExpectationResult, evaluate
from emulation.measure.flows import FlowStats, flow_stats
from emulation.measure.ledger import Detection, LedgerEntry, detections, ledger, ledger_frame
from emulation.measure.paths import PathSummary, path_summaries
from emulation.measure.platform import load_noise, load_platform
from emulation.measure.rundata import RunData
from emulation.measure.sla import SlaResult, flow_sla


@dataclass(frozen=True, eq=False)
class Analysis:
    run: RunData
    flows: tuple[FlowStats, ...]          # packet flows, by name
    sla: tuple[SlaResult, ...]            # flows with per-packet (or per-request) data, by name
    ledger: tuple[LedgerEntry, ...]       # by edge, then flow
    detections: tuple[Detection, ...]     # one per breaking edge
    paths: tuple[PathSummary, ...]        # by site, path
    expectations: tuple[ExpectationResult, ...]   # run.json's order
    platform: dict[str, Any] | None = None  # what the host did (Mininet runs; None in simulation)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.expectations)

    @property
    def verdict(self) -> str:
        """failed if an expectation failed; inconclusive if none failed but the platform's noise
        accounts for a miss; passed otherwise."""
        verdicts = {e.verdict for e in self.expectations}
        if FAILED in verdicts:
            return FAILED
        return INCONCLUSIVE if INCONCLUSIVE in verdicts else PASSED

    def ledger_frame(self) -> pd.DataFrame:
        return ledger_frame(self.ledger)

    def sla_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(s) for s in self.sla], columns=list(SlaResult.__dataclass_fields__))

    def paths_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(p) for p in self.paths], columns=list(PathSummary.__dataclass_fields__))

    def expectations_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(e) for e in self.expectations],
                            columns=list(ExpectationResult.__dataclass_fields__))


def analyse(run: RunData) -> Analysis:
    flows = sorted(run.run.flows, key=lambda f: f.name)
    stats = [flow_stats(run, f.name) for f in flows if f.has_packets]
    sla = [s for s in (flow_sla(run, f) for f in flows) if s is not None]
    dets = detections(run)
    noise = load_noise(run.dir / "raw")
    return Analysis(run=run, flows=tuple(stats), sla=tuple(sla), ledger=tuple(ledger(run)), detections=tuple(dets),
                    paths=tuple(path_summaries(run)),
                    expectations=tuple(evaluate(run, {s.flow: s for s in stats}, dets, noise)),
                    platform=load_platform(run.dir / "raw"))
