"""A small real-kernel lab: two Patronus sites in network namespaces, two uplinks each, one "internet".

    hq-host ── lan0 [hq] isp1 ──┐            ┌── isp1 [br] lan0 ── br-host
                         isp2 ──┤   [core]   ├── isp2
                                └────────────┘
    plus a management veth from the host into each site (the agent's API listens there)

Every namespace is named `pt<run>-<role>` (run = 4 hex digits, so concurrent labs never collide),
every veth is created inside those namespaces (the root-side management ends are `pt<run>m<k>`), and
`teardown()` removes the namespaces, which takes every interface in them along, after stopping the
agents it started (by pid, SIGTERM then SIGKILL) and running `patronus cleanup` for every site whose
agent left a dataplane behind (a graceful stop, a kill -9: its wireguard-go and reflector processes
outlive it). `build()` runs in try/except: a failed build tears down what it made before re-raising.
Agents start with `--cleanup` (they remove everything on SIGTERM) unless `start_agent(cleanup=False)`.

Used by the agent's integration tests and the failover-gap benchmark; also a way to try two agents
by hand (`python -m emulation.netns_lab up`, see the README).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emulation import runs
from emulation.siteconf import API_PORT, RemoteEntry, UplinkEntry, site_file
from emulation.wait import wait_for as _wait_for
from patronus.agent.keys import generate_private_key, public_key

SITES = ("hq", "br")
UPLINKS = ("isp1", "isp2")
TOKEN = "patronus-lab-token-0123456789"
SECRET = "patronus-lab-probe-secret"


@dataclass
class SiteInfo:
    name: str
    id: int
    ns: str
    lan_prefix: str
    lan_gw: str
    host_ns: str
    host_ip: str
    mgmt_ip: str
    uplinks: dict[str, tuple[str, str]]      # uplink -> (address, gateway)
    private_key: str
    config_path: Path | None = None
    agent: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api(self) -> str:
        return f"http://{self.mgmt_ip}:{API_PORT}/api/v1"


def _run(argv: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass
class TwoSiteLab:
    workdir: Path
    run: str = field(default_factory=lambda: secrets.token_hex(2))
    site_ids: tuple[int, int] | None = None
    sites: dict[str, SiteInfo] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    static_remotes: bool = True          # False: the site files list no remote (mesh discovery finds them)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.site_ids is None:
            base = 10 + (int(self.run, 16) % 700) * 2
            self.site_ids = (base, base + 1)
        self.octet = 16 + int(self.run, 16) % 100

    def ns(self, role: str) -> str:
        return f"pt{self.run}-{role}"

    @classmethod
    def fresh(cls, workdir: Path, tries: int = 200) -> TwoSiteLab:
        """A lab whose namespaces, management addresses and site ids (hence tunnel names) collide with
        no lab already running on this machine (concurrent test runs and benchmarks build labs too: a
        shared management /30 would send our API calls to their agents)."""
        addrs = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        netns_list = _run(["ip", "netns", "list"]).stdout
        wg_dir = Path("/var/run/wireguard")
        socks = {p.name for p in wg_dir.iterdir()} if wg_dir.is_dir() else set()
        recorded = {r.run_id for r in runs.records()}
        for _ in range(tries):
            lab = cls(workdir)
            if lab.run in recorded:
                continue
            assert lab.site_ids is not None
            if (f" 100.72.{lab.octet}." not in addrs and f"pt{lab.run}-" not in netns_list
                    and not any(n.startswith(f"pt{i}p") for n in socks for i in lab.site_ids)):
                return lab
        raise RuntimeError("no free lab number (too many labs running?)")

    # -- the agents' API, from the host (through the management veths) -----------------------------

    def api(self, site: str, path: str) -> Any:
        """GET an agent's API; raises with the agent's log if an agent of ours has exited."""
        import httpx

        for s in self.sites.values():
            if s.agent is not None and s.agent.poll() is not None:
                raise RuntimeError(f"agent {s.name} exited with {s.agent.returncode}:\n"
                                   f"{self.agent_log(s.name)[-2000:]}")
        r = httpx.get(self.sites[site].api + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    def paths(self, site: str) -> dict[str, dict[str, Any]]:
        return {p["id"]: p for p in self.api(site, "/paths")}

    def all_up(self, site: str) -> bool:
        """Every path Up with a clean window (the first probes, sent before the peer listened, are lost)."""
        return all(p["status"] == "up" and p["loss_pct"] == 0 for p in self.paths(site).values())

    def handshakes(self, site: str) -> list[int]:
        """Latest WireGuard handshake time of each of `site`'s tunnels (0 = none yet)."""
        out = _run(["ip", "netns", "exec", self.sites[site].ns, "wg", "show", "all", "latest-handshakes"]).stdout
        mine = f"pt{self.sites[site].id}p"   # wireguard-go's sockets are shared by all namespaces: ours only
        return [int(line.split()[-1]) for line in out.strip().splitlines() if line.startswith(mine)]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Both agents' paths Up with clean windows, and a handshake on every tunnel."""
        wait_for(lambda: all(self.all_up(s) for s in self.sites if self.sites[s].agent is not None), timeout_s,
                 "every path Up at every running agent")
        wait_for(lambda: all(t > 0 for s in self.sites if self.sites[s].agent is not None
                             for t in self.handshakes(s)), 20, "a WireGuard handshake on every tunnel")

    # -- build -------------------------------------------------------------------------------------

    def build(self) -> TwoSiteLab:
        from pyroute2 import netns

        runs.claim("lab", str(self.workdir), want=self.run)      # released by teardown
        try:
            for role in ("core", *SITES, *(f"{s}h" for s in SITES)):
                netns.create(self.ns(role))
                self.namespaces.append(self.ns(role))
                self._sysctl(self.ns(role), "net/ipv4/ip_forward", "1" if role in ("core", *SITES) else "0")
                self._ip(self.ns(role), "link", "set", "lo", "up")
            assert self.site_ids is not None
            for k, s in enumerate(SITES):
                info = SiteInfo(name=s, id=self.site_ids[k], ns=self.ns(s), lan_prefix=f"10.{self.octet}.{k + 1}.0/24",
                                lan_gw=f"10.{self.octet}.{k + 1}.1", host_ns=self.ns(f"{s}h"),
                                host_ip=f"10.{self.octet}.{k + 1}.10", mgmt_ip=f"100.72.{self.octet}.{4 * k + 2}",
                                uplinks={}, private_key=generate_private_key())
                self.sites[s] = info
                # LAN
                self._veth(info.ns, "lan0", info.host_ns, "eth0")
                self._addr(info.ns, "lan0", f"{info.lan_gw}/24")
                self._addr(info.host_ns, "eth0", f"{info.host_ip}/24")
                self._ip(info.host_ns, "route", "add", "default", "via", info.lan_gw)
                # uplinks into the core
                for u, up in enumerate(UPLINKS):
                    net = f"10.{self.octet + 100}.{k * 2 + u + 1}"
                    core_if = f"{s}-{up}"
                    self._veth(info.ns, up, self.ns("core"), core_if)
                    self._addr(info.ns, up, f"{net}.1/24")
                    self._addr(self.ns("core"), core_if, f"{net}.254/24")
                    info.uplinks[up] = (f"{net}.1", f"{net}.254")
                # management
                root_if = f"pt{self.run}m{k}"
                self._veth(None, root_if, info.ns, "mgmt0")
                self._ip(None, "addr", "add", f"100.72.{self.octet}.{4 * k + 1}/30", "dev", root_if)
                self._addr(info.ns, "mgmt0", f"{info.mgmt_ip}/30")
        except BaseException:
            self.teardown()
            raise
        return self

    def _ip(self, ns: str | None, *args: str) -> None:
        argv = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
        _run(argv)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > /proc/sys/{key}"])

    def _veth(self, ns_a: str | None, if_a: str, ns_b: str, if_b: str) -> None:
        tmp_a, tmp_b = f"pt{self.run}t{secrets.token_hex(2)}", f"pt{self.run}t{secrets.token_hex(2)}"
        _run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        try:
            _run(["ip", "link", "set", tmp_b, "netns", ns_b, "name", if_b, "up"])
            if ns_a is None:
                _run(["ip", "link", "set", tmp_a, "name", if_a, "up"])
            else:
                _run(["ip", "link", "set", tmp_a, "netns", ns_a, "name", if_a, "up"])
        except BaseException:
            _run(["ip", "link", "del", tmp_a], check=False)
            raise

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        self._ip(ns, "addr", "add", cidr, "dev", dev)

    # -- site files and agents ---------------------------------------------------------------------

    def site_config(self, name: str, **overrides: Any) -> dict[str, Any]:
        """`name`'s site file (emulation.siteconf.site_file): the `fast` monitor profile, a 3 s failback
        hold, isp1 the cheap 100 Mbit/s uplink; `overrides` replace whole top-level sections."""
        me = self.sites[name]
        other = next(s for s in self.sites.values() if s.name != name)
        uplinks = [UplinkEntry(up, *me.uplinks[up], cost_per_gb=0.0 if up == "isp1" else 0.05,
                               bandwidth_bps=100e6 if up == "isp1" else 1e9) for up in UPLINKS]
        remote = RemoteEntry(other.name, other.id, public_key(other.private_key), (other.lan_prefix,),
                             tuple((up, other.uplinks[up][0]) for up in UPLINKS))
        return site_file(name, me.id, [me.lan_prefix], uplinks, [remote] if self.static_remotes else [],
                         agents_dir=self.workdir,
                         api_listen=f"{me.mgmt_ip}:{API_PORT}", token=TOKEN, probe_secret=SECRET,
                         lan_interfaces=["lan0"], state_dir=self.state_dir(name),
                         settings={"monitor": "fast", "router": {"failback_hold": "3s", "failover_cooldown": "1s"},
                                   **overrides})

    def write_config(self, name: str, **overrides: Any) -> Path:
        me = self.sites[name]
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / f"{name}.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(me.private_key + "\n")
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.site_config(name, **overrides), sort_keys=False))
        me.config_path = path
        return path

    def start_agent(self, name: str, *, cleanup: bool = True, write: bool = True, nice: int = 0,
                    **overrides: Any) -> subprocess.Popen[bytes]:
        """Start `name`'s agent (`cleanup`: with --cleanup; `write`: write its site file first, with
        `overrides`, else run on the file as it is; `nice`: its scheduling priority, as the test-bed's
        runner gives its agents)."""
        me = self.sites[name]
        cfg = self.write_config(name, **overrides) if write or me.config_path is None else me.config_path
        me.log_path = self.workdir / f"{name}-agent.log"
        log = open(me.log_path, "ab")  # noqa: SIM115 - the child owns it
        me.agent = subprocess.Popen(["ip", "netns", "exec", me.ns, sys.executable, "-m", "patronus.cli", "agent",
                                     "--config", str(cfg), *(["--cleanup"] if cleanup else [])],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None)
        log.close()
        return me.agent

    def state_dir(self, name: str) -> Path:
        return self.workdir / f"run-{name}"

    def leftovers(self, name: str) -> list[str]:
        """What a stopped agent of `name` left in its state directory (pid files, dataplane record)."""
        d = self.state_dir(name)
        return sorted(p.name for p in d.glob("*") if p.suffix == ".pid" or p.name == "dataplane.json") \
            if d.is_dir() else []

    def cleanup_site(self, name: str) -> subprocess.CompletedProcess[str]:
        """`patronus cleanup -c SITE` in the site's namespace (removes what a stopped agent left)."""
        me = self.sites[name]
        assert me.config_path is not None
        return _run(["ip", "netns", "exec", me.ns, sys.executable, "-m", "patronus.cli", "cleanup", "--config",
                     str(me.config_path)], check=False)

    def stop_agent(self, name: str, timeout_s: float = 15.0) -> int | None:
        me = self.sites[name]
        p, me.agent = me.agent, None
        if p is None or p.poll() is not None:
            return p.returncode if p is not None else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            return p.wait(5)

    def agent_log(self, name: str) -> str:
        p = self.sites[name].log_path
        return p.read_text(errors="replace") if p and p.exists() else ""

    # -- faults ------------------------------------------------------------------------------------

    def cut(self, site: str, uplink: str, mode: str = "down") -> None:
        """Cut `site`'s `uplink` at the core: the far end's link down, or an nft drop (link stays up)."""
        core_if = f"{site}-{uplink}"
        if mode == "down":
            self._ip(self.ns("core"), "link", "set", core_if, "down")
        elif mode == "drop":
            _run(["ip", "netns", "exec", self.ns("core"), "nft", "-f", "-"], input=(
                f"table inet ptlab_{site}_{uplink} {{\n chain cut {{\n  type filter hook forward priority 0;\n"
                f'  iifname "{core_if}" drop\n  oifname "{core_if}" drop\n }}\n}}\n'))
        else:
            raise ValueError(f"cut mode must be 'down' or 'drop', got {mode!r}")

    def restore(self, site: str, uplink: str, mode: str = "down") -> None:
        if mode == "down":
            self._ip(self.ns("core"), "link", "set", f"{site}-{uplink}", "up")
        else:
            _run(["ip", "netns", "exec", self.ns("core"), "nft", "delete", "table", "inet", f"ptlab_{site}_{uplink}"])

    # -- teardown ----------------------------------------------------------------------------------

    def teardown(self) -> None:
        from pyroute2 import netns

        for name in list(self.sites):
            with contextlib.suppress(Exception):
                self.stop_agent(name)
        for name, me in self.sites.items():
            if me.config_path is not None and self.leftovers(name):
                with contextlib.suppress(Exception):
                    self.cleanup_site(name)
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                netns.remove(ns)
        self.namespaces.clear()
        for k in range(len(SITES)):
            _run(["ip", "link", "del", f"pt{self.run}m{k}"], check=False)
        runs.release(self.run)

    def __enter__(self) -> TwoSiteLab:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def wait_for(cond: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """`emulation.wait.wait_for`, where the thing polled may not be up yet (any exception is "not yet")."""
    return _wait_for(cond, timeout_s, what, interval_s=interval_s, retry=(Exception,))


AGENT_START_S = 60.0


def _agent_state(lab: TwoSiteLab, name: str) -> str | None:
    """"up" once the agent's API answers, "exited" if its process has ended, else None (starting)."""
    agent = lab.sites[name].agent
    if agent is None or agent.poll() is not None:
        return "exited"
    try:
        lab.api(name, "/site")
    except Exception:          # not listening yet, or (lab.api) the other agent exited: asked next
        return None
    return "up"


def _print_usage(lab: TwoSiteLab, workdir: Path) -> None:
    hq, br = lab.sites["hq"], lab.sites["br"]
    core = lab.ns("core")
    print(f"""two agents are up (run {lab.run}); files in {workdir}
  watch:    patronus status -c {hq.config_path}      (and -c {br.config_path})
            patronus paths -c {hq.config_path} ; patronus flows -c {hq.config_path}
  traffic:  ip netns exec {hq.host_ns} {sys.executable} -m emulation.udpflow send --to {br.host_ip}:5001 --duration 60 &
  cut:      ip netns exec {core} ip link set hq-isp1 down      (restore: ... up)
  a shell:  ip netns exec {hq.ns} bash         agent logs: {workdir}/hq-agent.log
Ctrl-C stops the agents and removes every namespace; so does an agent that exits.""", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m emulation.netns_lab up [--dir DIR]`: two agents in namespaces until Ctrl-C."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m emulation.netns_lab")
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--dir", type=Path, default=None, help="where site files, keys, databases and logs go")
    ap.add_argument("--monitor", default="fast", help="monitor profile for both agents")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    workdir = a.dir or Path(tempfile.mkdtemp(prefix="patronus-lab-"))
    lab = TwoSiteLab.fresh(workdir)
    # Woken by SIGINT/SIGTERM (through a wakeup pipe) or by an agent's exit (its pidfd): the signal
    # may be delivered to any thread of this process, so pause() in the main thread could sleep on.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        lab.build()
        for s in SITES:
            lab.start_agent(s, monitor=a.monitor)
        for s in SITES:
            if wait_for(lambda s=s: _agent_state(lab, s), AGENT_START_S, f"agent {s}'s API") == "exited":
                info = lab.sites[s]
                print(f"agent {s} exited ({info.agent.returncode if info.agent else '?'}) while starting; see "
                      f"{info.log_path}; removing the lab", file=sys.stderr)
                return 1
        _print_usage(lab, workdir)
        agents = {os.pidfd_open(info.agent.pid): info for info in lab.sites.values() if info.agent is not None}
        ready, _, _ = select.select([wake_r, *agents], [], [])
        for fd in ready:
            if fd in agents:
                info = agents[fd]
                print(f"agent {info.name} exited ({info.agent.wait() if info.agent else '?'}); see "
                      f"{info.log_path}; removing the lab", file=sys.stderr)
        for fd in agents:
            os.close(fd)
    finally:
        lab.teardown()
        signal.set_wakeup_fd(-1)
        print("lab removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
