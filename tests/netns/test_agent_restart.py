"""Graceful restart with real agents in namespaces: a stopped (or killed) agent leaves its dataplane,
the kernel keeps forwarding, the next agent adopts it (the same wireguard-go processes) and the flow
loses at most one probe window; `patronus cleanup` removes it all; a changed site file adopts what
still matches, removes what no longer belongs and creates what is new.

One lab (see `emulation/netns_lab.py`) for the module, agents started without `--cleanup`; each test
leaves both agents running on the lab's own site files. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from emulation.netns_lab import TwoSiteLab, wait_for
from emulation.udpflow import analyse
from patronus.core.monitor import PROFILES

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

if os.geteuid() != 0:
    pytest.skip("needs root to create network namespaces", allow_module_level=True)

RATE = 1000                                                  # packets per second
HOLD_S = 3.0
# everything the cheapest way (isp1), so a slot failed over to isp2 has a reason to come back
POLICIES = [{"name": "Default", "priority": 100, "preference": "lowest_cost", "failover_threshold": 50}]
ROUTER = {"failback_hold": f"{HOLD_S:g}s", "failover_cooldown": "1s", "min_improvement": 5}
PROFILE = PROFILES["fast"]                                   # the lab's agents
WINDOW_PACKETS = round(RATE * PROFILE.interval_s * PROFILE.window)   # one probe window of the flow's traffic


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoSiteLab]:
    lab = TwoSiteLab.fresh(tmp_path_factory.mktemp("restart"))
    lab.build()
    try:
        for s in ("hq", "br"):
            lab.start_agent(s, cleanup=False, policies=POLICIES, router=ROUTER)
        lab.wait_ready()
        yield lab
    finally:
        logs = {s: lab.agent_log(s)[-3000:] for s in lab.sites}
        lab.teardown()
        for s, text in logs.items():
            print(f"--- agent {s} log (tail) ---\n{text}")


def in_ns(lab: TwoSiteLab, site: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.sites[site].ns, *argv], capture_output=True, text=True).stdout


def wg_pids(lab: TwoSiteLab, site: str) -> dict[str, int]:
    """Tunnel → the pid of its wireguard-go, from the agent's pid files (checked to run)."""
    out = {}
    for f in lab.state_dir(site).glob("wg-*.pid"):
        pid, ifname = f.read_text().split()[:2]
        if Path(f"/proc/{pid}").exists():
            out[ifname] = int(pid)
    return out


def reflector_pid(lab: TwoSiteLab, site: str) -> int | None:
    f = lab.state_dir(site) / "reflector.pid"
    return int(json.loads(f.read_text())["pid"]) if f.exists() else None


def dataplane(lab: TwoSiteLab, site: str) -> dict[str, Any]:
    sid = lab.sites[site].id
    return {"links": sorted(w.split(":")[1].strip().split("@")[0] for w in in_ns(lab, site, "ip", "-o", "link")
                            .splitlines() if f" pt{sid}p" in w),
            "table": f"patronus_s{sid}" in in_ns(lab, site, "nft", "list", "tables"),
            "rules": in_ns(lab, site, "ip", "rule").count("proto 183")
            + in_ns(lab, site, "ip", "-6", "rule").count("proto 183"),
            "routes": in_ns(lab, site, "ip", "route", "show", "table", "all").count("proto 183"),
            "slot_path": in_ns(lab, site, "nft", "list", "map", "inet", f"patronus_s{sid}", "slot_path")}


def settled(lab: TwoSiteLab, site: str) -> dict[str, Any] | None:
    """The agent's /site once its steering hold is over, every path is Up and no slot waits for its
    failback hold (a slot displaced during the lab's start moves back HOLD_S later: a dataplane read
    before that is not the steady state the restart must preserve)."""
    info = lab.api(site, "/site")
    if info.get("steering_held") or info.get("pending_failbacks"):
        return None
    return info if lab.all_up(site) else None


