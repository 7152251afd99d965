"""The simulator's pieces: packets crossing link models hop by hop, the flow-level loss model, and the
TCP and HTTP models around an outage."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from emulation.backends.sim.agent import AGENT_STARTUP_S
from emulation.backends.sim.clock import SimEnvironment
from emulation.backends.sim.engine import T0, Simulation
from emulation.backends.sim.network import FROM_CORE, TO_CORE, Network, SimOptions
from emulation.backends.sim.traffic import LinkTable, _cross
from emulation.links.impairment import GilbertElliott, Impairment, ImpairmentModel
from emulation.scenario import parse
from emulation.scenario.model import GilbertElliott as ScenarioGE

pytestmark = pytest.mark.sim

TWO_SITES = """
version: 1
name: two-sites
duration: 12s
sites:
  hq:
    uplinks:
      isp1: {bandwidth: 1mbit, delay: 10ms}
    agent: {monitor: fast}
  br:
    uplinks:
      isp1: {bandwidth: 100mbit, delay: 5ms}
    agent: {monitor: fast}
"""


def test_a_packet_crosses_both_links_in_order_with_their_delay_and_serialization() -> None:
    sc = parse(TWO_SITES)
    env = SimEnvironment()
    net = Network(env, sc)
    hops = net.hops(("hq.isp1", TO_CORE), ("br.isp1", FROM_CORE))
    arrivals: list[float] = []
    for _ in range(2):              # back to back: the second waits for the first at hq's 1 Mbit/s
        net.send(hops, 1250, lambda: arrivals.append(env.now))
    env.run()
    ser_hq, ser_br = 1250 * 8 / 1e6, 1250 * 8 / 100e6
    assert arrivals[0] == pytest.approx(ser_hq + 0.010 + ser_br + 0.005)
    assert arrivals[1] - arrivals[0] == pytest.approx(ser_hq)


def test_flow_mode_probes_cross_simple_links_in_one_step_as_hop_by_hop_would() -> None:
    sc = parse(TWO_SITES)
    env = SimEnvironment()
    net = Network(env, sc, probe_shortcut=True)
    out = net.hops(("hq.isp1", TO_CORE), ("br.isp1", FROM_CORE))
    arrivals: list[float] = []
    net.send(out, 100, lambda: arrivals.append(env.now))       # hop by hop, alone on the links
    env.run()
    start = env.now
    delivered = [m.delivered for m in out.models]
    got = net.shortcut(out, start, 100)
    assert got is not None and got - start == pytest.approx(arrivals[0], abs=1e-12)
    assert [m.delivered for m in out.models] == [d + 1 for d in delivered]
    # not when a link changes before the packet has crossed it, and nothing is counted then
    net.stable_until = start + 0.012         # after hq's 10.8 ms, before br's hop ends
    assert net.shortcut(out, start, 100) is not None
    net.stable_until = start + 0.010
    assert net.shortcut(out, start, 100) is None
    assert [m.delivered for m in out.models] == [d + 2 for d in delivered]
    # nor over a link with anything random (jitter here), nor in packet mode
    net.stable_until = float("inf")
    net.apply("br.isp1", replace(sc.uplink("br.isp1").baseline(), jitter_s=0.002), start)
    assert net.shortcut(out, start, 100) is None
    assert Network(env, sc).shortcut(net.hops(("br.isp1", TO_CORE)), start, 100) is None


def test_flow_mode_probes_take_one_event_a_round_trip_between_timeline_steps(tmp_path: Path) -> None:
    events = {}
    for mode in ("packet", "flow"):
        # without coasting (test_sim_coast), which takes even the shortcut's one event away
        sim = Simulation(parse(TWO_SITES), tmp_path / mode, mode, SimOptions(probe_coast=False))
        sim.run()
        events[mode] = (sim.events_processed, sim.probes_sent)
    (packet_events, packet_probes), (flow_events, flow_probes) = events["packet"], events["flow"]
    assert packet_probes == flow_probes
    # a probe is four events hop by hop (one per link crossed) and one with the shortcut (its reply);
    # the rest (timers, samples) is the same in both modes
    assert packet_events - flow_events == pytest.approx(3 * packet_probes, rel=0.02)


def test_a_cut_link_drops_everything_and_a_restored_one_carries_again() -> None:
    sc = parse(TWO_SITES)
    env = SimEnvironment()
    net = Network(env, sc)
    hops = net.hops(("br.isp1", TO_CORE), ("hq.isp1", FROM_CORE))
    got: list[float] = []
    base = sc.uplink("hq.isp1").baseline()
    net.apply("hq.isp1", replace(base, up=False), env.now)
    net.send(hops, 100, lambda: got.append(env.now))
    env.run()
    assert got == []
    net.apply("hq.isp1", base, env.now)
    net.send(hops, 100, lambda: got.append(env.now))
    env.run()
    assert len(got) == 1
    assert [s.up for _, s in net.history["hq.isp1"]] == [True, False, True]     # baseline, cut, restore


def test_flow_level_burst_loss_matches_the_packet_models() -> None:
    """The flow mode's Gilbert-Elliott chain loses what the relay's model loses, in bursts as long."""
    ge = ScenarioGE(p=0.05, r=0.3)
    base = parse(TWO_SITES).uplink("hq.isp1").baseline()
    settings = replace(base, loss_model=ge, rate_bps=0.0)
    table = LinkTable([(-np.inf, settings)])
    n = 40_000
    t = np.arange(n) * 1e-3
    _, lost = _cross(table, t, 100, np.random.default_rng(7))
    model = ImpairmentModel(Impairment(loss_model=GilbertElliott(0.05, 0.3)), seed=7)
    lost_model = np.array([not model.on_packet(i * 1e-3, 100) for i in range(n)])
    for losses in (lost, lost_model):
        assert losses.mean() == pytest.approx(ge.mean_loss_ratio, abs=0.01)     # 14.3 %
        starts = np.flatnonzero(losses[1:] & ~losses[:-1])
        assert losses.sum() / len(starts) == pytest.approx(1 / ge.r, rel=0.1)   # mean burst: 3.3 packets


TCP_AND_HTTP = TWO_SITES.replace("duration: 12s", "duration: 12s\nseed: 3") + """
traffic:
  - {name: bulk, type: tcp_bulk, from: hq, to: br, bandwidth: 500kbit}
  - {name: web, type: http, from: hq, to: br, interval: 500ms, size: 10k}
