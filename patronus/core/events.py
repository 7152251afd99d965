"""Events (what happened) and actions (what the driver must do), as frozen dataclasses.

The core never performs I/O: components queue these and the driver drains them
(`component.drain_events()`). Every event carries `at`, the driver-clock time (seconds) at which the
core decided it. Events are plain values: they compare, hash and print, and `as_dict()` gives a
JSON-ready form for stores, APIs and reports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from patronus.core.model import FlowKey, PathId, PathMetrics, PathStatus, RouteKey, Slot


class FailoverReason(enum.Enum):
    PATH_DOWN = "path_down"              # the flow's path was declared Down
    BELOW_THRESHOLD = "below_threshold"  # the path's score fell below the policy's failover threshold
    SLA_VIOLATION = "sla_violation"      # the path no longer meets the policy's hard requirements
    PATH_REMOVED = "path_removed"        # the path was removed from the topology
    POLICY_CHANGED = "policy_changed"    # re-evaluation after a policy change


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, FlowKey):
        return {"src_ip": value.src_ip, "dst_ip": value.dst_ip, "src_port": value.src_port,
                "dst_port": value.dst_port, "protocol": value.protocol}
    if isinstance(value, Slot):
        return {"remote": value.remote, "policy": value.policy, "origin": value.origin, "gen": value.gen}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, PathMetrics):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; `at` is the decision time on the driver's clock."""

    at: float

    # the fields that are times on the driver's clock (shifted together by `as_dict`'s offset)
    TIMES: ClassVar[tuple[str, ...]] = ("at",)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def as_dict(self, clock_offset: float = 0.0) -> dict[str, Any]:
        """JSON-ready: `kind` and every field; the times in `TIMES` plus `clock_offset` (a driver on a
        monotonic clock publishes wall times). A slot is written as `slot`, a connection as `flow`."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self.TIMES and v is not None:
                v += clock_offset
            out["slot" if f.name == "flow" and isinstance(v, Slot) else f.name] = _jsonable(v)
        return out


# --- path monitor -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendProbe(Event):
    """Action: send probe `seq` on `path_id` now. The monitor has already started its timeout."""

    path_id: PathId
    seq: int


@dataclass(frozen=True, slots=True)
class ProbeLost(Event):
    """Probe `seq` of `path_id`, sent at `sent_at`, timed out at `at` (when the monitor knew it was
    lost), and it is the first unanswered probe of a run of misses: the probe before it was answered,
    or it was the path's first. Said once a run, never for the misses after it (a long cut is one
    event). `sent_at` is on the driver's clock, like `at`. A reply that comes late after all ends the
    run; the event stands, as what the monitor knew at its time."""

    path_id: PathId
    seq: int
    sent_at: float

    TIMES: ClassVar[tuple[str, ...]] = ("at", "sent_at")


@dataclass(frozen=True, slots=True)
class PathStatusChanged(Event):
    path_id: PathId
    old: PathStatus
    new: PathStatus
    reason: str
    metrics: PathMetrics | None = None


@dataclass(frozen=True, slots=True)
class PathMetricsUpdated(Event):
    path_id: PathId
    metrics: PathMetrics
    status: PathStatus


# --- router -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FlowAssigned(Event):
    flow: RouteKey
    path_id: PathId
    policy: str


@dataclass(frozen=True, slots=True)
class FlowUnroutable(Event):
    """A new flow matched `policy` but no usable path exists toward its destination."""

    flow: FlowKey
    policy: str
    reason: str


@dataclass(frozen=True, slots=True)
class FailoverTriggered(Event):
    flow: RouteKey
    from_path: PathId
    to_path: PathId
    reason: FailoverReason
    policy: str


@dataclass(frozen=True, slots=True)
class Failback(Event):
    flow: RouteKey
    from_path: PathId
    to_path: PathId
    policy: str


@dataclass(frozen=True, slots=True)
class FlowStranded(Event):
    """The flow's path failed and no other usable path exists; it stays unassigned until one does."""

    flow: RouteKey
    from_path: PathId
    reason: FailoverReason
    policy: str


