"""The site file: one YAML document describing a site, its uplinks, its remote sites and the agent.

`load(path)` reads and checks the whole file and raises one `ConfigError` listing **every** problem
with its path (`uplinks[1].address: ...`), or returns an immutable `SiteConfig`. Nothing here touches
the host: the agent validates first, then plans, then applies, so an invalid file changes nothing.

Derived, deterministic values (both ends of a path compute the same ones from their own files):

- **Paths** are local uplink × remote endpoint, id `"<remote>:<uplink>-<remote uplink>"`, numbered
  1..N in sorted id order. The number picks the WireGuard interface name `<prefix><site id>p<n>`
  (`wireguard.interface_prefix`, "pt" by default; ≤ 15 characters and unique machine-wide, which
  wireguard-go's shared `/var/run/wireguard` needs: a test-bed running several networks on one host
  gives each its own prefix), the path's firewall mark and its routing table.
- **WireGuard ports.** A WireGuard interface listens on every address, so each path needs its own
  port. The interface for (our uplink *a*, remote site *R*, its uplink *b*) listens on
  `port_base + R.id·16 + a·4 + b`, where *a* and *b* are uplink numbers (an uplink's position in its
  site's `uplinks` list; a remote's `endpoints` are listed in the order of that site's uplinks or carry
  `uplink_no`). The remote computes the same number with the roles swapped, so no port is configured
  per path. At most 4 uplinks per site.
- **Probe keys**: HMAC key per site pair = `pair_key(probe secret, site a, site b)`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from patronus import safeyaml
from patronus.core.errors import ConfigError
from patronus.core.mesh import MeshTopology
from patronus.core.model import EndpointId, Path, PathId, SiteId
from patronus.core.monitor import MonitorProfile
from patronus.core.policy import RoutingPolicy
from patronus.core.router import RouterConfig
from patronus.core.settings import read_policies, read_router
from patronus.core.sla import SlaTarget
from patronus.core.swim import SwimConfig, read_timers
from patronus.core.validate import (
    MAX_TEXT,
    Errors,
    address,
    boolean,
    choice,
    duration,
    file_path,
    ifname,
    integer,
    item,
    items,
    mapping,
    name,
    number,
    prefix,
    rate,
    show,
)

SCHEMA_VERSION = 1
MAX_UPLINKS = 4
MAX_PATHS = 250
MAX_REMOTES = 250                # a remote's number is one byte of a slot mark
MESH_PORT = 51900
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
    number: int = 0             # the remote's number in the kernel's marks (stable while it is a remote)
    learned: bool = False       # found by mesh discovery (not written in the site file)


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
class MeshSettings:
    """The site file's `mesh:` section: this site discovers its remotes (see `patronus.agent.meshdrive`)."""

    certificate: FsPath          # this site's certificate (`patronus ca sign-site`)
    signing_key: FsPath          # its Ed25519 signing key (`patronus keys signing`), mode 0600
    root: FsPath                 # the organisation's root certificate
    revocations: FsPath | None   # a revocation list to start from (newer ones spread by gossip)
    port: int                    # the UDP port of the membership datagrams, on every uplink address
    seeds: tuple[tuple[str, int], ...]      # (address, port) of sites to ask first; none: the first site
    topology: MeshTopology
    swim: SwimConfig
    region: str | None


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
    mesh: MeshSettings | None = None
    if_prefix: str = "pt"

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
        data = safeyaml.read_file(p)
    except OSError as exc:
        raise ConfigError(f"cannot read the site file: {exc.strerror or exc}", str(p)) from None
    return from_dict(safeyaml.read(data, str(p)), str(p))


def parse(text: str, source: str = "<site file>") -> SiteConfig:
    """Check a site file given as YAML text (read by `patronus.safeyaml`: bounded, repeated keys refused)."""
    return from_dict(safeyaml.read(text, source), source)