timeline:
  - {at: 4s, action: cut, link: hq.isp1}
  - {at: 6s, action: restore, link: hq.isp1}
"""


def test_tcp_stops_during_an_outage_and_resumes_at_its_retransmission_timeout(tmp_path: Path) -> None:
    sim = Simulation(parse(TCP_AND_HTTP), tmp_path, "packet")
    sim.run()
    sim.write_raw()
    with open(tmp_path / "raw" / "tcp.csv") as fh:
        rate = {round(float(r["at"]) - T0): float(r["bits_per_second"]) for r in csv.DictReader(fh)}
    # the cap, until the cut at 4 s; hq has one uplink, so nothing until the link is back (6 s) and the
    # path is Up again (a few probes later); the sender's timeouts fire at 4.2, 4.6, 5.4 and 7.0 s
    assert [rate[s] for s in (1, 2, 3, 4)] == [500e3] * 4
    assert [rate[s] for s in (5, 6, 7)] == [0.0] * 3
    assert [rate[s] for s in (8, 9, 10, 11, 12)] == [500e3] * 5
    with open(tmp_path / "raw" / "http.csv") as fh:
        web = [(float(r["at"]) - T0, float(r["latency_ms"]), r["ok"] == "1") for r in csv.DictReader(fh)]
    assert all(ok for at, _, ok in web if at < 3.9 or at > 7.0)
    assert not any(ok for at, _, ok in web if 4.0 <= at < 5.0)      # its SYN retry at +1 s still finds no path
    rtt = 2 * (0.010 + 0.005)
    fastest = min(lat for _, lat, ok in web if ok)
    assert fastest == pytest.approx((3 * rtt + 10 * 1024 * 8 / (1e6 * 1380 / 1494)) * 1000, rel=0.01)


AGENT_STOP = TWO_SITES + """
traffic:
  - {name: cbr, type: udp_cbr, from: hq, to: br, rate: 100}
timeline:
  - {at: 3s, action: agent_stop, site: br, cleanup: CLEANUP}
  - {at: 5s, action: agent_start, site: br}
