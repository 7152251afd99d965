"""Kernel steering with nftables conntrack marks and policy routing.

How a packet from the LAN to a remote site finds its path:

1. **Classify once per connection** (prerouting, or output for the router's own traffic). A
   connection whose conntrack mark is not ours yet gets a packet mark from the destination
   (`remote_site` map: prefix → `0x50RR0000`, RR = remote site number), then the `classify` chain
   ORs in the policy number (`0x50RRPP00`: the first enabled policy, in priority order, whose match
   rules hold, compiled to nft expressions), then the `new_slot` map gives the *slot*
   `0x50RRPPNN`: the path NN that policy PP's new flows toward RR take now (for a load-balancing
   policy, a hash of the 5-tuple first picks one of 16 buckets `0x50RRPPbb`, and each bucket maps to
   a path of the policy's tier: rendezvous hashing for flow_hash, shares by bandwidth for weighted
   round-robin, an even spread for round-robin and least-connections). The slot is stored as
   the connection's conntrack mark, so the connection is **sticky**: later packets skip
   classification. A connection that arrives over a tunnel gets the slot of the path it arrived on,
   so replies return the way requests came.
2. **Steer every packet**: `slot_path` maps the connection's slot to a path's packet mark
   `0x5A0000NN`, and an `ip rule fwmark 0x5A0000NN lookup 71NN` sends it into that path's WireGuard
   interface.
3. **Failover is one transaction**: the flows of slot (RR, PP, NN) move together by changing one
   `slot_path` element; every slot on a failed path, and every `new_slot` element that pointed at it,
   change in a single nftables transaction (`update`), so all affected connections move at the same
   instant, without touching conntrack. The agent's router decides, per slot, exactly as it does per
   flow (threshold, cooldown, failback hold): each slot is one router flow.
4. Traffic to a remote prefix that no path can take hits `ip rule to PREFIX unreachable` instead of
   leaking onto the underlay's default route.

WireGuard's own encrypted packets and the probes leave through their uplink by mark too
(`fwmark 0x5B0000UU lookup 705U`), and replies sourced from an uplink address use that uplink's table.

Ownership: the nft table is `patronus_s<site id>`, every rule and route carries rtm_protocol 0xB7 and
lives in our priority/table ranges, so `teardown`/`cleanup` remove only what an agent of this site
created. Sysctls the agent changes are restored on teardown.

Restart (see `patronus.agent.adopt`): everything here is idempotent, so a starting agent applies the
same steps over what an earlier agent left: a rule already there is kept (EEXIST), routes are
replaced, the nft table is replaced in the same transaction that re-adds the map elements worth
keeping (`apply(..., keep=)`, `read_maps`), and `prune` then removes tagged rules and routes the site
file no longer wants. The kernel steers the whole time.

All methods are synchronous and use pyroute2's synchronous API, so the agent calls them from one
worker thread (pyroute2's sync objects cannot run inside a running asyncio loop).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from patronus.agent.config import (
    MAX_PATHS,
    MAX_UPLINKS,
    PATH_MARK_BASE,
    PATH_TABLE_BASE,
    ROUTE_PROTO,
    RULE_PRIORITY_BASE,
    SLOT_GEN_BIT,
    SLOT_MARK_BASE,
    UPLINK_TABLE_BASE,
    SiteConfig,
)
from patronus.agent.nft import Nft, NftError
from patronus.core.policy import LoadBalance, MatchRules, RoutingPolicy

log = logging.getLogger(__name__)

SLOT_MASK = 0xFE000000           # both generations of slot marks (0x50, 0x51)
FALLBACK_POLICY_NO = 0xFF
LB_BUCKETS = 16          # hash buckets of a load-balancing policy's new connections
LB_SEED = 0x5A7C0DE
PRIO_PATH = RULE_PRIORITY_BASE            # + path number (1..250)
PRIO_UPLINK_MARK = RULE_PRIORITY_BASE + 300
PRIO_UPLINK_SRC = RULE_PRIORITY_BASE + 310
PRIO_UNREACHABLE = RULE_PRIORITY_BASE + 900


class SteeringError(RuntimeError):
    """The kernel refused a steering change; nothing of that change is left applied."""


def slot_mark(remote_no: int, policy_no: int, path_no: int, gen: int = 0) -> int:
    return SLOT_MARK_BASE | (SLOT_GEN_BIT if gen else 0) | remote_no << 16 | policy_no << 8 | path_no


def slot_gen(mark: int) -> int:
    return 1 if mark & SLOT_GEN_BIT else 0


def split_slot(mark: int) -> tuple[int, int, int]:
    return (mark >> 16) & 0xFF, (mark >> 8) & 0xFF, mark & 0xFF


def match_expressions(m: MatchRules) -> list[str] | None:
    """nft expressions for one policy's match rules (one list per rule to emit, AND within a rule),
    or None when the kernel cannot evaluate them (application classes need DPI)."""
    if m.app_class is not None:
        return None
    parts: list[str] = []
    fam: int | None = None
    for attr, kw in (("src_prefix", "saddr"), ("dst_prefix", "daddr")):
        pfx = getattr(m, attr)
        if pfx is not None:
            net = ipaddress.ip_network(pfx.text, strict=False)
            if fam is not None and fam != net.version:
                return []        # an IPv4 source and an IPv6 destination: matches nothing
            fam = net.version
            parts.append(f"{'ip' if fam == 4 else 'ip6'} {kw} {net}")
    if m.protocol is not None:
        parts.append(f"meta l4proto {m.protocol}")
    if m.src_ports is not None or m.dst_ports is not None:
        if m.protocol is None:
            parts.append("meta l4proto { tcp, udp, sctp, dccp, udplite }")
        for attr, kw in (("src_ports", "sport"), ("dst_ports", "dport")):
            r = getattr(m, attr)
            if r is not None:
                parts.append(f"th {kw} {r.lo}" if r.lo == r.hi else f"th {kw} {r.lo}-{r.hi}")
    if m.dscp is not None:
        vals = ", ".join(str(d) for d in sorted(m.dscp))
        parts.append(f"{'ip' if fam != 6 else 'ip6'} dscp {{ {vals} }}")
        if fam is None:
            # DSCP lives in a different header per family: one rule per family
            return [" ".join(parts), " ".join(p.replace("ip dscp", "ip6 dscp") for p in parts)]
    return [" ".join(parts)]


FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One ip rule of ours, as planned (`rule_specs`) or as read back from the kernel (`from_kernel`)."""

    family: int
    priority: int
    action: int = FR_ACT_TO_TBL
    table: int = 0
    fwmark: int | None = None
    src: str | None = None
    src_len: int = 0
    dst: str | None = None
    dst_len: int = 0

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"family": self.family, "priority": self.priority, "protocol": ROUTE_PROTO}
        if self.action == FR_ACT_UNREACHABLE:
            kw["action"] = "unreachable"
        else:
            kw["table"] = self.table
        if self.fwmark is not None:
            kw.update(fwmark=self.fwmark, fwmask=0xFFFFFFFF)
        if self.src is not None:
            kw.update(src=self.src, src_len=self.src_len)
        if self.dst is not None:
            kw.update(dst=self.dst, dst_len=self.dst_len)
        return kw

    @classmethod
    def from_kernel(cls, family: int, msg: Any) -> RuleSpec:
        get = msg.get_attr
        return cls(family=family, priority=int(get("FRA_PRIORITY") or 0), action=int(msg["action"]),
                   table=int(get("FRA_TABLE") or msg["table"] or 0), fwmark=get("FRA_FWMARK"),
                   src=get("FRA_SRC"), src_len=int(msg["src_len"]) if get("FRA_SRC") is not None else 0,
                   dst=get("FRA_DST"), dst_len=int(msg["dst_len"]) if get("FRA_DST") is not None else 0)


