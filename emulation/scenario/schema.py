"""The scenario schema, version 1: checks a whole document and builds a `Scenario`, or lists every error.

`from_dict(doc)` walks the entire document and collects every problem as (dotted path, reason), e.g.
`sites.hq.uplinks.isp1.delay: expected a duration like "20ms", got 'fast'` or `traffic[2].to: unknown
site 'brr'; the sites are hq, br`. It raises one `ConfigError` with all of them, or returns a fully
resolved, immutable `Scenario` (defaults applied, SI units, timeline sorted). Mappings keyed by name
(sites, uplinks) appear in paths as `.name`; list items as `[index]` (their position in the file).

Why hand-written rather than pydantic: units, cross-references (flows → sites and hosts, timeline →
links, expectations → flows) and the path/reason wording are most of the work. Values are read with the
toolkit every loader shares (`patronus.core.validate`: the collector and typed readers) and the agent
settings (policies, router) with `patronus.core.settings`, as the site file reads them. The schema is
the `_KNOWN_*` key sets below plus `scenarios/README.md`.

Nothing here reads a file (that is `loader`) or knows how a backend builds the network.
"""

from __future__ import annotations

import bisect
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emulation.scenario.fmt import fmt_duration
from emulation.scenario.meshspec import check_membership, read_mesh
from emulation.scenario.model import (
    ACTIONS,
    BACKENDS,
    EXPECTATIONS,
    IMPAIRMENT_KEYS,
    MAX_UPLINKS,
    RAMPABLE,
    SCHEMA_VERSION,
    VIDEO_PACKET_BYTES,
    VOIP_PAYLOAD_BYTES,
    VOIP_RATE_PPS,
    AgentSettings,
    AgentStart,
    AgentStop,
    Clear,
    Converged,
    Core,
    Cut,
    DetectTime,
    Endpoint,
    Expectation,
    FailoverGap,
    Flap,
    Flow,
    FlowStays,
    FlowType,
    GilbertElliott,
    Impair,
    Impairment,
    JitterDistribution,
    JoinTime,
    LinkRef,
    LostPackets,
    PathChanges,
    Ramp,
    Restore,
    Scenario,
    Site,
    SiteJoin,
    SiteLeave,
    SlaCompliance,
    Steering,
    TimelineEvent,
    Topology,
    Uplink,
)
from patronus.core import validate as val
from patronus.core.errors import ConfigError
from patronus.core.monitor import MonitorProfile
from patronus.core.settings import read_policies, read_router
from patronus.core.sla import SlaTarget
from patronus.core.validate import NAME_RE, show

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")       # the scenario's name
FLOW_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")   # flow names: no dots (they appear in override paths)
MAX_SITES = 64
MAX_SIM_SITES = 2000          # with `backends: [sim]` (the simulator only)
MAX_GROUP_SITES = 2000
MAX_HOSTS = 100
MAX_DELAY_S = 10.0
MAX_DURATION_S = 24 * 3600.0
MAX_PAYLOAD_BYTES = 1392      # a UDP payload that fits the agent's WireGuard MTU (1420) unfragmented
MIN_PAYLOAD_BYTES = 16        # sequence number and send timestamp (emulation.udpflow)

_KNOWN_TOP = {"version", "name", "description", "seed", "duration", "backends", "sites", "site_groups", "core", "mesh",
              "traffic", "timeline", "expectations"}
_KNOWN_SITE = {"id", "lan_prefix", "hosts", "region", "uplinks", "agent"}
_KNOWN_GROUP = {"count", "region", "hosts", "uplinks", "agent"}
_KNOWN_UPLINK = {"bandwidth", "delay", "jitter", "jitter_distribution", "loss", "queue_limit", "cost_per_gb"}
_KNOWN_AGENT = {"monitor", "policies", "steering", "router", "sla", "startup"}
MAX_STARTUP_S = 120.0
_KNOWN_CORE = {"topology", "hub", "hubs"}
_FLOW_COMMON = {"name", "type", "from", "to", "class", "start", "stop", "dst_port"}
_FLOW_PARAMS: dict[FlowType, set[str]] = {
    FlowType.UDP_CBR: {"rate", "size"},
    FlowType.VOIP: set(),
    FlowType.VIDEO: {"bitrate", "fps"},
    FlowType.TCP_BULK: {"bandwidth"},
    FlowType.HTTP: {"interval", "size"},
}
_IMPAIR_KEYS = {key for key, _ in IMPAIRMENT_KEYS.values()}
_EVENT_COMMON = {"at", "action", "note"}
_EVENT_PARAMS: dict[str, set[str]] = {
    "impair": {"link"} | _IMPAIR_KEYS,
    "cut": {"link"},
    "restore": {"link"},
    "clear": {"link"},
    "flap": {"link", "period", "count"},
    "ramp": {"link", "to", "over", "steps"},
    "agent_stop": {"site", "cleanup"},
    "agent_start": {"site"},
    "site_join": {"site"},
    "site_leave": {"site"},
    "region_cut": {"region", "uplink"},
    "region_restore": {"region", "uplink"},
}
REGION_ACTIONS = {"region_cut": "cut", "region_restore": "restore"}   # expanded into one event per link
_REPEAT_KEYS = {"quantile", "pass_rate", "backends"}   # how repeated runs judge it, and whose runs (any kind)
_EXPECTATION_KEYS: dict[str, tuple[set[str], set[str]]] = {   # kind → (known, required)
    "failover_gap": ({"flow", "max"} | _REPEAT_KEYS, {"flow", "max"}),
    "lost_packets": ({"flow", "max"} | _REPEAT_KEYS, {"flow", "max"}),
    "sla_compliance": ({"flow", "min", "target"} | _REPEAT_KEYS, {"flow", "min"}),
    "path_changes": ({"flow", "min", "max"} | _REPEAT_KEYS, {"flow", "max"}),
    "detect_time": ({"link", "max"} | _REPEAT_KEYS, {"link", "max"}),
    "flow_stays": ({"flow", "during"} | _REPEAT_KEYS, {"flow", "during"}),
    "join_time": ({"site", "max"} | _REPEAT_KEYS, {"site", "max"}),
    "converged": ({"max"} | _REPEAT_KEYS, {"max"}),
}


@dataclass(frozen=True, slots=True)
class SiteDecl:
    """A site as declared, valid or not: references to a site whose own settings are wrong are checked as
    far as they can be, but not reported again as unknown (one mistake, one error)."""

    uplinks: tuple[str, ...]      # the uplink names written under it
    hosts: int | None             # None when `hosts` itself is wrong
    site: Site | None             # None when the site has errors


def _choices(values: Iterable[str]) -> str:
    return ", ".join(values)


def _close(value: object, options: Iterable[str]) -> list[str]:
    """The option closest to a misspelt name, if any (only text of a sensible length is compared)."""
    if not isinstance(value, str) or len(value) > 64:
        return []
    return difflib.get_close_matches(value, list(options), n=1)