"""


def _packets(out: Path) -> list[tuple[float, bool, str]]:
    with open(out / "raw" / "packets.csv") as fh:
        return [((int(r["sent_ns"]) - int(T0 * 1e9)) / 1e9, r["recv_ns"] != "", r["path"])
                for r in csv.DictReader(fh)]


def _events(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "raw" / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["packet", "flow"])
def test_a_stop_with_cleanup_neither_reflects_nor_receives_and_the_restarted_agent_starts_afresh(
        tmp_path: Path, mode: str) -> None:
    # in flow mode probes take the shortcut (network.py) between timeline steps: the same outcome
    sim = Simulation(parse(AGENT_STOP.replace("CLEANUP", "true")), tmp_path, mode)
    sim.run()
    sim.write_raw()
    boot = 5.0 + AGENT_STARTUP_S
    packets = _packets(tmp_path)
    assert all(got for t, got, _ in packets if t < 2.9 or t > boot + 0.5)
    assert not any(got for t, got, _ in packets if 3.0 <= t < boot)      # br's tunnels are gone until it runs
    # hq stops sending into the tunnel once its paths to br are Down (br reflects nothing), until they
    # come back after br's restart
    assert any(path == "" for t, _, path in packets if 3.2 < t < 5.0)
    events = _events(tmp_path)
    started = [e for e in events if e["kind"] == "AgentStarted" and e["site"] == "br"]
    assert len(started) == 2 and started[1]["at"] - T0 == pytest.approx(boot) and started[1]["adopted"] is None
    downs = [e["at"] - T0 for e in events if e["kind"] == "PathStatusChanged" and e["site"] == "hq"   # type: ignore[operator]
             and e["new"] == "down"]
    assert downs and all(3.0 < t < 3.3 for t in downs)
    with open(tmp_path / "raw" / "path_metrics.csv") as fh:
        br_samples = [float(r["at"]) - T0 for r in csv.DictReader(fh) if r["site"] == "br"]
    assert not [t for t in br_samples if 3.0 < t < boot]       # a stopped agent answers no API
    assert (tmp_path / "raw" / "timeline.csv").read_text().splitlines()[1:] == [
        '3.0,1700000003.0,agent_stop,br,"{""cleanup"": true}"', "5.0,1700000005.0,agent_start,br,{}"]


@pytest.mark.parametrize("mode", ["packet", "flow"])
@pytest.mark.parametrize("site", ["hq", "br"])
def test_a_graceful_stop_keeps_the_site_forwarding_and_the_next_agent_adopts_its_flows(
        tmp_path: Path, mode: str, site: str) -> None:
    doc = AGENT_STOP.replace("CLEANUP", "false").replace("site: br", f"site: {site}")
    sim = Simulation(parse(doc), tmp_path, mode)
    sim.run()
    sim.write_raw()
    packets = _packets(tmp_path)
    assert all(got for _, got, _ in packets)                     # not one packet lost
    assert {path for _, _, path in packets} == {"br:isp1-isp1"}
    events = _events(tmp_path)
    # no agent decided anything because of the restart: the other site kept its path Up (the
    # reflector outlives the agent), the restarted one adopted the flow where it was
    others = [e for e in events if e["kind"] in ("FailoverTriggered", "Failback", "FlowStranded")
              or (e["kind"] == "PathStatusChanged" and e["new"] == "down")]
    assert not others, others
    started = [e for e in events if e["kind"] == "AgentStarted" and e["site"] == site]
    assert len(started) == 2 and started[1]["at"] - T0 == pytest.approx(5.0 + AGENT_STARTUP_S)
    assert started[1]["adopted"] == {"flows": 1 if site == "hq" else 0}     # br sends no flow
    with open(tmp_path / "raw" / "path_metrics.csv") as fh:
        samples = [float(r["at"]) - T0 for r in csv.DictReader(fh) if r["site"] == site]
    assert not [t for t in samples if 3.0 < t < 5.0 + AGENT_STARTUP_S]   # no agent, no API
    assert sim.agents[site].logic is not None and not sim.agents[site].logic.steering_held


def test_the_agent_start_up_time_is_a_scenario_setting(tmp_path: Path) -> None:
    doc = AGENT_STOP.replace("CLEANUP", "true").replace("agent: {monitor: fast}\n  br:",
                                                        "agent: {monitor: fast}\n  br:").replace(
        "      isp1: {bandwidth: 100mbit, delay: 5ms}\n    agent: {monitor: fast}",
        "      isp1: {bandwidth: 100mbit, delay: 5ms}\n    agent: {monitor: fast, startup: 300ms}")
    sc = parse(doc)
    assert sc.site("br").agent.startup_s == 0.3 and sc.site("hq").agent.startup_s is None
    sim = Simulation(sc, tmp_path, "packet")
    sim.run()
    sim.write_raw()
    started = [e["at"] - T0 for e in _events(tmp_path) if e["kind"] == "AgentStarted" and e["site"] == "br"]  # type: ignore[operator]
    assert started[1] == pytest.approx(5.3)
    assert json.loads((tmp_path / "raw" / "run.json").read_text())["sim"]["agent_startup_s"] == \
        {"hq": AGENT_STARTUP_S, "br": 0.3}
    assert "startup" not in sim.documents["br"]          # the real agent's site file does not have it


def test_a_failed_over_flow_adopted_after_a_restart_fails_back_after_the_hold(tmp_path: Path) -> None:
    """hq's isp1 is cut and restored while hq's agent is stopped: nothing moves until it runs again,
    then the flow (failed over before the stop) fails back once the hold has passed since the restart."""
    doc = """
