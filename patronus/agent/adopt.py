"""Graceful restart: what a starting agent does with the dataplane an earlier agent of its site left.

Routing daemons keep forwarding across a restart of their control plane (FRR's zebra leaves its routes
in the kernel and the next zebra takes them over). The agent does the same: the kernel steers every
packet by itself (tunnels, the nft table and its maps, the policy routing rules and routes), so an
agent that stops without removing them, and a next agent that takes them over as they are, lose no
traffic while no agent runs and none while the next one starts. Only decisions wait: no failover or
failback happens while no agent runs.

What is kept, and how it is marked as ours (`owner` = `patronus:s<site id>`):
* WireGuard interfaces `pt<site id>p<n>`, ifalias = owner; their wireguard-go processes (own session,
  so they outlive the agent) recorded in `state_dir/wg-IFNAME.pid` with the owner and their start time.
* The nft table `patronus_s<site id>` with its maps (`new_slot`, `slot_path`), and every connection's
  conntrack mark (nothing ever flushes conntrack).
* ip rules and routes tagged `proto 183` in our priority and table ranges (one agent per network
  namespace: those carry no site id, the namespace is the site).
* The probe reflector (own session) in `state_dir/reflector.pid`, so the peers' probes keep being
  answered and the peers keep their paths to us Up while our agent is away.
* `state_dir/dataplane.json` (`HostRecord`): how the kept kernel state is numbered (remote, policy and
  path numbers in the marks), the sysctls the agent changed, with their values before it, and the
  remotes mesh discovery had found (`learned`): the next agent starts with them, so their tunnels and
  steering are adopted like a static remote's, and keeps them while its mesh node finds them again
  (`meshdrive.MeshDriver`: a kept remote not confirmed within a sync period goes).
Another site's leftovers are never taken: they carry another owner, another table name, and live in
another state directory. An interface with one of our names but another owner (or none) is not ours:
the agent refuses to start rather than touch it.

`patronus agent --cleanup` removes all of it on SIGTERM (today's behaviour, a site losing its router);
a plain SIGTERM keeps it. `patronus cleanup -c SITE` removes it later, whatever stopped the agent. A
crash (kill -9) leaves the same state as a plain stop, and the next agent adopts it the same way.

What a starting agent does (plan here, pure; the daemon applies it):
* tunnels (`plan_tunnels`): a live tunnel of ours that the site file still wants is *adopted*: its
  configuration is read and only what differs is set (`WireGuardManager.reconfigure`), so its sessions
  survive; one whose wireguard-go is gone is *recreated*; one the site file no longer has is *removed*;
  a new one is *created*. Tunnel names follow path numbers (sorted path ids), so a changed site file
  may give a name another path: the configuration check catches it (other peer, other port) and
  reconfigures it in place.
* the nft table is replaced in one transaction (atomic in nftables: packets see the old table or the
  new one, never none) that also re-adds the map elements worth keeping (`kept_maps`): those whose
  remote, policy and paths still have the numbers the record gave them. The others would steer by
  numbers that now mean something else, so they go; their connections are classified afresh.
* rules and routes: what the site file wants is added (an identical one already there is kept), then
  tagged ones it no longer wants are removed.
* the agent must not: flush conntrack, tear the table down and build it again, or move slots before it
  knows its paths. Its monitor starts every path Down (no probe answered yet), so the core holds the
  steering (`SiteLogic.hold_steering`) until every path has a verdict of its own (Up, or
  `detect_multiplier` probes unanswered), at the latest `steering_hold_s`. The kernel keeps steering as
  the previous agent left it meanwhile. Then the router is given the kept slots where the kernel has
  them, with the path each came from as its origin (`Router.place(..., origin=)`), so a slot that was
  failed over fails back after the usual hold rather than at once, and one whose path is now Down
  fails over at once.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import Any

from patronus.agent.config import PATH_MARK_BASE, SLOT_MARK_BASE, EndpointConfig, RemoteConfig
from patronus.agent.keys import key_bytes
from patronus.agent.wireguard import FoundTunnel
from patronus.core.errors import ConfigError

RECORD_FILE = "dataplane.json"
RECORD_VERSION = 1
_SLOT_MASK = 0xFE000000          # both generations of slot marks


def remote_doc(r: RemoteConfig) -> dict[str, Any]:
    """A learned remote as the record keeps it (its probe secret is the site's: learned remotes have none)."""
    return {"name": r.name, "id": r.id, "number": r.number, "public_key": r.public_key, "prefixes": list(r.prefixes),
            "endpoints": [{"uplink": e.uplink, "uplink_no": e.uplink_no, "address": e.address} for e in r.endpoints]}


def remote_of(doc: Any, where: str) -> RemoteConfig:
    """`remote_doc`'s inverse; ConfigError naming each bad field."""
    errs: list[tuple[str, str]] = []
    if not isinstance(doc, dict):
        raise ConfigError(f"expected an object, got {type(doc).__name__}", where)
    name: Any = doc.get("name")
    sid: Any = doc.get("id")
    number: Any = doc.get("number")
    key: Any = doc.get("public_key")
    pfx: tuple[str, ...] = ()
    if not isinstance(name, str) or not name:
        errs.append((f"{where}.name", f"expected a site name, got {name!r}"))
    for fld, v, hi in (("id", sid, 4000), ("number", number, 0xFF)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            errs.append((f"{where}.{fld}", f"expected an integer 1..{hi}, got {v!r}"))
    if not isinstance(key, str):
        errs.append((f"{where}.public_key", f"expected a WireGuard public key, got {key!r}"))
    else:
        try:
            key_bytes(key, f"{where}.public_key")
        except ConfigError as exc:
            errs += exc.errors
    prefixes = doc.get("prefixes")
    try:
        if not isinstance(prefixes, list) or not prefixes:
            raise ValueError("expected a list of prefixes")
        pfx = tuple(str(ipaddress.ip_network(p)) for p in prefixes)
    except (TypeError, ValueError) as exc:
        errs.append((f"{where}.prefixes", str(exc)))
    eps: list[EndpointConfig] = []
    raw = doc.get("endpoints")
    if not isinstance(raw, list) or not raw:
        errs.append((f"{where}.endpoints", "expected a list of endpoints"))
    else:
        for j, e in enumerate(raw):
            try:
                if not isinstance(e, dict) or not isinstance(e.get("uplink"), str) or not e["uplink"]:
                    raise ValueError("expected {uplink, uplink_no, address}")
                no = e.get("uplink_no")
                if not isinstance(no, int) or isinstance(no, bool) or not 0 <= no <= 3:
                    raise ValueError(f"uplink_no: expected 0..3, got {no!r}")
                addr = e.get("address")
                if not isinstance(addr, str):
                    raise ValueError(f"address: expected an IP address, got {addr!r}")
                eps.append(EndpointConfig(e["uplink"], no, str(ipaddress.ip_address(addr))))
            except (TypeError, ValueError) as exc:
                errs.append((f"{where}.endpoints[{j}]", str(exc)))
    if errs:
        raise ConfigError(errs)
    return RemoteConfig(name=name, id=sid, public_key=key, prefixes=pfx, endpoints=tuple(eps), probe_secret=None,
                        number=number, learned=True)


@dataclass(frozen=True)
class HostRecord:
    """How the kernel state an agent leaves behind is numbered, and what it changed (`dataplane.json`)."""

    site: str
    site_id: int
    owner: str
    remotes: dict[str, int]              # remote site name -> its number in slot marks (0x50RR....)
    policies: dict[str, int]             # policy name -> its number in slot marks (0x50..PP..)
    paths: dict[str, int]                # path id -> its number (marks 0x5A0000NN, slots 0x50....NN)
    sysctls: dict[str, str] = field(default_factory=dict)   # what the agent changed -> the value before
    learned: tuple[RemoteConfig, ...] = ()     # mesh discovery's remotes, whose tunnels and steering are kept
    written_at: float = 0.0

    def save(self, state_dir: FsPath) -> None:
        path = state_dir / RECORD_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        doc = {"version": RECORD_VERSION, **asdict(self), "written_at": time.time(),
               "learned": [remote_doc(r) for r in self.learned]}
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: FsPath) -> HostRecord | None:
        """The record in `state_dir`, None when there is none; ConfigError naming the field when it is
        not one (the agent then adopts tunnels and rules but keeps no slot it cannot read)."""
        path = state_dir / RECORD_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable: {exc}", str(path)) from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str = RECORD_FILE) -> HostRecord:
        errs: list[tuple[str, str]] = []
        if not isinstance(doc, dict):
            raise ConfigError(f"expected a JSON object, got {type(doc).__name__}", where)
        if doc.get("version") != RECORD_VERSION:
            errs.append((f"{where}.version", f"expected {RECORD_VERSION}, got {doc.get('version')!r}"))
        for key in ("site", "owner"):
            if not isinstance(doc.get(key), str):
                errs.append((f"{where}.{key}", f"expected a string, got {doc.get(key)!r}"))
        if not isinstance(doc.get("site_id"), int):
            errs.append((f"{where}.site_id", f"expected an integer, got {doc.get('site_id')!r}"))
        for key, hi in (("remotes", 0xFF), ("policies", 0xFF), ("paths", 0xFF)):
            m = doc.get(key)
            if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, int) and 1 <= v <= hi
                                                  for k, v in m.items()):
                errs.append((f"{where}.{key}", f"expected names mapped to numbers 1..{hi}"))
        sysctls = doc.get("sysctls", {})
        if not isinstance(sysctls, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in sysctls.items()):
            errs.append((f"{where}.sysctls", "expected sysctl keys mapped to their former values"))
        learned = doc.get("learned", [])
        kept: list[RemoteConfig] = []
        if not isinstance(learned, list):
            errs.append((f"{where}.learned", "expected a list of learned remotes"))
        else:
            for i, r in enumerate(learned):
                try:
                    kept.append(remote_of(r, f"{where}.learned[{i}]"))
                except ConfigError as exc:
                    errs += exc.errors
        if errs:
            raise ConfigError(errs)
        return cls(site=doc["site"], site_id=doc["site_id"], owner=doc["owner"], remotes=dict(doc["remotes"]),
                   policies=dict(doc["policies"]), paths=dict(doc["paths"]), sysctls=dict(sysctls),
                   learned=tuple(kept), written_at=float(doc.get("written_at") or 0.0))

    @staticmethod
    def remove(state_dir: FsPath) -> bool:
        path = state_dir / RECORD_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return True
        return False