def _parse_pps(value: object, path: str, errs: val.Errors) -> float | None:
    """Packets per second: 1000, "1000", "1000pps" or "1000/s"."""
    number: object = value
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("pps").removesuffix("/s").strip()
        try:
            number = float(text)
        except ValueError:
            number = None
    # compared before any conversion: NaN, infinity and a 5000-digit integer all fail the bounds
    if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number <= 1e6:
        errs.add(path, f'expected a packet rate like 1000 or "1000pps" (above 0, at most 1000000), got {show(value)}')
        return None
    return float(number)


# --- the document ----------------------------------------------------------------------------------

def from_dict(doc: object, source: str = "") -> Scenario:
    """Check a whole scenario document; return the `Scenario` or raise `ConfigError` with every error."""
    errs = val.Errors()
    if doc is None:
        raise ConfigError([("(top level)", "the scenario is empty")])
    top = val.mapping(doc, "", errs, _KNOWN_TOP, ("version", "name", "duration"))
    if top is not None and top.get("sites") is None and top.get("site_groups") is None:
        errs.add("sites", "required (or site_groups)")
    if top is None:
        raise ConfigError(errs.items)

    version = top.get("version")
    if version is not None and (isinstance(version, bool) or version != SCHEMA_VERSION):
        errs.add("version", f"unsupported version {show(version)}; this test-bed reads version {SCHEMA_VERSION}")

    name = top.get("name")
    if name is not None and (not isinstance(name, str) or not SLUG_RE.match(name)):
        errs.add("name", f"expected a slug (lowercase letters, digits and '-', at most 63 characters), "
                         f"got {show(name)}")
    description = top.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        errs.add("description", f"expected text, got {show(description)}")
        description = ""
    seed = top.get("seed", 1)
    if val.integer(seed, "seed", errs, 0, 2**63 - 1, "a seed (whole number)") is None:
        seed = 1

    duration = None
    if top.get("duration") is not None:
        duration = val.duration(top["duration"], "duration", errs, positive=True, at_most=MAX_DURATION_S)

    backends = _backends(top.get("backends"), errs)
    decls = _sites(top.get("sites"), errs, groups=top.get("site_groups"),
                   max_sites=MAX_SIM_SITES if backends == ("sim",) else MAX_SITES)
    core = _core(top.get("core"), errs, decls)
    mesh = read_mesh(top.get("mesh"), errs, decls, core, top.get("core") is not None)
    flow_decls = _flows(top.get("traffic"), errs, decls, core, duration)
    timeline, interrupted, where = _timeline(top.get("timeline"), errs, decls, duration)
    check_membership(mesh, timeline, where, errs, mesh_given=top.get("mesh") is not None)
    expectations = _expectations(top.get("expectations"), errs, decls, flow_decls, interrupted, duration,
                                 mesh_given=top.get("mesh") is not None, backends=backends)
    sites = [d.site for d in decls.values() if d.site is not None]
    flows = [f for f in flow_decls.values() if f is not None]

    if errs.items:
        raise ConfigError(errs.items)
    assert duration is not None and isinstance(name, str)
    return Scenario(name=name, description=description.strip(), seed=int(seed), duration_s=duration,
                    sites=tuple(sites), core=core, flows=tuple(flows), timeline=tuple(timeline),
                    expectations=tuple(expectations), backends=backends, source=source, mesh=mesh)


def _backends(raw: object, errs: val.Errors) -> tuple[str, ...]:
    if raw is None:
        return BACKENDS
    if not isinstance(raw, list) or not raw:
        errs.add("backends", f"expected a list of backends among {_choices(BACKENDS)}, got {show(raw)}")
        return BACKENDS
    out: list[str] = []
    for i, b in enumerate(raw):
        if not isinstance(b, str) or b not in BACKENDS:
            errs.add(f"backends[{i}]", f"expected one of {_choices(BACKENDS)}, got {show(b)}")
        elif b in out:
            errs.add(f"backends[{i}]", f"duplicate of {b!r}")
        else:
            out.append(b)
    return tuple(b for b in BACKENDS if b in out) or BACKENDS


# --- sites -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Group:
    """A site group, checked once: its generated names and the settings they share."""

    path: str
    names: tuple[str, ...]
    hosts: int
    region: str | None
    uplinks: tuple[Uplink, ...] | None      # None: wrong, reported once at the group's path
    agent: AgentSettings | None


def _groups(raw: object, errs: val.Errors, declared: Iterable[str]) -> list[_Group]:
    """`site_groups`: group name → {count, region, hosts, uplinks, agent}, expanded into sites named
    `<group>-1` … `<group>-<count>` after the sites declared one by one."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        errs.add("site_groups", f"expected a mapping of group name → group, got {show(raw)}")
        return []
    taken = {str(n): "sites" for n in declared}
    out: list[_Group] = []
    for gname, body in raw.items():
        path = f"site_groups.{gname}"
        ok = (val.name(gname, path, errs, "site group") is not None)
        m = val.mapping(body if body is not None else {}, path, errs, _KNOWN_GROUP, ("count", "uplinks"))
        if m is None:
            continue
        n_errors = len(errs.items)
        count = val.integer(m["count"], f"{path}.count", errs, 1, MAX_GROUP_SITES, "a number of sites") \
            if m.get("count") is not None else None
        hosts = val.integer(m.get("hosts", 1), f"{path}.hosts", errs, 1, MAX_HOSTS, "a number of LAN hosts")
        region = m.get("region")
        if region is not None and not (val.name(region, f"{path}.region", errs, "region") is not None):
            region = None
        uplinks = _uplinks(m.get("uplinks"), f"{path}.uplinks", errs)
        agent = _agent(m.get("agent"), f"{path}.agent", errs)
        if not ok or count is None or hosts is None:
            continue
        names = tuple(f"{gname}-{i}" for i in range(1, count + 1))
        if not NAME_RE.match(names[-1]):
            errs.add(f"{path}", f"its last site's name {names[-1]!r} is longer than 31 characters; shorten the "
                                "group's name")
            continue
        clash = [(n, taken[n]) for n in names if n in taken]
        if clash:
            n, where = clash[0]
            errs.add(f"{path}.count", f"generates site {n!r}, which {where} already declares"
                                      + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""))
            continue
        taken.update(dict.fromkeys(names, path))
        good = len(errs.items) == n_errors
        out.append(_Group(path, names, hosts, region if isinstance(region, str) else None,
                          tuple(uplinks) if uplinks is not None and good else None,
                          agent if good else None))
    return out


def _default_prefix(sid: int) -> str:
    """A generated site's LAN prefix: 10.<id>.0.0/24 up to id 255, then 172.(16 + id / 256).(id % 256).0/24."""
    if sid <= 255:
        return f"10.{sid}.0.0/24"
    return f"172.{16 + (sid >> 8)}.{sid & 255}.0/24"