def _prefixes(v: object, fld: str, errs: Errors) -> tuple[str, ...]:
    """One prefix or a non-empty list of them, canonical."""
    raw = items([v] if isinstance(v, str) else v, fld, errs, "prefixes like 10.1.0.0/24", nonempty=True) or []
    nets = (prefix(x, item(fld, i), errs) for i, x in enumerate(raw))
    return tuple(str(n) for n in nets if n is not None)


def _secret(d: Mapping[str, Any], fld: str, errs: Errors) -> bytes | None:
    """`secret` (text) or `secret_file` (read here: the only file this module reads besides the site file)."""
    if d.get("secret") is not None and d.get("secret_file") is not None:
        errs.add(f"{fld}.secret", "give either secret or secret_file, not both")
        return None
    if d.get("secret") is not None:
        s = d["secret"]
        if not isinstance(s, str) or not 16 <= len(s) <= MAX_TEXT:
            errs.add(f"{fld}.secret", "expected a shared secret of at least 16 characters")
            return None
        return s.encode()
    if d.get("secret_file") is not None:
        name = file_path(d["secret_file"], f"{fld}.secret_file", errs)
        if name is None:
            return None
        try:
            data = FsPath(name).read_bytes().strip()
        except OSError as exc:
            errs.add(f"{fld}.secret_file", f"cannot read: {exc.strerror or exc}")
            return None
        if len(data) < 16:
            errs.add(f"{fld}.secret_file", "the secret must be at least 16 bytes")
            return None
        return data
    return None


def _path_setting(m: Mapping[str, Any], key: str, fld: str, errs: Errors, default: str) -> FsPath:
    """A file or directory named in the site file (`default` when left out)."""
    if m.get(key) is None:
        return FsPath(default)
    return FsPath(file_path(m[key], fld, errs) or default)


_TOP = ("version", "site", "uplinks", "remotes", "wireguard", "probe", "monitor", "policies", "router", "sla", "api",
        "database", "state_dir", "metrics_interval", "steering", "bandwidth_test", "pmtu", "mesh")


def from_dict(doc: object, source: str = "<site file>") -> SiteConfig:
    """A validated `SiteConfig` from a parsed site file. Raises ConfigError listing every problem, each
    with its field; one section at a time, each section's helper below adds its own."""
    errs = Errors()
    if doc is None:
        raise ConfigError("the site file is empty", "")
    top = mapping(doc, "", errs, _TOP, ("version", "site", "uplinks")) or {}
    if "version" in top and top["version"] != SCHEMA_VERSION:
        errs.add("version", f"unsupported version {show(top['version'])}; this agent reads version {SCHEMA_VERSION}")
    site_name, sid, lan, lan_ifs = _site_section(top, errs)
    uplinks = _uplinks_section(top, lan_ifs, errs)
    remotes = _remotes_section(top, site_name, sid, errs)
    _check_overlaps(lan, remotes, errs)
    wg = _wireguard_section(top, site_name, errs)
    mesh = _mesh_section(top.get("mesh"), errs)
    probe_port, probe_auth, probe_secret, probe_rt = _probe_section(top, remotes, errs, mesh is not None)
    monitor = errs.attempt(MonitorProfile.from_config, top.get("monitor", "default"), "monitor")
    policies = read_policies(top.get("policies"), "policies", errs)
    router = read_router(top.get("router"), "router", errs)
    sla = SlaTarget() if top.get("sla") is None else errs.attempt(SlaTarget.from_dict, top["sla"], "sla")
    api = mapping(top.get("api"), "api", errs, ("listen", "token", "token_file"), none_ok=True) or {}
    listen, token = _listen(api, errs), _token(api, errs)
    state_dir = _path_setting(top, "state_dir", "state_dir", errs, f"/run/patronus/{site_name or 'site'}")
    metrics_interval = duration(top.get("metrics_interval", "10s"), "metrics_interval", errs, at_least=0.1)
    steering = choice(top.get("steering", "nftables"), "steering", errs, STEERING_MODES)
    if steering == "bpf":
        errs.add("steering", "the XDP / tc-BPF dataplane is not built yet; use 'nftables' (or 'none' to "
                             "measure paths without steering traffic)")
    bw_interval, bw_duration, bw_rate = _bandwidth_section(top, errs)
    pmtu = boolean(top.get("pmtu", True), "pmtu", errs)
    token_file = _path_setting(api, "token_file", "api.token_file", errs, str(state_dir / "api.token"))
    database = _path_setting(top, "database", "database", errs, f"/var/lib/patronus/{site_name or 'site'}.db")
    plans = _path_plans(remotes, uplinks, sid, wg.port_base, probe_port, errs, wg.prefix) if not errs.items else []
    errs.check()
    assert monitor is not None and sla is not None and metrics_interval is not None and pmtu is not None
    return SiteConfig(
        source=source, name=site_name, id=sid, lan_prefixes=lan, lan_interfaces=tuple(lan_ifs), uplinks=tuple(uplinks),
        remotes=tuple(remotes), wg_backend=wg.backend, wg_private_key_file=wg.key_file, wg_port_base=wg.port_base,
        wg_keepalive_s=wg.keepalive_s, wg_mtu=wg.mtu, probe_port=probe_port, probe_auth=probe_auth,
        probe_secret=probe_secret, probe_realtime=probe_rt, monitor=monitor, policies=policies, router=router,
        sla=sla, api_listen=listen, api_token=token, api_token_file=token_file, database=database,
        state_dir=state_dir, metrics_interval_s=metrics_interval, steering=str(steering),
        bandwidth_interval_s=bw_interval, bandwidth_duration_s=bw_duration, bandwidth_rate_mbps=bw_rate,
        pmtu=pmtu, paths=tuple(plans), mesh=mesh, if_prefix=wg.prefix)


