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

NS = 1_000_000_000


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