def _sites(raw: object, errs: val.Errors, *, groups: object = None, max_sites: int = MAX_SITES) -> dict[str, SiteDecl]:
    if raw is None and groups is None:
        return {}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errs.add("sites", f"expected a mapping of site name → site, got {show(raw)}")
        return {}
    group_decls = _groups(groups, errs, raw)
    total = len(raw) + sum(len(g.names) for g in group_decls)
    if total < 2:
        errs.add("sites", f"a scenario needs at least 2 sites, got {total}")
    if total > max_sites:
        more = f" ({MAX_SIM_SITES} with backends: [sim])" if max_sites < MAX_SIM_SITES else ""
        errs.add("sites", f"at most {max_sites} sites{more}, got {total}")

    # ids: the explicit ones first, then the smallest unused numbers in file order (groups last)
    explicit: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, body in raw.items():
        if isinstance(body, Mapping) and body.get("id") is not None:
            sid = val.integer(body["id"], f"sites.{name}.id", errs, 1, 4000, "a site id")
            if sid is None:
                continue
            if sid in owner:
                errs.add(f"sites.{name}.id", f"duplicate of sites.{owner[sid]}.id ({sid})")
                continue
            explicit[str(name)] = sid
            owner[sid] = str(name)
    ids: dict[str, int] = {}
    next_id = 1
    for name in [*map(str, raw), *(n for g in group_decls for n in g.names)]:
        if name in explicit:
            ids[name] = explicit[name]
            continue
        while next_id in owner:
            next_id += 1
        ids[name] = next_id
        owner[next_id] = name

    decls: dict[str, SiteDecl] = {}
    prefixes = _Prefixes()
    for name, body in raw.items():
        path = f"sites.{name}"
        ok = (val.name(name, path, errs, "site") is not None)
        body = body if body is not None else {}
        site = _site(str(name), body, path, ids[str(name)], errs, prefixes)
        uplinks = body.get("uplinks") if isinstance(body, Mapping) else None
        hosts = body.get("hosts", 1) if isinstance(body, Mapping) else 1
        decls[str(name)] = SiteDecl(
            uplinks=tuple(str(u) for u in uplinks) if isinstance(uplinks, Mapping) else (),
            hosts=hosts if isinstance(hosts, int) and not isinstance(hosts, bool) and 1 <= hosts <= MAX_HOSTS else None,
            site=site if ok else None)
    for g in group_decls:
        for name in g.names:
            sid = ids[name]
            net = ipaddress.ip_network(_default_prefix(sid))
            ok = prefixes.add(net, f"{g.path} (site {name})", f"{g.path}.count", errs)
            site = None
            if ok and g.uplinks is not None and g.agent is not None:
                site = Site(name=name, id=sid, lan_prefix=str(net), hosts=g.hosts, uplinks=g.uplinks, agent=g.agent,
                            region=g.region)
            decls[name] = SiteDecl(uplinks=tuple(u.name for u in g.uplinks or ()), hosts=g.hosts, site=site)
    return decls


