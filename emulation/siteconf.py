"""A scenario site as its agent's site file: the document every backend gives `patronus agent`.

    doc = site_document(scenario, "hq", uplink_addr=uplink_addresses(scenario), public_keys=keys,
                        agents_dir=out / "agents", api_listen="100.96.0.2:8470", token=token)
    cfg = patronus.agent.config.from_dict(doc)      # exactly what the agent would parse

`site_file` is the builder underneath, from plain data (the netns lab's two sites use it too).

The Mininet backend writes the document as YAML and starts a real agent on it; the simulator parses it
with the agent's own `from_dict` and runs `SiteLogic` on the result. Building it in one place means a
scenario's monitor profile, policies, router settings and SLA reach both backends through the same
parser, so the two cannot drift apart.

Also here, the test-bed's address plan (`uplink_addresses`, `host_address`), which
`emulation.backends.mininet.net` configures and the simulator only needs as names: uplink u of the
k-th site (file order) is the /24 at 100.64.0.0 + (8k + u)·256, the router .1 and the core's gateway
.254; LAN host i (0-based) of a site is its LAN prefix's network address + 10 + i.

Pure: no files, no clock, no randomness.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulation.scenario.model import SIM_ONLY_KEYS, AgentStart, AgentStop, Scenario, SiteJoin, SiteLeave

PROBE_SECRET = "patronus-lab-probe-secret-0001"   # shared by every site of a test-bed run
API_PORT = 8470                 # every test-bed agent's API (the agent's own default port too)
UPLINK_BASE = ipaddress.IPv4Network("100.64.0.0/10")


def uplink_address(site_index: int, uplink_index: int) -> tuple[str, str]:
    """(the router's address, the core's gateway) of uplink `uplink_index` of the site `site_index` (in
    file order, both from 0): the /24 at 100.64.0.0 + (8k + u)·256, .1 and .254."""
    net = ipaddress.IPv4Network((int(UPLINK_BASE.network_address) + (site_index * 8 + uplink_index) * 256, 24))
    return str(net.network_address + 1), str(net.network_address + 254)


def uplink_addresses(scenario: Scenario) -> dict[str, dict[str, tuple[str, str]]]:
    """site → uplink → (the router's address, the core's gateway), as the Mininet backend assigns them."""
    return {site.name: {up.name: uplink_address(k, u) for u, up in enumerate(site.uplinks)}
            for k, site in enumerate(scenario.sites)}


def host_address(scenario: Scenario, site: str, host: int) -> str:
    """The address of LAN host `host` (numbered from 1, as in the scenario's `site.hostN`)."""
    prefix = ipaddress.ip_network(scenario.site(site).lan_prefix)
    return str(prefix.network_address + 10 + (host - 1))


@dataclass(frozen=True)
class UplinkEntry:
    """One uplink of a site file: its interface has the uplink's name."""

    name: str
    address: str
    gateway: str
    cost_per_gb: float = 0.0
    bandwidth_bps: float = 0.0        # 0: not given


@dataclass(frozen=True)
class RemoteEntry:
    """One remote site of a site file: its WireGuard key, its LAN prefixes, an endpoint per uplink."""

    name: str
    id: int
    public_key: str
    prefixes: tuple[str, ...]
    endpoints: tuple[tuple[str, str], ...]      # (uplink, address)


def site_file(name: str, site_id: int, lan_prefixes: Sequence[str], uplinks: Sequence[UplinkEntry],
              remotes: Sequence[RemoteEntry], *, agents_dir: str | Path, api_listen: str, token: str,
              probe_secret: str = PROBE_SECRET, probe_realtime: int = 0,
              lan_interfaces: Sequence[str] | None = None, state_dir: str | Path | None = None,
              settings: Mapping[str, Any] | None = None, interface_prefix: str = "pt") -> dict[str, Any]:
    """A site file for `patronus agent`, the one builder of the test-bed's (every backend's and the netns
    lab's). `agents_dir` holds the site's key (NAME.key), database (NAME.db) and, unless `state_dir` says
    otherwise, its state directory (NAME.state); `settings`: top-level sections added last (they override
    the generated ones; None values are left out)."""
    agents = Path(agents_dir)
    site: dict[str, Any] = {"name": name, "id": site_id, "lan_prefixes": list(lan_prefixes)}
    if lan_interfaces is not None:
        site["lan_interfaces"] = list(lan_interfaces)
    d: dict[str, Any] = {
        "version": 1,
        "site": site,
        "uplinks": [{"name": up.name, "interface": up.name, "address": up.address, "gateway": up.gateway,
                     "cost_per_gb": up.cost_per_gb,
                     **({"bandwidth": f"{up.bandwidth_bps:.0f}bit"} if up.bandwidth_bps else {})}
                    for up in uplinks],
        "remotes": [{"name": r.name, "id": r.id, "public_key": r.public_key, "prefixes": list(r.prefixes),
                     "endpoints": [{"uplink": u, "address": a} for u, a in r.endpoints]} for r in remotes],
        "wireguard": {"private_key_file": str(agents / f"{name}.key"), "interface_prefix": interface_prefix},
        "probe": {"secret": probe_secret, **({"realtime_priority": probe_realtime} if probe_realtime else {})},
        "api": {"listen": api_listen, "token": token},
        "database": str(agents / f"{name}.db"),
        "state_dir": str(state_dir if state_dir is not None else agents / f"{name}.state"),
        "metrics_interval": "1s",
    }
    for k, v in (settings or {}).items():
        if v is not None:
            d[k] = v
    return d


def site_document(scenario: Scenario, site: str, *, uplink_addr: Mapping[str, Mapping[str, tuple[str, str]]],
                  public_keys: Mapping[str, str], agents_dir: str | Path, api_listen: str, token: str,
                  remotes: Sequence[str] | None = None, agent: Mapping[str, Any] | None = None,
                  probe_secret: str = PROBE_SECRET, probe_realtime: int = 0,
                  interface_prefix: str = "pt") -> dict[str, Any]:
    """The site file of a scenario site's agent (`site_file`, from the scenario).

    `uplink_addr`: site → uplink → (address, gateway) for every site involved; `public_keys`: each
    remote's WireGuard public key; `agents_dir`: where the run keeps the agents' key files and
    databases (and state, per run: two runs may share site names); `api_listen`/`token`: the agent's
    API. `remotes` defaults to `scenario.remotes_of(site)` and `agent` to the site's `agent.to_dict()`
    (its keys override the generated ones; None values are left out). `probe_realtime`: the
    reflector's SCHED_FIFO priority (the Mininet runner's: its routers share two cores, where a
    dedicated router would not). `interface_prefix`: the tunnels' name prefix (the Mininet runner's is
    its run's, so that its tunnels and their wireguard-go sockets never meet another run's). Path MTU
    discovery is off (the test-bed's links do not vary it)."""
    me = scenario.site(site)
    uplinks = [UplinkEntry(up.name, *uplink_addr[site][up.name], cost_per_gb=up.cost_per_gb,
                           bandwidth_bps=up.bandwidth_bps) for up in me.uplinks]
    peers = []
    for r in (scenario.remotes_of(site) if remotes is None else remotes):
        other = scenario.site(r)
        peers.append(RemoteEntry(r, other.id, public_keys[r], (other.lan_prefix,),
                                 tuple((up.name, uplink_addr[r][up.name][0]) for up in other.uplinks)))
    settings: dict[str, Any] = {"pmtu": False}
    settings.update((k, v) for k, v in (me.agent.to_dict() if agent is None else agent).items()
                    if v is not None and k not in SIM_ONLY_KEYS)   # SIM_ONLY_KEYS: the simulator's model
    return site_file(site, me.id, [me.lan_prefix], uplinks, peers, agents_dir=agents_dir, api_listen=api_listen,
                     token=token, probe_secret=probe_secret, probe_realtime=probe_realtime, settings=settings,
                     interface_prefix=interface_prefix)


def expectations_doc(scenario: Scenario, backend: str | None = None) -> list[dict[str, Any]]:
    """run.json's expectations: those that judge `backend`'s runs (every one when None)."""
    out = []
    for e in scenario.expectations:
        if backend is not None and e.backends and backend not in e.backends:
            continue
        d: dict[str, Any] = {"type": e.kind, "text": e.text}
        for attr, key in (("flow", "flow"), ("site", "site"), ("max_s", "max"), ("max_packets", "max"),
                          ("max_changes", "max"), ("min_ratio", "min"), ("min_changes", "min")):
            if hasattr(e, attr):
                d[key] = getattr(e, attr)
        if hasattr(e, "link"):
            d["link"] = str(e.link)
        if hasattr(e, "start_s"):
            d["during"] = [getattr(e, "start_s"), getattr(e, "end_s")]  # noqa: B009 - FlowStays only
        tgt = getattr(e, "target", None)
        if tgt is not None:
            d["target"] = {"latency_ms": tgt.latency_ms, "loss_pct": tgt.loss_pct, "jitter_ms": tgt.jitter_ms,
                           "window_s": tgt.window_s}
        for key in ("quantile", "pass_rate"):       # how repeated runs judge it (emulation.repeat)
            if getattr(e, key) is not None:
                d[key] = getattr(e, key)
        out.append(d)
    return out


def monitors_doc(scenario: Scenario) -> dict[str, dict[str, float | int]]:
    """run.json's `monitors`: each site's probe timers (the verdict's platform judgment reads them)."""
    return {s.name: {"interval_s": s.agent.monitor.interval_s, "detect_multiplier": s.agent.monitor.detect_multiplier,
                     "window": s.agent.monitor.window} for s in scenario.sites}


def sla_targets_doc(scenario: Scenario) -> dict[str, dict[str, float]]:
    """Each traffic class's target: the sending site's agent `sla` (the agent checks the same, over the same
    trailing window)."""
    out: dict[str, dict[str, float]] = {}
    for f in scenario.flows:
        t = scenario.site(f.src.site).agent.sla
        out.setdefault(f.traffic_class, {"latency_ms": t.latency_ms, "loss_pct": t.loss_pct, "jitter_ms": t.jitter_ms,
                                         "window_s": t.window_s})
    return out


def mesh_doc(scenario: Scenario, start_s: float) -> dict[str, Any] | None:
    """run.json's `mesh` (None without a `mesh:` section): what the measurement of join and convergence
    times (`emulation.measure.meshtimes`) needs to know of the membership, the same for every backend.

        {"topology": MeshTopology.as_dict(),
         "sites": {name: {"uplinks": [uplink names, in order], "region": str | null}},
         "changes": [{"at": scenario s, "live": [site names, sorted], "cause": "start"}, ...]}

    `changes[0]` is at `start_s` (when the backend spawns the agents: the simulator's warm-up start,
    negative) with cause "start" and the sites present at the start. Then one entry per timeline event
    that changes who is live, in timeline order (simultaneous events: one entry each, same `at`), with
    cause "site_join s4", "site_leave s2", "agent_stop s3" or "agent_start s3". A site is live while it
    is in the mesh and its agent runs: a stopped agent is silent (its membership too), `agent_start`
    (or a later `site_join`) puts it back. An agent_stop of a stopped agent and an agent_start of a
    running one change nothing and have no entry."""
    if scenario.mesh is None:
        return None
    inside = {s.name for s in scenario.sites if scenario.present_at_start(s.name)}
    stopped: set[str] = set()
    changes: list[dict[str, Any]] = [{"at": start_s, "live": sorted(inside), "cause": "start"}]
    for ev in scenario.timeline:
        if isinstance(ev, SiteJoin | SiteLeave):
            (inside.add if isinstance(ev, SiteJoin) else inside.discard)(ev.site)
            stopped.discard(ev.site)            # a joining site starts a fresh agent; a leaving one has none
        elif isinstance(ev, AgentStop | AgentStart):
            if (ev.site in stopped) == isinstance(ev, AgentStop):
                continue                        # a no-op: the agent was already stopped / running
            (stopped.add if isinstance(ev, AgentStop) else stopped.discard)(ev.site)
        else:
            continue
        changes.append({"at": ev.at_s, "live": sorted(inside - stopped), "cause": f"{ev.action} {ev.site}"})
    return {"topology": scenario.mesh.topology.as_dict(),
            "sites": {s.name: {"uplinks": [u.name for u in s.uplinks], "region": s.region} for s in scenario.sites},
            "changes": changes}