version: 1
name: restart-failback
duration: 30s
sites:
  hq:
    uplinks:
      isp1: {bandwidth: 100mbit, delay: 5ms}
      isp2: {bandwidth: 100mbit, delay: 20ms}
    agent: {monitor: fast, router: {failback_hold: 4s, min_improvement: 0}}
  br:
    uplinks:
      isp1: {bandwidth: 100mbit, delay: 5ms}
    agent: {monitor: fast}
traffic:
  - {name: cbr, type: udp_cbr, from: hq, to: br, rate: 100}
timeline:
  - {at: 3s, action: cut, link: hq.isp1}
  - {at: 6s, action: agent_stop, site: hq}
  - {at: 8s, action: restore, link: hq.isp1}
  - {at: 10s, action: agent_start, site: hq}
"""
    sim = Simulation(parse(doc), tmp_path, "packet")
    sim.run()
    sim.write_raw()
    events = [e for e in _events(tmp_path) if e["site"] == "hq"]
    slot = sim.flows[0].slot      # the agent moves slots: the flow's is the one of its policy that began on isp1
    assert slot is not None and slot.origin == "br:isp1-isp1"
    mine = {"remote": slot.remote, "policy": slot.policy, "origin": slot.origin, "gen": slot.gen}
    moves = [(e["kind"], round(e["at"] - T0, 2), e["to_path"]) for e in events   # type: ignore[operator]
             if e["kind"] in ("FailoverTriggered", "Failback") and e["slot"] == mine]
    boot = 10.0 + AGENT_STARTUP_S
    assert [(k, p) for k, _, p in moves] == [("FailoverTriggered", "br:isp2-isp1"), ("Failback", "br:isp1-isp1")]
    assert 3.0 < moves[0][1] < 3.2
    # the hold (4 s) runs from when the restarted agent had its paths Up, not from the restore at 8 s
    assert boot + 4.0 < moves[1][1] < boot + 4.5
    packets = _packets(tmp_path)
    assert all(path == "br:isp2-isp1" for t, _, path in packets if 3.2 < t < boot + 4.0)


def test_a_flow_that_starts_while_no_agent_runs_goes_where_the_kernel_sends_new_flows(tmp_path: Path) -> None:
    doc = AGENT_STOP.replace("CLEANUP", "false").replace("site: br", "site: hq").replace(
        "  - {name: cbr, type: udp_cbr, from: hq, to: br, rate: 100}",
        "  - {name: cbr, type: udp_cbr, from: hq, to: br, rate: 100}\n"
        "  - {name: late, type: udp_cbr, from: hq, to: br, rate: 100, start: 4s, dst_port: 5002}")
    sim = Simulation(parse(doc), tmp_path, "packet")
    sim.run()
    sim.write_raw()
    with open(tmp_path / "raw" / "packets.csv") as fh:
        late = [(r["recv_ns"] != "", r["path"]) for r in csv.DictReader(fh) if r["flow"] == "late"]
    assert late and all(got for got, _ in late) and {p for _, p in late} == {"br:isp1-isp1"}
    hq = sim.agents["hq"]
    assert hq.runtime is not None
    # the restarted agent adopted its slot as any other slot the kernel steers, where the kernel had it
    late_slot = next(f.slot for f in sim.flows if f.name == "late")
    assert late_slot is not None and late_slot in hq.runtime.slots
    assert hq.runtime.slot_path(late_slot) == "br:isp1-isp1"
