"""The scenario, as immutable values in SI base units.

Everything here is a frozen dataclass built by `emulation.scenario.schema.from_dict` after the whole
document was checked; nothing constructs itself from user input. Quantities carry their unit in their
name: seconds (`delay_s`), bits per second (`rate_bps`), ratios in [0, 1] (`loss_ratio`), packets
(`queue_limit_packets`), bytes (`payload_bytes`), packets per second (`rate_pps`).

`Scenario.to_dict()` turns it back into a plain document in human units (`"20ms"`, `"100mbit"`, `"1%"`)
with every default written out: the normalized copy a run directory keeps, which `parse` reads back to
an equal `Scenario`.

What this module must not know: YAML, files, error collection (that is `schema`), or how a backend
realises a link (that is `emulation/backends`, `emulation/links`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from emulation.scenario.fmt import (
    fmt_duration,
    fmt_number,
    fmt_rate,
    fmt_ratio,
    fmt_size,
    human_duration,
    human_rate,
    human_ratio,
)
from patronus.core.errors import ConfigError
from patronus.core.mesh import MeshTopology, full_mesh_peers, hierarchical_peers, hub_and_spoke_peers
from patronus.core.monitor import PROFILES, MonitorProfile
from patronus.core.policy import RoutingPolicy, default_policies
from patronus.core.router import RouterConfig
from patronus.core.sla import SlaTarget
from patronus.core.units import parse_duration, parse_ratio

SCHEMA_VERSION = 1
MAX_UPLINKS = 4
BACKENDS = ("mininet", "sim")       # what a scenario may run on (`backends:`), every one by default


class Topology(enum.StrEnum):
    """How the sites' uplinks meet."""

    INTERNET = "internet"            # every uplink meets one emulated core router
    HUB_AND_SPOKE = "hub-and-spoke"  # spokes talk only to the hub (the agents' remotes say so)
    FULL_MESH = "full-mesh"          # every site pair joined by point-to-point links between their uplinks
    HIERARCHICAL = "hierarchical"    # regions: spokes peer with their region's hubs, hubs with each other


class JitterDistribution(enum.StrEnum):
    NORMAL = "normal"
    UNIFORM = "uniform"
    PARETO = "pareto"
    PARETONORMAL = "paretonormal"


class Steering(enum.StrEnum):
    NFTABLES = "nftables"
    NONE = "none"


class FlowType(enum.StrEnum):
    UDP_CBR = "udp_cbr"
    VOIP = "voip"
    VIDEO = "video"
    TCP_BULK = "tcp_bulk"
    HTTP = "http"

    @property
    def protocol(self) -> str:
        return "tcp" if self in (FlowType.TCP_BULK, FlowType.HTTP) else "udp"

    @property
    def is_packet_flow(self) -> bool:
        """UDP flows whose receiver sees every packet (sequence numbers, send timestamps)."""
        return self.protocol == "udp"

    @property
    def default_class(self) -> str:
        return _DEFAULT_CLASS[self]

    @property
    def default_port(self) -> int:
        return _DEFAULT_PORT[self]


_DEFAULT_CLASS = {FlowType.UDP_CBR: "default", FlowType.VOIP: "voip", FlowType.VIDEO: "video",
                  FlowType.TCP_BULK: "bulk", FlowType.HTTP: "web"}
# voip on 5060 so that the default VoIP/Video policy (dst ports 5060-5061) matches it; video on RTP's 5004;
# udp_cbr on 5001; tcp_bulk on iperf3's 5201; http on 8080.
_DEFAULT_PORT = {FlowType.UDP_CBR: 5001, FlowType.VOIP: 5060, FlowType.VIDEO: 5004, FlowType.TCP_BULK: 5201,
                 FlowType.HTTP: 8080}

VOIP_RATE_PPS = 50.0          # G.711 with 20 ms packetisation
VOIP_PAYLOAD_BYTES = 172      # 160 bytes of G.711 + 12 bytes of RTP header
VIDEO_PACKET_BYTES = 1200     # payload per video packet (fits the tunnel MTU)


