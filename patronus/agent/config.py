"""The site file: one YAML document describing a site, its uplinks, its remote sites and the agent.

`load(path)` reads and checks the whole file and raises one `ConfigError` listing **every** problem
with its path (`uplinks[1].address: ...`), or returns an immutable `SiteConfig`. Nothing here touches
the host: the agent validates first, then plans, then applies, so an invalid file changes nothing.

Derived, deterministic values (both ends of a path compute the same ones from their own files):

- **Paths** are local uplink × remote endpoint, id `"<remote>:<uplink>-<remote uplink>"`, numbered
  1..N in sorted id order. The number picks the WireGuard interface name `pt<site id>p<n>` (≤ 15
  characters and unique machine-wide, which wireguard-go's shared `/var/run/wireguard` needs), the
  path's firewall mark and its routing table.
- **WireGuard ports.** A WireGuard interface listens on every address, so each path needs its own
  port. The interface for (our uplink *a*, remote site *R*, its uplink *b*) listens on
  `port_base + R.id·16 + a·4 + b`, where *a* and *b* are uplink numbers (an uplink's position in its
  site's `uplinks` list; a remote's `endpoints` are listed in the order of that site's uplinks or carry
  `uplink_no`). The remote computes the same number with the roles swapped, so no port is configured
  per path. At most 4 uplinks per site.
- **Probe keys**: HMAC key per site pair = `pair_key(probe secret, site a, site b)`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from patronus.core.errors import ConfigError
from patronus.core.model import EndpointId, Path, PathId, SiteId
from patronus.core.monitor import MonitorProfile
from patronus.core.policy import RoutingPolicy, default_policies
from patronus.core.router import RouterConfig
from patronus.core.sla import SlaTarget
from patronus.core.units import parse_duration, parse_rate

SCHEMA_VERSION = 1
MAX_UPLINKS = 4
MAX_PATHS = 250
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
STEERING_MODES = ("nftables", "none", "bpf")
WG_BACKENDS = ("auto", "kernel", "userspace")

# Firewall marks and routing tables. Values are ours alone: a mark is 0x5A<site-independent index>.
PATH_MARK_BASE = 0x5A000000      # meta mark of a packet steered onto path n: base | n
UPLINK_MARK_BASE = 0x5B000000    # WireGuard/probe traffic leaving through uplink u: base | (u + 1)
SLOT_MARK_BASE = 0x50000000      # conntrack mark of a flow: base | gen << 24 | remote << 16 | policy << 8 | origin path
SLOT_GEN_BIT = 0x01000000        # the slot's generation (0x50: 0, 0x51: 1; see patronus.core.model.Slot)
PATH_TABLE_BASE = 7100           # routing table of path n
UPLINK_TABLE_BASE = 7050         # routing table of uplink u
RULE_PRIORITY_BASE = 7000        # our ip rules sit at 7000..7999, before `main` (32766)
ROUTE_PROTO = 0xB7               # rtm_protocol tag on our routes and rules ("not zebra, not boot")


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    name: str
    number: int                 # position in the site's uplinks list
    interface: str
    address: str
    gateway: str | None
    cost_per_gb: float
    bandwidth_mbps: float       # 0 = unknown (measured if bandwidth tests are on)

    @property
    def mark(self) -> int:
        return UPLINK_MARK_BASE | (self.number + 1)

    @property
    def table(self) -> int:
        return UPLINK_TABLE_BASE + self.number


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    uplink: str                 # the remote site's uplink name
    uplink_no: int
    address: str


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    name: str
    id: int
    public_key: str
    prefixes: tuple[str, ...]
    endpoints: tuple[EndpointConfig, ...]
    probe_secret: bytes | None  # overrides the site-wide probe secret for this pair


@dataclass(frozen=True, slots=True)
class PathPlan:
    """Everything about one path that the agent derives from the file."""

    number: int
    id: PathId
    remote: str
    uplink: UplinkConfig
    endpoint: EndpointConfig
    ifname: str
    listen_port: int
    peer_port: int

    @property
    def mark(self) -> int:
        return PATH_MARK_BASE | self.number

    @property
    def table(self) -> int:
        return PATH_TABLE_BASE + self.number


@dataclass(frozen=True, slots=True)
class SiteConfig:
    source: str
    name: str
    id: int
    lan_prefixes: tuple[str, ...]
    lan_interfaces: tuple[str, ...]
    uplinks: tuple[UplinkConfig, ...]
    remotes: tuple[RemoteConfig, ...]
    wg_backend: str
    wg_private_key_file: FsPath
    wg_port_base: int
    wg_keepalive_s: int
    wg_mtu: int
    probe_port: int
    probe_auth: bool
    probe_secret: bytes | None
    probe_realtime: int            # SCHED_FIFO priority of the probe reflector (0: the agent's own class)
    monitor: MonitorProfile
    policies: tuple[RoutingPolicy, ...]
    router: RouterConfig
    sla: SlaTarget
    api_listen: tuple[str, int]
    api_token: str | None
    api_token_file: FsPath
    database: FsPath
    state_dir: FsPath
    metrics_interval_s: float
    steering: str
    bandwidth_interval_s: float      # 0 = periodic tests off
    bandwidth_duration_s: float
    bandwidth_rate_mbps: float
    pmtu: bool
    paths: tuple[PathPlan, ...] = field(default=())

    def remote(self, name: str) -> RemoteConfig:
        for r in self.remotes:
            if r.name == name:
                return r
        raise KeyError(name)

    def path(self, path_id: str) -> PathPlan:
        for p in self.paths:
            if p.id == path_id:
                return p
        raise KeyError(path_id)

    def core_paths(self) -> list[Path]:
        return [Path(id=p.id, src_site=SiteId(self.name), dst_site=SiteId(p.remote),
                     src_endpoint=EndpointId(f"{self.name}:{p.uplink.name}"),
                     dst_endpoint=EndpointId(f"{p.remote}:{p.endpoint.uplink}"),
                     cost_per_gb=p.uplink.cost_per_gb, bandwidth_mbps=p.uplink.bandwidth_mbps or None)
                for p in self.paths]

    @property
    def owner(self) -> str:
        """The tag on everything this agent creates on the host (interfaces, nft table, rules)."""
        return f"patronus:s{self.id}"

    @property
    def nft_table(self) -> str:
        return f"patronus_s{self.id}"


# --- loading ---------------------------------------------------------------------------------------

def load(path: str | FsPath) -> SiteConfig:
    p = FsPath(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the site file: {exc.strerror or exc}", str(p)) from None
    return parse(text, source=str(p))


def parse(text: str, source: str = "<site file>") -> SiteConfig:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"not valid YAML: {where}{getattr(exc, 'problem', None) or exc}", source) from None
    return from_dict(doc, source)


class _Errors:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, fld: str, reason: str) -> None:
        self.items.append((fld, reason))

    def take(self, exc: ConfigError) -> None:
        self.items.extend(exc.errors)


def _mapping(d: object, fld: str, errs: _Errors, known: set[str], required: Collection[str] = ()) -> Mapping[str, Any]:
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        errs.add(fld, f"expected a mapping, got {type(d).__name__}")
        return {}
    for k in d:
        if k not in known:
            errs.add(f"{fld}.{k}" if fld else str(k), f"unknown setting; expected one of {', '.join(sorted(known))}")
    for k in sorted(required):
        if k not in d or d[k] is None:
            errs.add(f"{fld}.{k}" if fld else k, "required")
    return d


def _name(v: object, fld: str, errs: _Errors) -> str:
    if not isinstance(v, str) or not _NAME.match(v):
        errs.add(fld, f"expected a name of lowercase letters, digits and '-', starting with a letter, "
                      f"at most 31 characters; got {v!r}")
        return ""
    return v


def _int(v: object, fld: str, errs: _Errors, lo: int, hi: int, what: str = "a whole number") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        errs.add(fld, f"expected {what} {lo}-{hi}, got {v!r}")
        return lo
    return v


def _address(v: object, fld: str, errs: _Errors) -> str:
    try:
        if not isinstance(v, str):
            raise ValueError
        return str(ipaddress.ip_address(v))
    except ValueError:
        errs.add(fld, f"expected an IP address like 192.0.2.1, got {v!r}")
        return ""


def _prefixes(v: object, fld: str, errs: _Errors) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        errs.add(fld, f"expected a list of prefixes like 10.1.0.0/24, got {v!r}")
        return ()
    out = []
    for i, x in enumerate(v):
        try:
            if not isinstance(x, str):
                raise ValueError("not a string")
            out.append(str(ipaddress.ip_network(x, strict=True)))
        except ValueError as exc:
            errs.add(f"{fld}[{i}]", f"expected a prefix like 10.1.0.0/24 with no host bits set, got {x!r} ({exc})")
    return tuple(out)


def _ifname(v: object, fld: str, errs: _Errors) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= 15 or any(c in v for c in "/ \t\n:"):
        errs.add(fld, f"expected a Linux interface name (1-15 characters, no '/', ':' or spaces), got {v!r}")
        return ""
    return v


def _secret(d: Mapping[str, Any], fld: str, errs: _Errors) -> bytes | None:
    if d.get("secret") is not None and d.get("secret_file") is not None:
        errs.add(f"{fld}.secret", "give either secret or secret_file, not both")
        return None
    if d.get("secret") is not None:
        s = d["secret"]
        if not isinstance(s, str) or len(s) < 16:
            errs.add(f"{fld}.secret", "expected a shared secret of at least 16 characters")
            return None
        return s.encode()
    if d.get("secret_file") is not None:
        try:
            data = FsPath(str(d["secret_file"])).read_bytes().strip()
        except OSError as exc:
            errs.add(f"{fld}.secret_file", f"cannot read: {exc.strerror or exc}")
            return None
        if len(data) < 16:
            errs.add(f"{fld}.secret_file", "the secret must be at least 16 bytes")
            return None
        return data
    return None


def _duration(v: object, fld: str, errs: _Errors, lo: float = 0.0) -> float:
    try:
        x = parse_duration(v, fld)
    except ConfigError as exc:
        errs.take(exc)
        return lo
    if x < lo:
        errs.add(fld, f"must be at least {lo:g} s, got {v!r}")
    return x


_TOP = {"version", "site", "uplinks", "remotes", "wireguard", "probe", "monitor", "policies", "router", "sla", "api",
        "database", "state_dir", "metrics_interval", "steering", "bandwidth_test", "pmtu"}


def from_dict(doc: object, source: str = "<site file>") -> SiteConfig:
    """A validated `SiteConfig` from a parsed site file. Raises ConfigError listing every problem, each
    with its field; one section at a time, each section's helper below adds its own."""
    errs = _Errors()
    top = _mapping(doc, "", errs, _TOP, {"version", "site", "uplinks"})
    if not top and not errs.items:
        errs.add("", "the site file is empty")
    if "version" in top and top["version"] != SCHEMA_VERSION:
        errs.add("version", f"unsupported version {top['version']!r}; this agent reads version {SCHEMA_VERSION}")
    name, sid, lan, lan_ifs = _site_section(top, errs)
    uplinks = _uplinks_section(top, lan_ifs, errs)
    remotes = _remotes_section(top, name, sid, errs)
    _check_overlaps(lan, remotes, errs)
    wg = _mapping(top.get("wireguard"), "wireguard", errs, {"backend", "private_key_file", "port_base", "keepalive",
                                                            "mtu"})
    backend = wg.get("backend", "auto")
    if backend not in WG_BACKENDS:
        errs.add("wireguard.backend", f"expected one of {', '.join(WG_BACKENDS)}, got {backend!r}")
    port_base = _int(wg.get("port_base", 40000), "wireguard.port_base", errs, 1024, 65000, "a UDP port")
    keepalive = _duration(wg.get("keepalive", "5s"), "wireguard.keepalive", errs)
    wg_mtu = _int(wg.get("mtu", 1420), "wireguard.mtu", errs, 1280, 9000, "an MTU")
    probe_port, probe_auth, probe_secret, probe_rt = _probe_section(top, remotes, errs)
    monitor = MonitorProfile.from_config("default")
    try:
        monitor = MonitorProfile.from_config(top.get("monitor", "default"), "monitor")
    except ConfigError as exc:
        errs.take(exc)
    policies = _policies_section(top, errs)
    router = _router_section(top, errs)
    sla = SlaTarget()
    if top.get("sla") is not None:
        try:
            sla = SlaTarget.from_dict(top["sla"], "sla")
        except ConfigError as exc:
            errs.take(exc)
    api = _mapping(top.get("api"), "api", errs, {"listen", "token", "token_file"})
    listen, token = _listen(api, errs), _token(api, errs)
    state_dir = FsPath(str(top.get("state_dir") or f"/run/patronus/{name or 'site'}"))
    metrics_interval = _duration(top.get("metrics_interval", "10s"), "metrics_interval", errs, 0.1)
    steering = top.get("steering", "nftables")
    if steering not in STEERING_MODES:
        errs.add("steering", f"expected one of {', '.join(STEERING_MODES)}, got {steering!r}")
    elif steering == "bpf":
        errs.add("steering", "the XDP / tc-BPF dataplane is not built yet; use 'nftables' (or 'none' to "
                             "measure paths without steering traffic)")
    bw_interval, bw_duration, bw_rate = _bandwidth_section(top, errs)
    pmtu = top.get("pmtu", True)
    if not isinstance(pmtu, bool):
        errs.add("pmtu", f"expected true or false, got {pmtu!r}")
        pmtu = True
    plans = _path_plans(remotes, uplinks, sid, port_base, probe_port, errs) if not errs.items else []
    if errs.items:
        raise ConfigError(errs.items)
    return SiteConfig(
        source=source, name=name, id=sid, lan_prefixes=lan, lan_interfaces=tuple(lan_ifs), uplinks=tuple(uplinks),
        remotes=tuple(remotes), wg_backend=str(backend),
        wg_private_key_file=FsPath(str(wg.get("private_key_file") or f"/var/lib/patronus/{name or 'site'}.key")),
        wg_port_base=port_base, wg_keepalive_s=round(keepalive), wg_mtu=wg_mtu, probe_port=probe_port,
        probe_auth=probe_auth, probe_secret=probe_secret, probe_realtime=probe_rt, monitor=monitor,
        policies=policies, router=router, sla=sla, api_listen=listen, api_token=token,
        api_token_file=FsPath(str(api.get("token_file") or state_dir / "api.token")),
        database=FsPath(str(top.get("database") or f"/var/lib/patronus/{name or 'site'}.db")), state_dir=state_dir,
        metrics_interval_s=metrics_interval, steering=str(steering), bandwidth_interval_s=bw_interval,
        bandwidth_duration_s=bw_duration, bandwidth_rate_mbps=bw_rate, pmtu=bool(pmtu), paths=tuple(plans))


