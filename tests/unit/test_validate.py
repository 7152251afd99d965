"""The validation toolkit (patronus.core.validate) and the hardening it gives every loader: each bad input
is a ConfigError naming its field, never a crash, and no message prints an unbounded value."""

from __future__ import annotations

import copy
import enum
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from emulation.scenario.loader import parse as parse_scenario
from emulation.scenario.schema import from_dict as scenario_from_dict
from patronus.agent import config as cfgmod
from patronus.core import validate as val
from patronus.core.errors import ConfigError, show
from patronus.core.monitor import MonitorProfile
from patronus.core.router import RouterConfig
from patronus.core.settings import MAX_POLICIES, read_policies, read_router

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BIG = 10**5000                      # repr() of it raises ValueError (more than 4300 digits)


def _errs() -> val.Errors:
    return val.Errors()


# --- the collector and paths ------------------------------------------------------------------------

def test_errors_are_collected_and_raised_at_once() -> None:
    errs = _errs()
    assert val.integer(5, "a", errs, 1, 3) is None
    assert val.duration("soon", "b.c", errs) is None
    assert val.integer(2, "d", errs, 1, 3) == 2
    assert len(errs) == 2
    with pytest.raises(ConfigError) as ei:
        errs.check()
    assert [p for p, _ in ei.value.errors] == ["a", "b.c"]
    assert str(ei.value).startswith("a: expected a whole number 1-3, got 5; b.c: expected a duration")
    _errs().check()                     # nothing to raise


def test_attempt_keeps_a_parsers_errors() -> None:
    errs = _errs()
    assert errs.attempt(MonitorProfile.from_config, "turbo", "x.monitor") is None
    assert errs.items[0][0] == "x.monitor"
    assert errs.attempt(MonitorProfile.from_config, "fast", "x.monitor") is not None


def test_paths() -> None:
    assert val.join("", "sites") == "sites"
    assert val.join("sites", "hq") == "sites.hq"
    assert val.item(val.join("sites.hq", "uplinks"), 0) == "sites.hq.uplinks[0]"
    assert val.join("a", 3) == "a.3"
    long = val.join("a", "k" * 10_000)
    assert len(long) < 120 and "10000 characters" in long
    assert "digits" in val.join("a", BIG)


# --- structure ---------------------------------------------------------------------------------------

def test_mapping_known_and_required_keys() -> None:
    errs = _errs()
    m = val.mapping({"queue_limt": 1, "delay": None}, "up", errs, ("queue_limit", "delay", "loss"), ("delay",))
    assert m == {"queue_limt": 1, "delay": None}
    assert errs.items == [("up.queue_limt", "unknown setting; did you mean 'queue_limit'?"),
                          ("up.delay", "required")]
    errs = _errs()
    val.mapping({"zzz": 1}, "", errs, ("a", "b"))
    assert errs.items == [("zzz", "unknown setting; expected one of a, b")]
    errs = _errs()
    assert val.mapping([1], "", errs) is None
    assert errs.items == [("(top level)", "expected a mapping, got [1]")]
    assert val.mapping(None, "opt", errs, ("a",), none_ok=True) == {}


def test_items_and_field() -> None:
    errs = _errs()
    assert val.items("x", "l", errs, "prefixes") is None
    assert val.items([], "l", errs, "uplinks", nonempty=True) is None
    assert [r for _, r in errs.items] == ["expected a list of prefixes, got 'x'",
                                          "expected a list of at least one of uplinks, got []"]
    errs = _errs()
    m = {"a": 1, "b": None}
    assert val.field(m, "a", "top", errs, val.integer) == 1
    assert val.field(m, "b", "top", errs, val.integer, optional=True) is None
    assert val.field(m, "c", "top", errs, val.integer, optional=True) is None
    assert val.field(m, "c", "top", errs, val.integer) is None
    assert errs.items == [("top.c", "missing")]


# --- scalars ------------------------------------------------------------------------------------------

