"""Plots of a run, drawn with matplotlib's object API on the Agg canvas.

Nothing here imports pyplot or selects a global backend: every figure is a `matplotlib.figure.Figure`
rendered by Agg, so reports render headless and a notebook that imports this module keeps its own
(inline) backend. Each `plot_*` function draws on the axes it is given (from a notebook) or on a new
Figure, and returns the figure.

* per site: path latency / loss / score over time, timeline edges as vertical lines, failover spans
  (impairment → traffic on the new path) shaded; a Down path has no latency: a gap in its line, the
  span shaded in its colour (`emulation.measure.paths.path_series`, `down_spans`);
* per flow: one-way delay over time (by path; lost packets as ticks at the bottom);
* latency CDFs of every flow;
* the failover ledger: each stage's time per (event, flow).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emulation.measure.analysis import Analysis
from emulation.measure.flows import latency_cdf, latency_series
from emulation.measure.ledger import STAGE_TITLES, STAGES, LedgerEntry
from emulation.measure.paths import down_spans, path_series
from emulation.measure.timeline import edges

ACTION_COLOURS = {"cut": "#d62728", "restore": "#2ca02c", "impair": "#ff7f0e", "ramp": "#8c564b",
                  "flap": "#9467bd", "agent_stop": "#7f7f7f", "agent_start": "#17becf"}
STAGE_MARKERS = {"impairment_applied": "o", "first_probe_lost": "x", "path_declared": "v", "routing_decision": "D",
                 "steering_changed": "s", "first_packet_new_path": "^", "sla_restored": "*"}
DPI = 100
MAX_FLOW_PANELS = 12


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure_of(ax: Axes) -> Figure:
    return cast(Figure, ax.get_figure(root=True))


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _colours(names: Sequence[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    return {n: palette[i % len(palette)] for i, n in enumerate(sorted(names))}


def _legend(ax: Axes, **kwargs: Any) -> None:
    """A legend, only when something is labelled (matplotlib warns about an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def mark_timeline(ax: Axes, a: Analysis, labels: bool = True) -> None:
    """Vertical lines at every timeline edge (when it took effect), labelled on the top of the axes."""
    t0 = a.run.run.t0
    for e in edges(a.run):
        x = e.applied_at - t0
        if e.continuation:     # a ramp's later steps: faint, unlabelled
            ax.axvline(x, color=ACTION_COLOURS.get(e.action, "black"), linestyle=":", linewidth=0.8, alpha=0.4)
            continue
        ax.axvline(x, color=ACTION_COLOURS.get(e.action, "black"), linestyle="--", linewidth=1.0, alpha=0.8)
        if labels:
            ax.annotate(e.label, xy=(x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        va="top", ha="right", color=ACTION_COLOURS.get(e.action, "black"))


def failover_span(e: LedgerEntry) -> tuple[float, float]:
    """Scenario seconds from the impairment to traffic on the new path (or the window's end)."""
    rec = e.recovered_ms
    return e.applied_s, (e.applied_s + rec / 1000.0) if rec is not None else e.window_end_s


def shade_failovers(ax: Axes, entries: Sequence[LedgerEntry]) -> None:
    seen: set[tuple[float, float]] = set()
    for e in entries:
        span = failover_span(e)
        if span in seen:
            continue
        seen.add(span)
        # a failover of a few ms would be invisible: draw at least 0.4 % of the axis
        lo, hi = ax.get_xlim()
        width = max(span[1] - span[0], (hi - lo) * 0.004)
        ax.axvspan(span[0], span[0] + width, color="#d62728", alpha=0.15, linewidth=0)


def plot_path_metrics(a: Analysis, site: str, axes: Sequence[Axes] | None = None) -> Figure:
    """Latency (gaps where a path was Down: it has none, and each Down span shaded in the path's colour),
    loss and score of every path of `site` over time."""
    pm = path_series(a.run, site)
    if axes is None:
        fig = new_figure(11, 7.5)
        axes = list(fig.subplots(3, 1, sharex=True))
    fig = _figure_of(axes[0])
    colours = _colours(pm["path"].unique().tolist())
    for path, g in pm.groupby("path", sort=True):
        c = colours[str(path)]
        axes[0].plot(g["t_s"], g["latency_ms"], color=c, label=str(path), linewidth=1.0)
        axes[1].plot(g["t_s"], g["loss_pct"], color=c, linewidth=1.0)
        axes[2].plot(g["t_s"], g["score"], color=c, linewidth=1.0)
    spans = down_spans(a.run, site)
    for k, ((_, path), ss) in enumerate(sorted(spans.items())):
        for i, (lo, hi) in enumerate(ss):
            axes[0].axvspan(lo, hi, color=colours[path], alpha=0.12, linewidth=0,
                            label="Down: no latency (shaded)" if k == i == 0 else None)
    for ax, label in zip(axes, ("latency (ms)", "loss (%)", "score"), strict=True):
        ax.set_ylabel(label)
        ax.set_xlim(0, a.run.run.duration_s)
        ax.grid(True, alpha=0.3)
        mark_timeline(ax, a, labels=ax is axes[0])
        shade_failovers(ax, [e for e in a.ledger if a.run.run.flow(e.flow).src_site == site])
    axes[2].set_xlabel("scenario time (s)")
    axes[0].set_title(f"Paths at {site}: latency, loss and score over time")
    _legend(axes[0], loc="upper left", fontsize=8, ncols=min(4, max(1, len(colours))))
    return fig


def plot_flow_latency(a: Analysis, flows: Sequence[str] | None = None) -> Figure:
    names = list(flows) if flows is not None else [f.flow for f in a.flows][:MAX_FLOW_PANELS]
    fig = new_figure(11, max(2.6, 2.4 * len(names)))
    if not names:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no packet flows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0])
    for ax, name in zip(axes, names, strict=True):
        s = latency_series(a.run, name)
        colours = _colours([p for p in s["path"].unique().tolist() if p])
        got = s[s["delay_ms"].notna()]
        for path, g in got.groupby("path", sort=True):
            ax.plot(g["sent_s"], g["delay_ms"], linestyle="none", marker=".", markersize=1.5,
                    color=colours.get(str(path), "#1f77b4"), label=str(path) or "path unknown", rasterized=True)
        lost = s[s["delay_ms"].isna()]
        if len(lost):
            ax.plot(lost["sent_s"], np.zeros(len(lost)), linestyle="none", marker="|", markersize=8,
                    color="#d62728", label=f"lost ({len(lost)})")
        ax.set_xlim(0, a.run.run.duration_s)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{name}\ndelay (ms)")
        ax.grid(True, alpha=0.3)
        mark_timeline(ax, a, labels=ax is axes[0])
        shade_failovers(ax, [e for e in a.ledger if e.flow == name])
        _legend(ax, loc="upper left", fontsize=7, markerscale=4)
    axes[-1].set_xlabel("send time (scenario s)")
    axes[0].set_title("One-way delay per flow")
    return fig