def _site_section(top: Mapping[str, Any], errs: _Errors) -> tuple[str, int, tuple[str, ...], list[str]]:
    """`site`: (name, id, LAN prefixes, LAN interfaces)."""
    site = _mapping(top.get("site"), "site", errs, {"name", "id", "lan_prefixes", "lan_interfaces"},
                    {"name", "id", "lan_prefixes"})
    name = _name(site.get("name"), "site.name", errs) if "name" in site else ""
    sid = _int(site.get("id"), "site.id", errs, 1, 4000, "a site number") if "id" in site else 1
    lan = _prefixes(site.get("lan_prefixes"), "site.lan_prefixes", errs) if "lan_prefixes" in site else ()
    lan_ifs_raw = site.get("lan_interfaces") or []
    lan_ifs: list[str] = []
    if not isinstance(lan_ifs_raw, list):
        errs.add("site.lan_interfaces", f"expected a list of interface names, got {lan_ifs_raw!r}")
    else:
        lan_ifs = [_ifname(x, f"site.lan_interfaces[{i}]", errs) for i, x in enumerate(lan_ifs_raw)]
    return name, sid, lan, lan_ifs


def _unique(items: Sequence[object], attrs: Iterable[str], where: str, errs: _Errors, *,
            skip_empty: bool = False) -> None:
    """Each of `attrs` is unique over `items` (the list at `where`): a repeat is an error at the
    repeat, naming the first."""
    rel = where.rpartition(".")[2]
    for what in attrs:
        seen: dict[object, int] = {}
        for i, item in enumerate(items):
            v = getattr(item, what)
            if skip_empty and not v:
                continue
            if v in seen:
                errs.add(f"{where}[{i}].{what}", f"duplicate of {rel}[{seen[v]}].{what} ({v!r})")
            seen.setdefault(v, i)