# --- tunnels ----------------------------------------------------------------------------------------

class TunnelAction(enum.Enum):
    ADOPT = "adopt"              # live and ours: verify, set only what differs, keep its sessions
    RECREATE = "recreate"        # ours but its process is gone (or its link): remove the remains, create
    CREATE = "create"            # nothing there yet
    REMOVE = "remove"            # ours, and the site file no longer has it


def plan_tunnels(wanted: set[str], found: Mapping[str, FoundTunnel], foreign: set[str]) -> dict[str, TunnelAction]:
    """What to do with each tunnel name: `wanted` by the site file, `found` of ours on the host,
    `foreign`: names that exist but are not ours (another owner, or none). A wanted name that is
    foreign is refused (ConfigError naming it): nothing that is not ours is ever touched."""
    clash = sorted(wanted & foreign)
    if clash:
        raise ConfigError([(f"tunnels.{n}", "an interface of that name exists and is not this site's (its "
                                            "ifalias names another owner); refusing to touch it") for n in clash])
    plan: dict[str, TunnelAction] = {}
    for name in sorted(wanted | set(found)):
        f = found.get(name)
        if name not in wanted:
            plan[name] = TunnelAction.REMOVE
        elif f is None:
            plan[name] = TunnelAction.CREATE
        elif f.link and f.process:
            plan[name] = TunnelAction.ADOPT
        else:
            plan[name] = TunnelAction.RECREATE
    return plan


