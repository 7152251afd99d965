"""Identities and values of the SD-WAN model: sites, endpoints, paths, flows, metrics.

Everything here is an immutable value. Times are seconds on whatever clock the driver uses (the core
never reads a clock); metrics carry their unit in their name.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, replace
from typing import NamedTuple, NewType

from patronus.core.errors import ConfigError, show

SiteId = NewType("SiteId", str)
EndpointId = NewType("EndpointId", str)
PathId = NewType("PathId", str)


class PathStatus(enum.Enum):
    """Health of a path. Ordered by preference: UP before DEGRADED before DOWN."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def rank(self) -> int:
        """0 for UP, 1 for DEGRADED, 2 for DOWN (lower is healthier)."""
        return _STATUS_RANK[self]


_STATUS_RANK = {PathStatus.UP: 0, PathStatus.DEGRADED: 1, PathStatus.DOWN: 2}

PROTOCOL_NUMBERS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58,
                                    "sctp": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOL_NUMBERS.items()}


def parse_protocol(value: object, field_name: str = "protocol") -> int:
    """`"udp"` / `17` → 17."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a protocol name or number, got {show(value)}", field_name)
    if isinstance(value, int):
        if 0 <= value <= 255:
            return value
        raise ConfigError(f"expected a protocol number 0-255, got {show(value)}", field_name)
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[name]
        if name.isascii() and name.isdigit() and len(name) <= 3:
            return parse_protocol(int(name), field_name)
    raise ConfigError(f"expected a protocol name ({', '.join(PROTOCOL_NUMBERS)}) or number, got {show(value)}",
                      field_name)


def canonical_ip(value: object, field_name: str) -> str:
    """Canonical text form of an IPv4 or IPv6 address; raises ConfigError naming the field."""
    try:
        return str(ipaddress.ip_address(value))  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"expected an IPv4 or IPv6 address, got {show(value)}", field_name) from None


def _port(value: object, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"expected a port number 0-65535, got {show(value)}", field_name)
    return value


class FlowKey(NamedTuple):
    """The 5-tuple that identifies a flow. Hashable and cheap to hash.

    Addresses are canonical strings (Python caches string hashes, so lookups of existing flows stay
    fast). Build untrusted keys with `FlowKey.parse`, which validates and canonicalises; direct
    construction is for code that already holds canonical values.
    """

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int

    @classmethod
    def parse(cls, src_ip: object, dst_ip: object, src_port: object, dst_port: object,
              protocol: object) -> FlowKey:
        errors: list[tuple[str, str]] = []
        values: list[object] = []
        for name, fn, raw in (
            ("src_ip", canonical_ip, src_ip), ("dst_ip", canonical_ip, dst_ip),
            ("src_port", _port, src_port), ("dst_port", _port, dst_port),
            ("protocol", parse_protocol, protocol),
        ):
            try:
                values.append(fn(raw, name))
            except ConfigError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ConfigError(errors)
        return cls(*values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        proto = PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        src = f"[{self.src_ip}]" if ":" in self.src_ip else self.src_ip
        dst = f"[{self.dst_ip}]" if ":" in self.dst_ip else self.dst_ip
        return f"{proto} {src}:{self.src_port}->{dst}:{self.dst_port}"


@dataclass(frozen=True, slots=True)
class Slot:
    """An aggregate the dataplane steers as one: the connections of one `policy` toward one `remote`
    site that were first put on path `origin`. A kernel cannot ask the router about every connection,
    so the agent's router holds one flow per slot and moves slots; a failover moves every connection
    of a slot at once. `policy` None is the implicit default (what no policy matches).

    `gen`: a slot's connections stay in it for life, so a slot that failed over and waits to fail back
    cannot take new connections that should go to its origin path (they would ride its current path).
    Its second generation (`gen` 1) is placed on the origin for them meanwhile (`SiteRuntime`); both
    are ordinary slots from then on."""

    remote: SiteId
    policy: str | None
    origin: PathId
    gen: int = 0

    def __str__(self) -> str:
        g = f"#{self.gen}" if self.gen else ""
        return f"slot {self.remote}/{self.policy or 'implicit-default'}/{self.origin}{g}"

    def sort_key(self) -> tuple[str, str, str, int]:
        return (self.remote, self.policy or "", self.origin, self.gen)


@dataclass(frozen=True, slots=True)
class Bucket:
    """Where the dataplane sorts a new connection: its remote site, the policy it matches and, for a
    load-balancing policy, one of the plan's hash buckets of its 5-tuple (0 for one that does not
    balance). The steering plan maps each bucket to the path its new connections take."""

    remote: SiteId
    policy: str | None
    index: int = 0

    def sort_key(self) -> tuple[str, str, int]:
        return (self.remote, self.policy or "", self.index)


# What the router keeps a flow for: a connection (its 5-tuple) or a slot of connections.
RouteKey = FlowKey | Slot


@dataclass(frozen=True, slots=True)
class Site:
    id: SiteId
    name: str
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One uplink of a site: where its tunnels start or end."""

    id: EndpointId
    site: SiteId
    address: str
    interface_type: str = "wan"
    cost_per_gb: float = 0.0
    bandwidth_mbps: float | None = None


@dataclass(frozen=True, slots=True)
class Path:
    """A directed path from a local endpoint to a remote site's endpoint."""

    id: PathId
    src_site: SiteId
    dst_site: SiteId
    src_endpoint: EndpointId = EndpointId("")
    dst_endpoint: EndpointId = EndpointId("")
    cost_per_gb: float = 0.0
    bandwidth_mbps: float | None = None


@dataclass(frozen=True, slots=True)
class PathMetrics:
    """What the monitor knows of a path at `measured_at` (driver clock, seconds)."""

    latency_ms: float
    jitter_ms: float
    loss_pct: float
    score: float
    measured_at: float
    bandwidth_mbps: float = 0.0
    mtu_bytes: int = 1500
    cost_per_gb: float = 0.0
    samples: int = 0
    answered: int = 0     # of the samples, answered probes: latency and jitter are theirs (0: no value)

    @property
    def measured_latency_ms(self) -> float | None:
        """The latency, or None when no probe in the window was answered (a dead path has none; the
        0 in `latency_ms` then is no measurement). What to show outside the core."""
        return self.latency_ms if self.answered else None

    @property
    def measured_jitter_ms(self) -> float | None:
        """The jitter, or None when no probe in the window was answered."""
        return self.jitter_ms if self.answered else None

    def with_(self, **changes: object) -> PathMetrics:
        return replace(self, **changes)  # type: ignore[arg-type]
