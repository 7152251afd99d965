"""Routing policies: match rules, path preferences, scoring presets, requirements, load balancing.

Values only: a policy is immutable; the router holds the ordered set. `RoutingPolicy.from_dict`
parses the human form used in site files, scenario files and the API, and lists every error with
its path; `to_dict` is its inverse.

Path preferences (seed, sprint 13): LowestLatency `(200 − latency)/2`, HighestBandwidth
`bandwidth/1000·100`, LowestLoss `100 − loss`, and Custom weights over normalised metrics. The seed
leaves the normalisations of the custom score and LowestCost open; ours, each clamped to [0, 100]:
latency `(200 − ms)/2`, jitter `(50 − ms)/0.5`, loss `100 − %`, bandwidth `Mbps/1000·100`,
cost `100 − cost_per_gb/0.20·100` (free → 100, $0.20/GB or more → 0). Custom weights are divided by
their sum, so any non-negative weights give a score in [0, 100].
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from patronus.core.errors import ConfigError
from patronus.core.model import PROTOCOL_NAMES, FlowKey, PathMetrics, parse_protocol
from patronus.core.validate import Errors, duration, is_number, number, ratio, show

COST_REFERENCE_PER_GB = 0.20
MAX_WEIGHT = 1e6                # custom weights are relative; a bound keeps every score finite
REQUIREMENT_MAX_S = 1e8         # a bound on max_latency / max_jitter, so that none overflows


class Preference(enum.Enum):
    LOWEST_LATENCY = "lowest_latency"
    HIGHEST_BANDWIDTH = "highest_bandwidth"
    LOWEST_LOSS = "lowest_loss"
    LOWEST_COST = "lowest_cost"
    CUSTOM = "custom"


class LoadBalance(enum.Enum):
    NONE = "none"                                   # always the single best path
    ROUND_ROBIN = "round_robin"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"   # by bandwidth (smooth WRR)
    LEAST_CONNECTIONS = "least_connections"         # fewest active flows
    FLOW_HASH = "flow_hash"                         # rendezvous hash of the 5-tuple


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: float = 0.0
    cost: float = 0.0

    def problems(self, prefix: str) -> list[tuple[str, str]]:
        errs = []
        for name in ("latency", "jitter", "loss", "bandwidth", "cost"):
            v = getattr(self, name)
            if not is_number(v) or not 0 <= v <= MAX_WEIGHT:
                errs.append((f"{prefix}.{name}", f"expected a non-negative weight (at most {MAX_WEIGHT:g}), "
                                                 f"got {show(v)}"))
        if not errs and self.total <= 0:
            errs.append((prefix, "at least one weight must be positive"))
        return errs

    @property
    def total(self) -> float:
        return self.latency + self.jitter + self.loss + self.bandwidth + self.cost

    def as_dict(self) -> dict[str, float]:
        return {"latency": self.latency, "jitter": self.jitter, "loss": self.loss,
                "bandwidth": self.bandwidth, "cost": self.cost}


PRESETS: dict[str, ScoringWeights] = {
    "latency_sensitive": ScoringWeights(latency=0.5, jitter=0.3, loss=0.2),
    "throughput_focused": ScoringWeights(latency=0.1, loss=0.2, bandwidth=0.7),
    "cost_optimized": ScoringWeights(latency=0.2, jitter=0.1, loss=0.2, cost=0.5),
    "balanced": ScoringWeights(latency=0.3, jitter=0.2, loss=0.3, bandwidth=0.2),
}


def _clamp(x: float) -> float:
    return 0.0 if x < 0.0 else 100.0 if x > 100.0 else x


def cost_score(cost_per_gb: float) -> float:
    return _clamp(100.0 - cost_per_gb / COST_REFERENCE_PER_GB * 100.0)


def preference_score(pref: Preference, weights: ScoringWeights | None, m: PathMetrics) -> float:
    """How much a policy likes a path with metrics `m` (higher is better)."""
    if pref is Preference.CUSTOM:
        w = weights or PRESETS["balanced"]
        s = (w.latency * _clamp((200.0 - m.latency_ms) / 2.0)
             + w.jitter * _clamp((50.0 - m.jitter_ms) / 0.5)
             + w.loss * _clamp(100.0 - m.loss_pct)
             + w.bandwidth * _clamp(m.bandwidth_mbps / 1000.0 * 100.0)
             + w.cost * cost_score(m.cost_per_gb))
        return s / w.total
    if pref is Preference.LOWEST_LATENCY:
        return (200.0 - m.latency_ms) / 2.0
    if pref is Preference.HIGHEST_BANDWIDTH:
        return m.bandwidth_mbps / 1000.0 * 100.0
    if pref is Preference.LOWEST_LOSS:
        return 100.0 - m.loss_pct
    return cost_score(m.cost_per_gb)


@dataclass(frozen=True, slots=True)
class PortRange:
    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    @classmethod
    def parse(cls, value: object, fld: str) -> PortRange:
        lo: object
        hi: object
        if isinstance(value, bool):
            raise ConfigError(f"expected a port or range like 5060-5061, got {show(value)}", fld)
        if isinstance(value, int):
            lo = hi = value
        elif isinstance(value, str) and "-" in value:
            a, b = (_PORT.match(x) for x in value.partition("-")[::2])
            lo, hi = (int(a[1]), int(b[1])) if a and b else (None, None)
        elif isinstance(value, str) and (m := _PORT.match(value)):
            lo = hi = int(m[1])         # the digits only: int() does not take every space `\s` matches
        elif isinstance(value, list | tuple) and len(value) == 2 and not any(isinstance(v, bool) for v in value):
            lo, hi = value
        else:
            lo = hi = None
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 65535):
            raise ConfigError(f"expected a port 0-65535 or a range like 5060-5061, got {show(value)}", fld)
        return cls(lo, hi)


_PORT = re.compile(r"^\s*([0-9]{1,5})\s*$")


@dataclass(frozen=True, slots=True)
class _Prefix:
    text: str
    version: int
    net: int
    mask: int

    @classmethod
    def parse(cls, value: object, fld: str) -> _Prefix:
        try:
            if not isinstance(value, str):          # ip_network also reads integers (and booleans)
                raise TypeError(value)
            n = ipaddress.ip_network(value, strict=False)
        except (ValueError, TypeError):
            raise ConfigError(f"expected a prefix like 10.1.0.0/16, got {show(value)}", fld) from None
        return cls(str(n), n.version, int(n.network_address), int(n.netmask))

    def contains(self, version: int, addr: int) -> bool:
        return version == self.version and (addr & self.mask) == self.net


def address_int(text: str) -> tuple[int, int]:
    """(version, integer) of a canonical address string."""
    a = ipaddress.ip_address(text)
    return a.version, int(a)


@dataclass(frozen=True, slots=True)
class MatchRules:
    """All given fields must match (AND); an empty rule matches every flow."""

    src_prefix: _Prefix | None = None
    dst_prefix: _Prefix | None = None
    protocol: int | None = None
    src_ports: PortRange | None = None
    dst_ports: PortRange | None = None
    dscp: frozenset[int] | None = None
    app_class: str | None = None

    @property
    def needs_addresses(self) -> bool:
        return self.src_prefix is not None or self.dst_prefix is not None

    def matches(self, flow: FlowKey, dscp: int | None = None, app_class: str | None = None,
                addrs: tuple[tuple[int, int], tuple[int, int]] | None = None) -> bool:
        if self.protocol is not None and flow.protocol != self.protocol:
            return False
        r = self.dst_ports
        if r is not None and not r.lo <= flow.dst_port <= r.hi:
            return False
        r = self.src_ports
        if r is not None and not r.lo <= flow.src_port <= r.hi:
            return False
        if self.dscp is not None and dscp not in self.dscp:
            return False
        if self.app_class is not None and app_class != self.app_class:
            return False
        if self.src_prefix is not None or self.dst_prefix is not None:
            if addrs is None:
                addrs = (address_int(flow.src_ip), address_int(flow.dst_ip))
            if self.src_prefix is not None and not self.src_prefix.contains(*addrs[0]):
                return False
            if self.dst_prefix is not None and not self.dst_prefix.contains(*addrs[1]):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.src_prefix:
            out["src_prefix"] = self.src_prefix.text
        if self.dst_prefix:
            out["dst_prefix"] = self.dst_prefix.text
        if self.protocol is not None:
            out["protocol"] = PROTOCOL_NAMES.get(self.protocol, self.protocol)
        if self.src_ports:
            out["src_ports"] = str(self.src_ports)
        if self.dst_ports:
            out["dst_ports"] = str(self.dst_ports)
        if self.dscp is not None:
            out["dscp"] = sorted(self.dscp)
        if self.app_class is not None:
            out["app_class"] = self.app_class
        return out

    @classmethod
    def from_dict(cls, d: object, prefix: str) -> MatchRules:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"expected a mapping of match rules, got {show(d)}", prefix)
        errors: list[tuple[str, str]] = []
        kw: dict[str, Any] = {}
        known = {"src_prefix", "dst_prefix", "protocol", "src_ports", "dst_ports", "src_port", "dst_port",
                 "dscp", "app_class"}
        for k in d:
            if k not in known:
                errors.append((f"{prefix}.{k}", f"unknown match rule; expected one of {', '.join(sorted(known))}"))

        def attempt(key: str, attr: str, fn: Any) -> None:
            if key in d and d[key] is not None:
                try:
                    kw[attr] = fn(d[key], f"{prefix}.{key}")
                except ConfigError as exc:
                    errors.extend(exc.errors)

        attempt("src_prefix", "src_prefix", _Prefix.parse)
        attempt("dst_prefix", "dst_prefix", _Prefix.parse)
        attempt("protocol", "protocol", parse_protocol)
        for key in ("src_ports", "src_port"):
            attempt(key, "src_ports", PortRange.parse)
        for key in ("dst_ports", "dst_port"):
            attempt(key, "dst_ports", PortRange.parse)
        if d.get("dscp") is not None:
            raw = d["dscp"]
            vals = raw if isinstance(raw, list | tuple) else [raw]
            if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 63 for v in vals) and vals:
                kw["dscp"] = frozenset(vals)
            else:
                errors.append((f"{prefix}.dscp", f"expected DSCP values 0-63, got {show(raw)}"))
        if d.get("app_class") is not None:
            if isinstance(d["app_class"], str) and d["app_class"]:
                kw["app_class"] = d["app_class"]
            else:
                errors.append((f"{prefix}.app_class",
                               f"expected an application class name, got {show(d['app_class'])}"))
        if errors:
            raise ConfigError(errors)
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class Requirements:
    """Hard requirements of a policy (SLA-aware selection). `strict`: never use a path that fails them;
    otherwise such paths are used only when no path meets them."""

    max_latency_ms: float | None = None
    max_loss_pct: float | None = None
    max_jitter_ms: float | None = None
    max_cost_per_gb: float | None = None
    strict: bool = False

    def met_by(self, m: PathMetrics) -> bool:
        return ((self.max_latency_ms is None or m.latency_ms <= self.max_latency_ms)
                and (self.max_loss_pct is None or m.loss_pct <= self.max_loss_pct)
                and (self.max_jitter_ms is None or m.jitter_ms <= self.max_jitter_ms)
                and (self.max_cost_per_gb is None or m.cost_per_gb <= self.max_cost_per_gb))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.max_latency_ms is not None:
            out["max_latency"] = f"{self.max_latency_ms:g}ms"
        if self.max_loss_pct is not None:
            out["max_loss"] = f"{self.max_loss_pct:g}%"
        if self.max_jitter_ms is not None:
            out["max_jitter"] = f"{self.max_jitter_ms:g}ms"
        if self.max_cost_per_gb is not None:
            out["max_cost_per_gb"] = self.max_cost_per_gb
        if self.strict:
            out["strict"] = True
        return out

    @classmethod
    def from_dict(cls, d: object, prefix: str) -> Requirements:
        if not isinstance(d, Mapping):
            raise ConfigError(f"expected a mapping of requirements, got {show(d)}", prefix)
        errors: list[tuple[str, str]] = []
        kw: dict[str, Any] = {}
        known = {"max_latency", "max_loss", "max_jitter", "max_cost_per_gb", "strict"}
        errors += [(f"{prefix}.{k}", "unknown requirement") for k in d if k not in known]
        errs = Errors()

        def long(value: object, path: str, errs: Errors) -> float | None:
            return duration(value, path, errs, at_most=REQUIREMENT_MAX_S)

        for key, attr, read, scale in (("max_latency", "max_latency_ms", long, 1e3),
                                       ("max_jitter", "max_jitter_ms", long, 1e3),
                                       ("max_loss", "max_loss_pct", ratio, 100.0)):
            if d.get(key) is not None:
                x = read(d[key], f"{prefix}.{key}", errs)
                if x is not None:
                    kw[attr] = x * scale
        if d.get("max_cost_per_gb") is not None:
            kw["max_cost_per_gb"] = number(d["max_cost_per_gb"], f"{prefix}.max_cost_per_gb", errs, 0.0,
                                           what="a non-negative number")
        errors += errs.items
        s = d.get("strict", False)
        if not isinstance(s, bool):
            errors.append((f"{prefix}.strict", f"expected true or false, got {show(s)}"))
        kw["strict"] = bool(s)
        if errors:
            raise ConfigError(errors)
        return cls(**kw)


POLICY_NAME_MAX = 64


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a policy (None: it can). A name is a URL path segment of the API, a
    label in metrics, a column in the raw data and a word in the CLI's tables: printable characters
    only (no newline, tab or other control character), at most `POLICY_NAME_MAX` characters
    (spaces at either end are dropped before). A `/` is allowed (the API quotes it: `VoIP%2FVideo`)."""
    if len(name) > POLICY_NAME_MAX:
        return f"a name of {len(name)} characters (at most {POLICY_NAME_MAX})"
    if not name.isprintable():
        bad = next(c for c in name if not c.isprintable())
        return f"a name holds printable characters only, got {show(name)} (with {bad!r})"
    return None


