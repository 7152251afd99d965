"""The scenario format: shipped files, defaults, units, errors with paths, round trips, overrides."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
import yaml

from emulation.scenario import (
    ConfigError,
    Cut,
    DetectTime,
    FailoverGap,
    Flap,
    FlowStays,
    FlowType,
    GilbertElliott,
    Impair,
    JitterDistribution,
    LinkRef,
    LostPackets,
    PathChanges,
    Ramp,
    Restore,
    Scenario,
    SlaCompliance,
    Steering,
    Topology,
    from_dict,
    load,
    parse,
)
from emulation.scenario.loader import with_overrides
from emulation.scenario.timeline import schedule
from patronus.core.monitor import PROFILES
from patronus.core.policy import default_policies
from tests.emulation_unit.conftest import MINIMAL, SCENARIOS

pytestmark = pytest.mark.unit


def errors_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        from_dict(doc)
    return exc.value.errors


def paths_of(doc: Any) -> list[str]:
    return [p for p, _ in errors_of(doc)]


# --- the shipped scenarios ------------------------------------------------------------------------

def test_the_five_scenarios_are_shipped() -> None:
    assert {p.stem for p in SCENARIOS} >= {"failover-basic", "brownout", "flapping", "voip-sla", "six-sites"}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_validates(path: Any) -> None:
    s = load(path)
    assert s.name == path.stem
    assert s.duration_s <= 60, "keep shipped scenarios short enough for CI"
    assert s.expectations, "each shipped scenario says what passing means"
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), "each scenario is documented at its top"
    assert "Passing means" in path.read_text()


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_round_trip(path: Any) -> None:
    s = load(path)
    again = parse(s.to_yaml())
    assert again == s
    assert again.to_dict() == s.to_dict()


def test_failover_basic_timings() -> None:
    s = load(next(p for p in SCENARIOS if p.stem == "failover-basic"))
    assert [(type(e), e.at_s, str(e.link)) for e in s.timeline if isinstance(e, Cut | Restore)] == [
        (Cut, 20.0, "hq.isp1"), (Restore, 40.0, "hq.isp1")]
    assert s.flow("cbr").rate_pps == 1000
    assert s.site("hq").agent.monitor == PROFILES["fast"]
    gaps = {e.flow: e.max_s for e in s.expectations if isinstance(e, FailoverGap)}
    assert gaps == {"cbr": 0.3, "voice": 0.3}


# --- defaults and units ---------------------------------------------------------------------------

def test_defaults_are_applied(doc: dict[str, Any]) -> None:
    s = from_dict(doc)
    assert (s.seed, s.description, s.duration_s, s.version) == (1, "", 30.0, 1)
    hq, br = s.sites
    assert (hq.id, br.id) == (1, 2)
    assert (hq.lan_prefix, br.lan_prefix) == ("10.1.0.0/24", "10.2.0.0/24")
    assert (hq.hosts, br.hosts) == (1, 2)
    up = hq.uplink("isp1")
    assert (up.bandwidth_bps, up.delay_s, up.jitter_s, up.loss_ratio, up.queue_limit_packets, up.cost_per_gb) == (
        100e6, 0.0, 0.0, 0.0, 1000, 0.0)
    assert up.jitter_distribution is JitterDistribution.NORMAL
    assert [u.number for u in hq.uplinks] == [0, 1]
    assert hq.agent.monitor == PROFILES["default"]
    assert hq.agent.policies == tuple(default_policies())
    assert hq.agent.steering is Steering.NFTABLES
    assert hq.agent.router.failback_hold_s == 10.0
    assert s.core.topology is Topology.INTERNET and s.core.hub is None


def test_flow_defaults_by_type(doc: dict[str, Any]) -> None:
    s = from_dict(doc)
    f = {x.name: x for x in s.flows}
    assert {n: (x.traffic_class, x.dst_port, x.protocol) for n, x in f.items()} == {
        "cbr": ("default", 5001, "udp"), "voice": ("voip", 5060, "udp"), "video": ("video", 5004, "udp"),
        "bulk": ("bulk", 5201, "tcp"), "web": ("web", 8080, "tcp")}
    assert all(x.start_s == 0 and x.stop_s == 30 for x in s.flows)
    assert (f["cbr"].rate_pps, f["cbr"].payload_bytes) == (1000, 64)
    assert (f["voice"].rate_pps, f["voice"].payload_bytes) == (50, 172)
    assert (f["video"].bitrate_bps, f["video"].frame_rate) == (4e6, 30)
    assert f["video"].packets_per_s == 30 * math.ceil(4e6 / 8 / 30 / 1200)
    assert f["bulk"].bandwidth_bps is None and f["bulk"].packets_per_s is None
    assert (f["web"].interval_s, f["web"].response_bytes) == (1.0, 65536)
    assert str(f["voice"].dst) == "br.host2" and str(f["voice"].src) == "hq.host1"


def test_units_as_people_write_them(doc: dict[str, Any]) -> None:
    doc["sites"]["hq"]["uplinks"]["isp1"] = {"bandwidth": "20mbit", "delay": "25ms", "jitter": "500us",
                                             "loss": "0.5%", "queue_limit": 200, "cost_per_gb": 1.5,
                                             "jitter_distribution": "pareto"}
    doc["traffic"][0].update(rate="250pps", size="1k", start="1.5s", stop="0.25m")
    doc["traffic"][3]["bandwidth"] = "64kbit"
    doc["timeline"].append({"at": 12, "action": "impair", "link": "br.isp1", "rate": "1gbit", "duplicate": 0.01,
                            "reorder": "25%", "corrupt": "0.1%",
                            "loss_model": {"type": "gilbert_elliott", "p": "1%", "r": "50%"}})
    s = from_dict(doc)
    up = s.site("hq").uplink("isp1")
    assert up.bandwidth_bps == 20e6 and up.delay_s == pytest.approx(0.025) and up.jitter_s == pytest.approx(5e-4)
    assert up.loss_ratio == pytest.approx(0.005) and up.queue_limit_packets == 200 and up.cost_per_gb == 1.5
    cbr = s.flow("cbr")
    assert (cbr.rate_pps, cbr.payload_bytes, cbr.start_s, cbr.stop_s) == (250, 1024, 1.5, 15.0)
    assert s.flow("bulk").bandwidth_bps == 64e3
    imp = next(e for e in s.timeline if isinstance(e, Impair)).impairment
    assert imp.rate_bps == 1e9 and imp.duplicate_ratio == 0.01 and imp.reorder_ratio == 0.25
    assert imp.corrupt_ratio == pytest.approx(0.001)
    assert imp.loss_model == GilbertElliott(p=0.01, r=0.5, h=1.0, k=0.0)
    assert imp.loss_model.mean_loss_ratio == pytest.approx(0.01 / 0.51)


def test_explicit_ids_and_prefixes(doc: dict[str, Any]) -> None:
    doc["sites"]["br"]["id"] = 1                # hq gets the smallest unused id
    doc["sites"]["hq"]["lan_prefix"] = "192.168.10.0/24"
    s = from_dict(doc)
    assert (s.site("hq").id, s.site("br").id) == (2, 1)
    assert s.site("hq").lan_prefix == "192.168.10.0/24" and s.site("br").lan_prefix == "10.1.0.0/24"


# --- errors ---------------------------------------------------------------------------------------

def test_the_design_guides_example_error(doc: dict[str, Any]) -> None:
    doc["sites"]["hq"]["uplinks"]["isp1"]["delay"] = "fast"
    assert errors_of(doc) == [("sites.hq.uplinks.isp1.delay", "expected a duration like \"20ms\", got 'fast'")]


def test_a_dozen_mistakes_give_a_dozen_errors_with_exact_paths(doc: dict[str, Any]) -> None:
    doc["version"] = 2                                                          # 1
    doc["duration"] = "1 minute"                                                # 2 (and no end-of-run checks)
    doc["sites"]["hq"]["uplinks"]["isp1"]["bandwidth"] = "lots"                 # 3
    doc["sites"]["hq"]["uplinks"]["isp2"]["loss"] = "150%"                      # 4
    doc["sites"]["br"]["uplinks"]["isp1"] = {"queue_limt": 10}                  # 5
    doc["sites"]["hq"]["agent"] = {"monitor": "fastest", "steering": "bpf"}     # 6, 7
    doc["traffic"][0]["to"] = "brr"                                             # 8
    doc["traffic"][1]["rate"] = 100                                             # 9
    doc["timeline"][1]["link"] = "hq.isp9"                                      # 10
    doc["timeline"].append({"at": "5s", "action": "explode", "link": "hq.isp1"})  # 11
    doc["expectations"].append({"lost_packets": {"flow": "ghost", "max": 3}})     # 12
    assert paths_of(doc) == [
        "version",
        "duration",
        "sites.hq.uplinks.isp1.bandwidth",
        "sites.hq.uplinks.isp2.loss",
        "sites.hq.agent.monitor",
        "sites.hq.agent.steering",
        "sites.br.uplinks.isp1.queue_limt",
        "traffic[0].to",
        "traffic[1].rate",
        "timeline[1].link",
        "timeline[2].action",
        "expectations[1].lost_packets.flow",
    ]


def test_error_reasons_say_what_was_expected(doc: dict[str, Any]) -> None:
    doc["sites"]["br"]["uplinks"]["isp1"] = {"queue_limt": 10}
    doc["traffic"][0]["to"] = "brr"
    doc["traffic"][1]["rate"] = 100
    doc["timeline"][1]["link"] = "hq.isp9"
    doc["expectations"].append({"flow_stays": {"flow": "bulk", "during": ["20s", "10s"]}})
    reasons = dict(errors_of(doc))
    assert reasons["sites.br.uplinks.isp1.queue_limt"] == "unknown setting; did you mean 'queue_limit'?"
    assert reasons["traffic[0].to"] == "unknown site 'brr'; did you mean 'br'? (the sites are hq, br)"
    assert reasons["traffic[1].rate"].startswith("not a setting of a voip flow")
    assert reasons["timeline[1].link"] == ("unknown uplink 'isp9' of site hq; did you mean 'isp2'? "
                                           "(its uplinks are isp1, isp2)")
    assert reasons["expectations[1].flow_stays.during"] == "the window must end after it starts, got 20s to 10s"


def test_one_mistake_is_one_error_not_a_cascade(doc: dict[str, Any]) -> None:
    """A site with a bad setting is still a known site; a flow with a bad setting is still a known flow."""
    doc["sites"]["br"]["uplinks"]["isp1"] = {"delay": "soon"}
    doc["traffic"][0]["rate"] = "fast"
    assert paths_of(doc) == ["sites.br.uplinks.isp1.delay", "traffic[0].rate"]


@pytest.mark.parametrize(("change", "path", "fragment"), [
    (lambda d: d.update(sites={"hq": d["sites"]["hq"]}), "sites", "at least 2 sites"),
    (lambda d: d["sites"]["hq"]["uplinks"].update(a={}, b={}, c={}), "sites.hq.uplinks", "at most 4 uplinks"),
    (lambda d: d["sites"]["br"].update(uplinks={}), "sites.br.uplinks", "at least one uplink"),
    (lambda d: d["sites"].update(HQ2={"uplinks": {"x": {}}}), "sites.HQ2", "site names are lowercase"),
    (lambda d: d["sites"]["br"].update(lan_prefix="10.1.0.0/16"), "sites.br.lan_prefix", "overlaps"),
    (lambda d: d["sites"]["br"].update(lan_prefix="10.9.0.1/24"), "sites.br.lan_prefix", "host bits"),
    (lambda d: d["sites"]["br"].update(lan_prefix="10.9.0.0/30", hosts=2), "sites.br.hosts", "do not fit"),
    (lambda d: d["sites"]["hq"].update(id=7) or d["sites"]["br"].update(id=7), "sites.br.id",
     "duplicate of sites.hq.id (7)"),
    (lambda d: d.update(core={"topology": "hub-and-spoke"}), "core.hub", "required"),
    (lambda d: d.update(core={"hub": "hq"}), "core.hub", "only with topology hub-and-spoke"),
    (lambda d: d["traffic"][0].update(to="hq"), "traffic[0].to", "must cross the WAN"),
    (lambda d: d["traffic"][0].update(to="br.host3"), "traffic[0].to", "br has 2 LAN hosts (host1..host2)"),
    (lambda d: d["traffic"][0].update(stop="40s"), "traffic[0].stop", "after the end"),
    (lambda d: d["traffic"][0].update(start="20s", stop="10s"), "traffic[0].stop", "must be after start"),
    (lambda d: d["traffic"][1].update(name="cbr"), "traffic[1].name", "duplicate"),
    (lambda d: d["traffic"].append({"name": "x", "type": "udp_cbr", "from": "hq", "to": "br"}),
     "traffic[5].dst_port", "already the destination of traffic[0]"),
    (lambda d: d["traffic"][0].update(type="smtp"), "traffic[0].type", "expected one of udp_cbr, voip"),
    (lambda d: d["traffic"][0].update(size=9000), "traffic[0].size", "16-1392 bytes"),
    (lambda d: d["timeline"][0].update(at="31s"), "timeline[0].at", "after the end of the scenario"),
    (lambda d: d["timeline"].append({"at": "28s", "action": "flap", "link": "hq.isp2", "period": "4s",
                                     "count": 2}), "timeline[2]", "ends at 34s"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "ramp", "link": "hq.isp2", "to": {"loss": "1%"},
                                     "over": "10s"}) or d["timeline"].append(
        {"at": "5s", "action": "flap", "link": "hq.isp2", "period": "2s", "count": 2}), "timeline[3]", "overlaps"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "impair", "link": "hq.isp2", "loss": "1%",
                                     "loss_model": {"type": "gilbert_elliott", "p": 0.1, "r": 0.5}}),
     "timeline[2].loss_model", "not both"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "impair", "link": "hq.isp2",
                                     "loss_model": {"type": "gilbert_elliott", "r": 0.5}}),
     "timeline[2].loss_model.p", "required"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "cut", "link": "hq.isp2", "delay": "1ms"}),
     "timeline[2].delay", "unknown setting of a cut event"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "agent_stop", "link": "hq.isp2"}),
     "timeline[2].site", "required"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "agent_stop", "site": "br", "cleanup": "yes"}),
     "timeline[2].cleanup", "expected true or false"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "agent_start", "site": "br", "cleanup": True}),
     "timeline[2].cleanup", "unknown setting of a agent_start event"),
    (lambda d: d["sites"]["hq"].setdefault("agent", {}).update(startup="soon"),
     "sites.hq.agent.startup", "expected a duration"),
    (lambda d: d["sites"]["hq"].setdefault("agent", {}).update(startup="5min"),
     "sites.hq.agent.startup", "at most"),
    (lambda d: d["timeline"].append({"at": "1s", "action": "ramp", "link": "hq.isp2", "over": "1s",
                                     "to": {"loss_model": {"type": "gilbert_elliott", "p": 0.1, "r": 0.5}}}),
     "timeline[2].to.loss_model", "cannot be ramped"),
    (lambda d: d["expectations"].append({"lost_packets": {"flow": "bulk", "max": 3}}),
     "expectations[1].lost_packets.flow", "measured on packet flows"),
    (lambda d: d["expectations"].append({"detect_time": {"link": "br.isp1", "max": "1s"}}),
     "expectations[1].detect_time.link", "never cut or flapped"),
    (lambda d: d["expectations"].append({"flow_stays": {"flow": "cbr", "during": ["10s", "31s"]}}),
     "expectations[1].flow_stays.during[1]", "after the end"),
    (lambda d: d["expectations"].append({"path_changes": {"flow": "cbr", "min": 3, "max": 2}}),
     "expectations[1].path_changes.min", "must not exceed max"),
    (lambda d: d["expectations"].append({"failover_gap": {"flow": "cbr", "max": "1s"}, "lost_packets": {}}),
     "expectations[1]", "expected one expectation"),
    (lambda d: d["expectations"].append({"sla_compliance": {"flow": "cbr", "min": "99%",
                                                            "target": {"latency": 100}}}),
     "expectations[1].sla_compliance.target.latency", "bare number"),
    (lambda d: d["sites"]["hq"].update(agent={"policies": [{"name": "p", "priority": 1, "preference": "x"}]}),
     "sites.hq.agent.policies[0].preference", "expected one of"),
    (lambda d: d["sites"]["hq"].update(agent={"monitor": {"interval": "1ms"}}), "sites.hq.agent.monitor.interval",
     "at least 10ms"),
    (lambda d: d["sites"]["hq"].update(agent={"router": {"min_improvement": 101}}),
     "sites.hq.agent.router.min_improvement", "0-100"),
])
def test_each_rule(doc: dict[str, Any], change: Any, path: str, fragment: str) -> None:
    change(doc)
    errs = errors_of(doc)
    assert any(p == path and fragment in r for p, r in errs), errs


def test_top_level_shape() -> None:
    assert errors_of(None) == [("(top level)", "the scenario is empty")]
    assert paths_of([1, 2]) == ["(top level)"]
    assert paths_of({}) == ["version", "name", "duration", "sites"]
    assert paths_of({**MINIMAL, "extra": 1}) == ["extra"]


def test_hub_and_spoke(doc: dict[str, Any]) -> None:
    doc["sites"]["br2"] = {"uplinks": {"isp1": {}}}
    doc["core"] = {"topology": "hub-and-spoke", "hub": "hq"}
    s = from_dict(doc)
    assert s.remotes_of("hq") == ("br", "br2") and s.remotes_of("br") == ("hq",)
    doc["traffic"].append({"name": "spoke", "type": "udp_cbr", "from": "br", "to": "br2"})
    assert errors_of(doc) == [("traffic[5].to", "in a hub-and-spoke core spokes talk only to the hub: br → br2 "
                                                "does not start or end at hq")]
    doc["traffic"].pop()
    doc["core"]["topology"] = "full-mesh"
    doc["core"].pop("hub")
    assert from_dict(doc).remotes_of("br") == ("hq", "br2")


# --- YAML -----------------------------------------------------------------------------------------

def test_repeated_keys_are_errors_not_silently_merged() -> None:
    text = yaml.safe_dump(MINIMAL, sort_keys=False) + "sites:\n  x: {}\n"
    text = text.replace("  br:\n", "  hq:\n", 1)
    with pytest.raises(ConfigError) as exc:
        parse(text)
    paths = [p for p, _ in exc.value.errors]
    assert paths == ["sites.hq", "sites"]
    assert "YAML would silently keep only the last one" in exc.value.errors[0][1]


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as exc:
        parse("version: 1\nname: [unclosed\n")
    (where, reason), = exc.value.errors
    assert where.startswith("line ") and reason.startswith("not valid YAML")


def test_load_reports_an_unreadable_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "missing.yaml")
    assert exc.value.errors[0][1].startswith("cannot read the scenario file")


# --- timeline -------------------------------------------------------------------------------------

def test_timeline_is_sorted_by_time_and_stable(doc: dict[str, Any]) -> None:
    doc["timeline"] = [
        {"at": "20s", "action": "restore", "link": "hq.isp1"},
        {"at": "5s", "action": "impair", "link": "hq.isp2", "delay": "50ms"},
        {"at": "5s", "action": "cut", "link": "hq.isp1"},
        {"at": "1s", "action": "agent_stop", "site": "br"},
        {"at": "5s", "action": "restore", "link": "br.isp1", "note": "no-op: br.isp1 is up"},
    ]
    s = from_dict(doc)
    assert [(e.at_s, e.action) for e in s.timeline] == [(1, "agent_stop"), (5, "impair"), (5, "cut"),
                                                       (5, "restore"), (20, "restore")]
    assert s.timeline[3].note == "no-op: br.isp1 is up"


def test_schedule_expands_flaps_ramps_and_clears(doc: dict[str, Any]) -> None:
    doc["timeline"] = [
        {"at": "1s", "action": "flap", "link": "hq.isp1", "period": "2s", "count": 2},
        {"at": "2s", "action": "restore", "link": "br.isp1"},                 # no-op: left out
        {"at": "5s", "action": "impair", "link": "hq.isp2", "loss_model": {"type": "gilbert_elliott", "p": 0.1,
                                                                            "r": 0.3}},
        {"at": "6s", "action": "ramp", "link": "hq.isp2", "to": {"delay": "80ms", "loss": "10%"}, "over": "4s",
         "steps": 4},
        {"at": "12s", "action": "clear", "link": "hq.isp2"},
        {"at": "13s", "action": "agent_stop", "site": "br"},
        {"at": "14s", "action": "agent_stop", "site": "br"},                  # no-op
        {"at": "15s", "action": "agent_start", "site": "br"},
    ]
    s = from_dict(doc)
    steps = schedule(s)
    flap = [(st.at_s, st.settings.up) for st in steps if getattr(st, "link", None) == LinkRef("hq", "isp1")]
    assert flap == [(1, False), (2, True), (3, False), (4, True)]
    ramp = [st for st in steps if getattr(st, "link", None) == LinkRef("hq", "isp2")]
    assert ramp[0].at_s == 5 and ramp[0].settings.loss_model is not None and ramp[0].settings.loss_ratio == 0
    mean = GilbertElliott(p=0.1, r=0.3).mean_loss_ratio
    assert [st.at_s for st in ramp[1:5]] == [7, 8, 9, 10]
    assert [st.settings.delay_s for st in ramp[1:5]] == pytest.approx([0.05, 0.06, 0.07, 0.08])
    assert [st.settings.loss_ratio for st in ramp[1:5]] == pytest.approx(
        [mean + (0.1 - mean) * i / 4 for i in range(1, 5)])
    assert ramp[1].settings.loss_model is None
    cleared = ramp[5]
    assert cleared.at_s == 12 and cleared.settings == s.uplink("hq.isp2").baseline()
    assert set(cleared.changed) == {"delay_s", "loss_ratio"}
    agents = [(st.at_s, st.running) for st in steps if hasattr(st, "running")]
    assert agents == [(13, False), (15, True)]
    assert all(a.at_s <= b.at_s for a, b in itertools.pairwise(steps))


def test_flap_and_ramp_windows(doc: dict[str, Any]) -> None:
    doc["timeline"] = [{"at": "10s", "action": "flap", "link": "hq.isp1", "period": "4s", "count": 5},
                       {"at": "1s", "action": "ramp", "link": "hq.isp2", "to": {"delay": "1s"}, "over": "8s"}]
    doc["duration"] = "40s"
    s = from_dict(doc)
    flap = next(e for e in s.timeline if isinstance(e, Flap))
    ramp = next(e for e in s.timeline if isinstance(e, Ramp))
    assert flap.down_times() == (10, 14, 18, 22, 26) and flap.end_s == 28
    assert (ramp.end_s, ramp.steps) == (9, 10)


# --- expectations ---------------------------------------------------------------------------------

def test_expectations_and_their_texts(doc: dict[str, Any]) -> None:
    doc["expectations"] = [
        {"failover_gap": {"flow": "cbr", "max": "300ms"}},
        {"lost_packets": {"flow": "voice", "max": 15}},
        {"sla_compliance": {"flow": "voice", "min": "99%", "target": {"latency": "150ms"}}},
        {"sla_compliance": {"flow": "video", "min": 0.9}},
        {"path_changes": {"flow": "cbr", "max": 2}},
        {"path_changes": {"flow": "voice", "min": 1, "max": 2}},
        {"detect_time": {"link": "hq.isp1", "max": "200ms"}},
        {"flow_stays": {"flow": "bulk", "during": ["5s", "25s"]}},
    ]
    s = from_dict(doc)
    kinds = [type(e) for e in s.expectations]
    assert kinds == [FailoverGap, LostPackets, SlaCompliance, SlaCompliance, PathChanges, PathChanges, DetectTime,
                     FlowStays]
    assert [e.text for e in s.expectations] == [
        "failover gap of cbr ≤ 300 ms",
        "voice loses ≤ 15 packets",
        "SLA compliance of voice ≥ 99 % (p95 ≤ 150 ms, jitter ≤ 20 ms, loss ≤ 1 %)",
        "SLA compliance of video ≥ 90 %",
        "cbr changes path ≤ 2 times",
        "voice changes path 1–2 times",
        "loss of hq.isp1 detected within 200 ms",
        "bulk stays on its path from 5 s to 25 s",
    ]
    sla = s.expectations[2]
    assert isinstance(sla, SlaCompliance) and sla.target is not None and sla.target.latency_ms == 150


def test_sla_target_of_an_expectation_starts_from_the_senders_agent(doc: dict[str, Any]) -> None:
    doc["sites"]["hq"]["agent"] = {"sla": {"jitter": "30ms"}}
    doc["expectations"] = [{"sla_compliance": {"flow": "voice", "min": "95%", "target": {"window": "30s"}}}]
    sla = from_dict(doc).expectations[0]
    assert isinstance(sla, SlaCompliance) and sla.target is not None
    assert (sla.target.jitter_ms, sla.target.window_s, sla.target.latency_ms) == (30, 30, 100)


# --- round trip and overrides ---------------------------------------------------------------------

def test_round_trip_of_a_scenario_with_everything(doc: dict[str, Any]) -> None:
    doc["sites"]["hq"]["agent"] = {
        "monitor": {"interval": "50ms", "detect_multiplier": 4, "timeout": "120ms"},
        "policies": [{"name": "voice", "priority": 1, "match": {"dst_ports": "5060-5061", "protocol": "udp"},
                      "preference": "latency_sensitive", "failover_threshold": 70,
                      "requirements": {"max_latency": "150ms", "max_loss": "1%"}},
                     {"name": "rest", "priority": 9, "preference": {"custom": {"latency": 0.5, "jitter": 0.2,
                                                                             "loss": 0.2, "bandwidth": 0.1,
                                                                             "cost": 0.0}}}],
        "steering": "none", "router": {"failback_hold": "2.5s", "min_improvement": 7.5},
        "sla": {"latency": "150ms", "latency_percentile": "p99"}}
    doc["core"] = {"topology": "hub-and-spoke", "hub": "hq"}
    doc["traffic"][0].update(start="2s", stop="28s", rate=333.5, size=1000)
    doc["timeline"] += [
        {"at": "3s", "action": "impair", "link": "br.isp1", "delay": "33ms", "jitter": "3ms",
         "jitter_distribution": "uniform", "loss_model": {"type": "gilbert_elliott", "p": "2%", "r": "40%",
                                                          "h": "80%", "k": "0.1%"}, "note": "bursts"},
        {"at": "21s", "action": "ramp", "link": "hq.isp1", "to": {"loss": "7%", "rate": "2mbit"}, "over": "5s"},
        {"at": "27s", "action": "clear", "link": "hq.isp1"},
        {"at": "27s", "action": "agent_stop", "site": "br"},
        {"at": "29s", "action": "agent_start", "site": "br"},
        {"at": "22s", "action": "flap", "link": "hq.isp2", "period": "1s", "count": 3},
    ]
    doc["expectations"] += [{"sla_compliance": {"flow": "voice", "min": "99.5%", "target": {"jitter": "25ms"}}},
                            {"flow_stays": {"flow": "bulk", "during": ["1s", "9s"]}},
                            {"path_changes": {"flow": "voice", "min": 1, "max": 3}}]
    s = from_dict(doc)
    d = s.to_dict()
    again = parse(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    assert again == s
    assert again.to_dict() == d
    assert d["traffic"][0]["stop"] == "28s" and "stop" not in d["traffic"][1]
    assert d["sites"]["hq"]["uplinks"]["isp2"]["delay"] == "40ms"
    assert d["sites"]["hq"]["agent"]["monitor"]["timeout"] == "120ms"


def test_to_dict_writes_units_as_strings(doc: dict[str, Any]) -> None:
    d = from_dict(doc).to_dict()
    assert d["duration"] == "30s"
    assert d["sites"]["hq"]["uplinks"]["isp1"] == {"bandwidth": "100mbit", "delay": "0s", "jitter": "0s",
                                                   "jitter_distribution": "normal", "loss": "0%",
                                                   "queue_limit": 1000, "cost_per_gb": 0}
    assert d["sites"]["hq"]["agent"]["monitor"] == "default" and d["sites"]["hq"]["agent"]["policies"] == "default"
    assert d["traffic"][2] == {"name": "video", "type": "video", "from": "br.host1", "to": "hq.host1",
                               "class": "video", "start": "0s", "dst_port": 5004, "bitrate": "4mbit", "fps": 30}
    assert d["timeline"][0] == {"at": "10s", "action": "cut", "link": "hq.isp1"}
    assert d["expectations"] == [{"failover_gap": {"flow": "cbr", "max": "300ms"}}]


def test_with_overrides(doc: dict[str, Any]) -> None:
    s = from_dict(doc)
    fast = with_overrides(s, {"sites.hq.agent.monitor": "fast"})
    assert fast.site("hq").agent.monitor == PROFILES["fast"] and fast.site("br").agent.monitor == PROFILES["default"]
    assert s.site("hq").agent.monitor == PROFILES["default"]          # the original is untouched
    other = with_overrides(s, **{"traffic.voice.start": "5s", "traffic[0].rate": 10, "timeline.1.at": "25s",
                                "sites.hq.uplinks.isp1.delay": "30ms", "expectations[0].failover_gap.max": "1s"})
    assert other.flow("voice").start_s == 5 and other.flow("cbr").rate_pps == 10
    assert other.timeline[1].at_s == 25 and other.site("hq").uplink("isp1").delay_s == pytest.approx(0.03)
    assert isinstance(other.expectations[0], FailoverGap) and other.expectations[0].max_s == 1
    longer = with_overrides(s, {"duration": "50s"})
    assert all(f.stop_s == 50 for f in longer.flows), "a flow's default stop follows the duration"
    assert with_overrides(s, {"sites.hq.agent.router": None}).site("hq").agent.router.failback_hold_s == 10


def test_overrides_are_validated_with_paths(doc: dict[str, Any]) -> None:
    s = from_dict(doc)
    with pytest.raises(ConfigError) as exc:
        with_overrides(s, {"sites.hq.agent.monitor": "fastest", "duration": "15s"})
    paths = [p for p, _ in exc.value.errors]
    assert paths == ["sites.hq.agent.monitor", "timeline[1].at"]
    with pytest.raises(ConfigError) as exc:
        with_overrides(s, {"traffic.ghost.rate": 1, "sites..x": 1, "duration.x": 1})
    assert [p for p, _ in exc.value.errors] == ["traffic.ghost.rate", "sites..x", "duration.x"]


def test_scenario_values_are_immutable(doc: dict[str, Any]) -> None:
    s = from_dict(doc)
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.flows[0].rate_pps = 1  # type: ignore[misc]
    assert isinstance(s.sites, tuple) and isinstance(s.timeline, tuple)
    assert isinstance(s, Scenario) and s.flows[0].type is FlowType.UDP_CBR


def test_from_dict_does_not_change_its_input(doc: dict[str, Any]) -> None:
    before = copy.deepcopy(doc)
    from_dict(doc)
    assert doc == before


# --- quantile and pass_rate: how repeated runs judge an expectation --------------------------------

def test_quantile_and_pass_rate_are_read_on_any_expectation_and_round_trip(doc: dict[str, Any]) -> None:
    doc["expectations"] = [
        {"failover_gap": {"flow": "cbr", "max": "300ms", "quantile": "95%"}},
        {"sla_compliance": {"flow": "voice", "min": "99%", "pass_rate": "90%"}},
        {"path_changes": {"flow": "cbr", "max": 2, "quantile": 1}},
        {"detect_time": {"link": "hq.isp1", "max": "200ms", "pass_rate": 0.5}},
        {"flow_stays": {"flow": "video", "during": ["1s", "9s"], "quantile": "50%"}},
        {"lost_packets": {"flow": "cbr", "max": 10}},
    ]
    s = from_dict(doc)
    assert [(e.quantile, e.pass_rate) for e in s.expectations] == [
        (0.95, None), (None, 0.9), (1.0, None), (None, 0.5), (0.5, None), (None, None)]
    assert s.expectations[0].to_dict() == {"failover_gap": {"flow": "cbr", "max": "300ms", "quantile": "95%"}}
    assert "quantile" not in s.expectations[5].to_dict()["lost_packets"]
    assert from_dict(s.to_dict()) == s
    # the text is the expectation's own: the rule only matters over repeated runs
    assert s.expectations[0].text == "failover gap of cbr ≤ 300 ms"


@pytest.mark.parametrize(("body", "path", "fragment"), [
    ({"quantile": "0%"}, "expectations[0].failover_gap.quantile", "expected a percentage in (0, 100 %]"),
    ({"quantile": "120%"}, "expectations[0].failover_gap.quantile", "expected a percentage in (0, 100 %]"),
    ({"quantile": 0}, "expectations[0].failover_gap.quantile", "expected a percentage in (0, 100 %]"),
    ({"quantile": "p95"}, "expectations[0].failover_gap.quantile", "got 'p95'"),
    ({"quantile": True}, "expectations[0].failover_gap.quantile", "got True"),
    ({"pass_rate": "-5%"}, "expectations[0].failover_gap.pass_rate", "expected a percentage in (0, 100 %]"),
    ({"pass_rate": "90%", "quantile": "95%"}, "expectations[0].failover_gap.pass_rate", "not both"),
    ({"quantiles": "95%"}, "expectations[0].failover_gap.quantiles", "did you mean 'quantile'?"),
])
def test_quantile_and_pass_rate_errors_name_the_field(doc: dict[str, Any], body: dict[str, Any], path: str,
                                                      fragment: str) -> None:
    doc["expectations"][0]["failover_gap"].update(body)
    errs = errors_of(doc)
    assert [p for p, _ in errs] == [path], errs
    assert fragment in errs[0][1], errs


def test_run_json_carries_the_rule(doc: dict[str, Any]) -> None:
    from emulation.siteconf import expectations_doc

    doc["expectations"] = [{"failover_gap": {"flow": "cbr", "max": "300ms", "quantile": "95%"}},
                           {"lost_packets": {"flow": "cbr", "max": 3, "pass_rate": "80%"}},
                           {"lost_packets": {"flow": "voice", "max": 3}}]
    docs = expectations_doc(from_dict(doc))
    assert docs[0]["quantile"] == 0.95 and "pass_rate" not in docs[0]
    assert docs[1]["pass_rate"] == 0.8 and "quantile" not in docs[1]
    assert "quantile" not in docs[2] and "pass_rate" not in docs[2]
def test_agent_stop_cleanup_and_startup_round_trip_and_schedule(doc: dict[str, Any]) -> None:
    doc["sites"]["br"].setdefault("agent", {})["startup"] = "1500ms"
    doc["timeline"] = [
        {"at": "2s", "action": "agent_stop", "site": "br"},                          # graceful
        {"at": "3s", "action": "agent_stop", "site": "br", "cleanup": True},         # now its dataplane too
        {"at": "4s", "action": "agent_stop", "site": "br", "cleanup": True},         # no-op: nothing left
        {"at": "5s", "action": "agent_start", "site": "br"},
        {"at": "6s", "action": "agent_stop", "site": "br", "cleanup": True},
        {"at": "7s", "action": "agent_start", "site": "br"},
        {"at": "8s", "action": "agent_stop", "site": "br", "cleanup": False},
    ]
    s = from_dict(doc)
    assert s.site("br").agent.startup_s == 1.5 and s.site("hq").agent.startup_s is None
    steps = [(st.at_s, st.running, st.cleanup) for st in schedule(s) if hasattr(st, "running")]
    assert steps == [(2, False, False), (3, False, True), (5, True, False), (6, False, True), (7, True, False),
                     (8, False, False)]
    again = from_dict(yaml.safe_load(s.to_yaml()))
    assert again.timeline == s.timeline and again.site("br").agent.startup_s == 1.5
    assert [e.to_dict().get("cleanup") for e in s.timeline] == [None, True, True, None, True, None, None]
    assert s.timeline[1].describe() == "agent_stop br (with cleanup)"