def _site_section(top: Mapping[str, Any], errs: Errors) -> tuple[str, int, tuple[str, ...], list[str]]:
    """`site`: (name, id, LAN prefixes, LAN interfaces)."""
    site = mapping(top.get("site"), "site", errs, ("name", "id", "lan_prefixes", "lan_interfaces"),
                   ("name", "id", "lan_prefixes") if top.get("site") is not None else (), none_ok=True) or {}
    nm = (name(site["name"], "site.name", errs) or "") if site.get("name") is not None else ""
    sid = (integer(site["id"], "site.id", errs, 1, 4000, "a site number") or 1) if site.get("id") is not None else 1
    lan = _prefixes(site["lan_prefixes"], "site.lan_prefixes", errs) if site.get("lan_prefixes") is not None else ()
    lan_ifs_raw = items(site.get("lan_interfaces") or [], "site.lan_interfaces", errs, "interface names") or []
    lan_ifs = [ifname(x, item("site.lan_interfaces", i), errs) or "" for i, x in enumerate(lan_ifs_raw)]
    return nm, sid, lan, lan_ifs


def _unique(things: Sequence[object], attrs: Iterable[str], where: str, errs: Errors, *,
            skip_empty: bool = False) -> None:
    """Each of `attrs` is unique over `things` (the list at `where`): a repeat is an error at the
    repeat, naming the first."""
    rel = where.rpartition(".")[2]
    for what in attrs:
        seen: dict[object, int] = {}
        for i, thing in enumerate(things):
            v = getattr(thing, what)
            if skip_empty and not v:
                continue
            if v in seen:
                errs.add(f"{where}[{i}].{what}", f"duplicate of {rel}[{seen[v]}].{what} ({show(v)})")
            seen.setdefault(v, i)


