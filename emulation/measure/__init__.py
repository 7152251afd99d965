"""Measurement of a run from its raw data: arrivals, gaps, loss, delay, the failover ledger, SLAs, path
summaries and expectations.

    run = load_run("reports/failover-basic")          # validates; RawDataError names file/line/column
    a = analyse(run)
    a.ledger_frame()                                   # one row per (breaking edge, affected flow)
    latency_cdf(run, "cbr")

Pure analysis: nothing here writes files (see emulation.report) or needs a network.
"""

from emulation.measure.analysis import Analysis, analyse
from emulation.measure.errors import RawDataError
from emulation.measure.expectations import ExpectationResult, evaluate
from emulation.measure.flows import (
    FlowStats,
    arrivals,
    flow_stats,
    gaps_frame,
    latency_cdf,
    latency_series,
    longest_gap,
    nearest_rank,
)
from emulation.measure.ledger import (
    STAGE_TITLES,
    STAGES,
    Detection,
    LedgerEntry,
    detections,
    ledger,
    ledger_frame,
    stage_order_problems,
)
from emulation.measure.load import load_run
from emulation.measure.paths import PathSummary, path_series, path_summaries
from emulation.measure.rundata import ClassTarget, FlowSpec, RunData, RunInfo
from emulation.measure.sla import SlaResult, flow_sla
from emulation.measure.timeline import Edge, edges, on_link

__all__ = [
    "STAGES", "STAGE_TITLES", "Analysis", "ClassTarget", "Detection", "Edge", "ExpectationResult", "FlowSpec",
    "FlowStats", "LedgerEntry", "PathSummary", "RawDataError", "RunData", "RunInfo", "SlaResult", "analyse",
    "arrivals", "detections", "edges", "evaluate", "flow_sla", "flow_stats", "gaps_frame", "latency_cdf",
    "latency_series", "ledger", "ledger_frame", "load_run", "longest_gap", "nearest_rank", "on_link",
    "path_series", "path_summaries", "stage_order_problems",
]
