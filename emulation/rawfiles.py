"""The raw data's files, written one way by every producer: the Mininet runner, the simulator, and the
synthetic runs of the tests. `emulation.measure.rundata` reads them (the contract, with these columns).

    raw/run.json          the run: scenario, backend, seed, clock, flows, links, SLA targets, monitors,
                          expectations (`run_document`)
    raw/timeline.csv      TIMELINE_COLUMNS: each applied step of the timeline
    raw/packets.csv       PACKET_COLUMNS: every packet of every UDP flow, its arrival (or none), its path
    raw/path_metrics.csv  PATH_METRIC_COLUMNS: each agent's paths, sampled
    raw/events.jsonl      every event each agent published, with its site
    raw/tcp.csv, http.csv TCP_COLUMNS, HTTP_COLUMNS: TCP throughput and HTTP requests, when there are any

The simulator's raw data differs from a Mininet run's only as the contract allows: `backend` is "sim"
and `impairment_backend` "model"; every lost packet has its send time (the simulator knows it); run.json
has a `sim` object (mode, warm-up, sampling period) that the reports ignore. Everything the simulator
writes is a function of the scenario and its seed: no wall clock, no host names, no process ids.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emulation.scenario.model import Scenario
from emulation.siteconf import expectations_doc, monitors_doc, sla_targets_doc

NS = 1_000_000_000

TIMELINE_COLUMNS = ("at_s", "applied_at", "action", "target", "params")
PACKET_COLUMNS = ("flow", "seq", "sent_ns", "recv_ns", "path")
PATH_METRIC_COLUMNS = ("site", "path", "at", "status", "latency_ms", "jitter_ms", "loss_pct", "score",
                       "probes_sent", "probes_timed_out")
TCP_COLUMNS = ("flow", "at", "bits_per_second")
HTTP_COLUMNS = ("flow", "at", "latency_ms", "ok")


def run_document(sc: Scenario, *, backend: str, impairment_backend: str, started_at: float, t0: float,
                 flows: list[dict[str, Any]], links: list[dict[str, Any]],
                 expectations: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """run.json: what every backend says of a run (`extra`: a backend's own, e.g. the simulator's `sim`)."""
    return {
        "scenario": sc.name, "backend": backend, "impairment_backend": impairment_backend, "seed": sc.seed,
        "started_at": started_at, "t0": t0, "duration_s": sc.duration_s, "flows": flows, "links": links,
        "sla_targets": sla_targets_doc(sc), "monitors": monitors_doc(sc),
        "expectations": expectations_doc(sc, backend) if expectations is None else expectations, **extra,
    }


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))


def write_events(path: Path, per_site: Iterable[tuple[str | None, list[dict[str, Any]]]]) -> None:
    """events.jsonl: each site's events with `site` set (None: the events as they are)."""
    with open(path, "w") as fh:
        for site, events in per_site:
            for e in events:
                fh.write(json.dumps(e if site is None else {**e, "site": site}, sort_keys=True) + "\n")


def write_packets(path: Path, flows: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str]]]) -> int:
    """packets.csv from (flow, sent_ns, recv_ns (0 = lost), path number (-1 = none), path names) per flow;
    returns the number of rows."""
    n = 0
    with open(path, "w") as fh:
        fh.write(",".join(PACKET_COLUMNS) + "\n")
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