def plot_latency_cdf(a: Analysis, ax: Axes | None = None) -> Figure:
    if ax is None:
        ax = new_figure(8, 5).subplots()
    for f in a.flows:
        cdf = latency_cdf(a.run, f.flow)
        if len(cdf):
            ax.step(cdf["delay_ms"], cdf["fraction"], where="post", label=f.flow, linewidth=1.2)
    ax.set_xlabel("one-way delay (ms)")
    ax.set_ylabel("fraction of delivered packets")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title("Latency CDF per flow")
    _legend(ax, loc="lower right", fontsize=8)
    return _figure_of(ax)


def plot_failover_timeline(a: Analysis, ax: Axes | None = None) -> Figure:
    entries = sorted(a.ledger, key=lambda e: (e.at_s, e.event, e.flow))
    if ax is None:
        ax = new_figure(11, max(2.5, 0.5 * len(entries) + 1.5)).subplots()
    if not entries:
        ax.text(0.5, 0.5, "no failover: no timeline event broke a link in use", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _figure_of(ax)
    for y, e in enumerate(entries):
        times = [t for t in e.stages_ms.values() if t is not None]
        ax.hlines(y, 0, max(times), color="#999999", linewidth=1)
        if e.gap_ms is not None:
            ax.annotate(f"gap {e.gap_ms:.1f} ms, lost {e.lost_packets}", xy=(max(times), y), xytext=(4, 0),
                        textcoords="offset points", fontsize=7, va="center")
    for stage in STAGES:
        xs: list[float] = []
        ys: list[int] = []
        for y, e in enumerate(entries):
            t = e.stages_ms[stage]
            if t is not None:
                xs.append(t)
                ys.append(y)
        if xs:
            ax.plot(xs, ys, linestyle="none", marker=STAGE_MARKERS[stage], markersize=7, label=STAGE_TITLES[stage])
    ax.set_yticks(range(len(entries)), [f"{e.event} @ {e.at_s:g} s · {e.flow}" for e in entries], fontsize=8)
    ax.set_ylim(len(entries) - 0.5, -0.5)
    ax.set_xscale("symlog", linthresh=10.0)
    latest = max((t for e in entries for t in e.stages_ms.values() if t is not None), default=10.0)
    ax.set_xlim(0, max(100.0, latest * 4))      # room for the gap labels
    ax.set_xlabel("ms after the impairment took effect (log scale above 10 ms)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Failover ledger")
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _figure_of(ax)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def render_plots(a: Analysis) -> dict[str, tuple[str, bytes]]:
    """file name → (caption, PNG bytes), in report order."""
    with warnings.catch_warnings():
        # Only layout advice is silenced: with many flows or long labels the constrained layout may give
        # up on a figure, which then renders a little cramped -- no reason to fail a run's report (and
        # under pytest's filterwarnings=error, the emulation tests that build reports).
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r".*(constrained_layout|tight_layout|layout engine|figure layout).*")
        return _render_plots(a)


