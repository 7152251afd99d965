"""Unit tests of patronus.core.policy: preferences, presets, match rules, requirements, parsing."""

from __future__ import annotations

from typing import Any

import pytest

from patronus.core.errors import ConfigError
from patronus.core.model import FlowKey, PathMetrics
from patronus.core.policy import (
    PRESETS,
    LoadBalance,
    MatchRules,
    PortRange,
    Preference,
    Requirements,
    RoutingPolicy,
    ScoringWeights,
    cost_score,
    default_policies,
    preference_score,
)
from patronus.core.quality import quality_score

pytestmark = pytest.mark.unit


def metrics(latency_ms: float = 10.0, jitter_ms: float = 2.0, loss_pct: float = 0.1, bandwidth_mbps: float = 0.0,
            cost_per_gb: float = 0.0) -> PathMetrics:
    return PathMetrics(latency_ms=latency_ms, jitter_ms=jitter_ms, loss_pct=loss_pct,
                       score=quality_score(latency_ms, jitter_ms, loss_pct), measured_at=0.0,
                       bandwidth_mbps=bandwidth_mbps, cost_per_gb=cost_per_gb)


def flow(src: str = "10.1.0.5", dst: str = "10.2.0.9", sport: int = 40000, dport: int = 443,
         proto: int = 6) -> FlowKey:
    return FlowKey(src, dst, sport, dport, proto)


# --- preferences: the seed's scoring functions ------------------------------------------------------

@pytest.mark.parametrize(("latency_ms", "expected"), [(10.0, 95.0), (50.0, 75.0), (0.0, 100.0), (200.0, 0.0),
                                                      (120.0, 40.0)])
def test_lowest_latency_is_200_minus_latency_over_2(latency_ms: float, expected: float) -> None:
    assert preference_score(Preference.LOWEST_LATENCY, None, metrics(latency_ms=latency_ms)) == expected


@pytest.mark.parametrize(("bw", "expected"), [(1000.0, 100.0), (100.0, 10.0), (250.0, 25.0), (0.0, 0.0)])
def test_highest_bandwidth_is_bandwidth_over_1000_times_100(bw: float, expected: float) -> None:
    assert preference_score(Preference.HIGHEST_BANDWIDTH, None, metrics(bandwidth_mbps=bw)) == pytest.approx(expected)


@pytest.mark.parametrize(("loss", "expected"), [(0.0, 100.0), (1.0, 99.0), (0.1, 99.9), (100.0, 0.0)])
def test_lowest_loss_is_100_minus_loss(loss: float, expected: float) -> None:
    assert preference_score(Preference.LOWEST_LOSS, None, metrics(loss_pct=loss)) == pytest.approx(expected)


@pytest.mark.parametrize(("cost", "expected"), [(0.0, 100.0), (0.05, 75.0), (0.10, 50.0), (0.20, 0.0),
                                                (1.0, 0.0)])
def test_lowest_cost_scores_free_100_and_reference_cost_0(cost: float, expected: float) -> None:
    assert cost_score(cost) == pytest.approx(expected)
    assert preference_score(Preference.LOWEST_COST, None, metrics(cost_per_gb=cost)) == pytest.approx(expected)


def test_preferences_order_paths_the_intuitive_way() -> None:
    fast, slow = metrics(latency_ms=10.0), metrics(latency_ms=80.0)
    fat, thin = metrics(bandwidth_mbps=900.0), metrics(bandwidth_mbps=50.0)
    clean, lossy = metrics(loss_pct=0.0), metrics(loss_pct=3.0)
    cheap, dear = metrics(cost_per_gb=0.01), metrics(cost_per_gb=0.15)
    for pref, good, bad in ((Preference.LOWEST_LATENCY, fast, slow), (Preference.HIGHEST_BANDWIDTH, fat, thin),
                            (Preference.LOWEST_LOSS, clean, lossy), (Preference.LOWEST_COST, cheap, dear)):
        assert preference_score(pref, None, good) > preference_score(pref, None, bad), pref


