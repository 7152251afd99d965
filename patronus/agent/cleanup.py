"""`patronus cleanup`: remove what a stopped or crashed agent left behind, and only that.

A plain stop leaves the dataplane for the next agent to adopt (`patronus.agent.adopt`); this removes
it. What is ours, by tag (never by guess): nft tables named `patronus_s<id>`; ip rules and routes with
rtm_protocol 0xB7 (`ROUTE_PROTO`) in our tables; interfaces whose ifalias starts with
`patronus:s<id>` (WireGuard tunnels); wireguard-go and reflector processes whose pid (and start time)
the agent recorded in its state directory (checked against /proc/PID before any signal); the
dataplane record, whose sysctls (their values before the agent changed them) are restored. Acts in
the current network namespace, like the agent.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from patronus.agent.adopt import HostRecord
from patronus.agent.config import PATH_TABLE_BASE, ROUTE_PROTO, UPLINK_TABLE_BASE, SiteConfig
from patronus.agent.nft import Nft, NftError
from patronus.agent.ports import release_recorded

log = logging.getLogger(__name__)
_TABLE = re.compile(r"^table inet (patronus_s\d+)$", re.M)


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def agent_running(cfg: SiteConfig) -> int | None:
    from patronus.agent.procs import running_agent_pid

    return running_agent_pid(cfg.state_dir / "agent.pid")


def _remove_rules(ipr: Any, fam: int, rep: CleanupReport) -> None:
    """Every policy-routing rule of family `fam` that Patronus made (its protocol number)."""
    for r in ipr.get_rules(family=fam):
        if r.get_attr("FRA_PROTOCOL") != ROUTE_PROTO:
            continue
        prio = r.get_attr("FRA_PRIORITY")
        try:
            ipr.rule("del", family=fam, priority=prio, protocol=ROUTE_PROTO,
                     table=r.get_attr("FRA_TABLE") or r["table"], action=r["action"], **_selectors(r))
            rep.removed.append(f"ip rule {prio} ({'v6' if fam == socket.AF_INET6 else 'v4'})")
        except Exception as exc:
            rep.problems.append(f"ip rule {prio}: {exc}")


def _remove_routes(ipr: Any, fam: int, rep: CleanupReport) -> None:
    """Every route of family `fam` that Patronus made, in its uplink and path tables."""
    for table in range(UPLINK_TABLE_BASE, PATH_TABLE_BASE + 256):
        try:
            routes = ipr.get_routes(family=fam, table=table)
        except Exception:
            continue
        for rt in routes:
            if rt.get("proto") != ROUTE_PROTO:
                continue
            try:
                ipr.route("del", family=fam, table=table, dst=rt.get_attr("RTA_DST") or "default",
                          dst_len=rt["dst_len"], proto=ROUTE_PROTO)
                rep.removed.append(f"route table {table} {rt.get_attr('RTA_DST') or 'default'}")
            except Exception as exc:
                rep.problems.append(f"route in table {table}: {exc}")


def cleanup(cfg: SiteConfig | None, state_dirs: list[FsPath] | None = None) -> CleanupReport:
    """Remove the leftovers of site `cfg`'s agent (or of every Patronus agent when `cfg` is None)."""
    from pyroute2 import IPRoute

    rep = CleanupReport()
    # nftables
    try:
        with Nft() as nft:
            tables = _TABLE.findall(nft.run("list tables\n"))
            for t in tables:
                if cfg is None or t == cfg.nft_table:
                    nft.run(f"delete table inet {t}\n")
                    rep.removed.append(f"nft table inet {t}")
    except NftError as exc:
        rep.problems.append(f"nftables: {exc}")
    with IPRoute() as ipr:
        for fam in (socket.AF_INET, socket.AF_INET6):
            _remove_rules(ipr, fam, rep)
            _remove_routes(ipr, fam, rep)
    # the reflectors, the dataplane records and the sysctls they name
    from patronus.agent.prober import stop_recorded_reflector

    for d in _state_dirs(cfg, state_dirs):
        if cfg is not None and (rec := _record(d, rep)) is not None:
            for key, old in sorted(rec.sysctls.items()):
                try:
                    FsPath("/proc/sys", key).write_text(old)
                    rep.removed.append(f"sysctl {key.replace('/', '.')} restored to {old}")
                except OSError as exc:
                    rep.problems.append(f"sysctl {key}: {exc.strerror}")
        try:
            if stop_recorded_reflector(d):
                rep.removed.append(f"reflector process ({d})")
        except Exception as exc:
            rep.problems.append(f"reflector ({d}): {exc}")
        try:
            if n := release_recorded(d):
                rep.removed.append(f"{n} reserved ports ({d / 'reserved-ports'})")
        except (OSError, ValueError) as exc:
            rep.problems.append(f"reserved ports ({d}): {exc}")
        if HostRecord.remove(d):
            rep.removed.append(f"dataplane record {d / 'dataplane.json'}")
    # tunnels and their processes
    from patronus.agent.wireguard import WireGuardManager

    owner = cfg.owner if cfg is not None else "patronus:"
    for d in _state_dirs(cfg, state_dirs) or [FsPath("/run/patronus/none")]:
        try:
            mgr = WireGuardManager("userspace", d)
            rep.removed += mgr.cleanup(owner, exact=cfg is not None)
        except Exception as exc:
            rep.problems.append(f"tunnels ({d}): {exc}")
    return rep


def _selectors(r: object) -> dict[str, object]:
    out: dict[str, object] = {}
    get = r.get_attr  # type: ignore[attr-defined]
    if get("FRA_FWMARK") is not None:
        out["fwmark"] = get("FRA_FWMARK")
        out["fwmask"] = get("FRA_FWMASK") or 0xFFFFFFFF
    if get("FRA_SRC") is not None:
        out["src"] = get("FRA_SRC")
        out["src_len"] = r["src_len"]  # type: ignore[index]
    if get("FRA_DST") is not None:
        out["dst"] = get("FRA_DST")
        out["dst_len"] = r["dst_len"]  # type: ignore[index]
    return out


def _state_dirs(cfg: SiteConfig | None, state_dirs: list[FsPath] | None) -> list[FsPath]:
    if state_dirs is not None:
        return state_dirs
    return [cfg.state_dir] if cfg is not None else sorted(FsPath("/run/patronus").glob("*"))


def _record(d: FsPath, rep: CleanupReport) -> HostRecord | None:
    try:
        return HostRecord.load(d)
    except Exception as exc:
        rep.problems.append(f"dataplane record in {d}: {exc}")
        return None