class _Prefixes:
    """The LAN prefixes seen so far, as integer ranges. While they are disjoint (no error yet), a new one
    is checked against its neighbours only (prefixes either nest or are disjoint, so an overlap starts
    within the new range or is the range just before it): a thousand sites cost no quadratic scan. After
    the first overlap, every range is compared, so every overlap is still reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, str, str]] = []     # (version, first, last, where, prefix)
        self.sorted: dict[int, list[tuple[int, int]]] = {4: [], 6: []}   # version → [(first, last)], sorted
        self.clean = True

    def _overlaps_fast(self, version: int, lo: int, hi: int) -> bool:
        ranges = self.sorted[version]
        i = bisect.bisect_right(ranges, (hi, math.inf))
        return i > 0 and ranges[i - 1][1] >= lo

    def add(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, where: str, path: str, errs: val.Errors) -> bool:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        version = net.version
        ok = True
        if not self.clean or self._overlaps_fast(version, lo, hi):
            for v, a, b, other_where, other in self.seen:
                if v == version and a <= hi and lo <= b:
                    errs.add(path, f"{net} overlaps {other_where} ({other})")
                    ok = False
        self.clean = self.clean and ok
        self.seen.append((version, lo, hi, where, str(net)))
        bisect.insort(self.sorted[version], (lo, hi))
        return ok


def _site(name: str, body: object, path: str, sid: int, errs: val.Errors, prefixes: _Prefixes) -> Site | None:
    m = val.mapping(body, path, errs, _KNOWN_SITE, ("uplinks",))
    if m is None:
        return None
    ok = True
    # LAN prefix and hosts
    hosts = 1
    if m.get("hosts") is not None:
        h = val.integer(m["hosts"], f"{path}.hosts", errs, 1, MAX_HOSTS, "a number of LAN hosts")
        ok &= h is not None
        hosts = h or 1
    region = m.get("region")
    if region is not None and not (val.name(region, f"{path}.region", errs, "region") is not None):
        ok = False
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    if m.get("lan_prefix") is not None:
        raw_prefix = m["lan_prefix"]
        try:
            if not isinstance(raw_prefix, str):
                raise ValueError("not text")
            net = ipaddress.ip_network(raw_prefix, strict=True)
        except ValueError as exc:
            errs.add(f"{path}.lan_prefix", f"expected a prefix like 10.1.0.0/24, got {show(raw_prefix)}: {exc}")
            ok = False
    elif sid <= 255:
        net = ipaddress.ip_network(f"10.{sid}.0.0/24")
    else:
        errs.add(f"{path}.lan_prefix", f"required when the site id ({sid}) is above 255 (the default is "
                                       "10.<id>.0.0/24)")
        ok = False
    if net is not None:
        usable = net.num_addresses - (2 if net.version == 4 and net.prefixlen < 31 else 0)
        if hosts + 1 > usable:
            errs.add(f"{path}.hosts", f"{hosts} hosts and the site's router do not fit in {net} ({usable} "
                                      f"addresses)")
            ok = False
        ok &= prefixes.add(net, f"{path}.lan_prefix", f"{path}.lan_prefix", errs)

    uplinks = _uplinks(m.get("uplinks"), f"{path}.uplinks", errs)
    agent = _agent(m.get("agent"), f"{path}.agent", errs)
    if not ok or uplinks is None or agent is None or net is None:
        return None
    return Site(name=name, id=sid, lan_prefix=str(net), hosts=hosts, uplinks=tuple(uplinks), agent=agent,
                region=region if isinstance(region, str) else None)


def _uplinks(raw: object, path: str, errs: val.Errors) -> list[Uplink] | None:
    if raw is None:
        return None           # "required", reported by the site's mapping check
    if not isinstance(raw, Mapping):
        errs.add(path, f"expected a mapping of uplink name → settings, got {show(raw)}")
        return None
    if not raw:
        errs.add(path, "a site needs at least one uplink, got none")
        return None
    if len(raw) > MAX_UPLINKS:
        errs.add(path, f"at most {MAX_UPLINKS} uplinks per site, got {len(raw)}")
    out: list[Uplink] = []
    failed = False
    for number, (name, body) in enumerate(raw.items()):
        up = _uplink(name, number, body if body is not None else {}, val.join(path, name), errs)
        if up is None:
            failed = True
        else:
            out.append(up)
    return None if failed or len(raw) > MAX_UPLINKS else out


def _uplink(name: object, number: int, body: object, path: str, errs: val.Errors) -> Uplink | None:
    ok = (val.name(name, path, errs, "uplink") is not None)
    m = val.mapping(body, path, errs, _KNOWN_UPLINK)
    if m is None:
        return None
    n_errors = len(errs.items)
    bandwidth = val.rate(m.get("bandwidth", "100mbit"), f"{path}.bandwidth", errs)
    delay = val.duration(m.get("delay", 0), f"{path}.delay", errs, at_most=MAX_DELAY_S)
    jitter = val.duration(m.get("jitter", 0), f"{path}.jitter", errs, at_most=MAX_DELAY_S)
    dist = val.enum(m.get("jitter_distribution", "normal"), f"{path}.jitter_distribution", errs, JitterDistribution)
    loss = val.ratio(m.get("loss", 0), f"{path}.loss", errs)
    queue = val.integer(m.get("queue_limit", 1000), f"{path}.queue_limit", errs, 1, 1_000_000,
                        "a queue length in packets")
    cost = val.number(m.get("cost_per_gb", 0), f"{path}.cost_per_gb", errs, 0, 1e6,
                   "a non-negative price per GB")
    if not ok or len(errs.items) != n_errors:
        return None
    assert bandwidth is not None and delay is not None and jitter is not None and dist is not None
    assert loss is not None and queue is not None and cost is not None
    return Uplink(name=str(name), number=number, bandwidth_bps=bandwidth, delay_s=delay, jitter_s=jitter,
                  jitter_distribution=dist, loss_ratio=loss, queue_limit_packets=queue, cost_per_gb=cost)


def _agent(raw: object, path: str, errs: val.Errors) -> AgentSettings | None:
    if raw is None:
        return AgentSettings()
    m = val.mapping(raw, path, errs, _KNOWN_AGENT)
    if m is None:
        return None
    n_errors = len(errs.items)
    monitor = errs.attempt(MonitorProfile.from_config, m.get("monitor", "default"), f"{path}.monitor")
    policies = read_policies(m.get("policies"), f"{path}.policies", errs)
    steering = val.enum(m.get("steering", "nftables"), f"{path}.steering", errs, Steering)
    router = read_router(m.get("router"), f"{path}.router", errs)
    sla = errs.attempt(SlaTarget.from_dict, m.get("sla") or {}, f"{path}.sla")
    startup: float | None = None
    if m.get("startup") is not None:
        startup = val.duration(m["startup"], f"{path}.startup", errs, at_most=MAX_STARTUP_S)
    if len(errs.items) != n_errors or monitor is None or steering is None or sla is None:
        return None
    return AgentSettings(monitor=monitor, policies=policies, steering=steering, router=router, sla=sla,
                         startup_s=startup)


def _core(raw: object, errs: val.Errors, sites: Mapping[str, SiteDecl]) -> Core:
    if raw is None:
        return Core()
    m = val.mapping(raw, "core", errs, _KNOWN_CORE)
    if m is None:
        return Core()
    topology = val.enum(m.get("topology", "internet"), "core.topology", errs, Topology)
    hub = m.get("hub")
    if topology is Topology.HUB_AND_SPOKE:
        if hub is None:
            errs.add("core.hub", "required with topology hub-and-spoke: the name of the hub site")
        elif not isinstance(hub, str) or hub not in sites:
            errs.add("core.hub", _unknown_site(hub, sites))
            hub = None
    elif hub is not None and topology is not None:
        errs.add("core.hub", f"only with topology hub-and-spoke (the topology is {topology})")
        hub = None
    hubs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if topology is Topology.HIERARCHICAL:
        hubs = _hubs(m.get("hubs"), errs, sites)
    elif m.get("hubs") is not None and topology is not None:
        errs.add("core.hubs", f"only with topology hierarchical (the topology is {topology})")
    return Core(topology=topology or Topology.INTERNET, hub=hub if isinstance(hub, str) else None, hubs=hubs)


def _hubs(raw: object, errs: val.Errors, sites: Mapping[str, SiteDecl]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """core.hubs: region → [hub site, ...]. Every site needs a region, every region with sites a hub, and
    a hub belongs to the region it is listed under."""
    if raw is None:
        errs.add("core.hubs", "required with topology hierarchical: region → list of its hub sites")
        return ()
    if not isinstance(raw, Mapping) or not raw:
        errs.add("core.hubs", f"expected a mapping of region → list of hub sites, got {show(raw)}")
        return ()
    region_of = {name: d.site.region for name, d in sites.items() if d.site is not None}
    out: list[tuple[str, tuple[str, ...]]] = []
    listed: dict[str, str] = {}
    for region, names in raw.items():
        path = f"core.hubs.{region}"
        if not (val.name(region, path, errs, "region") is not None):
            continue
        if not isinstance(names, list) or not names:
            errs.add(path, f"expected a list of hub sites, got {show(names)}")
            continue
        good: list[str] = []
        for i, h in enumerate(names):
            where = f"{path}[{i}]"
            if not isinstance(h, str) or h not in sites:
                errs.add(where, _unknown_site(h, sites))
            elif h in listed:
                errs.add(where, f"{h} is already a hub of region {listed[h]}")
            elif h in region_of and region_of[h] != region:
                errs.add(where, f"{h} is in region {region_of[h] or '(none)'}, not {region}")
            else:
                listed[h] = str(region)
                good.append(h)
        out.append((str(region), tuple(good)))
    declared = {r for r, _ in out}
    missing: dict[str, list[str]] = {}
    for name, region in region_of.items():
        if region is None:
            missing.setdefault("", []).append(name)
        elif region not in declared:
            missing.setdefault(region, []).append(name)
    for region, names in missing.items():
        few = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        if not region:
            errs.add("sites", f"with topology hierarchical every site needs a region; these have none: {few}")
        else:
            errs.add("core.hubs", f"region {region} (sites {few}) has no hubs; list them under core.hubs.{region}")
    return tuple(out)


def _unknown_site(name: object, sites: Mapping[str, SiteDecl]) -> str:
    hint = _close(name, list(sites))
    return (f"unknown site {show(name)}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (the sites are {_choices(sites) or 'none'})")


# --- traffic ---------------------------------------------------------------------------------------

_ENDPOINT_RE = re.compile(r"^([^.\s]+)(?:\.host([0-9]{1,6}))?$")


def _endpoint(value: object, path: str, errs: val.Errors, sites: Mapping[str, SiteDecl]) -> Endpoint | None:
    m = _ENDPOINT_RE.match(value) if isinstance(value, str) else None
    if m is None:
        errs.add(path, f"expected a site name or site.hostN (e.g. hq or hq.host2), got {show(value)}")
        return None
    site, host = m.group(1), int(m.group(2) or 1)
    if site not in sites:
        errs.add(path, _unknown_site(site, sites))
        return None
    n = sites[site].hosts
    if n is not None and not 1 <= host <= n:
        errs.add(path, f"{site} has {n} LAN host{'s' if n != 1 else ''} (host1" + (f"..host{n}" if n > 1 else "")
                       + f"), got host{host}")
        return None
    return Endpoint(site, host)


def _flows(raw: object, errs: val.Errors, sites: Mapping[str, SiteDecl], core: Core,
           duration: float | None) -> dict[str, Flow | None]:
    """Every flow declared, by name: the `Flow`, or None when it has errors (already reported)."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        errs.add("traffic", f"expected a list of flows, got {show(raw)}")
        return {}
    flows: dict[str, Flow | None] = {}
    names: dict[str, int] = {}
    ports: dict[tuple[str, str, int], int] = {}
    for i, item in enumerate(raw):
        path = f"traffic[{i}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in names:
            errs.add(f"{path}.name", f"duplicate of traffic[{names[name]}].name ({show(name)})")
            name = None
        flow = _flow(item, path, errs, sites, core, duration)
        if flow is not None:
            key = (str(flow.dst), flow.protocol, flow.dst_port)
            if key in ports:
                errs.add(f"{path}.dst_port", f"{flow.protocol} port {flow.dst_port} on {flow.dst} is already the "
                                             f"destination of traffic[{ports[key]}]; give one of them another "
                                             "dst_port")
            else:
                ports[key] = i
        if isinstance(name, str):
            names[name] = i
            flows[name] = flow
    return flows