# --- custom weights and presets ---------------------------------------------------------------------

@pytest.mark.parametrize(("name", "weights"), [
    ("latency_sensitive", {"latency": 0.5, "jitter": 0.3, "loss": 0.2, "bandwidth": 0.0, "cost": 0.0}),
    ("balanced", {"latency": 0.3, "jitter": 0.2, "loss": 0.3, "bandwidth": 0.2, "cost": 0.0}),
    ("throughput_focused", {"latency": 0.1, "jitter": 0.0, "loss": 0.2, "bandwidth": 0.7, "cost": 0.0}),
    ("cost_optimized", {"latency": 0.2, "jitter": 0.1, "loss": 0.2, "bandwidth": 0.0, "cost": 0.5}),
])
def test_preset_weights(name: str, weights: dict[str, float]) -> None:
    # latency_sensitive and balanced are the seed's; the other two are named by the seed, weighted by us.
    assert PRESETS[name].as_dict() == weights
    assert PRESETS[name].total == pytest.approx(1.0)
    assert PRESETS[name].problems("w") == []


def test_presets_emphasise_what_their_name_says() -> None:
    assert PRESETS["throughput_focused"].bandwidth == max(PRESETS["throughput_focused"].as_dict().values())
    assert PRESETS["cost_optimized"].cost == max(PRESETS["cost_optimized"].as_dict().values())
    assert PRESETS["latency_sensitive"].latency == max(PRESETS["latency_sensitive"].as_dict().values())


def test_custom_score_single_weights_are_the_normalised_metrics() -> None:
    m = metrics(latency_ms=40.0, jitter_ms=10.0, loss_pct=2.0, bandwidth_mbps=300.0, cost_per_gb=0.05)
    one = {"latency": 80.0, "jitter": 80.0, "loss": 98.0, "bandwidth": 30.0, "cost": 75.0}
    for name, expected in one.items():
        w = ScoringWeights(**{name: 1.0})
        assert preference_score(Preference.CUSTOM, w, m) == pytest.approx(expected), name


def test_custom_score_is_the_weighted_mean() -> None:
    m = metrics(latency_ms=10.0, jitter_ms=2.0, loss_pct=0.1, bandwidth_mbps=1000.0)
    # latency 95, jitter 96, loss 99.9, bandwidth 100
    assert preference_score(Preference.CUSTOM, PRESETS["latency_sensitive"], m) == pytest.approx(
        0.5 * 95 + 0.3 * 96 + 0.2 * 99.9)
    assert preference_score(Preference.CUSTOM, PRESETS["balanced"], m) == pytest.approx(
        0.3 * 95 + 0.2 * 96 + 0.3 * 99.9 + 0.2 * 100)
    # Weights are divided by their sum: scaling them changes nothing.
    doubled = ScoringWeights(latency=1.0, jitter=0.6, loss=0.4)
    assert preference_score(Preference.CUSTOM, doubled, m) == pytest.approx(
        preference_score(Preference.CUSTOM, PRESETS["latency_sensitive"], m))
    # No weights: balanced.
    assert preference_score(Preference.CUSTOM, None, m) == preference_score(Preference.CUSTOM, PRESETS["balanced"], m)


@pytest.mark.parametrize("m", [
    metrics(latency_ms=5000.0, jitter_ms=900.0, loss_pct=100.0, bandwidth_mbps=0.0, cost_per_gb=5.0),
    metrics(latency_ms=0.0, jitter_ms=0.0, loss_pct=0.0, bandwidth_mbps=100_000.0, cost_per_gb=0.0),
])
def test_custom_score_stays_within_0_100(m: PathMetrics) -> None:
    for w in [*PRESETS.values(), ScoringWeights(latency=3, jitter=1, loss=2, bandwidth=7, cost=5)]:
        assert 0.0 <= preference_score(Preference.CUSTOM, w, m) <= 100.0