@dataclass(frozen=True, slots=True)
class LinkRef:
    """An uplink named `site.uplink`."""

    site: str
    uplink: str

    def __str__(self) -> str:
        return f"{self.site}.{self.uplink}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A LAN host: `site.hostN` (hosts are numbered from 1; `site` alone means host1)."""

    site: str
    host: int = 1

    def __str__(self) -> str:
        return f"{self.site}.host{self.host}"


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state burst loss, evaluated per packet.

    `p`: probability of going from the good to the bad state; `r`: from bad back to good; `h`: the loss
    probability in the bad state (default 1); `k`: the loss probability in the good state (default 0).
    Careful: in the literature (and netem's man page) h and k are the probabilities of *delivery*, and
    netem takes "1-h" and "1-k" as its third and fourth arguments: those are exactly our `h` and `k`.
    """

    p: float
    r: float
    h: float = 1.0
    k: float = 0.0

    @property
    def mean_loss_ratio(self) -> float:
        """Long-run loss: π_bad·h + π_good·k with π_bad = p / (p + r)."""
        if self.p + self.r == 0:
            return self.k
        bad = self.p / (self.p + self.r)
        return bad * self.h + (1 - bad) * self.k

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gilbert_elliott", "p": fmt_ratio(self.p), "r": fmt_ratio(self.r), "h": fmt_ratio(self.h),
                "k": fmt_ratio(self.k)}


@dataclass(frozen=True, slots=True)
class Impairment:
    """A change to a link's impairment: the fields given change, `None` ones keep their current value.

    A link has one loss model: `loss_ratio` (independent random loss) or `loss_model` (Gilbert-Elliott);
    setting either replaces the other. Impairments apply to each direction of the link.
    """

    delay_s: float | None = None
    jitter_s: float | None = None
    jitter_distribution: JitterDistribution | None = None
    loss_ratio: float | None = None
    loss_model: GilbertElliott | None = None
    rate_bps: float | None = None
    duplicate_ratio: float | None = None
    reorder_ratio: float | None = None
    corrupt_ratio: float | None = None

    def given(self) -> tuple[str, ...]:
        """The attribute names this change sets."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr in self.given():
            key, kind = IMPAIRMENT_KEYS[attr]
            out[key] = _dump_value(getattr(self, attr), kind)
        return out

    def describe(self) -> str:
        parts = []
        for attr in self.given():
            key, kind = IMPAIRMENT_KEYS[attr]
            v = getattr(self, attr)
            if kind == "duration":
                parts.append(f"{key} {human_duration(v)}")
            elif kind == "ratio":
                parts.append(f"{key} {human_ratio(v)}")
            elif kind == "rate":
                parts.append(f"{key} {human_rate(v)}")
            elif isinstance(v, GilbertElliott):
                parts.append(f"Gilbert-Elliott loss (p {human_ratio(v.p)}, r {human_ratio(v.r)}, mean "
                             f"{human_ratio(v.mean_loss_ratio)})")
            else:
                parts.append(f"{key} {v}")
        return ", ".join(parts)


# attribute → (YAML key, kind)
IMPAIRMENT_KEYS: dict[str, tuple[str, str]] = {
    "delay_s": ("delay", "duration"),
    "jitter_s": ("jitter", "duration"),
    "jitter_distribution": ("jitter_distribution", "enum"),
    "loss_ratio": ("loss", "ratio"),
    "loss_model": ("loss_model", "model"),
    "rate_bps": ("rate", "rate"),
    "duplicate_ratio": ("duplicate", "ratio"),
    "reorder_ratio": ("reorder", "ratio"),
    "corrupt_ratio": ("corrupt", "ratio"),
}
RAMPABLE = ("delay_s", "jitter_s", "loss_ratio", "rate_bps", "duplicate_ratio", "reorder_ratio", "corrupt_ratio")


def _dump_value(v: Any, kind: str) -> Any:
    if kind == "duration":
        return fmt_duration(v)
    if kind == "ratio":
        return fmt_ratio(v)
    if kind == "rate":
        return fmt_rate(v)
    if isinstance(v, GilbertElliott):
        return v.to_dict()
    return str(v)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The complete state of one uplink at some moment: whether it is up, and all its impairments."""

    up: bool
    rate_bps: float
    delay_s: float
    jitter_s: float
    jitter_distribution: JitterDistribution
    loss_ratio: float
    loss_model: GilbertElliott | None
    duplicate_ratio: float
    reorder_ratio: float
    corrupt_ratio: float
    queue_limit_packets: int


@dataclass(frozen=True, slots=True)
class Uplink:
    name: str
    number: int                  # position in the site's uplinks (0-based), as in the agent's site file
    bandwidth_bps: float
    delay_s: float
    jitter_s: float
    jitter_distribution: JitterDistribution
    loss_ratio: float
    queue_limit_packets: int
    cost_per_gb: float

    def baseline(self) -> LinkSettings:
        """The link as the scenario starts, and as a `clear` action leaves it."""
        return LinkSettings(up=True, rate_bps=self.bandwidth_bps, delay_s=self.delay_s, jitter_s=self.jitter_s,
                            jitter_distribution=self.jitter_distribution, loss_ratio=self.loss_ratio,
                            loss_model=None, duplicate_ratio=0.0, reorder_ratio=0.0, corrupt_ratio=0.0,
                            queue_limit_packets=self.queue_limit_packets)

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth": fmt_rate(self.bandwidth_bps), "delay": fmt_duration(self.delay_s),
                "jitter": fmt_duration(self.jitter_s), "jitter_distribution": str(self.jitter_distribution),
                "loss": fmt_ratio(self.loss_ratio), "queue_limit": self.queue_limit_packets,
                "cost_per_gb": fmt_number(self.cost_per_gb)}


def _default_policies() -> tuple[RoutingPolicy, ...]:
    return tuple(default_policies())


def _exact(value: float, candidates: list[str], back: Callable[[str], float]) -> str:
    for text in candidates:
        try:
            if back(text) == value:
                return text
        except ConfigError:
            continue
    return candidates[0]


def _ms_text(ms: float) -> str:
    """Milliseconds as the core's parsers read them back exactly (their own `:g` formatting is lossy)."""
    if ms == 0:
        return "0ms"
    return _exact(ms, [f"{ms:g}ms", f"{ms!r}ms"], lambda t: parse_duration(t) * 1000.0)


def _pct_text(pct: float) -> str:
    if pct == 0:
        return "0%"
    return _exact(pct, [f"{pct:g}%", f"{pct!r}%"], lambda t: parse_ratio(t) * 100.0)


def policy_to_config(p: RoutingPolicy) -> dict[str, Any]:
    """`RoutingPolicy.to_dict()`, with the requirements written so that they read back exactly."""
    out = p.to_dict()
    r = p.requirements
    if r is not None:
        req = out["requirements"]
        for key, ms in (("max_latency", r.max_latency_ms), ("max_jitter", r.max_jitter_ms)):
            if ms is not None:
                req[key] = _ms_text(ms)
        if r.max_loss_pct is not None:
            req["max_loss"] = _pct_text(r.max_loss_pct)
    return out


def sla_to_config(t: SlaTarget) -> dict[str, Any]:
    """`SlaTarget.as_dict()`, written so that it reads back exactly."""
    out = t.as_dict()
    out.update(latency=_ms_text(t.latency_ms), jitter=_ms_text(t.jitter_ms), loss=_pct_text(t.loss_pct),
               window=fmt_duration(t.window_s))
    return out


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The settings a site's `patronus agent` runs with (the rest of its site file is derived), and
    `startup_s`: how long the agent takes from its start (`agent_start`) until it probes and steers.
    The simulator uses it (None: the measured default, `emulation.backends.sim.agent.AGENT_STARTUP_S`);
    a real agent takes what it takes, so it is not part of the site file (`SIM_ONLY_KEYS`)."""

    monitor: MonitorProfile = PROFILES["default"]
    policies: tuple[RoutingPolicy, ...] = field(default_factory=_default_policies)
    steering: Steering = Steering.NFTABLES
    router: RouterConfig = field(default_factory=RouterConfig)
    sla: SlaTarget = field(default_factory=SlaTarget)
    startup_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        policies: Any = ("default" if self.policies == _default_policies()
                         else [policy_to_config(p) for p in self.policies])
        r = self.router
        out = {"monitor": monitor_to_config(self.monitor), "policies": policies, "steering": str(self.steering),
               "router": {"failback_hold": fmt_duration(r.failback_hold_s),
                          "failover_cooldown": fmt_duration(r.failover_cooldown_s),
                          "min_improvement": fmt_number(r.min_improvement),
                          "idle_timeout": fmt_duration(r.idle_timeout_s)},
               "sla": sla_to_config(self.sla)}
        if self.startup_s is not None:
            out["startup"] = fmt_duration(self.startup_s)
        return out


SIM_ONLY_KEYS = frozenset({"startup"})      # `agent` settings of the simulator's model, not of the site file


def monitor_to_config(m: MonitorProfile) -> str | dict[str, Any]:
    """Inverse of `MonitorProfile.from_config`: a profile's name, or the mapping of a custom profile."""
    if PROFILES.get(m.name) == m:
        return m.name
    out: dict[str, Any] = {"interval": fmt_duration(m.interval_s), "detect_multiplier": m.detect_multiplier,
                           "up_count": m.up_count, "window": m.window}
    if m.timeout_s is not None:
        out["timeout"] = fmt_duration(m.timeout_s)
    out.update(max_timeout=fmt_duration(m.max_timeout_s), report_interval=fmt_duration(m.report_interval_s),
               jitter=m.jitter)
    return out


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    id: int
    lan_prefix: str
    hosts: int
    uplinks: tuple[Uplink, ...]
    agent: AgentSettings
    region: str | None = None       # for core.topology hierarchical (and region-wide timeline events)

    def uplink(self, name: str) -> Uplink:
        for u in self.uplinks:
            if u.name == name:
                return u
        raise KeyError(f"{self.name}.{name}")

    @property
    def links(self) -> tuple[LinkRef, ...]:
        return tuple(LinkRef(self.name, u.name) for u in self.uplinks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "lan_prefix": self.lan_prefix, "hosts": self.hosts}
        if self.region is not None:
            out["region"] = self.region
        out.update(uplinks={u.name: u.to_dict() for u in self.uplinks}, agent=self.agent.to_dict())
        return out


@dataclass(frozen=True, slots=True)
class Core:
    topology: Topology = Topology.INTERNET
    hub: str | None = None          # the hub site, for hub-and-spoke
    hubs: tuple[tuple[str, tuple[str, ...]], ...] = ()   # hierarchical: (region, its hub sites), in file order

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topology": str(self.topology)}
        if self.hub is not None:
            out["hub"] = self.hub
        if self.hubs:
            out["hubs"] = {region: list(names) for region, names in self.hubs}
        return out


@dataclass(frozen=True, slots=True)
class MeshTimers:
    """The membership protocol's timers (`patronus.core.swim.SwimConfig`), as a scenario sets them."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    suspicion_mult: float = 4.0
    sync_interval_s: float = 30.0
    join_interval_s: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"probe_interval": fmt_duration(self.probe_interval_s),
                "probe_timeout": fmt_duration(self.probe_timeout_s), "suspicion_mult": fmt_number(self.suspicion_mult),
                "sync_interval": fmt_duration(self.sync_interval_s),
                "join_interval": fmt_duration(self.join_interval_s)}


@dataclass(frozen=True, slots=True)
class Mesh:
    """Sites that find each other (issue 14): no site's agent has remotes written for it. Each site joins
    through the `seeds` with a signed announcement, learns the others by gossip and builds paths to the
    sites `topology` says it peers with (`patronus.core.mesh`)."""

    topology: MeshTopology
    seeds: tuple[str, ...]
    timers: MeshTimers = MeshTimers()

    def to_dict(self) -> dict[str, Any]:
        return {"topology": self.topology.as_dict(), "seeds": list(self.seeds), "timers": self.timers.to_dict()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Flow:
    """One traffic flow from a LAN host of one site to a LAN host of another.

    Type-specific fields are `None` where they do not apply: `rate_pps` and `payload_bytes` for the UDP
    types (voip: fixed 50 packets/s of 172 bytes; video: packets of 1200 bytes), `bitrate_bps` and
    `frame_rate` for video, `bandwidth_bps` for tcp_bulk (None: as fast as TCP goes), `interval_s` and
    `response_bytes` for http.
    """

    name: str
    type: FlowType
    src: Endpoint
    dst: Endpoint
    traffic_class: str
    start_s: float
    stop_s: float
    dst_port: int
    rate_pps: float | None = None
    payload_bytes: int | None = None
    bitrate_bps: float | None = None
    frame_rate: float | None = None
    bandwidth_bps: float | None = None
    interval_s: float | None = None
    response_bytes: int | None = None

    @property
    def protocol(self) -> str:
        return self.type.protocol

    @property
    def packets_per_s(self) -> float | None:
        """The UDP flows' packet rate (video: frames split into 1200-byte packets); None for TCP flows."""
        if self.type is FlowType.VIDEO and self.bitrate_bps is not None and self.frame_rate is not None:
            frame_bytes = self.bitrate_bps / 8 / self.frame_rate
            return -(-frame_bytes // VIDEO_PACKET_BYTES) * self.frame_rate
        return self.rate_pps

    def active(self, start_s: float, end_s: float) -> bool:
        """Whether [start_s, end_s] lies within the flow's lifetime."""
        return self.start_s <= start_s and end_s <= self.stop_s

    def to_dict(self, duration_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": str(self.type), "from": str(self.src), "to": str(self.dst),
                               "class": self.traffic_class, "start": fmt_duration(self.start_s)}
        if self.stop_s != duration_s:      # left out: until the end, whatever the duration becomes
            out["stop"] = fmt_duration(self.stop_s)
        out["dst_port"] = self.dst_port
        if self.type is FlowType.UDP_CBR:
            assert self.rate_pps is not None and self.payload_bytes is not None
            out.update(rate=fmt_number(self.rate_pps), size=fmt_size(self.payload_bytes))
        elif self.type is FlowType.VIDEO:
            assert self.bitrate_bps is not None and self.frame_rate is not None
            out.update(bitrate=fmt_rate(self.bitrate_bps), fps=fmt_number(self.frame_rate))
        elif self.type is FlowType.TCP_BULK:
            if self.bandwidth_bps is not None:
                out["bandwidth"] = fmt_rate(self.bandwidth_bps)
        elif self.type is FlowType.HTTP:
            assert self.interval_s is not None and self.response_bytes is not None
            out.update(interval=fmt_duration(self.interval_s), size=fmt_size(self.response_bytes))
        return out


# --- timeline --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEvent:
    """Something that happens at `at_s` seconds into the run. `note` is free text for reports."""

    action: ClassVar[str] = ""
    at_s: float
    note: str = ""

    @property
    def target(self) -> str:
        raise NotImplementedError

    @property
    def end_s(self) -> float:
        """When the event's last change happens (flap and ramp last a while)."""
        return self.at_s

    def _params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return f"{self.action} {self.target}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": fmt_duration(self.at_s), "action": self.action}
        out.update(self._params())
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkEvent(TimelineEvent):
    link: LinkRef

    @property
    def target(self) -> str:
        return str(self.link)

    def _params(self) -> dict[str, Any]:
        return {"link": str(self.link)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Impair(LinkEvent):
    """Set some impairments of a link; the others keep their current values."""

    action: ClassVar[str] = "impair"
    impairment: Impairment

    def _params(self) -> dict[str, Any]:
        return {"link": str(self.link), **self.impairment.to_dict()}

    def describe(self) -> str:
        return f"impair {self.link}: {self.impairment.describe()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut(LinkEvent):
    """The link goes down: nothing crosses it (both directions) until `restore`."""

    action: ClassVar[str] = "cut"


@dataclass(frozen=True, slots=True, kw_only=True)
class Restore(LinkEvent):
    """The link comes back with the impairments it had. A no-op on a link that is up."""

    action: ClassVar[str] = "restore"


@dataclass(frozen=True, slots=True, kw_only=True)
class Clear(LinkEvent):
    """The link's impairments go back to its configured baseline (up or down stays as it is)."""

    action: ClassVar[str] = "clear"


@dataclass(frozen=True, slots=True, kw_only=True)
class Flap(LinkEvent):
    """`count` times: down for period/2, then up for period/2. The link ends up."""

    action: ClassVar[str] = "flap"
    period_s: float
    count: int

    @property
    def end_s(self) -> float:
        return self.at_s + (self.count - 1) * self.period_s + self.period_s / 2

    def down_times(self) -> tuple[float, ...]:
        return tuple(self.at_s + i * self.period_s for i in range(self.count))

    def _params(self) -> dict[str, Any]:
        return {"link": str(self.link), "period": fmt_duration(self.period_s), "count": self.count}

    def describe(self) -> str:
        return f"flap {self.link} {self.count}× every {human_duration(self.period_s)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ramp(LinkEvent):
    """Move the given impairments linearly from their current values to `to`, in `steps` equal steps
    over `over_s` (the first step at at + over/steps, the last, reaching `to`, at at + over)."""

    action: ClassVar[str] = "ramp"
    to: Impairment
    over_s: float
    steps: int = 10

    @property
    def end_s(self) -> float:
        return self.at_s + self.over_s

    def _params(self) -> dict[str, Any]:
        return {"link": str(self.link), "to": self.to.to_dict(), "over": fmt_duration(self.over_s),
                "steps": self.steps}

    def describe(self) -> str:
        return f"ramp {self.link} over {human_duration(self.over_s)} to {self.to.describe()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentEvent(TimelineEvent):
    site: str

    @property
    def target(self) -> str:
        return self.site

    def _params(self) -> dict[str, Any]:
        return {"site": self.site}


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStop(AgentEvent):
    """Stop the site's agent. `cleanup: false` (the default) is a graceful stop (SIGTERM): its tunnels,
    steering and reflector stay, the site keeps forwarding as last decided, and the next start adopts
    them. `cleanup: true` also removes them (`patronus cleanup`): the site loses its router."""

    action: ClassVar[str] = "agent_stop"
    cleanup: bool = False

    def _params(self) -> dict[str, Any]:
        return {"site": self.site, **({"cleanup": True} if self.cleanup else {})}

    def describe(self) -> str:
        return f"agent_stop {self.site}" + (" (with cleanup)" if self.cleanup else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStart(AgentEvent):
    """Start the site's agent again. A no-op when it runs."""

    action: ClassVar[str] = "agent_start"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteJoin(AgentEvent):
    """The site comes up (its dataplane and its agent) and joins the mesh through the seeds. A site whose
    first membership event (site_join, site_leave) is a site_join is absent until then."""

    action: ClassVar[str] = "site_join"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteLeave(AgentEvent):
    """The site's agent announces that it leaves the mesh, then stops and removes its dataplane."""

    action: ClassVar[str] = "site_leave"


ACTIONS: dict[str, type[TimelineEvent]] = {c.action: c for c in (Impair, Cut, Restore, Clear, Flap, Ramp,
                                                                   AgentStop, AgentStart, SiteJoin, SiteLeave)}


# --- expectations ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """Something the run must show. `text` is the sentence reports print beside pass / fail.

    `quantile` / `pass_rate` (ratios in (0, 1], at most one of them) say how repeated runs
    (`patronus-lab run --repeat N`, emulation.repeat) judge it: the per-run values combined at that
    quantile, or at least that share of the runs passing; neither: every run must pass. One run is
    judged on its own either way. `backends`: it judges only the runs of these backends (a limit that
    differs between the simulator's modelled agent and real agents on namespaces, each stated with its
    measured margin); empty, every backend's."""

    kind: ClassVar[str] = ""
    quantile: float | None = None
    pass_rate: float | None = None
    backends: tuple[str, ...] = ()      # the backends whose runs it judges (empty: every one)

    @property
    def text(self) -> str:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        params = self._params()
        if self.quantile is not None:
            params["quantile"] = fmt_ratio(self.quantile)
        if self.pass_rate is not None:
            params["pass_rate"] = fmt_ratio(self.pass_rate)
        if self.backends:
            params["backends"] = list(self.backends)
        return {self.kind: params}


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverGap(Expectation):
    """The longest interval between two arrivals of the flow, around every failure, is at most `max_s`."""

    kind: ClassVar[str] = "failover_gap"
    flow: str
    max_s: float

    @property
    def text(self) -> str:
        return f"failover gap of {self.flow} ≤ {human_duration(self.max_s)}"

    def _params(self) -> dict[str, Any]:
        return {"flow": self.flow, "max": fmt_duration(self.max_s)}


@dataclass(frozen=True, slots=True, kw_only=True)
class LostPackets(Expectation):
    """At most `max_packets` of the flow's packets never arrive (over the whole run)."""

    kind: ClassVar[str] = "lost_packets"
    flow: str
    max_packets: int

    @property
    def text(self) -> str:
        return f"{self.flow} loses ≤ {self.max_packets} packet{'s' if self.max_packets != 1 else ''}"

    def _params(self) -> dict[str, Any]:
        return {"flow": self.flow, "max": self.max_packets}


@dataclass(frozen=True, slots=True, kw_only=True)
class SlaCompliance(Expectation):
    """The flow meets its SLA target for at least `min_ratio` of its lifetime. `target`: the one given
    with the expectation, else (None) the sending site's agent `sla`."""

    kind: ClassVar[str] = "sla_compliance"
    flow: str
    min_ratio: float
    target: SlaTarget | None = None

    @property
    def text(self) -> str:
        t = self.target
        within = f" (p{t.latency_percentile} ≤ {t.latency_ms:g} ms, jitter ≤ {t.jitter_ms:g} ms, loss ≤ " \
                 f"{t.loss_pct:g} %)" if t is not None else ""
        return f"SLA compliance of {self.flow} ≥ {human_ratio(self.min_ratio)}{within}"

    def _params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flow": self.flow, "min": fmt_ratio(self.min_ratio)}
        if self.target is not None:
            out["target"] = sla_to_config(self.target)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PathChanges(Expectation):
    """The flow changes path at most `max_changes` times (failovers and failbacks both count), and at
    least `min_changes` times (default 0; 1 says "it must move")."""

    kind: ClassVar[str] = "path_changes"
    flow: str
    max_changes: int
    min_changes: int = 0

    @property
    def text(self) -> str:
        s = "" if self.max_changes == 1 else "s"
        if self.min_changes:
            span = str(self.max_changes) if self.min_changes == self.max_changes else \
                f"{self.min_changes}–{self.max_changes}"
            return f"{self.flow} changes path {span} time{s}"
        return f"{self.flow} changes path ≤ {self.max_changes} time{s}"

    def _params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flow": self.flow}
        if self.min_changes:
            out["min"] = self.min_changes
        out["max"] = self.max_changes
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectTime(Expectation):
    """Every time the link goes down (cut, or the down half of a flap), the agents declare the paths over
    it Down within `max_s`."""

    kind: ClassVar[str] = "detect_time"
    link: LinkRef
    max_s: float

    @property
    def text(self) -> str:
        return f"loss of {self.link} detected within {human_duration(self.max_s)}"

    def _params(self) -> dict[str, Any]:
        return {"link": str(self.link), "max": fmt_duration(self.max_s)}


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowStays(Expectation):
    """The flow does not change path between `start_s` and `end_s`."""

    kind: ClassVar[str] = "flow_stays"
    flow: str
    start_s: float
    end_s: float

    @property
    def text(self) -> str:
        return f"{self.flow} stays on its path from {human_duration(self.start_s)} to {human_duration(self.end_s)}"

    def _params(self) -> dict[str, Any]:
        return {"flow": self.flow, "during": [fmt_duration(self.start_s), fmt_duration(self.end_s)]}


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinTime(Expectation):
    """Every time the site joins the mesh (its site_join, or the start for a site there from the start),
    within `max_s` it has every path it should have Up: one from each of its uplinks to each uplink of
    every site the topology says it peers with, given the sites in the mesh then."""

    kind: ClassVar[str] = "join_time"
    site: str
    max_s: float

    @property
    def text(self) -> str:
        return f"{self.site} joins the mesh within {human_duration(self.max_s)}"

    def _params(self) -> dict[str, Any]:
        return {"site": self.site, "max": fmt_duration(self.max_s)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Converged(Expectation):
    """After the start and after every change of the mesh's membership (a site joins or leaves), within
    `max_s` every site in the mesh has exactly the paths the topology gives it, each Up, and none to a
    site that left."""

    kind: ClassVar[str] = "converged"
    max_s: float

    @property
    def text(self) -> str:
        return f"the mesh converges within {human_duration(self.max_s)} of every membership change"

    def _params(self) -> dict[str, Any]:
        return {"max": fmt_duration(self.max_s)}


EXPECTATIONS: dict[str, type[Expectation]] = {c.kind: c for c in (FailoverGap, LostPackets, SlaCompliance,
                                                                   PathChanges, DetectTime, FlowStays, JoinTime,
                                                                   Converged)}


# --- the scenario ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Summary:
    sites: int
    flows: int
    timeline_events: int
    expectations: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    seed: int
    duration_s: float
    sites: tuple[Site, ...]
    core: Core
    flows: tuple[Flow, ...]
    timeline: tuple[TimelineEvent, ...]          # sorted by time; simultaneous events keep file order
    expectations: tuple[Expectation, ...]
    version: int = SCHEMA_VERSION
    backends: tuple[str, ...] = BACKENDS         # the backends it may run on
    source: str = field(default="", compare=False)
    mesh: Mesh | None = None                     # sites find each other: no static remotes

    # lookups
    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def flow(self, name: str) -> Flow:
        for f in self.flows:
            if f.name == name:
                return f
        raise KeyError(name)

    def uplink(self, link: LinkRef | str) -> Uplink:
        ref = link if isinstance(link, LinkRef) else LinkRef(*str(link).split(".", 1))
        return self.site(ref.site).uplink(ref.uplink)

    @property
    def links(self) -> tuple[LinkRef, ...]:
        return tuple(ref for s in self.sites for ref in s.links)

    def remotes_of(self, site: str) -> tuple[str, ...]:
        """The sites `site`'s agent builds paths to (`patronus.core.mesh`): every other site; in
        hub-and-spoke only the hub (for a spoke) and every spoke (for the hub); in hierarchical, a spoke's
        region hubs, and for a hub every other hub and its region's spokes."""
        self.site(site)
        if self.mesh is not None:
            return ()           # discovered at run time
        names = [s.name for s in self.sites]
        topo = self.core.topology
        if topo is Topology.HUB_AND_SPOKE and self.core.hub is not None:
            return hub_and_spoke_peers(site, names, self.core.hub)
        if topo is Topology.HIERARCHICAL:
            region_of = {s.name: s.region for s in self.sites if s.region is not None}
            return hierarchical_peers(site, names, region_of, dict(self.core.hubs))
        return full_mesh_peers(site, names)

    def present_at_start(self, site: str) -> bool:
        """Whether the site is up from the start: not when its first membership event is a site_join."""
        first = next((e for e in self.timeline if isinstance(e, SiteJoin | SiteLeave) and e.site == site), None)
        return not isinstance(first, SiteJoin)

    def membership(self) -> list[tuple[float, frozenset[str]]]:
        """The sites in the mesh from each time on: (0, those present at the start), then one entry per
        site_join / site_leave time, in order."""
        live = {s.name for s in self.sites if self.present_at_start(s.name)}
        out = [(0.0, frozenset(live))]
        for e in self.timeline:
            if isinstance(e, SiteJoin | SiteLeave):
                (live.add if isinstance(e, SiteJoin) else live.discard)(e.site)
                if out[-1][0] == e.at_s:
                    out[-1] = (e.at_s, frozenset(live))
                else:
                    out.append((e.at_s, frozenset(live)))
        return out

    def refusal(self, backend: str) -> str | None:
        """Why this scenario cannot run on `backend` (None: it can). Backends call it before building."""
        if backend not in self.backends:
            return (f"scenario {self.name} runs only on {', '.join(self.backends)} (its `backends:` field), "
                    f"not on {backend}")
        return None

    def summary(self) -> Summary:
        return Summary(len(self.sites), len(self.flows), len(self.timeline), len(self.expectations))

    # documents
    def to_dict(self) -> dict[str, Any]:
        """The normalized document, in human units, every default written out (a flow's `stop` is left
        out when it is the scenario's end, so that a changed duration moves it too)."""
        return {
            "version": self.version, "name": self.name, "description": self.description, "seed": self.seed,
            "duration": fmt_duration(self.duration_s),
            **({"backends": list(self.backends)} if self.backends != BACKENDS else {}),
            "sites": {s.name: s.to_dict() for s in self.sites},
            "core": self.core.to_dict(),
            "traffic": [f.to_dict(self.duration_s) for f in self.flows],
            "timeline": [e.to_dict() for e in self.timeline],
            "expectations": [e.to_dict() for e in self.expectations],
            **({"mesh": self.mesh.to_dict()} if self.mesh is not None else {}),
        }

    def to_yaml(self) -> str:
        """`to_dict()` as YAML, in document order (not sorted: the order of sites and uplinks is kept)."""
        import yaml

        header = f"# normalized copy of {self.source}\n" if self.source else ""
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
