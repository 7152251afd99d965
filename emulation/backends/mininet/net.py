"""The Mininet backend's network: sites, their LAN hosts, impaired uplinks and an "internet" core.

    [hX-1..n] ── lan ── [rX: agent] ── isp1 ── [lX-isp1: relay] ── [core]
                                    └─ isp2 ── [lX-isp2: relay] ──┘
    plus a management link from the host into each router (the agent's API listens there)

- Every node is a Mininet `Host` (its own network namespace; no switches, no controller: Debian's
  Mininet without Open vSwitch). Each node's namespace is also given a name, `pt<run>-<node>`, with
  `ip netns attach`, so agents, relays and traffic tools start with `ip netns exec` and pyroute2 can
  reach them, and `patronus-lab clean` can find a crashed run's namespaces by their tag.
- Uplinks: with the `relay` impairment backend an uplink is router ─ veth ─ relay node ─ veth ─ core,
  and `emulation.links.relay` bridges the relay node's two interfaces applying the impairment; with
  `netem` the router and the core are joined directly and netem sits on both ends.
- Addresses: uplink *u* of site number *k* is 100.64.0.0/10's /24 number k·8+u (router .1, core .254;
  `emulation.siteconf.uplink_address`, the plan every backend shares);
  management links are /30s in 100.96.0.0/11 chosen per run so concurrent runs never share one.
- Every site router has private `/var/run/wireguard` and `/run/patronus` directories (Mininet's
  privateDirs), so wireguard-go control sockets of different runs never meet.

`build()` is all-or-nothing: on any failure what was built is torn down before the error propagates.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulation.siteconf import uplink_address

log = logging.getLogger(__name__)

MGMT_BASE = ipaddress.IPv4Network("100.96.0.0/11")
PRIVATE_DIRS = ["/var/run/wireguard", "/run/patronus"]


@dataclass(frozen=True)
class UplinkSpec:
    name: str
    bandwidth_bps: float = 0.0
    cost_per_gb: float = 0.0


@dataclass(frozen=True)
class SiteSpec:
    name: str
    id: int
    lan_prefix: str
    hosts: int
    uplinks: tuple[UplinkSpec, ...]


@dataclass(frozen=True)
class NetSpec:
    run: str
    sites: tuple[SiteSpec, ...]
    impairment_backend: str = "relay"          # "relay" or "netem"


@dataclass
class SiteNodes:
    spec: SiteSpec
    number: int
    router: Any
    hosts: list[Any]
    uplink_addr: dict[str, tuple[str, str]] = field(default_factory=dict)   # uplink -> (address, gateway)
    relay_node: dict[str, Any] = field(default_factory=dict)
    mgmt_ip: str = ""
    mgmt_root_ip: str = ""

    @property
    def lan_gw(self) -> str:
        return str(next(ipaddress.ip_network(self.spec.lan_prefix).hosts()))

    def host_ip(self, i: int) -> str:
        return str(ipaddress.ip_network(self.spec.lan_prefix).network_address + 10 + i)


def _check(r: subprocess.CompletedProcess[str], what: str) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")


def ns_run(ns: str, argv: Sequence[str], what: str | None = None, check: bool = True,
           **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)
    if check:
        _check(r, what or " ".join(argv))
    return r


def free_mgmt_block(run: str) -> ipaddress.IPv4Network:
    """A /24 of MGMT_BASE that no address on this host uses yet (one /30 per site inside it)."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    blocks = list(MGMT_BASE.subnets(new_prefix=24))
    start = int(run, 16) % len(blocks)
    for i in range(len(blocks)):
        b = blocks[(start + i) % len(blocks)]
        prefix = ".".join(str(b.network_address).split(".")[:3]) + "."
        if f" {prefix}" not in used:
            return b
    raise RuntimeError("no free management address block")