@dataclass(frozen=True, slots=True)
class FlowExpired(Event):
    flow: RouteKey
    path_id: PathId | None
    idle_s: float


# --- SLA --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SlaViolated(Event):
    subject: str           # path id, or "path/class"
    traffic_class: str
    violations: tuple[str, ...]   # which targets failed: "latency", "loss", "jitter"
    latency_ms: float
    loss_pct: float
    jitter_ms: float


@dataclass(frozen=True, slots=True)
class SlaRestored(Event):
    subject: str
    traffic_class: str
    violated_for_s: float


# --- the driver's own events (what it did to the host or the model, as the site runtime words them) ---

@dataclass(frozen=True, slots=True)
class AgentStarted(Event):
    site: str
    paths: int
    wireguard_backend: str
    steering: str
    adopted: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class AgentStopping(Event):
    cleanup: bool


@dataclass(frozen=True, slots=True)
class SteeringApplied(Event):
    """The dataplane took a steering plan that carried out `moves` failovers and failbacks: its
    transaction began at `begun_at` and returned at `at`; `latency_ms` from the first decision to `at`."""

    begun_at: float
    moves: int
    latency_ms: float
    paths: tuple[str, ...]

    TIMES: ClassVar[tuple[str, ...]] = ("at", "begun_at")


@dataclass(frozen=True, slots=True)
class SteeringFailed(Event):
    """The dataplane refused a steering update (the previous steering stays)."""

    error: str

    @property
    def kind(self) -> str:
        return "SteeringError"      # its name in the API and in runs recorded before it had a type


@dataclass(frozen=True, slots=True)
class TunnelDown(Event):
    """Probes pass but the path's tunnel has no live session: Down for routing. `latest_handshake` is
    the tunnel's own wall-clock time of its last handshake (None: never)."""

    path_id: PathId
    interface: str
    latest_handshake: float | None


@dataclass(frozen=True, slots=True)
class TunnelUp(Event):
    path_id: PathId
    interface: str
    latest_handshake: float | None


@dataclass(frozen=True, slots=True)
class SiteJoined(Event):
    """A site of the organisation is in the mesh (first heard of, or back after it left or failed)."""

    member: str
    site_id: int


@dataclass(frozen=True, slots=True)
class SiteSuspected(Event):
    """A site stopped answering the membership probes; it is declared failed unless it refutes in time."""

    member: str


@dataclass(frozen=True, slots=True)
class SiteLeft(Event):
    """A site is out of the mesh: `reason` "left" (it said so), "failed" (silent past the suspicion
    timeout), "revoked" (its certificate is on the organisation's revocation list) or "expired" (its
    certificate is no longer valid)."""

    member: str
    reason: str


@dataclass(frozen=True, slots=True)
class KeyRotated(Event):
    """A site's WireGuard public key changed (`member` may be this site): `key` is the new key's base64."""

    member: str
    key: str


@dataclass(frozen=True, slots=True)
class PathAdded(Event):
    """A path to a remote that joined at run time (mesh discovery): Down until its probes bring it up."""

    path_id: PathId
    remote: str


@dataclass(frozen=True, slots=True)
class PathRemoved(Event):
    """A path that went with its remote (the remote left the mesh, or was removed): its flows with it."""

    path_id: PathId
    remote: str


@dataclass(frozen=True, slots=True)
class PoliciesChanged(Event):
    policies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PathMtuMeasured(Event):
    path_id: PathId
    result: Mapping[str, Any] = field(hash=False, compare=False)

    def as_dict(self, clock_offset: float = 0.0) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at + clock_offset, "path_id": self.path_id, **self.result}


@dataclass(frozen=True, slots=True)
class BandwidthMeasured(Event):
    path_id: PathId
    result: Mapping[str, Any] = field(hash=False, compare=False)

    def as_dict(self, clock_offset: float = 0.0) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at + clock_offset, "path_id": self.path_id, **self.result}


@dataclass(frozen=True, slots=True)
class ReflectorRestarted(Event):
    how: str