class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(("read", "good", "want", "bad"), [
    (lambda v, e: val.integer(v, "f", e, 1, 10), 3, 3, [0, 11, 2.0, True, "3", None, BIG, -BIG]),
    (lambda v, e: val.number(v, "f", e, 0, 100, "a score 0-100"), 50, 50.0,
     [-1, 101, math.nan, math.inf, True, "5", BIG, 1e308 * 10]),
    (lambda v, e: val.boolean(v, "f", e), False, False, [0, "yes", None]),
    (lambda v, e: val.text(v, "f", e, nonempty=True), "x", "x", ["", "  ", 3, ["x"], "x" * 5000]),
    (lambda v, e: val.choice(v, "f", e, ("a", "b")), "a", "a", ["c", ["a"], {"a": 1}, None, 1]),
    (lambda v, e: val.enum(v, "f", e, Colour), "red", Colour.RED, ["green", ["red"], None, Colour.RED]),
    (lambda v, e: val.name(v, "f", e, "site"), "hq-1", "hq-1", ["HQ", "1a", "a" * 32, ["a"], BIG]),
    (lambda v, e: val.ifname(v, "f", e), "eth0", "eth0", ["", "a" * 16, "a/b", "a b", "a\0", 3]),
    (lambda v, e: val.file_path(v, "f", e), "/etc/x", "/etc/x", ["", "a\0b", ["a"], 3, "x" * 5000]),
    (lambda v, e: val.address(v, "f", e), "2001:db8::1", "2001:db8::1", ["10.0.0.256", "x" * 1000, 3, None]),
    (lambda v, e: val.duration(v, "f", e, at_most=60), "20ms", 0.02,
     ["fast", -1, "1e309", "1" + "0" * 400, BIG, 1e308 * 10, "2min", ["1s"], True]),
    (lambda v, e: val.duration(v, "f", e, positive=True), 1, 1.0, [0, "0s"]),
    (lambda v, e: val.rate(v, "f", e), "100mbit", 1e8, ["0", "lots", "1e307tbit", BIG, -5]),
    (lambda v, e: val.ratio(v, "f", e), "1%", 0.01, ["150%", 2, -0.1, "1e309%", BIG]),
    (lambda v, e: val.size(v, "f", e, 16, 1392), "64", 64, [9000, "1e400", "64x", BIG]),
])
def test_readers(read: Any, good: object, want: object, bad: list[object]) -> None:
    errs = _errs()
    assert read(good, errs) == want and not errs.items
    for value in bad:
        errs = _errs()
        assert read(value, errs) is None, value if not isinstance(value, int) or abs(value) < 10**100 else "BIG"
        assert [p for p, _ in errs.items] == ["f"]
        assert len(errs.items[0][1]) < 300


def test_prefix_names_the_reason() -> None:
    errs = _errs()
    assert str(val.prefix("10.1.0.0/24", "p", errs)) == "10.1.0.0/24"
    assert val.prefix("10.1.0.1/24", "p", errs) is None
    assert "host bits" in errs.items[0][1]
    assert val.prefix("x" * 10_000, "p", errs) is None and len(errs.items[1][1]) < 200


def test_is_number() -> None:
    assert val.is_number(1) and val.is_number(1.5) and val.is_number(-3)
    assert not any(val.is_number(v) for v in (True, math.inf, math.nan, "1", None, BIG))


# --- show ---------------------------------------------------------------------------------------------

def test_show_is_bounded() -> None:
    assert show(None) == "nothing"
    assert show("fast") == "'fast'" and show(3) == "3" and show(True) == "True"
    assert show(["fast"]) == "['fast']" and show({"a": 1}) == "{'a': 1}"
    assert show("x" * 100_000) == repr("x" * 60) + "… (100000 characters)"
    assert show(BIG) == "an integer of about 5001 digits"     # 10**5000
    assert show(list(range(1000))) == "a list of 1000 items"
    assert show({str(i): i for i in range(1000)}) == "a mapping of 1000 keys"
    bomb: list[Any] = ["x" * 50]
    for _ in range(40):                 # an alias bomb: 2^40 leaves if expanded
        bomb = [bomb, bomb]
    assert show(bomb) == "a list of 2 items"
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert show(deep) == "a list of 1 items"
    assert show(object()) == "a object"


# --- the shared agent settings -----------------------------------------------------------------------

def test_policies_and_router_read_the_same_in_both_files() -> None:
    errs = _errs()
    assert read_policies(None, "policies", errs) == read_policies("default", "policies", errs)
    pols = [{"name": "a", "priority": 1}, {"name": "a", "priority": 2}]
    read_policies(pols, "sites.hq.agent.policies", errs)
    assert errs.items == [("sites.hq.agent.policies[1].name", "duplicate of policies[0].name ('a')")]
    errs = _errs()
    read_policies([{"name": f"p{i}", "priority": i} for i in range(MAX_POLICIES + 1)], "policies", errs)
    read_policies("best", "policies", errs)
    read_policies([{"name": "x", "priority": 1, "requirements": {"max_latency": -5}}], "policies", errs)
    assert [p for p, _ in errs.items] == ["policies", "policies", "policies[0].requirements.max_latency"]
    errs = _errs()
    r = read_router({"failback_hold": "3s", "min_improvement": 10}, "router", errs)
    assert r == RouterConfig(failback_hold_s=3.0, min_improvement=10.0) and not errs.items
    assert read_router({"idle_timeout": 0, "min_improvement": 101, "bogus": 1}, "router", errs) == RouterConfig()
    assert [p for p, _ in errs.items] == ["router.bogus", "router.idle_timeout", "router.min_improvement"]


# --- the loaders, on what issue 17 found ---------------------------------------------------------------

def _site() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "patronus/deploy/site.example.yaml").read_text())
    doc["probe"] = {"secret": "a shared secret of enough length"}
    return doc


def _scenario() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "scenarios/failover-basic.yaml").read_text())
    return doc


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    d: Any = doc
    for k in path[:-1]:
        d = d.setdefault(k, {}) if isinstance(d, dict) else d[k]
    d[path[-1]] = value
    return doc