def test_scoring_weight_problems_name_each_weight() -> None:
    bad = ScoringWeights(latency=-1.0, jitter=float("nan"), loss=True, bandwidth="x")  # type: ignore[arg-type]
    assert [f for f, _ in bad.problems("p.w")] == ["p.w.latency", "p.w.jitter", "p.w.loss", "p.w.bandwidth"]
    assert ScoringWeights().problems("p.w") == [("p.w", "at least one weight must be positive")]


# --- match rules ------------------------------------------------------------------------------------

def test_empty_rule_matches_everything() -> None:
    rule = MatchRules()
    assert rule.matches(flow())
    assert rule.matches(flow(src="fd01::1", dst="fd02::2", proto=17), dscp=46, app_class="voip")
    assert not rule.needs_addresses


def test_protocol() -> None:
    rule = MatchRules(protocol=17)
    assert rule.matches(flow(proto=17))
    assert not rule.matches(flow(proto=6))


@pytest.mark.parametrize(("port", "hit"), [(4999, False), (5000, True), (5050, True), (5100, True), (5101, False)])
def test_port_ranges_are_inclusive(port: int, hit: bool) -> None:
    assert MatchRules(dst_ports=PortRange(5000, 5100)).matches(flow(dport=port)) is hit
    assert MatchRules(src_ports=PortRange(5000, 5100)).matches(flow(sport=port)) is hit
    # The source range never looks at the destination port, and vice versa.
    assert MatchRules(src_ports=PortRange(5000, 5100)).matches(flow(sport=1, dport=port)) is False
    assert MatchRules(dst_ports=PortRange(5000, 5100)).matches(flow(sport=port, dport=1)) is False


def test_single_port_range() -> None:
    rule = MatchRules(dst_ports=PortRange(443, 443))
    assert rule.matches(flow(dport=443))
    assert not rule.matches(flow(dport=444))
    assert str(PortRange(443, 443)) == "443"
    assert str(PortRange(5060, 5061)) == "5060-5061"


def test_dscp_set() -> None:
    rule = MatchRules(dscp=frozenset({46, 34}))
    assert rule.matches(flow(), dscp=46)
    assert rule.matches(flow(), dscp=34)
    assert not rule.matches(flow(), dscp=0)
    assert not rule.matches(flow(), dscp=None)     # unknown DSCP never matches a DSCP rule


def test_app_class() -> None:
    rule = MatchRules(app_class="video")
    assert rule.matches(flow(), app_class="video")
    assert not rule.matches(flow(), app_class="voip")
    assert not rule.matches(flow())


def _prefix_rule(**kw: Any) -> MatchRules:
    return MatchRules.from_dict(kw, "m")


def test_ipv4_prefixes() -> None:
    rule = _prefix_rule(src_prefix="10.1.0.0/16", dst_prefix="10.2.3.0/24")
    assert rule.needs_addresses
    assert rule.matches(flow(src="10.1.255.1", dst="10.2.3.200"))
    assert not rule.matches(flow(src="10.3.0.1", dst="10.2.3.200"))
    assert not rule.matches(flow(src="10.1.0.1", dst="10.2.4.1"))
    # Host bits in the rule are ignored (strict=False): 10.2.3.7/24 means 10.2.3.0/24.
    assert _prefix_rule(dst_prefix="10.2.3.7/24").matches(flow(dst="10.2.3.1"))


def test_ipv6_prefixes_and_families_never_mix() -> None:
    rule = _prefix_rule(dst_prefix="fd02::/64")
    assert rule.matches(flow(src="fd01::1", dst="fd02::abcd"))
    assert not rule.matches(flow(src="fd01::1", dst="fd02:0:0:1::1"))
    assert not rule.matches(flow(dst="10.2.0.1"))                 # v4 address, v6 rule
    v4 = _prefix_rule(dst_prefix="0.0.0.0/0")
    assert v4.matches(flow(dst="192.0.2.1"))
    assert not v4.matches(flow(src="fd01::1", dst="fd02::1"))     # v6 address, v4 rule
    assert _prefix_rule(src_prefix="::/0").matches(flow(src="fd01::1", dst="fd02::1"))