def _flow(item: object, path: str, errs: val.Errors, sites: Mapping[str, SiteDecl], core: Core,
          duration: float | None) -> Flow | None:
    every_param = set().union(*_FLOW_PARAMS.values())
    if not isinstance(item, Mapping):
        errs.add(path, f"expected a flow mapping, got {show(item)}")
        return None
    ftype = None
    if item.get("type") is not None:
        ftype = val.enum(item["type"], f"{path}.type", errs, FlowType)
    known = _FLOW_COMMON | (_FLOW_PARAMS[ftype] if ftype is not None else every_param)
    unknown_params = {k for k in item if k in every_param and k not in known}
    m = val.mapping({k: v for k, v in item.items() if k not in unknown_params}, path, errs, known, ("name", "type",
                                                                                                 "from", "to"))
    assert m is not None
    for key in sorted(unknown_params, key=list(item).index):
        assert ftype is not None
        if ftype is FlowType.VOIP:
            reason = (f"not a setting of a voip flow: voip is G.711, fixed at {VOIP_RATE_PPS:g} packets/s of "
                      f"{VOIP_PAYLOAD_BYTES} bytes")
        else:
            takes = sorted(_FLOW_PARAMS[ftype])
            reason = f"not a setting of a {ftype} flow" + (f"; it takes {_choices(takes)}" if takes else "")
        errs.add(val.join(path, key), reason)

    n_errors = len(errs.items)
    name = m.get("name")
    if name is not None and (not isinstance(name, str) or not FLOW_RE.match(name)):
        errs.add(f"{path}.name", f"flow names are letters, digits, '_' and '-', starting with a letter; "
                                 f"got {show(name)}")
    src = _endpoint(m["from"], f"{path}.from", errs, sites) if m.get("from") is not None else None
    dst = _endpoint(m["to"], f"{path}.to", errs, sites) if m.get("to") is not None else None
    if src is not None and dst is not None:
        if src.site == dst.site:
            errs.add(f"{path}.to", f"a flow must cross the WAN: from and to are both at site {src.site}")
        elif core.topology is Topology.HUB_AND_SPOKE and core.hub not in (src.site, dst.site) and core.hub:
            errs.add(f"{path}.to", f"in a hub-and-spoke core spokes talk only to the hub: {src.site} → {dst.site} "
                                   f"does not start or end at {core.hub}")
    tclass = m.get("class", ftype.default_class if ftype else "default")
    if not isinstance(tclass, str) or not tclass.strip() or len(tclass) > 63:
        errs.add(f"{path}.class", f"expected a class label (text, at most 63 characters), got {show(tclass)}")
    start = val.duration(m.get("start", 0), f"{path}.start", errs)
    stop = duration
    if m.get("stop") is not None:
        stop = val.duration(m["stop"], f"{path}.stop", errs, positive=True)
        if stop is not None and duration is not None and stop > duration:
            errs.add(f"{path}.stop", f"{fmt_duration(stop)} is after the end of the scenario "
                                     f"(duration {fmt_duration(duration)})")
    if start is not None and duration is not None and start >= duration:
        errs.add(f"{path}.start", f"{fmt_duration(start)} is not before the end of the scenario "
                                  f"(duration {fmt_duration(duration)})")
    elif start is not None and stop is not None and m.get("stop") is not None and start >= stop:
        errs.add(f"{path}.stop", f"must be after start ({fmt_duration(start)}), got {fmt_duration(stop)}")
    port = val.integer(m.get("dst_port", ftype.default_port if ftype else 1), f"{path}.dst_port", errs, 1, 65535,
                       "a port")

    params: dict[str, Any] = {}
    if ftype is FlowType.UDP_CBR:
        params["rate_pps"] = _parse_pps(m.get("rate", 1000), f"{path}.rate", errs)
        params["payload_bytes"] = val.size(m.get("size", 64), f"{path}.size", errs, MIN_PAYLOAD_BYTES,
                                           MAX_PAYLOAD_BYTES)
    elif ftype is FlowType.VOIP:
        params.update(rate_pps=VOIP_RATE_PPS, payload_bytes=VOIP_PAYLOAD_BYTES)
    elif ftype is FlowType.VIDEO:
        params["bitrate_bps"] = val.rate(m.get("bitrate", "4mbit"), f"{path}.bitrate", errs)
        params["frame_rate"] = val.number(m.get("fps", 30), f"{path}.fps", errs, 1, 240, "frames per second, 1-240")
        params["payload_bytes"] = VIDEO_PACKET_BYTES
    elif ftype is FlowType.TCP_BULK:
        params["bandwidth_bps"] = val.rate(m["bandwidth"], f"{path}.bandwidth", errs) \
            if m.get("bandwidth") is not None else None
    elif ftype is FlowType.HTTP:
        params["interval_s"] = val.duration(m.get("interval", "1s"), f"{path}.interval", errs, positive=True)
        params["response_bytes"] = val.size(m.get("size", "64k"), f"{path}.size", errs, 1, 10**9)

    if len(errs.items) != n_errors or ftype is None or src is None or dst is None or start is None \
            or stop is None or port is None or not isinstance(name, str) or not isinstance(tclass, str):
        return None
    return Flow(name=name, type=ftype, src=src, dst=dst, traffic_class=tclass.strip(), start_s=start, stop_s=stop,
                dst_port=port, **params)


# --- timeline --------------------------------------------------------------------------------------

def _link(value: object, path: str, errs: val.Errors, sites: Mapping[str, SiteDecl]) -> LinkRef | None:
    if not isinstance(value, str) or value.count(".") != 1:
        errs.add(path, f"expected a link as site.uplink (e.g. hq.isp1), got {show(value)}")
        return None
    site, uplink = value.split(".")
    if site not in sites:
        errs.add(path, _unknown_site(site, sites))
        return None
    names = list(sites[site].uplinks)
    if not names and sites[site].site is None:
        return None               # the site's uplinks are themselves wrong, and reported
    if uplink not in names:
        hint = _close(uplink, names)
        errs.add(path, f"unknown uplink {show(uplink)} of site {site}"
                       + (f"; did you mean {hint[0]!r}?" if hint else "") + f" (its uplinks are {_choices(names)})")
        return None
    return LinkRef(site, uplink)