def _uplinks_section(top: Mapping[str, Any], lan_ifs: list[str], errs: _Errors) -> list[UplinkConfig]:
    raw_up = top.get("uplinks")
    if "uplinks" in top and (not isinstance(raw_up, list) or not raw_up):
        errs.add("uplinks", "expected a list of at least one uplink")
        raw_up = []
    raw_up = raw_up or []
    if len(raw_up) > MAX_UPLINKS:
        errs.add("uplinks", f"at most {MAX_UPLINKS} uplinks per site, got {len(raw_up)}")
    uplinks = [_uplink(u, i, errs) for i, u in enumerate(raw_up)]
    _unique(uplinks, ("name", "interface", "address"), "uplinks", errs, skip_empty=True)
    for i, ifn in enumerate(lan_ifs):
        if ifn and any(up.interface == ifn for up in uplinks):
            errs.add(f"site.lan_interfaces[{i}]", f"{ifn!r} is also an uplink interface")
    return uplinks


def _uplink(u: object, i: int, errs: _Errors) -> UplinkConfig:
    f = f"uplinks[{i}]"
    m = _mapping(u, f, errs, {"name", "interface", "address", "gateway", "cost_per_gb", "bandwidth"},
                 {"name", "interface", "address"})
    cost = m.get("cost_per_gb", 0.0)
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < 1e6:
        errs.add(f"{f}.cost_per_gb", f"expected a non-negative price in $ per GB, got {cost!r}")
        cost = 0.0
    bw = 0.0
    if m.get("bandwidth") is not None:
        try:
            bw = parse_rate(m["bandwidth"], f"{f}.bandwidth") / 1e6
        except ConfigError as exc:
            errs.take(exc)
    gw = _address(m["gateway"], f"{f}.gateway", errs) if m.get("gateway") is not None else None
    return UplinkConfig(
        name=_name(m.get("name"), f"{f}.name", errs) if "name" in m else "", number=i,
        interface=_ifname(m.get("interface"), f"{f}.interface", errs) if "interface" in m else "",
        address=_address(m.get("address"), f"{f}.address", errs) if "address" in m else "",
        gateway=gw, cost_per_gb=float(cost), bandwidth_mbps=bw)