def test_precomputed_addresses_give_the_same_answer() -> None:
    from patronus.core.policy import address_int

    rule = _prefix_rule(src_prefix="10.1.0.0/16", dst_prefix="10.2.0.0/16")
    for f in (flow(), flow(src="10.9.0.1"), flow(dst="10.9.0.1")):
        addrs = (address_int(f.src_ip), address_int(f.dst_ip))
        assert rule.matches(f, addrs=addrs) == rule.matches(f)


def test_every_field_must_match() -> None:
    rule = MatchRules.from_dict({"src_prefix": "10.1.0.0/16", "dst_prefix": "10.2.0.0/16", "protocol": "udp",
                                 "src_ports": "1000-2000", "dst_ports": "5060-5061", "dscp": [46],
                                 "app_class": "voip"}, "m")
    good = flow(src="10.1.0.1", dst="10.2.0.1", sport=1500, dport=5060, proto=17)
    assert rule.matches(good, dscp=46, app_class="voip")
    # Break one field at a time: each alone is enough to miss.
    assert not rule.matches(good._replace(src_ip="10.8.0.1"), dscp=46, app_class="voip")
    assert not rule.matches(good._replace(dst_ip="10.8.0.1"), dscp=46, app_class="voip")
    assert not rule.matches(good._replace(protocol=6), dscp=46, app_class="voip")
    assert not rule.matches(good._replace(src_port=999), dscp=46, app_class="voip")
    assert not rule.matches(good._replace(dst_port=5062), dscp=46, app_class="voip")
    assert not rule.matches(good, dscp=0, app_class="voip")
    assert not rule.matches(good, dscp=46, app_class="video")


def test_match_from_dict_forms() -> None:
    assert MatchRules.from_dict(None, "m") == MatchRules()
    assert MatchRules.from_dict({"protocol": "UDP"}, "m").protocol == 17
    assert MatchRules.from_dict({"protocol": 6}, "m").protocol == 6
    assert MatchRules.from_dict({"protocol": "47"}, "m").protocol == 47
    for value in ("5060-5061", [5060, 5061], (5060, 5061), " 5060 - 5061 "):
        assert MatchRules.from_dict({"dst_ports": value}, "m").dst_ports == PortRange(5060, 5061), value
    for single in (443, "443"):
        assert MatchRules.from_dict({"dst_port": single}, "m").dst_ports == PortRange(443, 443)
    assert MatchRules.from_dict({"src_port": 53}, "m").src_ports == PortRange(53, 53)
    assert MatchRules.from_dict({"dscp": 46}, "m").dscp == frozenset({46})
    assert MatchRules.from_dict({"dscp": [46, 34, 46]}, "m").dscp == frozenset({34, 46})
    assert MatchRules.from_dict({"dst_prefix": "FD02:0::/64"}, "m").to_dict() == {"dst_prefix": "fd02::/64"}


def test_match_to_dict_round_trip() -> None:
    d = {"src_prefix": "10.1.0.0/16", "dst_prefix": "fd02::/64", "protocol": "udp", "src_ports": "1000-2000",
         "dst_ports": "5060", "dscp": [34, 46], "app_class": "voip"}
    rule = MatchRules.from_dict(d, "m")
    assert rule.to_dict() == d
    assert MatchRules.from_dict(rule.to_dict(), "m") == rule
    odd = MatchRules(protocol=99)
    assert odd.to_dict() == {"protocol": 99}
    assert MatchRules.from_dict(odd.to_dict(), "m") == odd


def test_match_from_dict_lists_every_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        MatchRules.from_dict({"src_prefix": "10.1.0.0/33", "dst_prefix": "nowhere", "protocol": "carrier-pigeon",
                              "src_ports": "2000-1000", "dst_ports": 70000, "dscp": [64], "app_class": "",
                              "colour": "blue"}, "policies[2].match")
    fields = sorted(f for f, _ in info.value.errors)
    assert fields == sorted(f"policies[2].match.{k}" for k in (
        "src_prefix", "dst_prefix", "protocol", "src_ports", "dst_ports", "dscp", "app_class", "colour"))
    assert "policies[2].match.dst_ports: expected a port" in str(info.value)