def _uplinks_section(top: Mapping[str, Any], lan_ifs: list[str], errs: Errors) -> list[UplinkConfig]:
    raw_up = items(top["uplinks"], "uplinks", errs, "uplinks", nonempty=True) if top.get("uplinks") is not None else []
    raw_up = raw_up or []
    if len(raw_up) > MAX_UPLINKS:
        errs.add("uplinks", f"at most {MAX_UPLINKS} uplinks per site, got {len(raw_up)}")
        raw_up = raw_up[:MAX_UPLINKS]
    uplinks = [_uplink(u, i, errs) for i, u in enumerate(raw_up)]
    _unique(uplinks, ("name", "interface", "address"), "uplinks", errs, skip_empty=True)
    for i, ifn in enumerate(lan_ifs):
        if ifn and any(up.interface == ifn for up in uplinks):
            errs.add(f"site.lan_interfaces[{i}]", f"{ifn!r} is also an uplink interface")
    return uplinks


def _uplink(u: object, i: int, errs: Errors) -> UplinkConfig:
    f = item("uplinks", i)
    m = mapping(u, f, errs, ("name", "interface", "address", "gateway", "cost_per_gb", "bandwidth"),
                ("name", "interface", "address")) or {}
    cost = number(m.get("cost_per_gb", 0.0), f"{f}.cost_per_gb", errs, 0, 1e6, "a non-negative price in $ per GB")
    bw = rate(m["bandwidth"], f"{f}.bandwidth", errs, positive=False) if m.get("bandwidth") is not None else 0.0
    gw = address(m["gateway"], f"{f}.gateway", errs) if m.get("gateway") is not None else None
    return UplinkConfig(
        name=(name(m["name"], f"{f}.name", errs) or "") if m.get("name") is not None else "", number=i,
        interface=(ifname(m["interface"], f"{f}.interface", errs) or "") if m.get("interface") is not None else "",
        address=(address(m["address"], f"{f}.address", errs) or "") if m.get("address") is not None else "",
        gateway=gw, cost_per_gb=cost or 0.0, bandwidth_mbps=(bw or 0.0) / 1e6)


def _remotes_section(top: Mapping[str, Any], own_name: str, sid: int, errs: Errors) -> list[RemoteConfig]:
    raw_rem = items(top.get("remotes") or [], "remotes", errs, "remote sites") or []
    remotes = [dataclasses.replace(_remote(r, item("remotes", i), errs), number=i + 1) for i, r in enumerate(raw_rem)]
    if len(remotes) > MAX_REMOTES:
        errs.add("remotes", f"at most {MAX_REMOTES} remote sites, got {len(remotes)}")
    for what, own, why in (("name", own_name, "this site's own name"), ("id", sid, "this site's own id")):
        seen: dict[object, int] = {}
        for i, rm in enumerate(remotes):
            v = getattr(rm, what)
            if v in seen:
                errs.add(f"remotes[{i}].{what}", f"duplicate of remotes[{seen[v]}].{what} ({v!r})")
            seen.setdefault(v, i)
            if v and v == own:
                errs.add(f"remotes[{i}].{what}", f"a remote cannot have {why}")
    return remotes


def _remote(r: object, f: str, errs: Errors) -> RemoteConfig:
    from patronus.agent.keys import check_key  # cryptography-free check, kept beside key generation

    m = mapping(r, f, errs, ("name", "id", "public_key", "prefixes", "endpoints", "probe_secret"),
                ("name", "id", "public_key", "prefixes", "endpoints")) or {}
    pk = (errs.attempt(check_key, m["public_key"], f"{f}.public_key") or "") if m.get("public_key") is not None else ""
    raw_eps = items(m["endpoints"], f"{f}.endpoints", errs, "endpoints", nonempty=True) \
        if m.get("endpoints") is not None else []
    eps = [_endpoint(e, j, item(f"{f}.endpoints", j), errs) for j, e in enumerate(raw_eps or [])]
    _unique(eps, ("uplink", "uplink_no", "address"), f"{f}.endpoints", errs)
    psec = _secret({"secret": m["probe_secret"]}, f, errs) if m.get("probe_secret") is not None else None
    return RemoteConfig(
        name=(name(m["name"], f"{f}.name", errs) or "") if m.get("name") is not None else "",
        id=(integer(m["id"], f"{f}.id", errs, 1, 4000, "a site number") or 0) if m.get("id") is not None else 0,
        public_key=pk,
        prefixes=_prefixes(m["prefixes"], f"{f}.prefixes", errs) if m.get("prefixes") is not None else (),
        endpoints=tuple(eps), probe_secret=psec)


