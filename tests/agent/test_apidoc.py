"""The OpenAPI document's patterns against the parsers they describe (`patronus.agent.apidoc`): where a
pattern is exact (names, prefixes, ports, protocols), a text matches it if and only if the parser takes
it; where it lists the common forms only (durations, ratios), whatever it matches the parser takes."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from patronus.agent import apidoc
from patronus.core.errors import ConfigError
from patronus.core.model import parse_protocol
from patronus.core.policy import MatchRules, PortRange, Requirements, RoutingPolicy

pytestmark = [pytest.mark.unit, pytest.mark.property]


def _takes(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
    except ConfigError:
        return False
    return True


def _text_near(pattern: str, alphabet: str) -> st.SearchStrategy[str]:
    """Texts that match `pattern`, texts made of its usual characters, and any text."""
    return st.one_of(st.from_regex(pattern), st.text(alphabet, max_size=50), st.text(max_size=80))


NAME = re.compile(apidoc.POLICY_NAME_PATTERN)
NAME_EXACT = re.compile(apidoc.POLICY_NAME_EXACT_PATTERN)


@given(_text_near(apidoc.POLICY_NAME_PATTERN, " \t\n\x85\xa0\u2028ab/\x07\u200b\U000e0001"))
@example("a" * 64)
@example(" " + "a" * 64 + "\n")
@example("a" * 65)
@example("   ")
@example("a\nb")
@example("abc\n")
def test_the_name_patterns_are_the_name_rules(name: str) -> None:
    taken = _takes(RoutingPolicy.from_dict, {"name": name, "priority": 1}, "body")
    assert bool(NAME.search(name)) == taken
    assert bool(NAME_EXACT.search(name)) == (taken and name == name.strip())


PREFIX = re.compile(apidoc.PREFIX_PATTERN)


def _network_texts() -> st.SearchStrategy[str]:
    v4 = st.ip_addresses(v=4).map(str)
    v6 = st.ip_addresses(v=6).map(lambda a: a.exploded if int(a) % 3 == 0 else str(a))
    lengths = st.integers(0, 140).map(str) | st.sampled_from(["032", "0128", "", "-1", "8 "])
    masks = st.integers(0, 32).map(lambda n: str(ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask)) | v4
    return st.one_of(
        v4, v6,
        st.tuples(v4, lengths | masks).map("/".join),
        st.tuples(v6, lengths).map("/".join),
        st.tuples(v6, st.text("eth0 %/", min_size=0, max_size=4), lengths).map(lambda t: f"{t[0]}%{t[1]}/{t[2]}"),
        st.tuples(v4 | v6, st.sampled_from(["\n", " ", "/8/8", "::", ".0"])).map("".join),
    )


@given(_network_texts() | _text_near(apidoc.PREFIX_PATTERN, "0123456789abcdef.:/%"))
@example("10.0.0.0/255.0.0.0")
@example("10.0.0.0/0.255.255.255")
@example("10.0.0.0/255.0.255.0")
@example("010.0.0.0/8")
@example("fe80::1%eth0/64")
@example("1:2:3:4:5:6:7::")
@example("10.0.0.0/8\n")
def test_the_prefix_pattern_is_what_ip_network_reads(text: str) -> None:
    assert bool(PREFIX.search(text)) == _takes(MatchRules.from_dict, {"dst_prefix": text}, "match")


def test_a_prefix_is_text() -> None:
    """ip_network also reads integers (and so booleans): 5 was taken as 0.0.0.5/32, false as 0.0.0.0/32."""
    for value in (5, False, 2**32 - 1):
        assert not _takes(MatchRules.from_dict, {"src_prefix": value}, "match")


PORTS = re.compile(apidoc.PORTS_PATTERN)


def _ordered(text: str) -> bool:
    ends = [int(x) for x in re.findall("[0-9]+", text)]
    return ends == sorted(ends)


@given(_text_near(apidoc.PORTS_PATTERN, "0123456789- \n") | st.integers(0, 70000).map(str))
@example("65535")
@example("65536")
@example("00080")
@example(" 80 - 90 ")
@example("90-80")
@example("80-")
@example("65530\x1f")
def test_the_ports_pattern_is_what_a_port_range_reads(text: str) -> None:
    assert bool(PORTS.search(text) and _ordered(text)) == _takes(PortRange.parse, text, "ports")


def test_a_port_range_pair_holds_no_booleans() -> None:
    assert not _takes(PortRange.parse, [True, 5], "ports")
    assert _takes(PortRange.parse, [1, 5], "ports")


PROTOCOL = re.compile(apidoc.PROTOCOL_PATTERN)


@given(_text_near(apidoc.PROTOCOL_PATTERN, "tcpudTCP0123456789 \t"))
@example(" UDP\n")
@example("255")
@example("256")
@example("0017")
@example("icmpv6")
def test_the_protocol_pattern_is_what_the_protocol_parser_reads(text: str) -> None:
    assert bool(PROTOCOL.search(text)) == _takes(parse_protocol, text, "protocol")


@given(st.from_regex(apidoc.DURATION_PATTERN))
@example("9999.999h")
@example(" 150 MS ")
@example("5\u00b5s")
def test_every_duration_the_pattern_lists_is_taken(text: str) -> None:
    assert _takes(Requirements.from_dict, {"max_latency": text, "max_jitter": text}, "requirements")


@given(st.from_regex(apidoc.RATIO_PATTERN))
@example("100%")
@example("1.000")
@example(".5")
def test_every_ratio_the_pattern_lists_is_taken(text: str) -> None:
    assert _takes(Requirements.from_dict, {"max_loss": text}, "requirements")


def test_requirements_that_would_overflow_are_refused() -> None:
    """1e306 s was taken and kept as max_latency "infms", which the agent could not read back."""
    assert not _takes(Requirements.from_dict, {"max_latency": 1e306}, "requirements")
    assert not _takes(Requirements.from_dict, {"max_jitter": "1e300h"}, "requirements")
    assert _takes(Requirements.from_dict, {"max_latency": 1e8}, "requirements")


def test_custom_weights_are_bounded_so_scores_stay_finite() -> None:
    body = {"name": "w", "priority": 1, "preference": {"custom": {"latency": 1e308, "jitter": 1e308}}}
    assert not _takes(RoutingPolicy.from_dict, body, "body")
    body["preference"] = {"custom": {"latency": 1e6, "jitter": 0.5}}
    assert _takes(RoutingPolicy.from_dict, body, "body")