def _name_errors(name: object, where: str, stored: bool) -> list[tuple[str, str]]:
    if not isinstance(name, str) or not name.strip():
        return [(where, f"expected a non-empty name, got {show(name)}")]
    problem = None if stored else name_problem(name.strip())
    return [] if problem is None else [(where, problem)]


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    name: str
    priority: int
    match: MatchRules = field(default_factory=MatchRules)
    preference: Preference = Preference.CUSTOM
    weights: ScoringWeights | None = None      # for CUSTOM
    preset: str | None = None                  # the preset name the weights came from, if any
    enabled: bool = True
    load_balance: LoadBalance = LoadBalance.NONE
    lb_tolerance: float = 5.0                  # paths within this many points of the best are "equal"
    failover_threshold: float | None = None    # leave a path whose quality score falls below this
    requirements: Requirements | None = None

    def score(self, m: PathMetrics) -> float:
        return preference_score(self.preference, self.weights, m)

    def to_dict(self) -> dict[str, Any]:
        pref: Any
        if self.preference is Preference.CUSTOM:
            pref = self.preset if self.preset else {"custom": (self.weights or PRESETS["balanced"]).as_dict()}
        else:
            pref = self.preference.value
        out: dict[str, Any] = {"name": self.name, "priority": self.priority, "enabled": self.enabled,
                               "match": self.match.to_dict(), "preference": pref,
                               "load_balance": self.load_balance.value, "lb_tolerance": self.lb_tolerance,
                               "failover_threshold": self.failover_threshold}
        if self.requirements is not None:
            out["requirements"] = self.requirements.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: object, prefix: str = "policy", *, stored: bool = False) -> RoutingPolicy:
        """A policy from its config form, or `ConfigError` listing every problem. `stored`: read back
        from the agent's store, where a name written before names were checked (`name_problem`) must
        still load, so that it can be seen and removed."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"expected a policy mapping, got {show(d)}", prefix)
        errors: list[tuple[str, str]] = []
        known = {"name", "priority", "enabled", "match", "preference", "load_balance", "lb_tolerance",
                 "failover_threshold", "requirements"}
        errors += [(f"{prefix}.{k}", "unknown setting") for k in d if k not in known]
        name = d.get("name")
        errors += _name_errors(name, f"{prefix}.name", stored)
        prio = d.get("priority")
        if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 1_000_000:
            errors.append((f"{prefix}.priority", f"expected a whole number 0-1000000 (lower wins), got {show(prio)}"))
        enabled = d.get("enabled", True)
        if not isinstance(enabled, bool):
            errors.append((f"{prefix}.enabled", f"expected true or false, got {show(enabled)}"))
        kw: dict[str, Any] = {}
        try:
            kw["match"] = MatchRules.from_dict(d.get("match"), f"{prefix}.match")
        except ConfigError as exc:
            errors.extend(exc.errors)
        pref = d.get("preference", "balanced")
        if isinstance(pref, str) and pref in PRESETS:
            kw.update(preference=Preference.CUSTOM, weights=PRESETS[pref], preset=pref)
        elif isinstance(pref, str) and pref in {p.value for p in Preference} and pref != "custom":
            kw["preference"] = Preference(pref)
        elif isinstance(pref, Mapping) and set(pref) == {"custom"} and isinstance(pref["custom"], Mapping):
            raw = dict(pref["custom"])
            bad = [k for k in raw if k not in ("latency", "jitter", "loss", "bandwidth", "cost")]
            errors += [(f"{prefix}.preference.custom.{k}", "unknown weight") for k in bad]
            if not bad:
                w = ScoringWeights(**raw)
                probs = w.problems(f"{prefix}.preference.custom")
                errors += probs
                if not probs:
                    kw.update(preference=Preference.CUSTOM, weights=w)
        else:
            choices = sorted({p.value for p in Preference} - {"custom"} | set(PRESETS))
            errors.append((f"{prefix}.preference", f"expected one of {', '.join(choices)} or "
                                                   f"{{custom: {{latency: .., ...}}}}, got {show(pref)}"))
        lb = d.get("load_balance", "none")
        try:
            kw["load_balance"] = LoadBalance(lb)
        except ValueError:
            errors.append((f"{prefix}.load_balance",
                           f"expected one of {', '.join(m.value for m in LoadBalance)}, got {show(lb)}"))
        tol = d.get("lb_tolerance", 5.0)
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol <= 100:
            errors.append((f"{prefix}.lb_tolerance", f"expected a number of score points 0-100, got {show(tol)}"))
        else:
            kw["lb_tolerance"] = float(tol)
        thr = d.get("failover_threshold")
        if thr is not None:
            if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 <= thr <= 100:
                errors.append((f"{prefix}.failover_threshold", f"expected a quality score 0-100, got {show(thr)}"))
            else:
                kw["failover_threshold"] = float(thr)
        if d.get("requirements") is not None:
            try:
                kw["requirements"] = Requirements.from_dict(d["requirements"], f"{prefix}.requirements")
            except ConfigError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ConfigError(errors)
        return cls(name=str(name).strip(), priority=int(prio), enabled=bool(enabled), **kw)  # type: ignore[arg-type]


def default_policies() -> list[RoutingPolicy]:
    """The seed's four default policies (sprint 13), with failover thresholds of ours.

    Latency-sensitive classes leave a path once its quality score drops below 70 (the seed README's
    "degraded" line); default traffic leaves Degraded paths (score < 50); bulk transfers stay until the
    path is Down, so a brownout moves voice and games but not backups.
    """
    return [
        RoutingPolicy("VoIP/Video", 1, MatchRules(dst_ports=PortRange(5060, 5061)),
                      Preference.CUSTOM, PRESETS["latency_sensitive"], "latency_sensitive",
                      failover_threshold=70.0),
        RoutingPolicy("Gaming", 2, MatchRules(protocol=17, dst_ports=PortRange(27000, 28000)),
                      Preference.LOWEST_LATENCY, failover_threshold=70.0),
        RoutingPolicy("Bulk Transfers", 3, MatchRules(protocol=6, dst_ports=PortRange(20, 21)),
                      Preference.HIGHEST_BANDWIDTH),
        RoutingPolicy("Default", 100, MatchRules(), Preference.CUSTOM, PRESETS["balanced"], "balanced",
                      failover_threshold=50.0),
    ]
