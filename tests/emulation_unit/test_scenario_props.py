"""Properties of the scenario format: human units round-trip exactly; no input makes validation crash."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulation.scenario import ConfigError, from_dict, parse
from emulation.scenario.fmt import fmt_duration, fmt_rate, fmt_ratio, fmt_size
from patronus.core.units import parse_duration, parse_rate, parse_ratio, parse_size
from tests.emulation_unit.conftest import MINIMAL

pytestmark = [pytest.mark.unit, pytest.mark.property]

durations = st.one_of(st.floats(min_value=0, max_value=1e5, allow_nan=False),
                      st.integers(0, 100_000).map(lambda ms: ms / 1000))
ratios = st.one_of(st.floats(min_value=0, max_value=1, allow_nan=False),
                   st.integers(0, 10_000).map(lambda b: b / 1e4))
rates = st.one_of(st.floats(min_value=1, max_value=1e11, allow_nan=False),
                  st.integers(1, 10_000).map(lambda k: k * 1e3))


@given(durations)
def test_durations_round_trip_exactly(x: float) -> None:
    assert parse_duration(fmt_duration(x)) == x


@given(rates)
def test_rates_round_trip_exactly(x: float) -> None:
    assert parse_rate(fmt_rate(x)) == x


@given(ratios)
def test_ratios_round_trip_exactly(x: float) -> None:
    assert parse_ratio(fmt_ratio(x)) == x


@given(st.integers(0, 10**10))
def test_sizes_round_trip_exactly(n: int) -> None:
    assert parse_size(fmt_size(n)) == n


@given(delay=st.floats(0, 10, allow_nan=False), jitter=st.floats(0, 10, allow_nan=False), loss=ratios,
       bandwidth=rates, start=st.floats(0, 29, allow_nan=False), pps=st.floats(0.01, 1e6, allow_nan=False))
def test_a_scenario_round_trips_through_its_document(delay: float, jitter: float, loss: float, bandwidth: float,
                                                     start: float, pps: float) -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["sites"]["hq"]["uplinks"]["isp1"] = {"delay": delay, "jitter": jitter, "loss": loss, "bandwidth": bandwidth}
    doc["traffic"] = [{"name": "f", "type": "udp_cbr", "from": "hq", "to": "br", "start": start, "rate": pps}]
    s = from_dict(doc)
    assert parse(s.to_yaml()) == s


junk = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=12), st.sampled_from(["20ms", "1%", "100mbit", "hq", "hq.isp1", "cut", "fast",
                                                        "voip", "-1s", "1e400", "hq.host9"]),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


FULL: dict[str, Any] = {
    **copy.deepcopy(MINIMAL),
    "core": {"topology": "internet"},
    "traffic": [{"name": "v", "type": "voip", "from": "hq", "to": "br"},
                {"name": "b", "type": "tcp_bulk", "from": "br", "to": "hq", "bandwidth": "5mbit"},
                {"name": "c", "type": "udp_cbr", "from": "br", "to": "hq", "rate": 10, "size": 100, "stop": "20s"},
                {"name": "w", "type": "http", "from": "br", "to": "hq", "interval": "2s", "size": "1k"},
                {"name": "x", "type": "video", "from": "hq", "to": "br", "bitrate": "1mbit", "fps": 25,
                 "class": "tv", "dst_port": 6000}],
    "timeline": [{"at": "1s", "action": "ramp", "link": "hq.isp1", "to": {"delay": "50ms"}, "over": "5s"},
                 {"at": "2s", "action": "flap", "link": "br.isp1", "period": "2s", "count": 2},
                 {"at": "9s", "action": "impair", "link": "hq.isp2", "loss_model": {"type": "gilbert_elliott",
                                                                                     "p": 0.1, "r": 0.4}}],
    "expectations": [{"failover_gap": {"flow": "v", "max": "1s"}}, {"flow_stays": {"flow": "b", "during": [0, 5]}},
                     {"detect_time": {"link": "br.isp1", "max": "1s"}}],
}
FULL["sites"]["hq"].update(id=3, lan_prefix="10.9.0.0/24", hosts=2, agent={
    "monitor": {"interval": "50ms"}, "steering": "none", "router": {"failback_hold": "1s", "min_improvement": 3},
    "sla": {"latency": "150ms"},
    "policies": [{"name": "p", "priority": 1, "match": {"dst_ports": "5060-5061"},
                  "requirements": {"max_latency": "100ms", "max_loss": "1%"}}]})
FULL["expectations"] += [{"sla_compliance": {"flow": "v", "min": "90%", "target": {"jitter": "30ms"}}},
                         {"path_changes": {"flow": "c", "min": 1, "max": 2}}, {"lost_packets": {"flow": "c", "max": 3}}]
FULL_PATHS = _paths(FULL)


@given(st.lists(st.tuples(st.sampled_from(FULL_PATHS), junk), min_size=1, max_size=4))
def test_any_mutation_gives_a_scenario_or_config_errors_never_a_crash(mutations: list[tuple[Any, Any]]) -> None:
    doc = copy.deepcopy(FULL)
    for path, value in mutations:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue              # an earlier mutation replaced a parent
    try:
        s = from_dict(doc)
    except ConfigError as exc:
        assert exc.errors
        for where, reason in exc.errors:
            assert isinstance(where, str) and where and isinstance(reason, str) and reason
            assert where.split(".")[0].split("[")[0] in {"version", "name", "description", "seed", "duration",
                                                          "sites", "core", "traffic", "timeline", "expectations",
                                                          "(top level)"}, where
    else:
        assert parse(s.to_yaml()) == s