def rule_specs(cfg: SiteConfig, *, uplinks: bool = True, paths: bool = True) -> list[RuleSpec]:
    """Every ip rule the site's steering needs (pure: the plan `Steering` applies and prunes against)."""
    out: list[RuleSpec] = []
    for up in cfg.uplinks if uplinks else ():
        v6 = ":" in up.address
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        out.append(RuleSpec(fam, PRIO_UPLINK_MARK + up.number, table=up.table, fwmark=up.mark))
        out.append(RuleSpec(fam, PRIO_UPLINK_SRC + up.number, table=up.table,
                            src=str(ipaddress.ip_address(up.address)), src_len=128 if v6 else 32))
    for p in cfg.paths if paths else ():
        prefixes = cfg.remote(p.remote).prefixes
        for fam in sorted({socket.AF_INET6 if ":" in x else socket.AF_INET for x in prefixes}):
            out.append(RuleSpec(fam, PRIO_PATH + p.number, table=p.table, fwmark=p.mark))
    n = 0
    for r in cfg.remotes if paths else ():
        for pfx in r.prefixes:
            net = ipaddress.ip_network(pfx)
            out.append(RuleSpec(socket.AF_INET6 if net.version == 6 else socket.AF_INET, PRIO_UNREACHABLE + n,
                                action=FR_ACT_UNREACHABLE, dst=str(net.network_address), dst_len=net.prefixlen))
            n += 1
    return out