def _endpoint(e: object, j: int, fe: str, errs: Errors) -> EndpointConfig:
    me = mapping(e, fe, errs, ("uplink", "address", "uplink_no"), ("uplink", "address")) or {}
    no = integer(me["uplink_no"], f"{fe}.uplink_no", errs, 0, MAX_UPLINKS - 1) if "uplink_no" in me else j
    if no is not None and no >= MAX_UPLINKS:
        errs.add(fe, f"a site has at most {MAX_UPLINKS} uplinks")
    return EndpointConfig(uplink=(name(me["uplink"], f"{fe}.uplink", errs) or "") if me.get("uplink") is not None
                          else "", uplink_no=j if no is None else no,
                          address=(address(me["address"], f"{fe}.address", errs) or "")
                          if me.get("address") is not None else "")


def _check_overlaps(lan: tuple[str, ...], remotes: list[RemoteConfig], errs: Errors) -> None:
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


@dataclass(frozen=True, slots=True)
class _WireGuard:
    backend: str
    key_file: FsPath
    port_base: int
    keepalive_s: int
    mtu: int
    prefix: str


_IF_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def _wireguard_section(top: Mapping[str, Any], site_name: str, errs: Errors) -> _WireGuard:
    wg = mapping(top.get("wireguard"), "wireguard", errs, ("backend", "private_key_file", "port_base", "keepalive",
                                                           "mtu", "interface_prefix"), none_ok=True) or {}
    prefix = wg.get("interface_prefix", "pt")
    if not isinstance(prefix, str) or not _IF_PREFIX.match(prefix):
        errs.add("wireguard.interface_prefix", f"expected 1-8 lower-case letters and digits, starting with a "
                                               f"letter, got {show(prefix)}")
        prefix = "pt"
    keepalive = duration(wg.get("keepalive", "5s"), "wireguard.keepalive", errs, at_most=65535)
    return _WireGuard(
        backend=choice(wg.get("backend", "auto"), "wireguard.backend", errs, WG_BACKENDS) or "auto",
        key_file=_path_setting(wg, "private_key_file", "wireguard.private_key_file", errs,
                               f"/var/lib/patronus/{site_name or 'site'}.key"),
        port_base=integer(wg.get("port_base", 40000), "wireguard.port_base", errs, 1024, 65000, "a UDP port") or 40000,
        keepalive_s=round(keepalive or 0), mtu=integer(wg.get("mtu", 1420), "wireguard.mtu", errs, 1280, 9000,
                                                       "an MTU") or 1420, prefix=prefix)


def _probe_section(top: Mapping[str, Any], remotes: list[RemoteConfig],
                   errs: Errors, mesh: bool = False) -> tuple[int, bool, bytes | None, int]:
    """`probe`: (port, authenticated, shared secret, real-time priority)."""
    probe = mapping(top.get("probe"), "probe", errs, ("port", "auth", "secret", "secret_file", "realtime_priority"),
                    none_ok=True) or {}
    port = integer(probe.get("port", 862), "probe.port", errs, 1, 65535, "a UDP port") or 862
    rt = integer(probe.get("realtime_priority", 0), "probe.realtime_priority", errs, 0, 99,
                 "a SCHED_FIFO priority (1-99, 0 for none)") or 0
    auth = boolean(probe.get("auth", True), "probe.auth", errs)
    auth = True if auth is None else auth
    secret = _secret(probe, "probe", errs)
    if auth and secret is None and "secret" not in probe and "secret_file" not in probe and (mesh or remotes) \
            and (mesh or any(r.probe_secret is None for r in remotes)):
        errs.add("probe.secret", "authenticated probing (probe.auth: true, the default) needs a shared secret "
                                 "(probe.secret or probe.secret_file, the same at every site)")
    return port, auth, secret, rt


