"""Prometheus exposition of the site agent's path measurements and counters.

The agent hands us a `MetricsSnapshot` (plain values, taken on the loop thread) and `render` turns it
into the Prometheus text format. Decisions:

* **No global state.** `render` builds a fresh `CollectorRegistry` holding one custom collector that
  reads the snapshot, and throws both away. Nothing touches prometheus_client's default registry, so
  several agents (the emulator runs one per namespace, tests run many) never share or leak series,
  and counters are exactly the agent's own totals (the agent owns the counting; we only format).
* **Labels** are `path`, `remote`, `uplink` on every per-path series; `reason` on rejections and
  failovers. Counters are emitted without `_created` samples.
* **Units follow the series names** (`_ms`, `_ratio`); the snapshot is in the same units, so the
  daemon converts its `loss_pct` to `loss_ratio` (÷ 100) when building the snapshot.
* **Unknown is absent, not NaN.** A path with no measurement yet (value `None`) has no latency,
  jitter, loss or score series; alerting on `absent()` or on `patronus_path_up` still works, and
  `avg()` over paths is not poisoned by NaN.
* **Path status** is exposed two ways:
  - `patronus_path_up` is a boolean like Prometheus's own `up`: 1 while the path can carry traffic
    (status `up` or `degraded`), 0 when it is `down`. `sum(patronus_path_up)` counts usable paths and
    `patronus_path_up == 0` is the "path lost" alert. We chose this over a 1/0.5/0 encoding because a
    half value makes sums and averages meaningless.
  - `patronus_path_status{status="up"|"degraded"|"down"}` is the usual enum pattern (OpenMetrics
    StateSet): one series per state, exactly one of them 1. Alert on degradation with
    `patronus_path_status{status="degraded"} == 1`.

Series (all gauges unless `_total`):

    patronus_path_latency_ms{path,remote,uplink}
    patronus_path_jitter_ms{path,remote,uplink}
    patronus_path_loss_ratio{path,remote,uplink}            0..1
    patronus_path_score{path,remote,uplink}                 0..100
    patronus_path_up{path,remote,uplink}                    1 up/degraded, 0 down
    patronus_path_status{path,remote,uplink,status}         one-hot over up, degraded, down
    patronus_path_flows{path,remote,uplink}                 flows currently steered onto the path
    patronus_probes_sent_total{path,remote,uplink}
    patronus_probes_received_total{path,remote,uplink}
    patronus_probes_rejected_total{path,remote,uplink,reason}
    patronus_failovers_total{reason}

Rejected probes that match no path (a forged or stray probe) are counted in
`MetricsSnapshot.unattributed_rejections` and exposed with empty `path`, `remote`, `uplink` labels
(which Prometheus treats as absent labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "PATH_LABELS", "PATH_STATUSES", "MetricsSnapshot", "PathSample", "render"]

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
PATH_LABELS: tuple[str, str, str] = ("path", "remote", "uplink")
PATH_STATUSES: tuple[str, str, str] = ("up", "degraded", "down")
_USABLE = frozenset({"up", "degraded"})


@dataclass(frozen=True, slots=True)
class PathSample:
    """One path's row: its identity labels, latest measurements and its counters (totals since start)."""

    path: str
    remote: str
    uplink: str
    status: str                                 # "up" | "degraded" | "down"
    latency_ms: float | None = None             # None: not measured yet
    jitter_ms: float | None = None
    loss_ratio: float | None = None             # 0..1 (the API's loss_pct / 100)
    score: float | None = None                  # 0..100
    flows: int = 0
    probes_sent: int = 0
    probes_received: int = 0
    probes_rejected: Mapping[str, int] = field(default_factory=dict)   # reason -> total

    def __post_init__(self) -> None:
        if self.status not in PATH_STATUSES:
            raise ValueError(f"path {self.path!r}: status must be one of {', '.join(PATH_STATUSES)}, "
                             f"got {self.status!r}")


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything `/metrics` shows, as plain values taken at one instant on the agent's loop."""

    paths: Sequence[PathSample] = ()
    failovers: Mapping[str, int] = field(default_factory=dict)                 # reason -> total
    unattributed_rejections: Mapping[str, int] = field(default_factory=dict)   # reason -> total


class _SnapshotCollector(Collector):
    """Yields the metric families of one snapshot; lives only as long as one `render` call."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterable[Metric]:
        labels = list(PATH_LABELS)
        gauges = {
            "latency_ms": GaugeMetricFamily("patronus_path_latency_ms",
                                            "Smoothed round-trip latency of the path in milliseconds.",
                                            labels=labels),
            "jitter_ms": GaugeMetricFamily("patronus_path_jitter_ms",
                                           "Jitter (RTT variation) of the path in milliseconds.", labels=labels),
            "loss_ratio": GaugeMetricFamily("patronus_path_loss_ratio",
                                            "Probe loss ratio of the path over the measurement window (0..1).",
                                            labels=labels),
            "score": GaugeMetricFamily("patronus_path_score", "Quality score of the path (0..100).",
                                       labels=labels),
        }
        up = GaugeMetricFamily("patronus_path_up",
                               "1 while the path can carry traffic (status up or degraded), 0 when down.",
                               labels=labels)
        status = GaugeMetricFamily("patronus_path_status",
                                   "Path status as one series per state (up, degraded, down); the current one is 1.",
                                   labels=[*labels, "status"])
        flows = GaugeMetricFamily("patronus_path_flows", "Flows currently steered onto the path.", labels=labels)
        sent = CounterMetricFamily("patronus_probes_sent", "Probes sent on the path.", labels=labels)
        received = CounterMetricFamily("patronus_probes_received", "Valid probe replies received on the path.",
                                       labels=labels)
        rejected = CounterMetricFamily("patronus_probes_rejected",
                                       "Probe packets rejected (forged, malformed, late, ...), by reason.",
                                       labels=[*labels, "reason"])
        for p in self._s.paths:
            ident = [p.path, p.remote, p.uplink]
            for attr, fam in gauges.items():
                v = getattr(p, attr)
                if v is not None:
                    fam.add_metric(ident, float(v))
            up.add_metric(ident, 1.0 if p.status in _USABLE else 0.0)
            for st in PATH_STATUSES:
                status.add_metric([*ident, st], 1.0 if p.status == st else 0.0)
            flows.add_metric(ident, float(p.flows))
            sent.add_metric(ident, float(p.probes_sent))
            received.add_metric(ident, float(p.probes_received))
            for reason, n in sorted(p.probes_rejected.items()):
                rejected.add_metric([*ident, reason], float(n))
        for reason, n in sorted(self._s.unattributed_rejections.items()):
            rejected.add_metric(["", "", "", reason], float(n))
        failovers = CounterMetricFamily("patronus_failovers", "Flow failovers from one path to another, by reason.",
                                        labels=["reason"])
        for reason, n in sorted(self._s.failovers.items()):
            failovers.add_metric([reason], float(n))
        yield from gauges.values()
        yield from (up, status, flows, sent, received, rejected, failovers)


def render(snapshot: MetricsSnapshot) -> bytes:
    """The Prometheus text exposition (content type `CONTENT_TYPE`) of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)