def route_keys(cfg: SiteConfig) -> set[tuple[int, int, str | None, int]]:
    """(family, table, destination or None for default, prefix length) of every route the steering needs."""
    out: set[tuple[int, int, str | None, int]] = set()
    for up in cfg.uplinks:
        out.add((socket.AF_INET6 if ":" in up.address else socket.AF_INET, up.table, None, 0))
    for p in cfg.paths:
        for pfx in cfg.remote(p.remote).prefixes:
            net = ipaddress.ip_network(pfx)
            out.add((socket.AF_INET6 if net.version == 6 else socket.AF_INET, p.table, str(net.network_address),
                     net.prefixlen))
    return out


def _path_routes(cfg: SiteConfig) -> set[tuple[str, int, str]]:
    """(tunnel, its table, remote prefix) of every path route the site config wants."""
    return {(p.ifname, p.table, pfx) for p in cfg.paths for pfx in cfg.remote(p.remote).prefixes}


def our_table(table: int) -> bool:
    return UPLINK_TABLE_BASE <= table < UPLINK_TABLE_BASE + MAX_UPLINKS or \
        PATH_TABLE_BASE < table <= PATH_TABLE_BASE + MAX_PATHS


_MAP_ELEMENTS = re.compile(r"elements\s*=\s*\{([^}]*)\}", re.S)
_PAIR = re.compile(r"(0x[0-9a-fA-F]+|\d+)\s*:\s*(0x[0-9a-fA-F]+|\d+)")


def parse_map_elements(text: str) -> dict[int, int]:
    """The `key : value` elements of a mark map in `nft list map` output."""
    out: dict[int, int] = {}
    for block in _MAP_ELEMENTS.findall(text):
        for k, v in _PAIR.findall(block):
            out[int(k, 0)] = int(v, 0)
    return out


@dataclass(frozen=True, slots=True)
class KernelFlow:
    """A connection the kernel is steering (from conntrack)."""

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    slot: int
    timeout_s: int | None
    packets: int | None = None      # both directions (conntrack accounting, enabled by the agent)
    bytes: int | None = None
    started_at: float | None = None  # wall time (conntrack timestamps, enabled by the agent)