# --- kernel maps ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Numbering:
    """How slot and path marks are numbered: remote, policy and path names → numbers."""

    remotes: Mapping[str, int]
    policies: Mapping[str, int]
    paths: Mapping[str, int]

    @classmethod
    def of(cls, rec: HostRecord) -> Numbering:
        return cls(rec.remotes, rec.policies, rec.paths)


def _inverse(m: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in m.items()}


def kept_maps(old: Numbering | None, new: Numbering, new_slot: Mapping[int, int], slot_path: Mapping[int, int],
              fallback_policy: int) -> tuple[dict[int, int], dict[int, int]]:
    """The elements of the kernel maps a starting agent keeps: those whose every number (remote,
    policy, origin path; the path a slot is on, the path a new flow goes to) names the same thing
    under the old numbering (`old`, from the record) as under the new one. Nothing without a record:
    numbers that cannot be read cannot be trusted. The fallback policy number is the same in both."""
    if old is None:
        return {}, {}
    checks = ((old.remotes, new.remotes), (old.policies, new.policies), (old.paths, new.paths))
    same = [{n for n, name in _inverse(a).items() if b.get(name) == n} for a, b in checks]
    same[1].add(fallback_policy)
    remotes, policies, paths = same

    def slot_ok(mark: int, check_low: bool) -> bool:
        if mark & _SLOT_MASK != SLOT_MARK_BASE:
            return False
        rn, pn, low = (mark >> 16) & 0xFF, (mark >> 8) & 0xFF, mark & 0xFF
        return rn in remotes and pn in policies and (not check_low or low in paths)

    keep_new = {k: v for k, v in new_slot.items()
                if slot_ok(k, check_low=False) and slot_ok(v, check_low=True)
                and (k >> 8) & 0xFFFF == (v >> 8) & 0xFFFF and k & 0x01000000 == 0}
    keep_path = {k: v for k, v in slot_path.items()
                 if slot_ok(k, check_low=True) and v & ~0xFF == PATH_MARK_BASE and v & 0xFF in paths}
    return keep_new, keep_path