_LISTEN = re.compile(r"^\[?([0-9A-Fa-f:.]{2,45})\]?:([0-9]{1,5})$")


def _listen(api: Mapping[str, Any], errs: Errors) -> tuple[str, int]:
    raw_listen = api.get("listen", "127.0.0.1:8470")
    m = _LISTEN.match(raw_listen) if isinstance(raw_listen, str) else None
    if m is not None:
        host, port = m.group(1), int(m.group(2))
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if 1 <= port <= 65535:
                return host, port
    errs.add("api.listen", f"expected ADDRESS:PORT like 127.0.0.1:8470, got {show(raw_listen)}")
    return "127.0.0.1", 8470


def _token(api: Mapping[str, Any], errs: Errors) -> str | None:
    token = api.get("token")
    if token is not None and (not isinstance(token, str) or not 16 <= len(token) <= MAX_TEXT):
        errs.add("api.token", "expected a token of at least 16 characters (or leave it out: the agent "
                              "generates one into api.token_file)")
        return None
    return token


def _bandwidth_section(top: Mapping[str, Any], errs: Errors) -> tuple[float, float, float]:
    """`bandwidth_test`: (interval, 0 for off; duration; rate in Mbit/s)."""
    bwt = mapping(top.get("bandwidth_test"), "bandwidth_test", errs, ("interval", "duration", "rate"),
                  none_ok=True) or {}
    interval = 0.0
    if bwt.get("interval", "off") not in ("off", None, False):
        interval = duration(bwt["interval"], "bandwidth_test.interval", errs, at_least=10.0) or 0.0
    dur = duration(bwt.get("duration", "2s"), "bandwidth_test.duration", errs, at_least=0.2, at_most=30.0) or 2.0
    bw = rate(bwt["rate"], "bandwidth_test.rate", errs) if bwt.get("rate") is not None else 50e6
    return interval, dur, (bw or 50e6) / 1e6


def _path_plans(remotes: list[RemoteConfig], uplinks: list[UplinkConfig], sid: int, port_base: int,
                probe_port: int, errs: Errors, if_prefix: str = "pt") -> list[PathPlan]:
    """The paths, local uplink × remote endpoint, numbered in id order, with their ports."""
    ids = sorted(((f"{rm.name}:{up.name}-{ep.uplink}", rm, up, ep)
                  for rm in remotes for up in uplinks for ep in rm.endpoints), key=lambda t: t[0])
    if len(ids) > MAX_PATHS:
        errs.add("remotes", f"{len(ids)} paths (uplinks × remote endpoints); at most {MAX_PATHS}")
    plans = [_path_plan(n, rm, up, ep, sid, port_base, probe_port, errs, if_prefix)
             for n, (_pid, rm, up, ep) in enumerate(ids, start=1)]
    if plans and len(plans[-1].ifname) > 15:
        errs.add("wireguard.interface_prefix", f"the tunnel names ({plans[-1].ifname}) would exceed 15 characters: "
                                               "a shorter prefix, or a smaller site id")
    return plans