SITE_CASES = [
    (("wireguard", "keepalive"), "1" + "0" * 309, "wireguard.keepalive"),
    (("wireguard", "keepalive"), 10**309, "wireguard.keepalive"),
    (("wireguard", "keepalive"), "1e300h", "wireguard.keepalive"),
    (("wireguard", "port_base"), BIG, "wireguard.port_base"),
    (("uplinks", 0, "cost_per_gb"), 10**400, "uplinks[0].cost_per_gb"),
    (("uplinks", 0, "bandwidth"), "1e309mbit", "uplinks[0].bandwidth"),
    (("monitor",), {"profile": ["fast"]}, "monitor.profile"),
    (("monitor",), BIG, "monitor"),
    (("monitor",), {"interval": "1e309s"}, "monitor.interval"),
    (("monitor",), {"window": -BIG}, "monitor.window"),
    (("probe",), {"secret_file": "a\0b"}, "probe.secret_file"),
    (("database",), "a\0b", "database"),
    (("steering",), ["nftables"], "steering"),
    (("api",), {"listen": "127.0.0.1:8_470"}, "api.listen"),
    (("api",), {"listen": "127.0.0.1:٨٤٧٠"}, "api.listen"),
    (("sla",), {"latency_percentile": "9" * 5000}, "sla.latency_percentile"),
    (("sla",), {"window": BIG}, "sla.window"),
    (("policies",), [{"name": "p", "priority": BIG}], "policies[0].priority"),
    (("policies",), [{"name": "p", "priority": 1, "match": {"dst_ports": "9" * 5000}}], "policies[0].match.dst_ports"),
    (("policies",), [{"name": "p", "priority": 1, "match": {"protocol": "9" * 5000}}], "policies[0].match.protocol"),
    (("policies",), [{"name": "p", "priority": 1, "requirements": {"max_cost_per_gb": BIG}}],
     "policies[0].requirements.max_cost_per_gb"),
    (("policies",), [{"name": "p", "priority": 1, "preference": {"custom": {"latency": BIG}}}],
     "policies[0].preference.custom.latency"),
    (("router",), {"failover_cooldown": BIG}, "router.failover_cooldown"),
]


@pytest.mark.parametrize(("path", "value", "field"), SITE_CASES, ids=[c[2] + f"-{i}" for i, c in enumerate(SITE_CASES)])
def test_site_file_bad_values_name_their_field(path: tuple[Any, ...], value: object, field: str) -> None:
    cfgmod.from_dict(_site())        # the base is valid
    with pytest.raises(ConfigError) as ei:
        cfgmod.from_dict(_set(_site(), path, value))
    assert field in [p for p, _ in ei.value.errors], ei.value.errors
    assert len(str(ei.value)) < 1000


SCENARIO_CASES = [
    (("duration",), "1" + "0" * 309, "duration"),
    (("duration",), 10**309, "duration"),
    (("seed",), BIG, "seed"),
    (("sites", "hq", "uplinks", "isp1", "delay"), 1e308 * 10, "sites.hq.uplinks.isp1.delay"),
    (("sites", "hq", "uplinks", "isp1", "cost_per_gb"), BIG, "sites.hq.uplinks.isp1.cost_per_gb"),
    (("sites", "hq", "agent", "monitor"), {"profile": ["fast"]}, "sites.hq.agent.monitor.profile"),
    (("sites", "hq", "agent", "steering"), ["nftables"], "sites.hq.agent.steering"),
    (("sites", "hq", "agent", "router"), {"idle_timeout": "1e309s"}, "sites.hq.agent.router.idle_timeout"),
    (("traffic", 0, "rate"), BIG, "traffic[0].rate"),
    (("traffic", 0, "to"), "br.host" + "9" * 5000, "traffic[0].to"),
    (("traffic", 0, "name"), "x" * 100_000, "traffic[0].name"),
    (("timeline", 0, "link"), BIG, "timeline[0].link"),
    (("timeline", 0, "action"), ["cut"], "timeline[0].action"),
]


@pytest.mark.parametrize(("path", "value", "field"), SCENARIO_CASES,
                         ids=[c[2] + f"-{i}" for i, c in enumerate(SCENARIO_CASES)])
def test_scenario_bad_values_name_their_field(path: tuple[Any, ...], value: object, field: str) -> None:
    scenario_from_dict(_scenario())
    with pytest.raises(ConfigError) as ei:
        scenario_from_dict(_set(_scenario(), path, value))
    assert field in [p for p, _ in ei.value.errors], ei.value.errors
    assert len(str(ei.value)) < 2000


@pytest.mark.parametrize("text", ["version: 1\x1b", "[" * 496 + "]" * 496, "duration: 1" + "0" * 5000])
def test_yaml_text_that_crashed_the_loaders(text: str) -> None:
    with pytest.raises(ConfigError):
        cfgmod.parse(text)
    with pytest.raises(ConfigError):
        parse_scenario(text)


def test_a_site_file_that_is_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_bytes(b"\xff\xfeversion: 1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        cfgmod.load(f)