@pytest.mark.parametrize("value", [True, -1, 65536, "5061-5060", "a-b", "http", [1], [1, 2, 3], 1.5, None])
def test_bad_port_ranges(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        PortRange.parse(value, "x.dst_ports")
    assert info.value.errors[0][0] == "x.dst_ports"


@pytest.mark.parametrize("value", [[], [True], ["46"], -1, 64])
def test_bad_dscp(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        MatchRules.from_dict({"dscp": value}, "m")
    assert [f for f, _ in info.value.errors] == ["m.dscp"]


def test_match_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        MatchRules.from_dict(["udp"], "policy.match")
    assert info.value.errors[0][0] == "policy.match"


# --- requirements -----------------------------------------------------------------------------------

def test_requirements_met_by_each_bound_inclusive() -> None:
    req = Requirements(max_latency_ms=50.0, max_loss_pct=1.0, max_jitter_ms=10.0, max_cost_per_gb=0.1)
    assert req.met_by(metrics(latency_ms=50.0, jitter_ms=10.0, loss_pct=1.0, cost_per_gb=0.1))
    assert not req.met_by(metrics(latency_ms=50.1, jitter_ms=10.0, loss_pct=1.0, cost_per_gb=0.1))
    assert not req.met_by(metrics(latency_ms=50.0, jitter_ms=10.1, loss_pct=1.0, cost_per_gb=0.1))
    assert not req.met_by(metrics(latency_ms=50.0, jitter_ms=10.0, loss_pct=1.1, cost_per_gb=0.1))
    assert not req.met_by(metrics(latency_ms=50.0, jitter_ms=10.0, loss_pct=1.0, cost_per_gb=0.11))
    assert Requirements().met_by(metrics(latency_ms=1e6, jitter_ms=1e6, loss_pct=100.0, cost_per_gb=99.0))


def test_requirements_from_dict_human_units() -> None:
    req = Requirements.from_dict({"max_latency": "150ms", "max_loss": "1%", "max_jitter": "30ms",
                                  "max_cost_per_gb": 0.05, "strict": True}, "r")
    assert req == Requirements(max_latency_ms=150.0, max_loss_pct=1.0, max_jitter_ms=30.0, max_cost_per_gb=0.05,
                               strict=True)
    assert req.to_dict() == {"max_latency": "150ms", "max_loss": "1%", "max_jitter": "30ms",
                             "max_cost_per_gb": 0.05, "strict": True}
    assert Requirements.from_dict(req.to_dict(), "r") == req
    assert Requirements.from_dict({"max_loss": 0.005}, "r").max_loss_pct == pytest.approx(0.5)
    assert Requirements.from_dict({}, "r") == Requirements()


def test_requirements_from_dict_lists_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        Requirements.from_dict({"max_latency": "fast", "max_loss": "150%", "max_jitter": "1 parsec",
                                "max_cost_per_gb": -1, "strict": "yes", "max_bananas": 3}, "policy.requirements")
    assert sorted(f for f, _ in info.value.errors) == sorted(f"policy.requirements.{k}" for k in (
        "max_latency", "max_loss", "max_jitter", "max_cost_per_gb", "strict", "max_bananas"))


# --- policies: parsing ------------------------------------------------------------------------------

FULL = {
    "name": "Voice", "priority": 5, "enabled": False,
    "match": {"protocol": "udp", "dst_ports": "5060-5061", "dscp": [46]},
    "preference": "latency_sensitive", "load_balance": "flow_hash", "lb_tolerance": 3.0,
    "failover_threshold": 70.0,
    "requirements": {"max_latency": "150ms", "max_loss": "1%", "strict": True},
}


def test_policy_from_dict() -> None:
    p = RoutingPolicy.from_dict(FULL)
    assert p == RoutingPolicy(
        "Voice", 5, MatchRules(protocol=17, dst_ports=PortRange(5060, 5061), dscp=frozenset({46})),
        Preference.CUSTOM, PRESETS["latency_sensitive"], "latency_sensitive", enabled=False,
        load_balance=LoadBalance.FLOW_HASH, lb_tolerance=3.0, failover_threshold=70.0,
        requirements=Requirements(max_latency_ms=150.0, max_loss_pct=1.0, strict=True))


def test_policy_from_dict_defaults() -> None:
    p = RoutingPolicy.from_dict({"name": "  web  ", "priority": 0})
    assert p.name == "web"
    assert p.enabled and p.match == MatchRules() and p.load_balance is LoadBalance.NONE
    assert (p.preference, p.weights, p.preset) == (Preference.CUSTOM, PRESETS["balanced"], "balanced")
    assert p.failover_threshold is None and p.requirements is None and p.lb_tolerance == 5.0


@pytest.mark.parametrize(("pref", "preference", "weights"), [
    ("lowest_latency", Preference.LOWEST_LATENCY, None),
    ("highest_bandwidth", Preference.HIGHEST_BANDWIDTH, None),
    ("lowest_loss", Preference.LOWEST_LOSS, None),
    ("lowest_cost", Preference.LOWEST_COST, None),
    ("cost_optimized", Preference.CUSTOM, PRESETS["cost_optimized"]),
    ("throughput_focused", Preference.CUSTOM, PRESETS["throughput_focused"]),
    ({"custom": {"latency": 2, "cost": 1}}, Preference.CUSTOM, ScoringWeights(latency=2, cost=1)),
])
def test_policy_preference_forms(pref: object, preference: Preference, weights: ScoringWeights | None) -> None:
    p = RoutingPolicy.from_dict({"name": "x", "priority": 1, "preference": pref})
    assert (p.preference, p.weights) == (preference, weights)
    assert RoutingPolicy.from_dict(p.to_dict()) == p


def test_policy_round_trip() -> None:
    full = RoutingPolicy.from_dict(FULL)
    assert full.to_dict()["preference"] == "latency_sensitive"
    assert RoutingPolicy.from_dict(full.to_dict()) == full
    custom = RoutingPolicy("c", 7, MatchRules(src_ports=PortRange(1, 1023)), Preference.CUSTOM,
                           ScoringWeights(latency=0.25, bandwidth=0.75), load_balance=LoadBalance.LEAST_CONNECTIONS,
                           requirements=Requirements(max_jitter_ms=12.5, max_cost_per_gb=0.02))
    assert custom.to_dict()["preference"] == {"custom": {"latency": 0.25, "jitter": 0.0, "loss": 0.0,
                                                         "bandwidth": 0.75, "cost": 0.0}}
    assert RoutingPolicy.from_dict(custom.to_dict()) == custom
    for p in default_policies():
        assert RoutingPolicy.from_dict(p.to_dict()) == p, p.name


def test_policy_from_dict_lists_every_error_with_its_path() -> None:
    bad = {"name": "", "priority": -1, "enabled": "yes",
           "match": {"dst_ports": "99999", "protocol": "bogus"},
           "preference": "fastest", "load_balance": "random", "lb_tolerance": 101,
           "failover_threshold": "high", "requirements": {"max_latency": "soon"}, "colour": "red"}
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict(bad, "policies[3]")
    fields = sorted(f for f, _ in info.value.errors)
    assert fields == sorted(f"policies[3].{k}" for k in (
        "name", "priority", "enabled", "match.dst_ports", "match.protocol", "preference", "load_balance",
        "lb_tolerance", "failover_threshold", "requirements.max_latency", "colour"))
    msg = str(info.value)
    assert "policies[3].match.dst_ports: expected a port" in msg
    assert "policies[3].preference: expected one of" in msg and "latency_sensitive" in msg


def test_policy_from_dict_default_prefix_and_custom_weight_errors() -> None:
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict({"name": "x", "priority": 1, "match": {"dst_ports": "5061-5060"},
                                 "preference": {"custom": {"latency": -1, "loss": 1}}})
    assert sorted(f for f, _ in info.value.errors) == ["policy.match.dst_ports", "policy.preference.custom.latency"]
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict({"name": "x", "priority": 1, "preference": {"custom": {"speed": 1}}})
    assert [f for f, _ in info.value.errors] == ["policy.preference.custom.speed"]
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict({"name": "x", "priority": 1, "preference": {"custom": {"latency": 0}}})
    assert [f for f, _ in info.value.errors] == ["policy.preference.custom"]
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict({"name": "x", "priority": 1, "preference": "custom"})
    assert [f for f, _ in info.value.errors] == ["policy.preference"]
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict("voice")
    assert [f for f, _ in info.value.errors] == ["policy"]


@pytest.mark.parametrize(("key", "value"), [("priority", True), ("priority", 1_000_001), ("priority", 1.5),
                                            ("lb_tolerance", -1), ("lb_tolerance", True),
                                            ("failover_threshold", 100.5), ("failover_threshold", False),
                                            ("name", 7), ("name", "   ")])
def test_policy_scalar_bounds(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_dict({"name": "x", "priority": 1, key: value})
    assert [f for f, _ in info.value.errors] == [f"policy.{key}"]


# --- the seed's default policies --------------------------------------------------------------------

def test_default_policies_table() -> None:
    pols = default_policies()
    assert [(p.priority, p.name) for p in pols] == [(1, "VoIP/Video"), (2, "Gaming"), (3, "Bulk Transfers"),
                                                     (100, "Default")]
    assert all(p.enabled for p in pols)
    voip, gaming, bulk, default = pols
    assert voip.match == MatchRules(dst_ports=PortRange(5060, 5061))
    assert (voip.preference, voip.weights, voip.preset) == (Preference.CUSTOM, PRESETS["latency_sensitive"],
                                                            "latency_sensitive")
    assert voip.weights == ScoringWeights(latency=0.5, jitter=0.3, loss=0.2)
    assert gaming.match == MatchRules(protocol=17, dst_ports=PortRange(27000, 28000))
    assert gaming.preference is Preference.LOWEST_LATENCY
    assert bulk.match == MatchRules(protocol=6, dst_ports=PortRange(20, 21))
    assert bulk.preference is Preference.HIGHEST_BANDWIDTH
    assert default.match == MatchRules()
    assert (default.preference, default.weights) == (Preference.CUSTOM, ScoringWeights(latency=0.3, jitter=0.2,
                                                                                       loss=0.3, bandwidth=0.2))
    # Our thresholds: voice and games leave paths below 70, default traffic below 50, bulk never.
    assert [p.failover_threshold for p in pols] == [70.0, 70.0, None, 50.0]
    assert all(p.load_balance is LoadBalance.NONE and p.requirements is None for p in pols)


@pytest.mark.parametrize(("f", "expected"), [
    (flow(dport=5060, proto=17), "VoIP/Video"),
    (flow(dport=5061, proto=6), "VoIP/Video"),
    (flow(dport=5062, proto=17), "Default"),
    (flow(dport=27015, proto=17), "Gaming"),
    (flow(dport=27000, proto=17), "Gaming"),
    (flow(dport=28000, proto=17), "Gaming"),
    (flow(dport=28001, proto=17), "Default"),
    (flow(dport=27015, proto=6), "Default"),
    (flow(dport=21, proto=6), "Bulk Transfers"),
    (flow(dport=20, proto=6), "Bulk Transfers"),
    (flow(dport=21, proto=17), "Default"),
    (flow(dport=443, proto=6), "Default"),
])
def test_default_policies_match_in_priority_order(f: FlowKey, expected: str) -> None:
    first = next(p for p in sorted(default_policies(), key=lambda p: p.priority) if p.match.matches(f))
    assert first.name == expected