class Steering:
    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.table = cfg.nft_table
        self.remote_no = {r.name: r.number for r in cfg.remotes}
        self._nft: Nft | None = None
        self._new_slot: dict[int, int] = {}
        self._slot_path: dict[int, int] = {}
        self._sysctl_saved: dict[str, str] = {}
        self.applied = False

    # -- plan ------------------------------------------------------------------------------------

    def classify_rules(self, policies: Iterable[tuple[int, RoutingPolicy]]) -> list[str]:
        rules = []
        for no, pol in policies:
            if not pol.enabled:
                continue
            exprs = match_expressions(pol.match)
            if exprs is None:
                continue
            for e in exprs:
                if pol.load_balance is not LoadBalance.NONE:
                    # A new connection from the LAN (no arrival path in the mark) of a load-balancing
                    # policy lands in one of LB_BUCKETS buckets by a hash of its 5-tuple; the agent
                    # maps each bucket to a path of the policy's tier (new_slot 0x50RRPPbb).
                    for r in self.cfg.remotes:
                        base = slot_mark(self.remote_no[r.name], no, 0)
                        for fam, ip in (("ipv4", "ip"), ("ipv6", "ip6")):
                            rules.append(f"meta nfproto {fam} meta mark {slot_mark(self.remote_no[r.name], 0, 0):#x} "
                                         f"{e} meta mark set jhash {ip} saddr . {ip} daddr . meta l4proto . "
                                         f"th sport . th dport mod {LB_BUCKETS} seed {LB_SEED:#x} offset {base:#x} "
                                         "return".replace("  ", " "))
                rules.append(f"{e} meta mark set meta mark or {no << 8:#x} return".strip())
        rules.append(f"meta mark set meta mark or {FALLBACK_POLICY_NO << 8:#x}")
        return rules

    def ruleset(self, policies: Iterable[tuple[int, RoutingPolicy]]) -> str:
        cfg = self.cfg
        t = self.table
        v4: list[str] = []
        v6: list[str] = []
        for r in cfg.remotes:
            for p in r.prefixes:
                elem = f"{p} : {slot_mark(self.remote_no[r.name], 0, 0):#x}"
                (v6 if ":" in p else v4).append(elem)
        lines = [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
        lines.append("  map remote_site4 { type ipv4_addr : mark; flags interval; "
                     + (f"elements = {{ {', '.join(v4)} }}; " if v4 else "") + "}")
        lines.append("  map remote_site6 { type ipv6_addr : mark; flags interval; "
                     + (f"elements = {{ {', '.join(v6)} }}; " if v6 else "") + "}")
        lines.append("  map new_slot { type mark : mark; }")
        lines.append("  map slot_path { type mark : mark; }")
        lines.append("  chain classify {")
        lines += [f"    {r}" for r in self.classify_rules(policies)]
        lines.append("  }")
        lines.append("  chain newflow {")
        for plan in cfg.paths:
            base = slot_mark(self.remote_no[plan.remote], 0, plan.number)
            lines.append(f'    iifname "{plan.ifname}" meta mark set {base:#x} jump classify')
            lines.append(f'    iifname "{plan.ifname}" ct mark set meta mark meta mark set 0 return')
        lines.append("    meta nfproto ipv4 meta mark set ip daddr map @remote_site4")
        lines.append("    meta nfproto ipv6 meta mark set ip6 daddr map @remote_site6")
        lines.append(f"    meta mark and {SLOT_MASK:#x} == {SLOT_MARK_BASE:#x} jump classify")
        lines.append(f"    meta mark and {SLOT_MASK:#x} == {SLOT_MARK_BASE:#x} ct mark set meta mark map @new_slot")
        lines.append(f"    meta mark and {SLOT_MASK:#x} == {SLOT_MARK_BASE:#x} meta mark set 0")
        lines.append("  }")
        lines.append("  chain steer {")
        lines.append("    ip daddr @remote_site4 meta mark set ct mark map @slot_path")
        lines.append("    ip6 daddr @remote_site6 meta mark set ct mark map @slot_path")
        lines.append("  }")
        for hook, kind in (("prerouting", "filter"), ("output", "route")):
            lines.append(f"  chain {hook} {{ type {kind} hook {hook} priority mangle; policy accept;")
            lines.append(f"    ct mark and {SLOT_MASK:#x} == 0 jump newflow")
            lines.append(f"    ct mark and {SLOT_MASK:#x} == {SLOT_MARK_BASE:#x} jump steer")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # -- apply -----------------------------------------------------------------------------------

    def _nftc(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    def apply_uplinks(self, *, undo: bool = True) -> None:
        """Step 1, before the tunnels exist: forwarding on, and each uplink's table and rules, so the
        tunnels' first handshake (marked with its uplink's fwmark) already has a route. A failure
        removes what was applied, unless `undo` is False (an adopting agent)."""
        from pyroute2 import IPRoute

        try:
            self._sysctl("net/ipv4/ip_forward", "1")
            self._sysctl("net/ipv6/conf/all/forwarding", "1", optional=True)
            self._sysctl("net/netfilter/nf_conntrack_acct", "1", optional=True)
            self._sysctl("net/netfilter/nf_conntrack_timestamp", "1", optional=True)
            with IPRoute() as ipr:
                self._routes(ipr, "add", paths=False)
        except Exception as exc:
            if undo:
                log.error("steering: uplink routing failed (%s); removing what was applied", exc)
                self.teardown()
            if isinstance(exc, SteeringError):
                raise
            raise SteeringError(f"cannot install uplink routing: {exc}") from exc

    def apply(self, policies: Iterable[tuple[int, RoutingPolicy]],
              keep: tuple[Mapping[int, int], Mapping[int, int]] | None = None, *, undo: bool = True) -> None:
        """Step 2, once the tunnels exist: the nft table and each path's table and rules. The table is
        replaced in one transaction that also adds `keep` (new_slot, slot_path elements a restarted
        agent keeps: `adopt.kept_maps`). All or nothing: a failure removes steps 1 and 2, unless `undo`
        is False (an adopting agent must not tear down a dataplane that was working)."""
        from pyroute2 import IPRoute

        new_slot, slot_path = (dict(keep[0]), dict(keep[1])) if keep is not None else ({}, {})
        try:
            for p in self.cfg.paths:
                self._sysctl(f"net/ipv4/conf/{p.ifname}/rp_filter", "0", optional=True)
            cmd = self.ruleset(policies)
            for name, elems in (("new_slot", new_slot), ("slot_path", slot_path)):
                if elems:
                    cmd += (f"add element inet {self.table} {name} {{ "
                            + ", ".join(f"{k:#x} : {v:#x}" for k, v in sorted(elems.items())) + " }\n")
            self._nftc().run(cmd)
            self._new_slot = new_slot
            self._slot_path = slot_path
            with IPRoute() as ipr:
                self._routes(ipr, "add", uplinks=False)
            self.applied = True
        except Exception as exc:
            if undo:
                log.error("steering: apply failed (%s); removing what was applied", exc)
                self.teardown()
            if isinstance(exc, SteeringError):
                raise
            raise SteeringError(f"cannot install steering: {exc}") from exc

    def reload(self, cfg: SiteConfig, policies: Iterable[tuple[int, RoutingPolicy]]) -> None:
        """The site's remotes changed (mesh discovery): the table for `cfg` replaces the one in place in one
        transaction that re-adds the current map elements (the agent has already dropped the slots of a
        remote that left), so no other connection misses a packet. The tunnels of new paths exist already;
        their routes and rules follow (`change_routes`). On the loop thread, like `update`: one libnftables
        context is never used by two threads at once."""
        old = self.cfg
        self.cfg = cfg
        self.remote_no = {r.name: r.number for r in cfg.remotes}
        try:
            for p in cfg.paths:
                self._sysctl(f"net/ipv4/conf/{p.ifname}/rp_filter", "0", optional=True)
            cmd = self.ruleset(policies)
            for name, elems in (("new_slot", self._new_slot), ("slot_path", self._slot_path)):
                if elems:
                    cmd += (f"add element inet {self.table} {name} {{ "
                            + ", ".join(f"{k:#x} : {v:#x}" for k, v in sorted(elems.items())) + " }\n")
            self._nftc().run(cmd)
        except Exception as exc:
            self.cfg = old
            self.remote_no = {r.name: r.number for r in old.remotes}
            raise SteeringError(f"cannot install the steering of the new remotes: {exc}") from exc

    def read_maps(self) -> tuple[dict[int, int], dict[int, int]] | None:
        """The elements of the table's `new_slot` and `slot_path` maps as the kernel has them, or None
        when this site has no table (nothing to adopt)."""
        try:
            tables = self._nftc().run("list tables inet\n")
        except NftError as exc:
            raise SteeringError(f"cannot list the nft tables: {exc}") from exc
        if not re.search(rf"^table inet {re.escape(self.table)}$", tables, re.M):
            return None
        out = []
        for name in ("new_slot", "slot_path"):
            try:
                out.append(parse_map_elements(self._nftc().run(f"list map inet {self.table} {name}\n")))
            except NftError:
                out.append({})         # a table of another version without that map: nothing to keep
        return out[0], out[1]

    def prune(self) -> list[str]:
        """Remove tagged rules and routes (ours: proto 183, our ranges) that the site file no longer
        wants, after everything it wants is in place. Returns what was removed."""
        from pyroute2 import IPRoute

        want_rules = set(rule_specs(self.cfg))
        want_routes = route_keys(self.cfg)
        removed: list[str] = []
        with IPRoute() as ipr:
            for fam in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.get_rules(family=fam):
                    if msg.get_attr("FRA_PROTOCOL") != ROUTE_PROTO:
                        continue
                    spec = RuleSpec.from_kernel(fam, msg)
                    if spec in want_rules or not RULE_PRIORITY_BASE <= spec.priority < RULE_PRIORITY_BASE + 1000:
                        continue
                    try:
                        ipr.rule("del", **spec.kwargs())
                        removed.append(f"ip rule {spec.priority}")
                    except Exception as exc:
                        if getattr(exc, "code", None) not in (errno.ENOENT, errno.ESRCH):
                            raise SteeringError(f"cannot remove ip rule {spec.priority}: {exc}") from exc
                for rt in ipr.get_routes(family=fam):
                    table = rt.get_attr("RTA_TABLE") or rt["table"]
                    if rt["proto"] != ROUTE_PROTO or not our_table(table):
                        continue
                    dst = rt.get_attr("RTA_DST")
                    if (fam, table, dst, rt["dst_len"]) in want_routes:
                        continue
                    try:
                        ipr.route("del", family=fam, table=table, dst=dst or "default", dst_len=rt["dst_len"],
                                  proto=ROUTE_PROTO)
                        removed.append(f"route table {table} {dst or 'default'}")
                    except Exception as exc:
                        if getattr(exc, "code", None) not in (errno.ENOENT, errno.ESRCH):
                            raise SteeringError(f"cannot remove a route in table {table}: {exc}") from exc
        return removed

    @property
    def sysctls_changed(self) -> dict[str, str]:
        """Sysctls this steering changed (or an earlier agent did: `remember_sysctls`) → their old values."""
        return dict(self._sysctl_saved)

    def remember_sysctls(self, saved: Mapping[str, str]) -> None:
        """Values an earlier agent changed, to be restored on teardown (the earlier value wins)."""
        for k, v in saved.items():
            self._sysctl_saved.setdefault(k, v)

    def _routes(self, ipr: Any, op: str, *, uplinks: bool = True, paths: bool = True) -> None:
        cfg = self.cfg
        errors: list[str] = []

        def do(what: str, fn: Any, *a: Any, **kw: Any) -> None:
            try:
                fn(*a, **kw)
            except Exception as exc:
                code = getattr(exc, "code", None)
                if op == "del" and code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):   # already gone
                    return
                if op == "add" and code == errno.EEXIST:      # already there (left by an earlier agent)
                    return
                if op == "add":
                    raise SteeringError(f"cannot add {what}: {exc}") from exc
                errors.append(f"{what}: {exc}")

        for up in cfg.uplinks if uplinks else ():
            fam = socket.AF_INET6 if ":" in up.address else socket.AF_INET
            if op == "add":
                idx = ipr.link_lookup(ifname=up.interface)
                if not idx:
                    raise SteeringError(f"uplink {up.name}: interface {up.interface} does not exist")
                route: dict[str, Any] = {"dst": "default", "table": up.table, "oif": idx[0], "proto": ROUTE_PROTO,
                                         "family": fam, "prefsrc": up.address}
                if up.gateway:
                    route["gateway"] = up.gateway
                else:
                    route["scope"] = 253      # link: the far end is on this wire
                do(f"the default route of uplink {up.name} (table {up.table})", ipr.route, "replace", **route)
            else:
                do(f"the routes of uplink {up.name} (table {up.table})", ipr.flush_routes, table=up.table,
                   proto=ROUTE_PROTO)
        for p in cfg.paths if paths else ():
            prefixes = cfg.remote(p.remote).prefixes
            if op == "add":
                idx = ipr.link_lookup(ifname=p.ifname)
                if not idx:
                    raise SteeringError(f"path {p.id}: tunnel interface {p.ifname} does not exist")
                for pfx in prefixes:
                    do(f"the route to {pfx} over {p.ifname} (table {p.table})", ipr.route, "replace", dst=pfx,
                       table=p.table, oif=idx[0], proto=ROUTE_PROTO,
                       family=socket.AF_INET6 if ":" in pfx else socket.AF_INET)
            else:
                do(f"the routes of path {p.id} (table {p.table})", ipr.flush_routes, table=p.table, proto=ROUTE_PROTO)
        for rule in rule_specs(cfg, uplinks=uplinks, paths=paths):
            do(f"the rule {rule.kwargs()}", ipr.rule, op, **rule.kwargs())
        if errors:
            log.warning("steering: %d routing objects could not be removed: %s", len(errors), "; ".join(errors))

    def set_policies(self, policies: Iterable[tuple[int, RoutingPolicy]]) -> None:
        """Recompile the classify chain (one transaction; connections already classified keep their slot)."""
        rules = self.classify_rules(policies)
        cmd = [f"flush chain inet {self.table} classify"]
        cmd += [f"add rule inet {self.table} classify {r}" for r in rules]
        try:
            self._nftc().run("\n".join(cmd) + "\n")
        except NftError as exc:
            raise SteeringError(f"cannot install the policies: {exc}") from exc

    def update(self, new_slot: Mapping[int, int], slot_path: Mapping[int, int]) -> float | None:
        """Make the kernel maps equal to the given ones in one transaction. Returns the monotonic
        time at which the transaction completed, or None if nothing had to change."""
        cmd: list[str] = []
        for name, want, have in (("new_slot", new_slot, self._new_slot), ("slot_path", slot_path, self._slot_path)):
            gone = [k for k in have if k not in want or want[k] != have[k]]
            add = [k for k in want if have.get(k) != want[k]]
            if gone:
                cmd.append(f"delete element inet {self.table} {name} {{ {', '.join(f'{k:#x}' for k in gone)} }}")
            if add:
                cmd.append(f"add element inet {self.table} {name} {{ "
                           + ", ".join(f"{k:#x} : {want[k]:#x}" for k in add) + " }")
        if not cmd:
            return None
        try:
            self._nftc().run("\n".join(cmd) + "\n")
        except NftError as exc:
            raise SteeringError(f"steering update refused: {exc}") from exc
        done = time.monotonic()
        self._new_slot = dict(new_slot)
        self._slot_path = dict(slot_path)
        return done

    def flows(self) -> list[KernelFlow]:
        """Connections the kernel steers (conntrack entries carrying a slot mark)."""
        from pyroute2 import NFCTSocket
        from pyroute2.conntrack import NFCTAttrTuple

        def counters(msg: Any) -> tuple[int | None, int | None]:
            pk = by = None
            for attr in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
                c = msg.get_attr(attr)
                if c is not None:
                    pk = (pk or 0) + int(c.get_attr("CTA_COUNTERS_PACKETS") or 0)
                    by = (by or 0) + int(c.get_attr("CTA_COUNTERS_BYTES") or 0)
            return pk, by

        out = []
        ct = NFCTSocket()
        try:
            for msg in ct.dump(mark=SLOT_MARK_BASE, mark_mask=SLOT_MASK):
                t = NFCTAttrTuple.from_netlink(msg["nfgen_family"], msg.get_attr("CTA_TUPLE_ORIG"))
                pk, by = counters(msg)
                ts = msg.get_attr("CTA_TIMESTAMP")
                start = ts.get_attr("CTA_TIMESTAMP_START") if ts is not None else None
                out.append(KernelFlow(src_ip=str(t.saddr), dst_ip=str(t.daddr), src_port=int(t.sport or 0),
                                      dst_port=int(t.dport or 0), protocol=int(t.proto or 0),
                                      slot=int(msg.get_attr("CTA_MARK") or 0), timeout_s=msg.get_attr("CTA_TIMEOUT"),
                                      packets=pk, bytes=by, started_at=start / 1e9 if start else None))
        finally:
            ct.close()
        return out

    # -- teardown --------------------------------------------------------------------------------

    def teardown(self) -> None:
        from pyroute2 import IPRoute

        try:
            self._nftc().run(f"add table inet {self.table}\ndelete table inet {self.table}\n")
        except NftError as exc:
            log.warning("steering: cannot remove nft table %s: %s", self.table, exc)
        with IPRoute() as ipr:
            self._routes(ipr, "del")
        for key, old in self._sysctl_saved.items():
            with contextlib.suppress(OSError):
                FsPath("/proc/sys", key).write_text(old)
        self._sysctl_saved.clear()
        self._new_slot.clear()
        self._slot_path.clear()
        self.applied = False
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    def _sysctl(self, key: str, value: str, optional: bool = False) -> None:
        f = FsPath("/proc/sys", key)
        try:
            old = f.read_text().strip()
            if old != value:
                f.write_text(value)
                self._sysctl_saved.setdefault(key, old)
        except OSError as exc:
            if not optional:
                raise SteeringError(f"cannot set {key.replace('/', '.')}={value}: {exc.strerror}") from exc


def path_mark(path_no: int) -> int:
    return PATH_MARK_BASE | path_no


def change_routes(old: SiteConfig, new: SiteConfig) -> list[str]:
    """After `Steering.reload`: the routes and rules that differ between `old` and `new`, added (new paths'
    routes, new remotes' rules) before the ones no longer wanted are removed; nothing else is touched or
    listed (a join into a mesh of hundreds stays cheap). Returns what was removed. Kernel thread."""
    from pyroute2 import IPRoute

    before, after = set(rule_specs(old, uplinks=False)), set(rule_specs(new, uplinks=False))
    routes_before, routes_after = _path_routes(old), _path_routes(new)
    removed: list[str] = []
    with IPRoute() as ipr:
        for ifname, table, pfx in sorted(routes_after - routes_before):
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise SteeringError(f"tunnel interface {ifname} does not exist")
            ipr.route("replace", dst=pfx, table=table, oif=idx[0], proto=ROUTE_PROTO,
                      family=socket.AF_INET6 if ":" in pfx else socket.AF_INET)
        for rule in sorted(after - before, key=lambda r: r.priority):
            try:
                ipr.rule("add", **rule.kwargs())
            except Exception as exc:
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise SteeringError(f"cannot add ip rule {rule.priority}: {exc}") from exc
        for rule in sorted(before - after, key=lambda r: r.priority):
            with contextlib.suppress(Exception):
                ipr.rule("del", **rule.kwargs())
                removed.append(f"ip rule {rule.priority}")
        for _ifname, table, pfx in sorted(routes_before - routes_after):
            with contextlib.suppress(Exception):
                ipr.route("del", dst=pfx, table=table, proto=ROUTE_PROTO,
                          family=socket.AF_INET6 if ":" in pfx else socket.AF_INET)
                removed.append(f"route table {table} {pfx}")
    return removed


def forget_remote(number: int) -> int:
    """Delete the connections steered toward remote `number` (conntrack marks 0x5?RR....): it left, and its
    number may be given to another; their next packets are classified afresh. Returns how many. Kernel
    thread."""
    from pyroute2 import NFCTSocket

    n = 0
    for fam in (socket.AF_INET, socket.AF_INET6):
        ct = NFCTSocket(nfgen_family=fam)
        try:
            for gen in (0, 1):
                mark = slot_mark(number, 0, 0, gen)
                n += sum(1 for _ in ct.dump(mark=mark, mark_mask=0xFFFF0000))
                with contextlib.suppress(Exception):
                    ct.flush(mark=mark, mark_mask=0xFFFF0000)
        finally:
            ct.close()
    return n