class Flow:
    """A RATE packets/s UDP flow from hq's LAN host to br's, with its receiver."""

    def __init__(self, lab: TwoSiteLab, duration: float, dport: int = 5101) -> None:
        self.out = lab.workdir / f"arrivals-{dport}-{time.monotonic_ns()}.json"
        ready = self.out.with_suffix(".ready")
        br, hq = lab.sites["br"], lab.sites["hq"]
        self.recv = subprocess.Popen(["ip", "netns", "exec", br.host_ns, sys.executable, "-m", "emulation.udpflow",
                                      "recv", "--port", str(dport), "--out", str(self.out), "--ready", str(ready),
                                      "--duration", str(duration + 10)], stdout=subprocess.DEVNULL)
        wait_for(ready.exists, 10, "the receiver")
        self.send = subprocess.Popen(["ip", "netns", "exec", hq.host_ns, sys.executable, "-m", "emulation.udpflow",
                                      "send", "--to", f"{br.host_ip}:{dport}", "--rate", str(RATE), "--duration",
                                      str(duration), "--sport", str(dport + 30000)], stdout=subprocess.PIPE, text=True)

    def lost(self) -> int:
        out, _ = self.send.communicate(timeout=120)
        self.recv.terminate()
        self.recv.wait(10)
        return analyse(self.out, sent=json.loads(out)["sent"]).lost


def restart(lab: TwoSiteLab, site: str, how: str) -> tuple[float, float, dict[str, Any], str]:
    """Stop `site`'s agent (`term`: SIGTERM, `kill`: kill -9 of its process group), wait a little with
    no agent, start it again on the same site file. Returns (spawned at, its AgentStarted at, the
    dataplane the stopped agent left, the new agent's slot map once its steering hold is over).

    The slot map is read as soon as the new agent steers, well inside the failback hold (HOLD_S, counted
    from the restart): a slot the old agent had displaced is adopted with its origin and may fail back
    once the hold is over (when the new agent's own measurements rank the origin better), which is the
    router's rule, not the adoption's doing (the failback test below checks that rule across a restart)."""
    me = lab.sites[site]
    p = me.agent
    assert p is not None
    if how == "term":
        assert lab.stop_agent(site) == 0, lab.agent_log(site)[-2000:]
    else:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        me.agent = None
    left = dataplane(lab, site)
    time.sleep(1.0)       # a second with no agent at all: the kernel alone forwards (not a wait for a condition)
    spawned = time.time()
    lab.start_agent(site, cleanup=False, write=False)
    wait_for(lambda: not lab.api(site, "/site")["steering_held"] and lab.all_up(site), 30,
             f"{site}'s restarted agent steering")
    adopted_map = dataplane(lab, site)["slot_path"]
    read_at = time.time()
    started = next(e["at"] for e in reversed(lab.api(site, "/events?limit=500")) if e["kind"] == "AgentStarted")
    assert read_at < started + HOLD_S, f"the slot map was read {read_at - started:.2f} s after the start, past the hold"
    assert lab.api(site, "/site")["adopted"] is not None
    return spawned, started, left, adopted_map


@pytest.mark.parametrize(("site", "how"), [("hq", "term"), ("br", "term"), ("hq", "kill"), ("br", "kill")])
def test_a_restart_is_adopted_and_the_flow_loses_at_most_one_probe_window(lab: TwoSiteLab, site: str,
                                                                           how: str) -> None:
    wait_for(lambda: settled(lab, site), 30, "settled before")
    before_wg, before_refl = wg_pids(lab, site), reflector_pid(lab, site)
    assert len(before_wg) == 4 and before_refl is not None and dataplane(lab, site)["table"]
    flow = Flow(lab, duration=8.0)
    try:
        wait_for(lambda: any(f["dst_port"] == 5101 for f in lab.api("hq", "/flows")), 10, "the flow steered")
        spawned, started, left, adopted_map = restart(lab, site, how)
        print(f"{site} {how}: the agent started {started - spawned:.3f} s after it was spawned")
    finally:
        lost = flow.lost()
    # the same tunnels, processes, table, rules, routes and slots: adopted, not recreated
    assert wg_pids(lab, site) == before_wg and reflector_pid(lab, site) == before_refl
    assert adopted_map == left["slot_path"], (left["slot_path"], adopted_map)
    after = dataplane(lab, site)
    assert {k: v for k, v in after.items() if k != "slot_path"} == {k: v for k, v in left.items() if k != "slot_path"}
    info = lab.api(site, "/site")
    assert info["adopted"]["tunnels"] == {"adopted": 4} and info["adopted"]["reflector"] == "adopted", info
    assert info["adopted"]["slots"] > 0 and info["adopted"]["slots_dropped"] == 0, info
    events = [e for e in lab.api(site, "/events?limit=500") if e["at"] >= spawned]
    assert not [e for e in events if e["kind"] == "FailoverTriggered"], events
    # an adopted displaced slot goes back to its origin no sooner than the hold after the start
    assert all(e["at"] >= started + HOLD_S for e in events if e["kind"] == "Failback"), (started, events)
    print(f"{site} {how}: {lost} packets lost of a {RATE} packets/s flow (one probe window: {WINDOW_PACKETS})")
    assert lost <= WINDOW_PACKETS