def _remotes_section(top: Mapping[str, Any], name: str, sid: int, errs: _Errors) -> list[RemoteConfig]:
    raw_rem = top.get("remotes") or []
    if not isinstance(raw_rem, list):
        errs.add("remotes", "expected a list of remote sites")
        raw_rem = []
    remotes = [_remote(r, f"remotes[{i}]", errs) for i, r in enumerate(raw_rem)]
    for what, own, why in (("name", name, "this site's own name"), ("id", sid, "this site's own id")):
        seen: dict[object, int] = {}
        for i, rm in enumerate(remotes):
            v = getattr(rm, what)
            if v in seen:
                errs.add(f"remotes[{i}].{what}", f"duplicate of remotes[{seen[v]}].{what} ({v!r})")
            seen.setdefault(v, i)
            if v and v == own:
                errs.add(f"remotes[{i}].{what}", f"a remote cannot have {why}")
    return remotes


def _remote(r: object, f: str, errs: _Errors) -> RemoteConfig:
    from patronus.agent.keys import check_key  # cryptography-free check, kept beside key generation

    m = _mapping(r, f, errs, {"name", "id", "public_key", "prefixes", "endpoints", "probe_secret"},
                 {"name", "id", "public_key", "prefixes", "endpoints"})
    pk = ""
    if m.get("public_key") is not None:
        try:
            pk = check_key(m["public_key"], f"{f}.public_key")
        except ConfigError as exc:
            errs.take(exc)
    raw_eps = m.get("endpoints")
    if "endpoints" in m and (not isinstance(raw_eps, list) or not raw_eps):
        errs.add(f"{f}.endpoints", "expected a list of at least one endpoint")
        raw_eps = []
    eps = [_endpoint(e, j, f"{f}.endpoints[{j}]", errs) for j, e in enumerate(raw_eps or [])]
    _unique(eps, ("uplink", "uplink_no", "address"), f"{f}.endpoints", errs)
    psec = _secret({"secret": m["probe_secret"]}, f, errs) if m.get("probe_secret") is not None else None
    return RemoteConfig(
        name=_name(m.get("name"), f"{f}.name", errs) if "name" in m else "",
        id=_int(m.get("id"), f"{f}.id", errs, 1, 4000, "a site number") if "id" in m else 0,
        public_key=pk,
        prefixes=_prefixes(m.get("prefixes"), f"{f}.prefixes", errs) if "prefixes" in m else (),
        endpoints=tuple(eps), probe_secret=psec)