def _impairment(m: Mapping[str, Any], path: str, errs: val.Errors, *, ramp: bool) -> Impairment | None:
    """The impairment keys of `m` (others are ignored here); None when one of them is wrong."""
    n_errors = len(errs.items)
    kw: dict[str, Any] = {}
    for attr, (key, kind) in IMPAIRMENT_KEYS.items():
        if key not in m:
            continue
        where = val.join(path, key)
        value = m[key]
        if ramp and attr not in RAMPABLE:
            errs.add(where, "cannot be ramped (it is not a number); set it with an impair event before the ramp")
            continue
        if kind == "duration":
            kw[attr] = val.duration(value, where, errs, at_most=MAX_DELAY_S)
        elif kind == "ratio":
            kw[attr] = val.ratio(value, where, errs)
        elif kind == "rate":
            kw[attr] = val.rate(value, where, errs)
        elif kind == "enum":
            kw[attr] = val.enum(value, where, errs, JitterDistribution)
        else:
            kw[attr] = _loss_model(value, where, errs)
    if "loss" in m and "loss_model" in m:
        errs.add(val.join(path, "loss_model"), "give either loss (random) or loss_model (bursts), not both")
    if len(errs.items) != n_errors:
        return None
    return Impairment(**kw)


def _loss_model(value: object, path: str, errs: val.Errors) -> GilbertElliott | None:
    m = val.mapping(value, path, errs, {"type", "p", "r", "h", "k"}, ("type", "p", "r"))
    if m is None:
        return None
    n_errors = len(errs.items)
    if m.get("type") is not None and m["type"] != "gilbert_elliott":
        errs.add(f"{path}.type", f"expected gilbert_elliott, got {show(m['type'])}")
    values = {k: val.ratio(m[k], f"{path}.{k}", errs) for k in ("p", "r", "h", "k") if m.get(k) is not None}
    if len(errs.items) != n_errors or "p" not in values or "r" not in values:
        return None
    return GilbertElliott(**values)  # type: ignore[arg-type]


def _timeline(raw: object, errs: val.Errors, sites: Mapping[str, SiteDecl],
              duration: float | None) -> tuple[list[TimelineEvent], set[str], dict[int, str]]:
    """The events sorted by time (stable), the links that some event cuts or flaps (as written), and
    where each event is in the document (`id(event)` → path)."""
    if raw is None:
        return [], set(), {}
    if not isinstance(raw, list):
        errs.add("timeline", f"expected a list of events, got {show(raw)}")
        return [], set(), {}
    interrupted = {item["link"] for item in raw if isinstance(item, Mapping)
                   and item.get("action") in ("cut", "flap") and isinstance(item.get("link"), str)}
    parsed: list[tuple[int, TimelineEvent]] = []
    for i, item in enumerate(raw):
        if isinstance(item, Mapping) and isinstance(item.get("action"), str) and item["action"] in REGION_ACTIONS:
            expanded = _region_event(item, f"timeline[{i}]", errs, sites, duration)
            parsed += [(i, ev) for ev in expanded]
            if item.get("action") == "region_cut":
                interrupted.update(str(ev.target) for ev in expanded)
            continue
        ev = _event(item, f"timeline[{i}]", errs, sites, duration)
        if ev is not None:
            parsed.append((i, ev))
    # windowed events (flap, ramp) on one link must not overlap: their steps would interleave
    windows: dict[LinkRef, list[tuple[int, TimelineEvent]]] = {}
    for i, ev in parsed:
        if isinstance(ev, Flap | Ramp):
            for j, other in windows.get(ev.link, []):
                if ev.at_s < other.end_s and other.at_s < ev.end_s:
                    errs.add(f"timeline[{i}]", f"this {ev.action} of {ev.link} ({fmt_duration(ev.at_s)}–"
                                               f"{fmt_duration(ev.end_s)}) overlaps the {other.action} at "
                                               f"timeline[{j}] ({fmt_duration(other.at_s)}–"
                                               f"{fmt_duration(other.end_s)})")
            windows.setdefault(ev.link, []).append((i, ev))
    where = {id(ev): f"timeline[{i}]" for i, ev in parsed}
    return [ev for _, ev in sorted(parsed, key=lambda t: (t[1].at_s, t[0]))], interrupted, where