def _path_plan(n: int, rm: RemoteConfig, up: UplinkConfig, ep: EndpointConfig, sid: int, port_base: int,
               probe_port: int, errs: Errors, if_prefix: str, local_no: int | None = None) -> PathPlan:
    """One path's plan; `local_no`: the number our uplink goes by in the ports (its position in the site
    file, or for a learned remote its position in name order: see `with_remotes`)."""
    pid = f"{rm.name}:{up.name}-{ep.uplink}"
    a = up.number if local_no is None else local_no
    listen_port = port_base + rm.id * 16 + a * 4 + ep.uplink_no
    peer_port = port_base + sid * 16 + ep.uplink_no * 4 + a
    for what, v in (("listen", listen_port), ("peer", peer_port)):
        if v > 65535:
            errs.add("wireguard.port_base", f"path {pid}: {what} port {v} exceeds 65535; lower port_base "
                                            f"or use smaller site ids")
    if listen_port == probe_port:
        errs.add("probe.port", f"collides with the WireGuard port of path {pid}")
    return PathPlan(number=n, id=PathId(pid), remote=rm.name, uplink=up, endpoint=ep,
                    ifname=f"{if_prefix}{sid}p{n}", listen_port=listen_port, peer_port=peer_port)


def with_remotes(cfg: SiteConfig, learned: Sequence[RemoteConfig], *,
                 numbers: tuple[Mapping[str, int], Mapping[str, int]] | None = None) -> SiteConfig:
    """`cfg` with `learned` (mesh discovery's remotes) in place of the ones it learned before; the site
    file's remotes stay. Numbers are stable: a remote or path that stays keeps its number (its marks,
    its tunnel's name), a new one takes the lowest free. `numbers` (remote name → number, path id →
    number: an earlier agent's, from its dataplane record) are taken for learned remotes and their
    paths where `cfg` gives none and the number is free. ConfigError (nothing changed) when a learned
    remote clashes with this site or another remote, or the numbers or ports run out."""
    errs = Errors()
    static = [r for r in cfg.remotes if not r.learned]
    taken = {r.name for r in static} | {cfg.name}
    ids = {r.id for r in static} | {cfg.id}
    kept = {p.id: p.number for p in cfg.paths}
    remote_nos = {r.name: r.number for r in cfg.remotes}
    if numbers is not None:
        wanted_names = {r.name for r in learned} - {r.name for r in cfg.remotes}
        for name, rno in numbers[0].items():
            if name in wanted_names and rno not in remote_nos.values():
                remote_nos[name] = rno
        for pid, pno in numbers[1].items():
            if pid.split(":", 1)[0] in wanted_names and PathId(pid) not in kept and pno not in kept.values():
                kept[PathId(pid)] = pno
    used_r = {r.number for r in static}
    out = list(static)
    for i, rm in enumerate(learned):
        f = item("learned", i)
        if rm.name in taken or rm.id in ids:
            errs.add(f, f"site {rm.name} (id {rm.id}) is this site, a remote of the site file or learned twice")
            continue
        taken.add(rm.name)
        ids.add(rm.id)
        no = remote_nos.get(rm.name)
        if no is None or no in used_r:
            no = next((n for n in range(1, MAX_REMOTES + 1) if n not in used_r and n not in remote_nos.values()), None)
            no = no or next((n for n in range(1, MAX_REMOTES + 1) if n not in used_r), 0)
        if not no:
            errs.add(f, f"more than {MAX_REMOTES} remotes")
            continue
        used_r.add(no)
        out.append(dataclasses.replace(rm, number=no, learned=True))
    _check_overlaps(cfg.lan_prefixes, out, errs)
    # Between discovering sites an uplink goes by its position in name order (an announcement lists its
    # endpoints sorted by uplink name, and `learned_remote` numbers them so): both ends compute the same ports.
    by_name = {u.name: i for i, u in enumerate(sorted(cfg.uplinks, key=lambda u: u.name))}
    wanted = sorted(((f"{rm.name}:{up.name}-{ep.uplink}", rm, up, ep)
                     for rm in out for up in cfg.uplinks for ep in rm.endpoints), key=lambda t: t[0])
    used_p = {kept[PathId(pid)] for pid, *_ in wanted if PathId(pid) in kept}
    free = (n for n in range(1, MAX_PATHS + 1) if n not in used_p)
    plans = []
    for pid, rm, up, ep in wanted:
        n = kept.get(PathId(pid)) or next(free, 0)
        if not n:
            errs.add("learned", f"more than {MAX_PATHS} paths")
            break
        plans.append(_path_plan(n, rm, up, ep, cfg.id, cfg.wg_port_base, cfg.probe_port, errs, cfg.if_prefix,
                                by_name[up.name] if rm.learned else None))
    errs.check()
    return dataclasses.replace(cfg, remotes=tuple(out), paths=tuple(plans))