def test_cleanup_removes_what_a_stopped_agent_left_and_the_next_start_builds_it_afresh(lab: TwoSiteLab) -> None:
    sid = lab.sites["hq"].id
    assert lab.stop_agent("hq") == 0
    wg, refl = wg_pids(lab, "hq"), reflector_pid(lab, "hq")
    assert len(wg) == 4 and refl is not None and dataplane(lab, "hq")["table"]       # left, as stopped
    r = lab.cleanup_site("hq")
    assert r.returncode == 0, r.stdout + r.stderr
    gone = dataplane(lab, "hq")
    assert gone["links"] == [] and not gone["table"] and gone["rules"] == 0 and gone["routes"] == 0, gone
    for pid in [*wg.values(), refl]:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[1][:3]
    assert lab.leftovers("hq") == []
    assert "reflector process" in r.stdout and f"pt{sid}p1" in r.stdout
    lab.start_agent("hq", cleanup=False, write=False)
    info = wait_for(lambda: settled(lab, "hq"), 40, "hq's fresh agent settled")
    assert info["adopted"] is None
    assert set(wg_pids(lab, "hq")) == set(wg) and not set(wg_pids(lab, "hq").values()) & set(wg.values())
    wait_for(lambda: all(t > 0 for t in lab.handshakes("hq")), 30, "handshakes on the new tunnels")


def test_a_changed_site_file_adopts_what_matches_removes_the_rest_and_creates_what_is_new(lab: TwoSiteLab) -> None:
    hq = lab.sites["hq"]
    assert hq.config_path is not None
    original = hq.config_path.read_text()
    doc = yaml.safe_load(original)
    extra = f"10.{lab.octet}.9.0/24"
    doc["uplinks"] = [u for u in doc["uplinks"] if u["name"] == "isp1"]    # hq loses its isp2
    doc["remotes"][0]["prefixes"].append(extra)                           # and br gets another prefix
    before = wg_pids(lab, "hq")
    assert lab.stop_agent("hq") == 0
    try:
        hq.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        lab.start_agent("hq", cleanup=False, write=False)
        info = wait_for(lambda: lab.api("hq", "/site") if not lab.api("hq", "/site")["steering_held"] else None,
                        30, "hq's agent on the changed file past its hold")
        sid = hq.id
        # paths 1 and 2 (hq isp1 → br isp1 / isp2) keep their numbers: adopted in place, allowed-ips changed
        assert info["adopted"]["tunnels"] == {"reconfigured": 2, "removed": 2}, info["adopted"]
        after = wg_pids(lab, "hq")
        assert after == {f"pt{sid}p1": before[f"pt{sid}p1"], f"pt{sid}p2": before[f"pt{sid}p2"]}
        assert info["adopted"]["reflector"] == "replaced"       # it no longer listens on isp2
        dp = dataplane(lab, "hq")
        assert dp["links"] == [f"pt{sid}p1", f"pt{sid}p2"]
        rules = in_ns(lab, "hq", "ip", "rule")
        assert "7003:" not in rules and "7004:" not in rules and "7301:" not in rules and "7311:" not in rules
        assert extra.split("/")[0] in rules                                # unreachable rule for the new prefix
        routes = in_ns(lab, "hq", "ip", "route", "show", "table", "all")
        assert "table 7103" not in routes and "table 7051" not in routes
        assert f"{extra} dev pt{sid}p1 table 7101" in routes
        allowed = in_ns(lab, "hq", "wg", "show", f"pt{sid}p1", "allowed-ips")
        assert extra in allowed
    finally:
        lab.stop_agent("hq")
        hq.config_path.write_text(original)
        lab.start_agent("hq", cleanup=False, write=False)
    info = wait_for(lambda: settled(lab, "hq"), 40, "hq back on its own file")
    assert info["adopted"]["tunnels"] == {"reconfigured": 2, "created": 2}, info["adopted"]
    wait_for(lambda: len(lab.handshakes("hq")) == 4 and all(t > 0 for t in lab.handshakes("hq")), 30,
             "handshakes on every tunnel again")
    wait_for(lambda: settled(lab, "br"), 30, "br's paths to hq Up again")