def _event(item: object, path: str, errs: val.Errors, sites: Mapping[str, SiteDecl],
           duration: float | None) -> TimelineEvent | None:
    if not isinstance(item, Mapping):
        errs.add(path, f"expected an event mapping (at, action, ...), got {show(item)}")
        return None
    action = item.get("action")
    if action is not None and (not isinstance(action, str) or action not in ACTIONS):
        every = [*ACTIONS, *REGION_ACTIONS]
        hint = _close(action, every)
        errs.add(f"{path}.action", f"unknown action {show(action)}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                   + f" (expected one of {_choices(every)})")
        action = None
    known = _EVENT_COMMON | (_EVENT_PARAMS[action] if action else set().union(*_EVENT_PARAMS.values()))
    required = ["at", "action"]
    if action:
        required += ["site"] if action.startswith(("agent_", "site_")) else ["link"]
        required += {"flap": ["period", "count"], "ramp": ["to", "over"]}.get(action, [])
    m = val.mapping(item, path, errs, known, required, what="setting" if not action else f"setting of a {action} event")
    assert m is not None
    n_errors = len(errs.items)

    at, note = _event_at_and_note(m, path, errs, duration)
    link = _link(m["link"], f"{path}.link", errs, sites) if m.get("link") is not None else None
    site = m.get("site")
    if site is not None and (not isinstance(site, str) or site not in sites):
        errs.add(f"{path}.site", _unknown_site(site, sites))

    ev: TimelineEvent | None = None
    if action == "impair":
        imp = _impairment(m, path, errs, ramp=False)
        if imp is not None and not imp.given():
            errs.add(path, f"an impair event needs at least one of {_choices(sorted(_IMPAIR_KEYS))}")
        elif imp is not None and link is not None and at is not None:
            ev = Impair(at_s=at, link=link, impairment=imp)
    elif action in ("cut", "restore", "clear") and link is not None and at is not None:
        ev = {"cut": Cut, "restore": Restore, "clear": Clear}[action](at_s=at, link=link)
    elif action == "flap":
        period = val.duration(m["period"], f"{path}.period", errs, positive=True) \
            if m.get("period") is not None else None
        count = val.integer(m["count"], f"{path}.count", errs, 1, 10_000, "a number of flaps") \
            if m.get("count") is not None else None
        if period is not None and count is not None and link is not None and at is not None:
            ev = Flap(at_s=at, link=link, period_s=period, count=count)
    elif action == "ramp":
        ev = _ramp(m, path, errs, at, link)
    elif action in ("agent_stop", "agent_start") and isinstance(site, str) and site in sites and at is not None:
        cleanup = m.get("cleanup", False)
        if not isinstance(cleanup, bool):
            errs.add(f"{path}.cleanup", f"expected true or false, got {show(cleanup)}")
        elif action == "agent_stop":
            ev = AgentStop(at_s=at, site=site, cleanup=cleanup)
        else:
            ev = AgentStart(at_s=at, site=site)
    elif action in ("site_join", "site_leave") and isinstance(site, str) and site in sites and at is not None:
        ev = (SiteJoin if action == "site_join" else SiteLeave)(at_s=at, site=site)

    if ev is not None and duration is not None and ev.end_s > duration and at is not None and at <= duration:
        errs.add(path, f"this {ev.action} ends at {fmt_duration(ev.end_s)}, after the end of the scenario (duration "
                       f"{fmt_duration(duration)})")
    if len(errs.items) != n_errors or ev is None:
        return None
    if isinstance(note, str) and note.strip():
        ev = _with_note(ev, note.strip())
    return ev


def _ramp(m: Mapping[str, Any], path: str, errs: val.Errors, at: float | None, link: LinkRef | None) -> Ramp | None:
    to_raw = m.get("to")
    to = None
    if to_raw is not None:
        to_map = val.mapping(to_raw, f"{path}.to", errs, _IMPAIR_KEYS, what="impairment")
        if to_map is not None:
            to = _impairment(to_map, f"{path}.to", errs, ramp=True)
            if to is not None and not to.given():
                rampable = _choices(IMPAIRMENT_KEYS[a][0] for a in RAMPABLE)
                errs.add(f"{path}.to", f"a ramp needs at least one of {rampable}")
                to = None
    over = val.duration(m["over"], f"{path}.over", errs, positive=True) if m.get("over") is not None else None
    steps = val.integer(m.get("steps", 10), f"{path}.steps", errs, 1, 10_000, "a number of steps")
    if to is not None and over is not None and steps is not None and link is not None and at is not None:
        return Ramp(at_s=at, link=link, to=to, over_s=over, steps=steps)
    return None


def _event_at_and_note(m: Mapping[str, Any], path: str, errs: val.Errors,
                       duration: float | None) -> tuple[float | None, str]:
    """An event's `at` (within the scenario) and `note` (text; "" when missing or wrong)."""
    at = val.duration(m["at"], f"{path}.at", errs) if m.get("at") is not None else None
    if at is not None and duration is not None and at > duration:
        errs.add(f"{path}.at", f"{fmt_duration(at)} is after the end of the scenario (duration "
                               f"{fmt_duration(duration)})")
    note = m.get("note", "")
    if not isinstance(note, str):
        errs.add(f"{path}.note", f"expected text, got {show(note)}")
        note = ""
    return at, note


def _region_event(item: Mapping[str, Any], path: str, errs: val.Errors, sites: Mapping[str, SiteDecl],
                  duration: float | None) -> list[TimelineEvent]:
    """region_cut / region_restore: a cut (restore) of every link of the region's sites, or only their
    uplink `uplink`, all at `at`; expanded into one ordinary event per link, noted with the region."""
    action = str(item["action"])
    m = val.mapping(item, path, errs, _EVENT_COMMON | _EVENT_PARAMS[action], ["at", "action", "region"],
                 what=f"setting of a {action} event")
    assert m is not None
    n_errors = len(errs.items)
    at, note = _event_at_and_note(m, path, errs, duration)
    region = m.get("region")
    uplink = m.get("uplink")
    members = [d.site for d in sites.values() if d.site is not None and d.site.region == region]
    if region is not None and not members:
        known = sorted({d.site.region for d in sites.values() if d.site is not None and d.site.region})
        errs.add(f"{path}.region", f"no site is in region {show(region)}"
                                   + (f" (the regions are {_choices(known)})" if known else " (no site has a region)"))
    links = [LinkRef(site.name, u.name) for site in members for u in site.uplinks
             if uplink is None or u.name == uplink]
    if uplink is not None and members and not links:
        errs.add(f"{path}.uplink", f"no site of region {region} has an uplink {show(uplink)}")
    if len(errs.items) != n_errors or at is None:
        return []
    text = (note.strip() or f"{action.replace('_', ' ')} {region}" + (f" ({uplink})" if uplink else ""))
    cls = Cut if REGION_ACTIONS[action] == "cut" else Restore
    return [cls(at_s=at, link=ref, note=text) for ref in links]


def _with_note(ev: TimelineEvent, note: str) -> TimelineEvent:
    from dataclasses import replace

    return replace(ev, note=note)


# --- expectations ----------------------------------------------------------------------------------

def _expectations(raw: object, errs: val.Errors, sites: Mapping[str, SiteDecl], flows: Mapping[str, Flow | None],
                  interrupted: set[str], duration: float | None, *, mesh_given: bool = False,
                  backends: tuple[str, ...] = BACKENDS) -> list[Expectation]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errs.add("expectations", f"expected a list of expectations, got {show(raw)}")
        return []
    out: list[Expectation] = []
    for i, item in enumerate(raw):
        exp = _expectation(item, f"expectations[{i}]", errs, sites, flows, interrupted, duration, mesh_given,
                           backends)
        if exp is not None:
            out.append(exp)
    return out


def _expectation(item: object, path: str, errs: val.Errors, sites: Mapping[str, SiteDecl],
                 flows: Mapping[str, Flow | None], interrupted: set[str], duration: float | None,
                 mesh_given: bool = False, backends: tuple[str, ...] = BACKENDS) -> Expectation | None:
    if not isinstance(item, Mapping) or len(item) != 1:
        got = f"{_choices(str(k) for k in item)}" if isinstance(item, Mapping) else show(item)
        errs.add(path, f"expected one expectation, a mapping with one of {_choices(EXPECTATIONS)}; "
                       f"got {got or 'nothing'}")
        return None
    (kind, body), = item.items()
    if kind not in EXPECTATIONS:
        hint = _close(kind, list(EXPECTATIONS))
        errs.add(val.join(path, kind), "unknown expectation" + (f"; did you mean {hint[0]!r}?" if hint else
                                                            f"; expected one of {_choices(EXPECTATIONS)}"))
        return None
    path = val.join(path, kind)
    known, required = _EXPECTATION_KEYS[kind]
    m = val.mapping(body, path, errs, known, sorted(required))
    if m is None:
        return None
    n_errors = len(errs.items)
    flow = _expected_flow(kind, m, path, errs, flows) if "flow" in known else None
    exp = _EXPECTATION_PARSERS[kind](_ExpectationInput(m, path, errs, flow, sites, interrupted, duration, mesh_given))
    quantile = _share(m.get("quantile"), f"{path}.quantile", errs)
    pass_rate = _share(m.get("pass_rate"), f"{path}.pass_rate", errs)
    if quantile is not None and pass_rate is not None:
        errs.add(f"{path}.pass_rate", "given with quantile: repeated runs judge an expectation either at a quantile "
                                      "of its values or by the share of runs that pass it, not both")
    only = _expectation_backends(m.get("backends"), f"{path}.backends", errs, backends)
    if len(errs.items) != n_errors:
        return None
    if exp is not None and (quantile is not None or pass_rate is not None or only):
        from dataclasses import replace

        exp = replace(exp, quantile=quantile, pass_rate=pass_rate, backends=only)
    return exp


def _expectation_backends(raw: object, path: str, errs: val.Errors, scenario_backends: tuple[str, ...]
                          ) -> tuple[str, ...]:
    """An expectation's `backends:` (empty: every backend's runs): some of the scenario's own."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        errs.add(path, f"expected a list of backends among {_choices(scenario_backends)}, got {show(raw)}")
        return ()
    out: list[str] = []
    for i, b in enumerate(raw):
        if not isinstance(b, str) or b not in scenario_backends:
            errs.add(f"{path}[{i}]", f"expected one of the scenario's backends ({_choices(scenario_backends)}), "
                                     f"got {show(b)}")
        elif b in out:
            errs.add(f"{path}[{i}]", f"duplicate of {b!r}")
        else:
            out.append(b)
    return tuple(b for b in BACKENDS if b in out)


def _expected_flow(kind: str, m: Mapping[str, Any], path: str, errs: val.Errors,
                   flows: Mapping[str, Flow | None]) -> Flow | None:
    """The flow an expectation names (None: none named, unknown, or a flow with errors of its own)."""
    if m.get("flow") is None:
        return None
    fname = m["flow"]
    if not isinstance(fname, str) or fname not in flows:
        hint = _close(fname, list(flows))
        errs.add(f"{path}.flow", f"unknown flow {show(fname)}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                 + f" (the flows are {_choices(f for f in flows if FLOW_RE.match(f)) or 'none'})")
        return None
    flow = flows[fname]
    if flow is None:    # the flow has errors of its own, already reported
        return None
    if kind in ("failover_gap", "lost_packets", "sla_compliance") and not flow.type.is_packet_flow:
        errs.add(f"{path}.flow", f"{kind} is measured on packet flows (udp_cbr, voip, video); "
                                 f"{flow.name} is {flow.type}")
    return flow


@dataclass(frozen=True)
class _ExpectationInput:
    """One expectation's body and what checking it needs."""

    m: Mapping[str, Any]
    path: str
    errs: val.Errors
    flow: Flow | None
    sites: Mapping[str, SiteDecl]
    interrupted: set[str]
    duration: float | None
    mesh_given: bool = False


def _failover_gap(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    mx = val.duration(m["max"], f"{path}.max", errs, positive=True) if m.get("max") is not None else None
    return FailoverGap(flow=x.flow.name, max_s=mx) if x.flow is not None and mx is not None else None


def _lost_packets(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    n = val.integer(m["max"], f"{path}.max", errs, 0, 10**12, "a count") if m.get("max") is not None else None
    return LostPackets(flow=x.flow.name, max_packets=n) if x.flow is not None and n is not None else None


def _path_changes(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    n = val.integer(m["max"], f"{path}.max", errs, 0, 10**6, "a count") if m.get("max") is not None else None
    lo = val.integer(m.get("min", 0), f"{path}.min", errs, 0, 10**6, "a count")
    if n is not None and lo is not None and lo > n:
        errs.add(f"{path}.min", f"must not exceed max ({n}), got {lo}")
    elif x.flow is not None and n is not None and lo is not None:
        return PathChanges(flow=x.flow.name, max_changes=n, min_changes=lo)
    return None


def _sla_compliance(x: _ExpectationInput) -> Expectation | None:
    m, path, errs, flow = x.m, x.path, x.errs, x.flow
    mn = val.ratio(m["min"], f"{path}.min", errs) if m.get("min") is not None else None
    target = None
    if m.get("target") is not None and flow is not None:
        decl = x.sites.get(flow.src.site)
        base = decl.site.agent.sla if decl is not None and decl.site is not None else None
        target = errs.attempt(SlaTarget.from_dict, m["target"], f"{path}.target", base)
    if flow is not None and mn is not None:
        return SlaCompliance(flow=flow.name, min_ratio=mn, target=target)
    return None


def _detect_time(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    link = _link(m["link"], f"{path}.link", errs, x.sites) if m.get("link") is not None else None
    mx = val.duration(m["max"], f"{path}.max", errs, positive=True) if m.get("max") is not None else None
    if link is not None and str(link) not in x.interrupted:
        errs.add(f"{path}.link", f"{link} is never cut or flapped in the timeline: there is nothing to detect")
    elif link is not None and mx is not None:
        return DetectTime(link=link, max_s=mx)
    return None


def _flow_stays(x: _ExpectationInput) -> Expectation | None:
    m, path, errs, flow, duration = x.m, x.path, x.errs, x.flow, x.duration
    during = m.get("during")
    if not isinstance(during, list) or len(during) != 2:
        if during is not None:
            errs.add(f"{path}.during", f"expected [START, END] like [20s, 40s], got {show(during)}")
        return None
    a = val.duration(during[0], f"{path}.during[0]", errs)
    b = val.duration(during[1], f"{path}.during[1]", errs)
    if a is None or b is None:
        return None
    if a >= b:
        errs.add(f"{path}.during", f"the window must end after it starts, got {fmt_duration(a)} to "
                                   f"{fmt_duration(b)}")
    elif duration is not None and b > duration:
        errs.add(f"{path}.during[1]", f"{fmt_duration(b)} is after the end of the scenario (duration "
                                      f"{fmt_duration(duration)})")
    elif flow is not None and not flow.active(a, b):
        life = f"{fmt_duration(flow.start_s)}–{fmt_duration(flow.stop_s)}"
        errs.add(f"{path}.during", f"{fmt_duration(a)}–{fmt_duration(b)} is not within the lifetime of "
                                   f"{flow.name} ({life})")
    elif flow is not None:
        return FlowStays(flow=flow.name, start_s=a, end_s=b)
    return None


def _join_time(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    mx = val.duration(m["max"], f"{path}.max", errs, positive=True) if m.get("max") is not None else None
    site = m.get("site")
    if not x.mesh_given:
        errs.add(path, "needs a mesh: section (sites that discover each other)")
    elif site is not None and (not isinstance(site, str) or site not in x.sites):
        errs.add(f"{path}.site", _unknown_site(site, x.sites))
    elif isinstance(site, str) and mx is not None:
        return JoinTime(site=site, max_s=mx)
    return None


def _converged(x: _ExpectationInput) -> Expectation | None:
    m, path, errs = x.m, x.path, x.errs
    mx = val.duration(m["max"], f"{path}.max", errs, positive=True) if m.get("max") is not None else None
    if not x.mesh_given:
        errs.add(path, "needs a mesh: section (sites that discover each other)")
    elif mx is not None:
        return Converged(max_s=mx)
    return None


_EXPECTATION_PARSERS: dict[str, Callable[[_ExpectationInput], Expectation | None]] = {
    "failover_gap": _failover_gap, "lost_packets": _lost_packets, "path_changes": _path_changes,
    "sla_compliance": _sla_compliance, "detect_time": _detect_time, "flow_stays": _flow_stays,
    "join_time": _join_time, "converged": _converged}


def _share(value: object, path: str, errs: val.Errors) -> float | None:
    """A share of repeated runs (`quantile`, `pass_rate`): a percentage in (0, 100 %]."""
    if value is None:
        return None
    x = val.ratio(value, path, val.Errors())     # its own message below, not the ratio's
    if x is None or not 0.0 < x <= 1.0 or isinstance(value, bool):
        errs.add(path, f'expected a percentage in (0, 100 %] like "95%", got {show(value)}')
        return None
    return x