def _endpoint(e: object, j: int, fe: str, errs: _Errors) -> EndpointConfig:
    me = _mapping(e, fe, errs, {"uplink", "address", "uplink_no"}, {"uplink", "address"})
    no = _int(me["uplink_no"], f"{fe}.uplink_no", errs, 0, MAX_UPLINKS - 1) if "uplink_no" in me else j
    if no >= MAX_UPLINKS:
        errs.add(fe, f"a site has at most {MAX_UPLINKS} uplinks")
    return EndpointConfig(uplink=_name(me.get("uplink"), f"{fe}.uplink", errs) if "uplink" in me else "",
                          uplink_no=no,
                          address=_address(me.get("address"), f"{fe}.address", errs) if "address" in me else "")


def _check_overlaps(lan: tuple[str, ...], remotes: list[RemoteConfig], errs: _Errors) -> None:
    """Prefixes must not overlap: longest-prefix match would hide a site."""
    owned: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
        (ipaddress.ip_network(p), "site.lan_prefixes") for p in lan]
    for i, rm in enumerate(remotes):
        for j, p in enumerate(rm.prefixes):
            net = ipaddress.ip_network(p)
            for other, where in owned:
                if net.version == other.version and net.overlaps(other):
                    errs.add(f"remotes[{i}].prefixes[{j}]", f"{p} overlaps {other} of {where}")
            owned.append((net, f"remotes[{i}].prefixes"))