def flow_path(lab: TwoSiteLab, dport: int = 5101) -> str | None:
    """The path of the flow to `dport` in hq's flow table, once conntrack shows it steered (a flow the
    table lists before its first packet took a slot has no path yet)."""
    return next((str(f["path"]) for f in lab.api("hq", "/flows") if f["dst_port"] == dport and f["path"]), None)


def test_a_slot_failed_over_before_the_restart_is_adopted_where_it_is_and_fails_back_after_the_hold(
        lab: TwoSiteLab) -> None:
    """hq's isp1 is cut (the flow goes to isp2), hq's agent stops, isp1 comes back while no agent runs:
    the kernel keeps the flow on isp2. The new agent adopts the slot there with its origin, and moves
    it back only after the failback hold, counted from the restart."""
    wait_for(lambda: settled(lab, "hq"), 30, "settled before")
    flow = Flow(lab, duration=16.0)
    try:
        first = wait_for(lambda: flow_path(lab), 10, "the flow steered")
        assert first.split(":")[1].startswith("isp1-"), first
        lab.cut("hq", "isp1")
        moved = wait_for(lambda: (p := flow_path(lab)) and p.split(":")[1].startswith("isp2-") and p, 10,
                         "the flow failed over to isp2")
        assert lab.stop_agent("hq") == 0
        lab.restore("hq", "isp1")
        spawned = time.time()
        lab.start_agent("hq", cleanup=False, write=False)
        info = wait_for(lambda: (i := lab.api("hq", "/site")) and not i["steering_held"] and i, 30, "hold over")
        assert info["displaced_slots"] > 0 and info["pending_failbacks"] > 0, info    # adopted with their origin
        # and left where they were (the flow table is read from conntrack once a second)
        assert wait_for(lambda: flow_path(lab), 5, "the flow in the new agent's table") == moved
        back = wait_for(lambda: (p := flow_path(lab)) and p.split(":")[1].startswith("isp1-") and p, 20,
                        "the flow back on isp1")
        backs = [e for e in lab.api("hq", "/events?limit=500") if e["kind"] == "Failback" and e["at"] > spawned]
        started = max(e["at"] for e in lab.api("hq", "/events?limit=500") if e["kind"] == "AgentStarted")
        assert backs and min(e["at"] for e in backs) >= started + HOLD_S, (backs, started)
        assert back == first
    finally:
        with contextlib.suppress(RuntimeError):
            lab.restore("hq", "isp1")
        lost = flow.lost()
    print(f"cut, restart and failback: {lost} packets lost of the {RATE} packets/s flow (the cut's detection)")
    assert lost <= WINDOW_PACKETS
    wait_for(lambda: settled(lab, "hq") and settled(lab, "br"), 30, "settled after")


def test_a_reflector_that_dies_is_started_again(lab: TwoSiteLab) -> None:
    """The reflector lives apart from the agent (it outlives restarts), so the agent watches it."""
    wait_for(lambda: settled(lab, "hq"), 30, "settled before")
    old = reflector_pid(lab, "hq")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := reflector_pid(lab, "hq")) != old and p, 10, "a new reflector")
    assert Path(f"/proc/{new}").exists()
    assert any(e["kind"] == "ReflectorRestarted" for e in lab.api("hq", "/events?limit=200"))
    wait_for(lambda: settled(lab, "br") and settled(lab, "hq"), 30, "br's paths to hq Up again")