MAX_SITE_PLOTS = 24    # a figure a site: a thousand-site run would take longer to draw than to simulate


def plotted_sites(a: Analysis) -> tuple[list[str], int]:
    """The sites that get a path plot, in name order, and how many are left out: every site when
    there are at most MAX_SITE_PLOTS; else the sites flows start or end at, then the sites whose
    paths changed status most."""
    sites = sorted(a.run.path_metrics["site"].unique().tolist())
    if len(sites) <= MAX_SITE_PLOTS:
        return sites, 0
    ends = {f.src_site for f in a.run.run.flows} | {f.dst_site for f in a.run.run.flows}
    ev = a.run.events
    changes = ev[ev["kind"] == "PathStatusChanged"]["site"].value_counts().to_dict()
    ranked = sorted(sites, key=lambda s: (s not in ends, -changes.get(s, 0), s))
    chosen = sorted(ranked[:MAX_SITE_PLOTS])
    return chosen, len(sites) - len(chosen)


def _render_plots(a: Analysis) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    out["failover-timeline.png"] = ("Failover ledger", png_bytes(plot_failover_timeline(a)))
    sites, left_out = plotted_sites(a)
    for site in sites:
        out[f"paths-{_slug(site)}.png"] = (f"Paths at {site}", png_bytes(plot_path_metrics(a, site)))
    if left_out:
        name = f"paths-{_slug(sites[-1])}.png"
        out[name] = (f"{out[name][0]} (per-site plots of {left_out} more sites left out: at most "
                     f"{MAX_SITE_PLOTS}, the sites of the flows first, then those whose paths changed "
                     f"status most)", out[name][1])
    out["flow-latency.png"] = ("One-way delay per flow", png_bytes(plot_flow_latency(a)))
    out["latency-cdf.png"] = ("Latency CDF per flow", png_bytes(plot_latency_cdf(a)))
    return out