def _probe_section(top: Mapping[str, Any], remotes: list[RemoteConfig],
                   errs: _Errors) -> tuple[int, bool, bytes | None, int]:
    """`probe`: (port, authenticated, shared secret, real-time priority)."""
    probe = _mapping(top.get("probe"), "probe", errs, {"port", "auth", "secret", "secret_file", "realtime_priority"})
    port = _int(probe.get("port", 862), "probe.port", errs, 1, 65535, "a UDP port")
    rt = _int(probe.get("realtime_priority", 0), "probe.realtime_priority", errs, 0, 99,
              "a SCHED_FIFO priority (1-99, 0 for none)")
    auth = probe.get("auth", True)
    if not isinstance(auth, bool):
        errs.add("probe.auth", f"expected true or false, got {auth!r}")
        auth = True
    secret = _secret(probe, "probe", errs)
    if auth and secret is None and "secret" not in probe and "secret_file" not in probe and remotes \
            and any(r.probe_secret is None for r in remotes):
        errs.add("probe.secret", "authenticated probing (probe.auth: true, the default) needs a shared secret "
                                 "(probe.secret or probe.secret_file, the same at every site)")
    return port, auth, secret, rt


def _policies_section(top: Mapping[str, Any], errs: _Errors) -> tuple[RoutingPolicy, ...]:
    policies: tuple[RoutingPolicy, ...] = tuple(default_policies())
    raw_pol = top.get("policies", "default")
    if raw_pol != "default":
        if not isinstance(raw_pol, list) or not raw_pol:
            errs.add("policies", "expected 'default' or a list of policies")
        else:
            pols = []
            for i, pd in enumerate(raw_pol):
                try:
                    pols.append(RoutingPolicy.from_dict(pd, f"policies[{i}]"))
                except ConfigError as exc:
                    errs.take(exc)
            names: dict[str, int] = {}
            for i, pol in enumerate(pols):
                if pol.name in names:
                    errs.add(f"policies[{i}].name", f"duplicate policy name {pol.name!r}")
                names.setdefault(pol.name, i)
            policies = tuple(pols)
    if len(policies) > 250:
        errs.add("policies", "at most 250 policies")
    return policies


