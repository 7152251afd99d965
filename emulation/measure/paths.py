"""Per-path summaries of path_metrics.csv (the agents' own view of each path over time).

Time-weighted figures attribute the interval between two samples of a path to the earlier one (the
last sample has no weight): `time_in_status_s`, `down_spans` and `sla_compliance_pct`. The latter is,
per class of run.json's `sla_targets`, the share of that time during which the path's reported
latency, loss and jitter were all within the class's targets (and the path not down) -- the per-path,
per-class SLA view. Counters add up the increases between samples; a counter that goes down (the agent
restarted) counts from zero again.

A dead path has no latency. The agents report none (an empty cell) while no probe in the window was
answered, and a Down path's window holds at best answers from before it died: latency and jitter of
samples taken while the path was Down are no value here (`measured`), whatever the file says (runs
written before the agents left it empty have 0 there). Their means, minima and maxima are over the
samples with a value; the plots draw those spans as gaps. Loss and score keep every sample: a Down
path lost its probes (100 %) and scores 0, and that is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from emulation.measure.rundata import STATUSES, RunData
from emulation.measure.timeline import links_of


@dataclass(frozen=True, slots=True)
class PathSummary:
    site: str
    path: str
    links: tuple[str, ...]
    samples: int
    first_s: float
    last_s: float
    latency_mean_ms: float | None
    latency_min_ms: float | None
    latency_max_ms: float | None
    jitter_mean_ms: float | None
    loss_mean_pct: float | None
    loss_max_pct: float | None
    score_mean: float | None
    score_min: float | None
    score_max: float | None
    time_in_status_s: dict[str, float]
    status_changes: int
    probes_sent: int
    probes_timed_out: int
    sla_compliance_pct: dict[str, float | None]


def _stat(values: np.ndarray, fn: str) -> float | None:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return None
    if fn == "min":
        return float(v.min())
    return float(v.max()) if fn == "max" else float(v.mean())


def measured(values: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Latency or jitter samples with NaN wherever the path was Down (no answered probe: no value)."""
    out: np.ndarray = np.where(status == "down", np.nan, values.astype(np.float64))
    return out


def _counted(cumulative: np.ndarray) -> int:
    if len(cumulative) < 2:
        return 0
    d = np.diff(cumulative)
    return int(np.where(d >= 0, d, cumulative[1:]).sum())


def path_summaries(run: RunData) -> list[PathSummary]:
    pm = run.path_metrics
    changes = run.events[run.events["kind"] == "PathStatusChanged"]
    n_changes_of = changes.groupby(["site", "path_id"]).size().to_dict()
    out: list[PathSummary] = []
    for (site, path), g in pm.groupby(["site", "path"], sort=True):
        t = g["t_s"].to_numpy(dtype=np.float64)
        weight = np.append(np.diff(t), 0.0)
        status = g["status"].to_numpy(dtype=object)
        lat = measured(g["latency_ms"].to_numpy(dtype=np.float64), status)
        jit = measured(g["jitter_ms"].to_numpy(dtype=np.float64), status)
        loss = g["loss_pct"].to_numpy(dtype=np.float64)
        score = g["score"].to_numpy(dtype=np.float64)
        sent = g["probes_sent"].to_numpy(dtype=np.int64)
        timed_out = g["probes_timed_out"].to_numpy(dtype=np.int64)
        total = float(weight.sum())
        compliance: dict[str, float | None] = {}
        for cls, target in sorted(run.run.sla_targets.items()):
            ok = status != "down"
            for values, limit in ((lat, target.latency_ms), (loss, target.loss_pct), (jit, target.jitter_ms)):
                if limit is not None:
                    ok = ok & ~np.isnan(values) & (np.nan_to_num(values, nan=np.inf) <= limit)
            compliance[cls] = 100.0 * float(weight[ok].sum()) / total if total > 0 else None
        site_s, path_s = str(site), str(path)
        n_changes = int(n_changes_of.get((site_s, path_s), 0))
        out.append(PathSummary(
            site=site_s, path=path_s, links=links_of(run, site_s, path_s),
            samples=len(g), first_s=float(t[0]), last_s=float(t[-1]),
            latency_mean_ms=_stat(lat, "mean"), latency_min_ms=_stat(lat, "min"), latency_max_ms=_stat(lat, "max"),
            jitter_mean_ms=_stat(jit, "mean"), loss_mean_pct=_stat(loss, "mean"), loss_max_pct=_stat(loss, "max"),
            score_mean=_stat(score, "mean"), score_min=_stat(score, "min"), score_max=_stat(score, "max"),
            time_in_status_s={s: float(weight[status == s].sum()) for s in STATUSES},
            status_changes=n_changes, probes_sent=_counted(sent), probes_timed_out=_counted(timed_out),
            sla_compliance_pct=compliance))
    return out


def path_series(run: RunData, site: str | None = None) -> pd.DataFrame:
    """path_metrics with scenario time, optionally for one site, latency and jitter NaN while a path
    was Down (`measured`): what the plots draw, gaps included."""
    pm = run.path_metrics
    pm = pm if site is None else pm[pm["site"] == site]
    pm = pm.copy()
    status = pm["status"].to_numpy(dtype=object)
    for c in ("latency_ms", "jitter_ms"):
        pm[c] = measured(pm[c].to_numpy(dtype=np.float64), status)
    return pm


def down_spans(run: RunData, site: str | None = None) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(site, path) → the spans (scenario seconds, start and end) during which the path was Down: from a
    Down sample to the next sample that is not (the last sample of the run ends a span there)."""
    pm = run.path_metrics
    pm = pm if site is None else pm[pm["site"] == site]
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (s, path), g in pm.groupby(["site", "path"], sort=True):
        t = g["t_s"].to_numpy(dtype=np.float64)
        down = (g["status"] == "down").to_numpy(dtype=bool)
        edges = np.diff(np.concatenate(([False], down, [False])).astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        spans = [(float(t[a]), float(t[min(b, len(t) - 1)])) for a, b in zip(starts, ends, strict=True)]
        spans = [(a, b) for a, b in spans if b > a]
        if spans:
            out[(str(s), str(path))] = spans
    return out