class MininetNet:
    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec
        self.run = spec.run
        self.net: Any = None
        self.core: Any = None
        self.sites: dict[str, SiteNodes] = {}
        self.names: list[str] = []          # attached namespace names (ours to delete)

    def ns(self, node: Any) -> str:
        return f"pt{self.run}-{node.name}"

    # -- build -------------------------------------------------------------------------------------

    def build(self) -> MininetNet:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import Host

        setLogLevel("error")
        try:
            net = self.net = Mininet(topo=None, build=False, controller=None, switch=None, host=Host,
                                     autoSetMacs=False, cleanup=False)
            r = self.run
            self.core = net.addHost(f"c{r}", ip=None)
            mgmt = net.addHost(f"m{r}", ip=None, inNamespace=False)
            block = free_mgmt_block(r)
            subnets = list(block.subnets(new_prefix=30))
            for k, s in enumerate(self.spec.sites):
                router = net.addHost(f"r{k}{r}", ip=None, privateDirs=PRIVATE_DIRS)
                hosts = [net.addHost(f"h{k}x{i}{r}", ip=None) for i in range(max(1, s.hosts))]
                nodes = SiteNodes(s, k, router, hosts)
                self.sites[s.name] = nodes
                for i, h in enumerate(hosts):
                    net.addLink(router, h, intfName1=f"lan{i}", intfName2="eth0")
                for u, up in enumerate(s.uplinks):
                    if self.spec.impairment_backend == "relay":
                        relay = net.addHost(f"l{k}{u}{r}", ip=None)
                        nodes.relay_node[up.name] = relay
                        net.addLink(router, relay, intfName1=up.name, intfName2="x")
                        net.addLink(relay, self.core, intfName1="y", intfName2=f"s{k}-{up.name}")
                    else:
                        net.addLink(router, self.core, intfName1=up.name, intfName2=f"s{k}-{up.name}")
                sn = subnets[k]
                root_ip, site_ip = (str(a) for a in list(sn.hosts())[:2])
                nodes.mgmt_ip, nodes.mgmt_root_ip = site_ip, root_ip
                net.addLink(mgmt, router, intfName1=f"pt{r}m{k}", intfName2="mgmt0")
            net.build()
            for node in net.hosts:
                if node is mgmt:
                    continue
                name = self.ns(node)
                subprocess.run(["ip", "netns", "attach", name, str(node.pid)], check=True, capture_output=True)
                self.names.append(name)
            self._configure(block)
        except BaseException:
            self.teardown()
            raise
        return self

    def _configure(self, block: ipaddress.IPv4Network) -> None:
        core = self.ns(self.core)
        ns_run(core, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for k, (_name, nodes) in enumerate(self.sites.items()):
            rns = self.ns(nodes.router)
            ns_run(rns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            ns_run(rns, ["ip", "link", "set", "lo", "up"])
            # LAN: one host on lan0, or a bridge over lan0..n
            lan_if = "lan0"
            if len(nodes.hosts) > 1:
                ns_run(rns, ["ip", "link", "add", "lanbr", "type", "bridge"])
                for i in range(len(nodes.hosts)):
                    ns_run(rns, ["ip", "link", "set", f"lan{i}", "master", "lanbr", "up"])
                ns_run(rns, ["ip", "link", "set", "lanbr", "up"])
                lan_if = "lanbr"
            plen = ipaddress.ip_network(nodes.spec.lan_prefix).prefixlen
            ns_run(rns, ["ip", "addr", "add", f"{nodes.lan_gw}/{plen}", "dev", lan_if])
            for i, h in enumerate(nodes.hosts):
                hns = self.ns(h)
                ns_run(hns, ["ip", "link", "set", "lo", "up"])
                ns_run(hns, ["ip", "addr", "add", f"{nodes.host_ip(i)}/{plen}", "dev", "eth0"])
                ns_run(hns, ["ip", "route", "add", "default", "via", nodes.lan_gw])
            for u, up in enumerate(nodes.spec.uplinks):
                addr, gw = uplink_address(k, u)
                nodes.uplink_addr[up.name] = (addr, gw)
                ns_run(rns, ["ip", "addr", "add", f"{addr}/24", "dev", up.name])
                ns_run(core, ["ip", "addr", "add", f"{gw}/24", "dev", f"s{k}-{up.name}"])
                # Full checksums and wire-size packets on every uplink interface: a checksum left to
                # "offload" on a veth reaches the relay's raw socket unfinished, and WireGuard's UDP
                # sockets (GRO) then silently drop what the relay forwards.
                for ns_name, intf in ((rns, up.name), (core, f"s{k}-{up.name}")):
                    for feat in ("tx", "rx", "gso", "gro", "tso"):
                        ns_run(ns_name, ["ethtool", "-K", intf, feat, "off"], check=False)
                relay = nodes.relay_node.get(up.name)
                if relay is not None:
                    lns = self.ns(relay)
                    for intf in ("x", "y"):
                        # the relay sees whole frames: no offloads merging them into 64 KB super-packets
                        ns_run(lns, ["ip", "link", "set", intf, "up", "promisc", "on"])
                        for feat in ("gro", "gso", "tso", "tx", "rx"):
                            ns_run(lns, ["ethtool", "-K", intf, feat, "off"], check=False)
            ns_run(rns, ["ip", "addr", "add", f"{nodes.mgmt_ip}/30", "dev", "mgmt0"])
            subprocess.run(["ip", "addr", "add", f"{nodes.mgmt_root_ip}/30", "dev", f"pt{self.run}m{k}"],
                           check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", f"pt{self.run}m{k}", "up"], check=True, capture_output=True)
            ns_run(rns, ["ip", "link", "set", "mgmt0", "up"])

    # -- teardown ----------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.net is not None:
            with contextlib.suppress(Exception):
                self.net.stop()
            self.net = None
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()
        for k in range(len(self.spec.sites)):
            subprocess.run(["ip", "link", "del", f"pt{self.run}m{k}"], capture_output=True)


def clean(run: str | None = None) -> list[str]:
    """Remove what crashed runs left: namespaces named pt<run>-*, management links pt<run>m*, and the
    processes still inside those namespaces (killed by pid, found through /proc/PID/ns/net)."""
    removed: list[str] = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    ours = [line.split()[0] for line in names if line.strip() and line.startswith(f"pt{run or ''}")
            and "-" in line.split()[0]]
    for name in ours:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
                removed.append(f"process {pid} in {name}")
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        removed.append(f"namespace {name}")
    # wireguard-go control sockets whose process is gone (killed with its namespace): stale, and in
    # the way of the next run's interface of the same name
    from patronus.agent.wireguard import SOCKET_DIR, _socket_live

    for sock in sorted(Path(SOCKET_DIR).glob("pt*p*.sock")):
        if not _socket_live(sock):
            sock.unlink(missing_ok=True)
            removed.append(f"stale socket {sock}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if re.fullmatch(rf"pt{run or '[0-9a-f]{4}'}m\d+", ifname):
            subprocess.run(["ip", "link", "del", ifname], capture_output=True)
            removed.append(f"link {ifname}")
    return removed


def clean_run(run: str | None) -> list[str]:
    """Everything run `run` left (None: every run's): its relays (by their registry), then its
    namespaces with the processes inside them, its stale WireGuard sockets and management links."""
    from emulation.links.relay import cleanup as clean_relays
    from emulation.links.relay import registry_dir

    tags = {f"pt{run}"} if run else {f.name.split(".")[0] for f in registry_dir().glob("pt*.json")}
    removed = [r for tag in sorted(tags) for r in clean_relays(tag)]
    return removed + clean(run)