def _router_section(top: Mapping[str, Any], errs: _Errors) -> RouterConfig:
    rc = _mapping(top.get("router"), "router", errs, {"failback_hold", "min_improvement", "failover_cooldown",
                                                      "idle_timeout"})
    kw: dict[str, float] = {}
    for key, attr in (("failback_hold", "failback_hold_s"), ("failover_cooldown", "failover_cooldown_s"),
                      ("idle_timeout", "idle_timeout_s")):
        if key in rc:
            kw[attr] = _duration(rc[key], f"router.{key}", errs)
    if "min_improvement" in rc:
        mi = rc["min_improvement"]
        if isinstance(mi, bool) or not isinstance(mi, int | float) or not 0 <= mi <= 100:
            errs.add("router.min_improvement", f"expected a score difference 0-100, got {mi!r}")
        else:
            kw["min_improvement"] = float(mi)
    try:
        return RouterConfig(**kw)
    except ConfigError as exc:
        errs.take(exc)
        return RouterConfig()


def _listen(api: Mapping[str, Any], errs: _Errors) -> tuple[str, int]:
    raw_listen = api.get("listen", "127.0.0.1:8470")
    if isinstance(raw_listen, str) and ":" in raw_listen:
        host, _, port_s = raw_listen.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            port = int(port_s)
            if not 1 <= port <= 65535:
                raise ValueError
            return host, port
        except ValueError:
            pass
    errs.add("api.listen", f"expected ADDRESS:PORT like 127.0.0.1:8470, got {raw_listen!r}")
    return "127.0.0.1", 8470


def _token(api: Mapping[str, Any], errs: _Errors) -> str | None:
    token = api.get("token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        errs.add("api.token", "expected a token of at least 16 characters (or leave it out: the agent "
                              "generates one into api.token_file)")
        return None
    return token


def _bandwidth_section(top: Mapping[str, Any], errs: _Errors) -> tuple[float, float, float]:
    """`bandwidth_test`: (interval, 0 for off; duration; rate in Mbit/s)."""
    bwt = _mapping(top.get("bandwidth_test"), "bandwidth_test", errs, {"interval", "duration", "rate"})
    interval = 0.0
    if bwt.get("interval", "off") not in ("off", None, False):
        interval = _duration(bwt["interval"], "bandwidth_test.interval", errs, 10.0)
    duration = _duration(bwt.get("duration", "2s"), "bandwidth_test.duration", errs, 0.2)
    if duration > 30:
        errs.add("bandwidth_test.duration", "at most 30 s")
    rate = 50.0
    if bwt.get("rate") is not None:
        try:
            rate = parse_rate(bwt["rate"], "bandwidth_test.rate") / 1e6
        except ConfigError as exc:
            errs.take(exc)
    return interval, duration, rate


def _path_plans(remotes: list[RemoteConfig], uplinks: list[UplinkConfig], sid: int, port_base: int,
                probe_port: int, errs: _Errors) -> list[PathPlan]:
    """The paths, local uplink × remote endpoint, numbered in id order, with their ports."""
    ids = sorted(((f"{rm.name}:{up.name}-{ep.uplink}", rm, up, ep)
                  for rm in remotes for up in uplinks for ep in rm.endpoints), key=lambda t: t[0])
    if len(ids) > MAX_PATHS:
        errs.add("remotes", f"{len(ids)} paths (uplinks × remote endpoints); at most {MAX_PATHS}")
    plans: list[PathPlan] = []
    for n, (pid, rm, up, ep) in enumerate(ids, start=1):
        listen_port = port_base + rm.id * 16 + up.number * 4 + ep.uplink_no
        peer_port = port_base + sid * 16 + ep.uplink_no * 4 + up.number
        for what, v in (("listen", listen_port), ("peer", peer_port)):
            if v > 65535:
                errs.add("wireguard.port_base", f"path {pid}: {what} port {v} exceeds 65535; lower port_base "
                                                f"or use smaller site ids")
        if listen_port == probe_port:
            errs.add("probe.port", f"collides with the WireGuard port of path {pid}")
        plans.append(PathPlan(number=n, id=PathId(pid), remote=rm.name, uplink=up, endpoint=ep,
                              ifname=f"pt{sid}p{n}", listen_port=listen_port, peer_port=peer_port))
    return plans


def probe_key(cfg: SiteConfig, remote: RemoteConfig) -> bytes | None:
    """The HMAC key for probes between this site and `remote` (None when authentication is off)."""
    from patronus.core.probe import pair_key

    if not cfg.probe_auth:
        return None
    secret = remote.probe_secret or cfg.probe_secret
    assert secret is not None, "validated: authenticated probing has a secret"
    return pair_key(secret, cfg.name, remote.name)
