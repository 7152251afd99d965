"""The netem backend's plan (pure) and its encoding, checked against what iproute2's tc sends, and
the backend choice."""

from __future__ import annotations

import struct

import pytest

from emulation import links
from emulation.links import choose_backend, make_link, netem
from emulation.links.impairment import GilbertElliott, Impairment, dist_table
from emulation.links.netem import HANDLE, NO_LIMIT_RATE_BPS, U32, encode_options, plan, prob_u32
from emulation.links.relay import RelayLink
from patronus.core.errors import ConfigError

pytestmark = pytest.mark.unit


def nlas(buf: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(buf):
        n, t = struct.unpack_from("=HH", buf, i)
        out[t] = buf[i + 4:i + n]
        i += (n + 3) & ~3
    return out


def test_plan_of_a_full_impairment() -> None:
    imp = Impairment(queue_limit=500, delay_s=0.02, jitter_s=0.005, jitter_distribution="normal",
                     loss_model=GilbertElliott(0.01, 0.10, 0.70, 0.001), duplicate=0.02, reorder=0.05,
                     corrupt=0.005, rate_bps=10e6)
    (req,) = plan("isp1", imp, seed=7)
    assert req == {"op": "replace", "kind": "netem", "ifname": "isp1", "parent": "root", "handle": HANDLE,
                   "options": {"limit": 500, "latency_ns": 20_000_000, "jitter_ns": 5_000_000, "loss": 0,
                               "duplicate": prob_u32(0.02), "gap": 1, "reorder": prob_u32(0.05),
                               "corrupt": prob_u32(0.005),
                               "gemodel": {"p": prob_u32(0.01), "r": prob_u32(0.10), "h": U32 - prob_u32(0.70),
                                           "k1": prob_u32(0.001)},
                               "rate_bytes_per_s": 1_250_000, "distribution": "normal", "prng_seed": 7}}


def test_plan_simple_cases() -> None:
    assert plan("e", Impairment())[0]["options"] == {"limit": 1000, "latency_ns": 0, "jitter_ns": 0, "loss": 0,
                                                     "duplicate": 0, "gap": 0}
    assert plan("e", Impairment(loss=0.1))[0]["options"]["loss"] == 429496730
    cut = plan("e", Impairment(cut=True, loss_model=GilbertElliott(0.1, 0.2)))[0]["options"]
    assert cut["loss"] == U32 and "gemodel" not in cut
    # jitter without a rate: a rate that never limits, so netem keeps packets in order
    j = plan("e", Impairment(delay_s=0.01, jitter_s=0.002, jitter_distribution="uniform"))[0]["options"]
    assert j["rate_bytes_per_s"] == NO_LIMIT_RATE_BPS // 8 and "distribution" not in j
    assert "rate_bytes_per_s" not in plan("e", Impairment(delay_s=0.01))[0]["options"]


def test_probabilities_are_tc_fractions() -> None:
    assert prob_u32(0) == 0 and prob_u32(1) == U32
    assert prob_u32(0.05) == 0x0CCCCCCD             # tc: "reorder 5%"


# `tc qdisc replace dev p0 root handle 7074: netem limit 500 delay 20ms 5ms distribution normal
#  loss gemodel 1% 10% 70% 0.1% duplicate 2% reorder 5% corrupt 0.5% rate 10mbit` (iproute2 6.1),
# captured with strace: the tc_netem_qopt and every attribute but the table
TC_QOPT = (312500, 500, 0, 1, 85899346, 78125)
TC_ATTRS = {
    3: bytes.fromhex("cdcccc0c00000000"),
    4: bytes.fromhex("14ae470100000000"),
    5 | 0x8000: bytes.fromhex("14000200295c8f029a999919cdcccc4c37894100"),
    6: bytes.fromhex("d0121300000000000000000000000000"),
}


def test_encoding_matches_tc() -> None:
    imp = Impairment(queue_limit=500, delay_s=0.02, jitter_s=0.005, jitter_distribution="normal",
                     loss_model=GilbertElliott(0.01, 0.10, 0.70, 0.001), duplicate=0.02, reorder=0.05,
                     corrupt=0.005, rate_bps=10e6)
    raw = encode_options(plan("p0", imp)[0]["options"])
    assert struct.unpack_from("=IIIIII", raw) == TC_QOPT
    attrs = nlas(raw[24:])
    for kind, value in TC_ATTRS.items():
        assert attrs[kind] == value, kind
    table = struct.unpack(f"={len(attrs[2]) // 2}h", attrs[2])
    assert table == dist_table("normal")
    assert struct.unpack("=q", attrs[10])[0] == 20_000_000 and struct.unpack("=q", attrs[11])[0] == 5_000_000


def test_big_rates_use_rate64() -> None:
    attrs = nlas(encode_options(plan("e", Impairment(rate_bps=100e9))[0]["options"])[24:])
    assert struct.unpack("=Q", attrs[8])[0] == 12_500_000_000
    assert struct.unpack_from("=I", attrs[6])[0] == U32


def test_choose_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_backend("relay") == ("relay", "relay requested")
    with pytest.raises(ConfigError, match="impairment_backend"):
        choose_backend("tbf")
    monkeypatch.setattr(netem, "available", lambda: (False, "sch_netem unavailable (test)"))
    backend, why = choose_backend()
    assert backend == "relay" and "sch_netem unavailable (test)" in why
    with pytest.raises(ConfigError, match="netem requested but sch_netem unavailable"):
        choose_backend("netem")
    monkeypatch.setattr(netem, "available", lambda: (True, "sch_netem works"))
    assert choose_backend() == ("netem", "sch_netem works")


def test_make_link() -> None:
    r = make_link("relay", ns_x="n", if_x="x", ns_y="n", if_y="y", seed=3, tag="t1")
    assert isinstance(r, RelayLink) and isinstance(r, links.Link) and r.backend == "relay"
    n = make_link("netem", ns_x="a", if_x="isp1", ns_y="core", if_y="s0-isp1")
    assert isinstance(n, netem.NetemLink) and isinstance(n, links.Link) and n.backend == "netem"
    with pytest.raises(ConfigError, match="ns_y"):
        make_link("relay", ns_x="a", if_x="x", ns_y="b", if_y="y")
    with pytest.raises(ConfigError, match="direction"):
        n.set("up", Impairment())
