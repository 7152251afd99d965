"""Two real agents in network namespaces: tunnels, probing, steering, failover, failback, API, cleanup.

One lab (seven namespaces, see `emulation/netns_lab.py`) is shared by the module; each test leaves the
lab as it found it (links restored, policies reset). Nothing here sleeps to "let things settle":
every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emulation.netns_lab import TOKEN, TwoSiteLab, wait_for
from emulation.udpflow import analyse
from patronus.agent.config import load as load_config

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

if os.geteuid() != 0:
    pytest.skip("needs root to create network namespaces", allow_module_level=True)

H = {"Authorization": f"Bearer {TOKEN}"}
HOLD_S = 3.0
POLICIES = [
    # traffic to UDP 5001 wants bandwidth: isp2 (1 Gbit/s) paths; everything else the cheapest: isp1
    {"name": "bulk", "priority": 10, "match": {"protocol": "udp", "dst_ports": 5001},
     "preference": "highest_bandwidth"},
    {"name": "Default", "priority": 100, "preference": "lowest_cost", "failover_threshold": 50},
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoSiteLab]:
    lab = TwoSiteLab.fresh(tmp_path_factory.mktemp("lab"))
    lab.build()
    try:
        for s in ("hq", "br"):
            lab.start_agent(s, policies=POLICIES, router={"failback_hold": f"{HOLD_S}s", "failover_cooldown": "1s",
                                                          "min_improvement": 5})
        lab.wait_ready()
        yield lab
    finally:
        logs = {s: lab.agent_log(s)[-3000:] for s in lab.sites}
        lab.teardown()
        for s, text in logs.items():
            print(f"--- agent {s} log (tail) ---\n{text}")






def reserved_ports(ns: str) -> set[int]:
    from patronus.agent.ports import parse

    return parse(subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"],
                                capture_output=True, text=True, check=True).stdout)


def flow_path(lab: TwoSiteLab, dport: int) -> str | None:
    for f in lab.api("hq", "/flows"):
        if f["dst_port"] == dport and f["dst_ip"] == lab.sites["br"].host_ip:
            return str(f["path"])
    return None


def tunnel_tx(lab: TwoSiteLab, ifname: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", lab.sites["hq"].ns, "cat",
                          f"/sys/class/net/{ifname}/statistics/tx_packets"], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


class Flow:
    """A 1,000 packets/s UDP flow from hq's LAN host to br's, with its receiver."""

    def __init__(self, lab: TwoSiteLab, dport: int, duration: float, sport: int) -> None:
        self.lab = lab
        self.out = lab.workdir / f"arrivals-{dport}-{time.monotonic_ns()}.json"
        ready = self.out.with_suffix(".ready")
        br, hq = lab.sites["br"], lab.sites["hq"]
        self.recv = subprocess.Popen(["ip", "netns", "exec", br.host_ns, sys.executable, "-m", "emulation.udpflow",
                                      "recv", "--port", str(dport), "--out", str(self.out), "--ready", str(ready),
                                      "--duration", str(duration + 10)], stdout=subprocess.DEVNULL)
        wait_for(ready.exists, 10, "the receiver")
        self.send = subprocess.Popen(["ip", "netns", "exec", hq.host_ns, sys.executable, "-m", "emulation.udpflow",
                                      "send", "--to", f"{br.host_ip}:{dport}", "--rate", "1000", "--duration",
                                      str(duration), "--sport", str(sport)], stdout=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, int]:
        out, _ = self.send.communicate(timeout=120)
        self.recv.terminate()
        self.recv.wait(10)
        return json.loads(out)

    def kill(self) -> None:
        for p in (self.send, self.recv):
            if p.poll() is None:
                p.kill()
                p.wait(5)


@pytest.fixture()
def clean_links(lab: TwoSiteLab) -> Iterator[None]:
    yield
    for up in ("isp1", "isp2"):
        for mode in ("down", "drop"):
            with contextlib.suppress(RuntimeError):
                lab.restore("hq", up, mode)
    wait_for(lambda: lab.all_up("hq"), 30, "hq's paths Up again")


def test_tunnels_up_and_every_path_measured(lab: TwoSiteLab) -> None:
    for site in ("hq", "br"):
        ps = lab.paths(site)
        assert len(ps) == 4
        for p in ps.values():
            assert p["status"] == "up"
            assert 0 < p["latency_ms"] < 50, p
            assert p["probes_received"] > 0 and p["probes_rejected"] == 0
    info = lab.api("hq", "/site")
    assert info["wireguard_backend"] in ("kernel", "userspace")
    # every tunnel has completed a WireGuard handshake
    assert len(s := lab.handshakes("hq")) == 4 and all(t > 0 for t in s)
    assert len(s := lab.handshakes("br")) == 4 and all(t > 0 for t in s)


def test_flows_take_the_path_their_policy_selects(lab: TwoSiteLab) -> None:
    bulk = Flow(lab, 5001, 3, 41001)
    web = Flow(lab, 5002, 3, 41002)
    try:
        p_bulk = wait_for(lambda: flow_path(lab, 5001), 10, "the bulk flow in the flow table")
        p_web = wait_for(lambda: flow_path(lab, 5002), 10, "the default flow in the flow table")
    finally:
        sent_b, sent_w = bulk.finish()["sent"], web.finish()["sent"]
    flows = lab.api("hq", "/flows")
    assert all(f["path"] for f in flows), (flows, lab.api("hq", "/events?limit=60"))
    seen = {f["dst_port"]: f for f in flows}
    for port, pol in ((5001, "bulk"), (5002, "Default")):
        f = seen[port]
        assert f["policy"] == pol and f["packets"] > 1000 and f["bytes"] > 1000 * 64 and f["age_s"] >= 0, f
    assert p_bulk.split(":")[1].startswith("isp2-"), p_bulk      # highest bandwidth: local isp2
    assert p_web.split(":")[1].startswith("isp1-"), p_web        # lowest cost: local isp1
    assert analyse(bulk.out, sent=sent_b).lost == 0
    assert analyse(web.out, sent=sent_w).lost == 0


@pytest.mark.parametrize("mode", ["down", "drop"])
def test_cut_moves_the_flow_and_failback_waits_for_the_hold(lab: TwoSiteLab, clean_links: None, mode: str) -> None:
    sport = 42000 + (mode == "drop")
    flow = Flow(lab, 5002, 20, sport)
    try:
        first = wait_for(lambda: flow_path(lab, 5002), 10, "the flow in the flow table")
        assert first.split(":")[1].startswith("isp1-")
        ifname = lab.paths("hq")[first]["interface"]
        t_cut = time.time()
        lab.cut("hq", "isp1", mode)
        wait_for(lambda: lab.paths("hq")[first]["status"] == "down", 5, f"{first} Down after the cut")
        moved = wait_for(lambda: (p := flow_path(lab, 5002)) != first and p, 5, "the flow on another path")
        assert moved.split(":")[1].startswith("isp2-"), moved
        # traffic goes on over the new tunnel
        new_if = lab.paths("hq")[moved]["interface"]
        tx0 = tunnel_tx(lab, str(new_if))
        wait_for(lambda: tunnel_tx(lab, str(new_if)) > tx0 + 200, 5, "packets on the new tunnel")
        lab.restore("hq", "isp1", mode)
        wait_for(lambda: lab.paths("hq")[first]["status"] == "up", 10, f"{first} Up after the restore")
        t_up = time.time()
        back = wait_for(lambda: flow_path(lab, 5002) == first, HOLD_S + 10, "the flow back on its first path")
        t_back = time.time()
        assert back
        old_tx = tunnel_tx(lab, str(ifname))
        try:
            wait_for(lambda: tunnel_tx(lab, str(ifname)) > old_tx + 200, 5, "packets on the first tunnel again")
        except TimeoutError:
            all_tx = {p["interface"]: tunnel_tx(lab, str(p["interface"])) for p in lab.paths("hq").values()}
            raise AssertionError(f"first={ifname} old_tx={old_tx} now={all_tx} sender alive={flow.send.poll()}"
                                 f" flows={lab.api('hq', '/flows')}") from None
    finally:
        sent = flow.finish()["sent"]
    # failback only after the hold (the flow table is refreshed each second: allow that much early)
    assert t_back - t_up >= HOLD_S - 1.2, (t_back - t_up)
    events = lab.api("hq", "/events?limit=200")
    failbacks = [e for e in events if e["kind"] == "Failback" and e["at"] > t_cut]
    ups = [e for e in events if e["kind"] == "PathStatusChanged" and e["path_id"] == first
           and e["new"] == "up" and e["at"] > t_cut]
    assert failbacks and ups
    assert min(f["at"] for f in failbacks) - max(u["at"] for u in ups if u["at"] <= failbacks[0]["at"]) >= HOLD_S - 0.05
    st = analyse(flow.out, sent=sent)
    assert st.received > sent * 0.9
    assert st.max_gap_ms < 2000, st          # the flow kept flowing across the cut


def test_policy_change_applies_to_new_flows(lab: TwoSiteLab) -> None:
    new = {"name": "web-bw", "priority": 20, "match": {"protocol": "udp", "dst_ports": 5003},
           "preference": "highest_bandwidth"}
    r = httpx.put(lab.sites["hq"].api + "/policies/web-bw", headers=H, json=new, timeout=5)
    assert r.status_code == 201, r.text
    try:
        flow = Flow(lab, 5003, 2, 43001)
        try:
            p = wait_for(lambda: flow_path(lab, 5003), 10, "the new flow")
        finally:
            flow.finish()
        assert p.split(":")[1].startswith("isp2-"), p
        assert any(f["name"] == "web-bw" for f in lab.api("hq", "/policies"))
    finally:
        httpx.delete(lab.sites["hq"].api + "/policies/web-bw", headers=H, timeout=5)


def test_api_needs_the_token_and_names_bad_fields(lab: TwoSiteLab) -> None:
    base = lab.sites["hq"].api
    assert httpx.get(base + "/paths", timeout=5).status_code == 401
    assert httpx.get(base + "/paths", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    r = httpx.put(base + "/policies/bad", headers=H, timeout=5,
                  json={"name": "bad", "priority": -1, "match": {"colour": "red"}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert any("priority" in f for f in fields) and any("colour" in f for f in fields)
    assert all(p["name"] != "bad" for p in lab.api("hq", "/policies"))
    metrics = httpx.get(base.removesuffix("/api/v1") + "/metrics", headers=H, timeout=5).text
    assert "patronus_path_latency_ms" in metrics and "patronus_probes_sent_total" in metrics


def test_forged_and_replayed_probes_are_rejected_and_counted(lab: TwoSiteLab) -> None:
    """Live injection with scapy into br's reflector and hq's probe sender."""
    hq, br = lab.sites["hq"], lab.sites["br"]
    before = lab.paths("hq")
    script = Path(__file__).with_name("inject_probes.py")
    r = subprocess.run(["ip", "netns", "exec", "pt" + lab.run + "-core", sys.executable, str(script),
                        br.uplinks["isp1"][0], hq.uplinks["isp1"][0]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout)
    # the reflector counted what it rejected (exposed as unattributed rejections in /metrics; the
    # reflector process reports its counters once a second)
    def rejected() -> float:
        text = httpx.get(br.api.removesuffix("/api/v1") + "/metrics", headers=H, timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("patronus_probes_rejected_total"))
    wait_for(lambda: rejected() >= sent["forged"] + sent["replayed"], 5,
             f"{sent['forged']} forged and {sent['replayed']} replayed probes counted as rejected")
    # and nothing moved a metric: every path is still Up with a sane latency
    after = lab.paths("hq")
    for pid, p in after.items():
        assert p["status"] == "up"
        assert p["latency_ms"] < 50
        assert p["probes_sent"] >= before[pid]["probes_sent"]


def test_sigterm_removes_everything_the_agent_created(tmp_path: Path) -> None:
    lab = TwoSiteLab.fresh(tmp_path).build()
    try:
        lab.start_agent("hq")
        wait_for(lambda: lab.api("hq", "/site"), 20, "the agent's API")
        ns = lab.sites["hq"].ns

        def state() -> tuple[str, str, str, str]:
            def run(*argv: str) -> str:
                return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True).stdout
            return (run("ip", "-o", "link"), run("ip", "rule"), run("nft", "list", "tables"),
                    run("sh", "-c", "ls /var/run/wireguard 2>/dev/null; ip route show table all | grep -c 'proto 183'"))
        during = state()
        assert "pt" in during[0] and "7900" in during[1] and "patronus_s" in during[2]
        reserved = reserved_ports(ns)                # the tunnels' ports, out of the ephemeral pool
        config_path = lab.sites["hq"].config_path
        assert config_path is not None
        assert {p.listen_port for p in load_config(config_path).paths} <= reserved, sorted(reserved)[:5]
        # state that must survive a restart: a policy set through the API, and the metrics history
        base = lab.sites["hq"].api
        keep = {"name": "keep-me", "priority": 5, "match": {"dst_ports": 7000}, "preference": "lowest_loss"}
        assert httpx.put(base + "/policies/keep-me", headers=H, json=keep, timeout=5).status_code == 201
        pid = next(iter(lab.paths("hq")))
        wait_for(lambda: len(lab.api("hq", f"/paths/{pid}/metrics")) >= 2, 10, "metrics history rows")
        reflector = json.loads((tmp_path / "run-hq" / "reflector.pid").read_text())["pid"]
        rc = lab.stop_agent("hq")                    # started with --cleanup (the lab's default)
        assert rc == 0, lab.agent_log("hq")
        stopped_at = time.time()
        links, rules, tables, rest = state()
        assert f"pt{lab.sites['hq'].id}p" not in links
        assert "proto 183" not in rules
        assert "patronus" not in tables
        assert rest.strip().splitlines()[-1] == "0"
        assert reserved_ports(ns) == set()           # given back (the namespace had none reserved before)
        assert not list((tmp_path / "run-hq").glob("wg-*.pid"))
        assert lab.leftovers("hq") == []             # no pid file (reflector, agent), no dataplane record
        out = subprocess.run(["pgrep", "-f", f"wireguard-go -f pt{lab.sites['hq'].id}p"], capture_output=True)
        assert out.returncode == 1, out.stdout       # no wireguard-go of ours left
        assert not Path(f"/proc/{reflector}").exists() or b") Z" in Path(f"/proc/{reflector}/stat").read_bytes()
        # restart: the policy and the history are still there
        lab.start_agent("hq", policies="default")
        wait_for(lambda: lab.api("hq", "/site"), 20, "the restarted agent's API")
        assert any(p["name"] == "keep-me" for p in lab.api("hq", "/policies"))
        hist = lab.api("hq", f"/paths/{pid}/metrics")
        assert any(h["measured_at"] < stopped_at for h in hist), hist
        assert lab.stop_agent("hq") == 0
    finally:
        lab.teardown()


def test_test_path_now_measures_rtt_and_bandwidth(lab: TwoSiteLab) -> None:
    pid = next(iter(lab.paths("hq")))
    r = httpx.post(lab.sites["hq"].api + f"/paths/{pid}/test", headers=H, json={"probes": 20, "bandwidth": True},
                   timeout=30)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["probes"]["received"] == 20 and d["probes"]["rtt_avg_ms"] < 50, d
    assert d["bandwidth"].get("goodput_mbps", 0) > 1, d          # the default offered rate is 50 Mbit/s
    assert d["bandwidth"]["loss_pct"] < 20, d


def test_cleanup_after_kill_9_removes_only_that_agents_leftovers(tmp_path: Path) -> None:
    lab = TwoSiteLab.fresh(tmp_path).build()
    try:
        lab.start_agent("hq")
        wait_for(lambda: lab.api("hq", "/site"), 20, "the agent's API")
        ns, sid = lab.sites["hq"].ns, lab.sites["hq"].id
        agent = lab.sites["hq"].agent
        assert agent is not None
        reflector = json.loads((tmp_path / "run-hq" / "reflector.pid").read_text())["pid"]
        os.killpg(agent.pid, 9)
        agent.wait(10)
        lab.sites["hq"].agent = None

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
        assert f"pt{sid}p1" in run("ip", "-o", "link").stdout          # the crash left its tunnels
        assert reserved_ports(ns)                                       # and its port reservation
        r = run(sys.executable, "-m", "patronus.cli", "cleanup", "--config", str(lab.sites["hq"].config_path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nft table inet patronus_s" in r.stdout
        assert f"pt{sid}p" not in run("ip", "-o", "link").stdout
        assert "proto 183" not in run("ip", "rule").stdout
        assert "patronus" not in run("nft", "list", "tables").stdout
        assert "mgmt0" in run("ip", "-o", "link").stdout                # not ours: untouched
        assert "reserved ports" in r.stdout and reserved_ports(ns) == set()
        out = subprocess.run(["pgrep", "-f", f"wireguard-go -f pt{sid}p"], capture_output=True)
        assert out.returncode == 1, out.stdout
        # the reflector outlived the crash (its own session), and the cleanup stopped it
        assert "reflector process" in r.stdout
        assert not Path(f"/proc/{reflector}").exists() or b") Z" in Path(f"/proc/{reflector}/stat").read_bytes()
        assert lab.leftovers("hq") == ["agent.pid"]          # the crashed agent's own pid file only
    finally:
        lab.teardown()


def test_event_stream_and_cli_against_a_running_agent(lab: TwoSiteLab) -> None:
    from websockets.sync.client import connect

    hq = lab.sites["hq"]
    url = hq.api.replace("http://", "ws://") + "/events/stream"
    with connect(url, additional_headers=H, open_timeout=5) as ws:
        body = {"name": "ws-check", "priority": 30, "match": {"dst_ports": 7001}, "preference": "lowest_latency"}
        assert httpx.put(hq.api + "/policies/ws-check", headers=H, json=body, timeout=5).status_code == 201
        try:
            deadline = time.monotonic() + 5
            kinds = []
            while time.monotonic() < deadline:
                ev = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                kinds.append(ev["kind"])
                if ev["kind"] == "PoliciesChanged":
                    assert "ws-check" in ev["policies"]
                    break
            assert "PoliciesChanged" in kinds, kinds
        finally:
            httpx.delete(hq.api + "/policies/ws-check", headers=H, timeout=5)
    # the CLI reads the site file for the API address and token
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "patronus.cli", *args, "-c", str(hq.config_path)],
                              capture_output=True, text=True, timeout=30)
    r = cli("status")
    assert r.returncode == 0, r.stderr
    assert "site hq" in r.stdout and "br:isp1-isp1" in r.stdout and "up" in r.stdout
    r = cli("paths", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 4
    r = cli("topology")
    assert r.returncode == 0, r.stderr
    assert "br:isp1-isp1" in r.stdout and "1 remote site(s), 4 path(s), 4 usable" in r.stdout, r.stdout
    pol = lab.workdir / "pol.yaml"
    pol.write_text("- {name: cli-pol, priority: 40, match: {dst_ports: 7002}, preference: lowest_cost}\n")
    r = cli("policy", "apply", "-f", str(pol))
    assert r.returncode == 0 and "created policy cli-pol" in r.stdout, r.stdout + r.stderr
    pol.write_text("- {name: cli-bad, priority: -3}\n")
    r = cli("policy", "apply", "-f", str(pol))
    assert r.returncode == 2 and "priority" in r.stdout
    assert all(p["name"] != "cli-bad" for p in lab.api("hq", "/policies"))
    httpx.delete(hq.api + "/policies/cli-pol", headers=H, timeout=5)


@pytest.mark.parametrize("mode", ["round_robin", "flow_hash"])
def test_load_balancing_policy_spreads_new_flows_over_its_tier(lab: TwoSiteLab, mode: str) -> None:
    hq, br = lab.sites["hq"], lab.sites["br"]
    port = 6000 + (mode == "flow_hash")
    body = {"name": f"lb-{mode}", "priority": 15, "match": {"protocol": "udp", "dst_ports": port},
            "preference": "lowest_latency", "load_balance": mode, "lb_tolerance": 100}
    assert httpx.put(hq.api + f"/policies/lb-{mode}", headers=H, json=body, timeout=5).status_code == 201
    try:
        code = ("import socket\n"
                "for sp in range(46000, 46016):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', sp))\n"
                f"    [s.sendto(b'x', ('{br.host_ip}', {port})) for _ in range(3)]\n")
        subprocess.run(["ip", "netns", "exec", hq.host_ns, sys.executable, "-c", code], check=True, timeout=30)

        def spread() -> dict[str, int] | None:
            flows = [f for f in lab.api("hq", "/flows") if f["dst_port"] == port]
            if len(flows) < 16:
                return None
            counts: dict[str, int] = {}
            for f in flows:
                assert f["policy"] == f"lb-{mode}", f
                counts[f["path"]] = counts.get(f["path"], 0) + 1
            return counts
        counts = wait_for(spread, 10, "16 load-balanced flows in the flow table")
        assert len(counts) >= 2, counts          # 16 flows, 4 equal paths: never all on one
        if mode == "round_robin":
            assert max(counts.values()) <= 12, counts
    finally:
        httpx.delete(hq.api + f"/policies/lb-{mode}", headers=H, timeout=5)


def test_a_path_whose_tunnel_cannot_handshake_is_routed_around(tmp_path: Path) -> None:
    """Probes pass (UDP 862) but WireGuard's ports are blocked in the core: without a session the
    path would black-hole what is steered onto it, so the agent treats it as Down."""
    lab = TwoSiteLab.fresh(tmp_path).build()
    core = lab.ns("core")
    # the tunnels' ports: port_base (40000) + peer site id · 16 + uplink numbers
    ranges = ", ".join(f"{40000 + s.id * 16}-{40000 + s.id * 16 + 15}" for s in lab.sites.values())
    block = ("table inet ptlab_wg {\n chain f {\n  type filter hook forward priority 0;\n"
             f"  udp dport {{ {ranges} }} drop\n }}\n}}\n")
    try:
        subprocess.run(["ip", "netns", "exec", core, "nft", "-f", "-"], input=block, text=True, check=True)
        for s in ("hq", "br"):
            lab.start_agent(s)
        wait_for(lambda: lab.all_up("hq"), 30, "probes pass on every path")

        def kinds(kind: str) -> set[str]:
            return {e["path_id"] for e in lab.api("hq", "/events?limit=500") if e["kind"] == kind}
        down = wait_for(lambda: len(kinds("TunnelDown")) == 4 and kinds("TunnelDown"), 40,
                        "TunnelDown for every path")
        assert down == set(lab.paths("hq"))
        subprocess.run(["ip", "netns", "exec", core, "nft", "delete", "table", "inet", "ptlab_wg"], check=True)
        wait_for(lambda: len(kinds("TunnelUp")) == 4, 30, "TunnelUp once handshakes go through")
    finally:
        lab.teardown()


def test_lab_up_tears_down_when_an_agent_dies(tmp_path: Path) -> None:
    """`python -m emulation.netns_lab up` says which agent exited and removes the lab, instead of
    waiting for a Ctrl-C that the dead agent makes pointless."""
    import re
    import signal

    lab = subprocess.Popen([sys.executable, "-m", "emulation.netns_lab", "up", "--dir", str(tmp_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert lab.stdout is not None
    seen: list[str] = []
    try:
        for line in lab.stdout:
            seen.append(line)
            if "two agents are up" in line:
                break
        m = re.search(r"\(run ([0-9a-f]{4})\)", "".join(seen))
        assert m, "".join(seen)
        run = m.group(1)
        from patronus.agent.procs import running_agent_pid

        hq = running_agent_pid(tmp_path / "run-hq" / "agent.pid")
        assert hq is not None, "".join(seen)
        os.kill(hq, signal.SIGKILL)
        rest, _ = lab.communicate(timeout=60)
    finally:
        if lab.poll() is None:
            lab.send_signal(signal.SIGINT)
            lab.communicate(timeout=60)
    out = "".join(seen) + rest
    assert lab.returncode == 0, out
    assert "agent hq exited" in out and "lab removed" in out, out
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pt{run}-" not in names, names