def _split_seed(x: object, port: int) -> tuple[str | None, int | None]:
    """"10.0.0.1:51900", "10.0.0.1", "[fd00::1]:51900" or "fd00::1" (the port defaulting to `port`)."""
    if not isinstance(x, str) or len(x) > 64:
        return None, None
    host, rest = x, ""
    if x.startswith("["):
        host, sep, rest = x[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")) or rest == ":":
            return None, None
        rest = rest[1:]
    elif x.count(":") == 1:
        host, rest = x.split(":")
        if not rest:
            return host, None             # "10.0.0.1:" (a port was meant)
    if not rest:
        return host, port
    return host, int(rest) if rest.isascii() and rest.isdigit() and len(rest) <= 5 else None
_MESH_KEYS = ("certificate", "signing_key", "root", "revocations", "port", "seeds", "topology", "timers", "region")


def _mesh_section(raw: object, errs: Errors) -> MeshSettings | None:
    """`mesh:` (None without one, or after recording its errors)."""
    if raw is None:
        return None
    n = len(errs)
    m = mapping(raw, "mesh", errs, _MESH_KEYS, ("certificate", "signing_key", "root"))
    if m is None:
        return None
    files = {k: file_path(m[k], f"mesh.{k}", errs) for k in ("certificate", "signing_key", "root", "revocations")
             if m.get(k) is not None}
    port = integer(m.get("port", MESH_PORT), "mesh.port", errs, 1, 65535, "a UDP port") or MESH_PORT
    seeds: list[tuple[str, int]] = []
    for i, x in enumerate(items(m.get("seeds") or [], "mesh.seeds", errs, "seed addresses") or []):
        host, sport = _split_seed(x, port)
        if host is None or sport is None or not 1 <= sport <= 65535:
            errs.add(item("mesh.seeds", i), f"expected ADDRESS or ADDRESS:PORT like 10.0.0.1:{MESH_PORT} "
                                            f"([ADDRESS]:PORT for IPv6), got {show(x)}")
        elif (addr := address(host, item("mesh.seeds", i), errs)) is not None:
            seeds.append((addr, sport))
    topology = MeshTopology.read(m["topology"], "mesh.topology", errs) if m.get("topology") is not None \
        else MeshTopology()
    timers = read_timers(m.get("timers"), "mesh.timers", errs)
    region = name(m["region"], "mesh.region", errs) if m.get("region") is not None else None
    if len(errs) > n or topology is None or timers is None:
        return None
    rl = files.get("revocations")
    return MeshSettings(certificate=FsPath(files["certificate"] or ""), signing_key=FsPath(files["signing_key"] or ""),
                        root=FsPath(files["root"] or ""), revocations=FsPath(rl) if rl else None, port=port,
                        seeds=tuple(seeds), topology=topology,
                        swim=dataclasses.replace(SwimConfig(), **timers,  # type: ignore[arg-type]
                                                 gossip_interval=min(0.2, timers.get("probe_interval", 1.0) / 2)),
                        region=region)


def probe_key(cfg: SiteConfig, remote: RemoteConfig) -> bytes | None:
    """The HMAC key for probes between this site and `remote` (None when authentication is off)."""
    from patronus.core.probe import pair_key

    if not cfg.probe_auth:
        return None
    secret = remote.probe_secret or cfg.probe_secret
    assert secret is not None, "validated: authenticated probing has a secret"
    return pair_key(secret, cfg.name, remote.name)
