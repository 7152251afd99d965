"""The simulator's raw data, in the contract of `emulation.measure.rundata` (the same files as the Mininet
runner writes, so the same reports and expectations apply).

Differences from a Mininet run, all allowed by the contract: `backend` is "sim" and
`impairment_backend` "model"; every lost packet has its send time (the simulator knows it); flap
rows are one per edge with `up`, as the runner's, and a ramp's rows carry `{"step": k}`; run.json has a
`sim` object (mode, warm-up, sampling period) that the reports ignore. Everything written is a function
of the scenario and its seed: no wall clock, no host names, no process ids.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emulation.scenario.model import Scenario

NS = 1_000_000_000


def expectations_doc(scenario: Scenario) -> list[dict[str, Any]]:
    """run.json's expectations, as `emulation.runner.Runner.expectations` writes them."""
    out = []
    for e in scenario.expectations:
        d: dict[str, Any] = {"type": e.kind, "text": e.text}
        for attr, key in (("flow", "flow"), ("max_s", "max"), ("max_packets", "max"), ("max_changes", "max"),
                          ("min_ratio", "min"), ("min_changes", "min")):
            if hasattr(e, attr):
                d[key] = getattr(e, attr)
        if hasattr(e, "link"):
            d["link"] = str(e.link)
        if hasattr(e, "start_s"):
            d["during"] = [getattr(e, "start_s"), getattr(e, "end_s")]  # noqa: B009 - FlowStays only
        tgt = getattr(e, "target", None)
        if tgt is not None:
            d["target"] = {"latency_ms": tgt.latency_ms, "loss_pct": tgt.loss_pct, "jitter_ms": tgt.jitter_ms}
        out.append(d)
    return out


def sla_targets_doc(scenario: Scenario) -> dict[str, dict[str, float]]:
    """Each traffic class's target: the sending site's agent `sla` (as `Runner.sla_targets`)."""
    out: dict[str, dict[str, float]] = {}
    for f in scenario.flows:
        t = scenario.site(f.src.site).agent.sla
        out.setdefault(f.traffic_class, {"latency_ms": t.latency_ms, "loss_pct": t.loss_pct, "jitter_ms": t.jitter_ms})
    return out


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))


def write_events(path: Path, per_site: Iterable[tuple[str, list[dict[str, Any]]]]) -> None:
    with open(path, "w") as fh:
        for site, events in per_site:
            for e in events:
                fh.write(json.dumps({**e, "site": site}, sort_keys=True) + "\n")


def write_packets(path: Path, flows: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str]]]) -> int:
    """packets.csv from (flow, sent_ns, recv_ns (0 = lost), path number (-1 = none), path names) per flow;
    returns the number of rows."""
    n = 0
    with open(path, "w") as fh:
        fh.write("flow,seq,sent_ns,recv_ns,path\n")
        for name, sent, recv, path_no, names in flows:
            labels = ["", *names]          # path number + 1 → its name
            chunk = 65536
            for lo in range(0, len(sent), chunk):
                s = sent[lo:lo + chunk].tolist()
                r = recv[lo:lo + chunk].tolist()
                p = (path_no[lo:lo + chunk] + 1).tolist()
                fh.write("".join(f"{name},{lo + i},{s[i]},{r[i] or ''},{labels[p[i]]}\n" for i in range(len(s))))
            n += len(sent)
    return n
