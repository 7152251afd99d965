"""The check before the clock starts: the agents' RTTs against the round trips the scenario describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulation.rttcheck import check, expected_rtts, summary
from emulation.scenario import load

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _paths(rtts_ms: dict[tuple[str, str, str], float | None]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for (site, local, remote_up), ms in rtts_ms.items():
        remote = "br" if site == "hq" else "hq"
        out.append({"site": site, "id": f"{remote}:{local}-{remote_up}", "uplink": local, "remote": remote,
                    "remote_uplink": remote_up, "latency_ms": ms})
    return out


def test_expected_round_trips_cross_both_uplinks_both_ways() -> None:
    sc = load(ROOT / "scenarios" / "failover-basic.yaml")   # isp1 10 ms (1 ms jitter), isp2 40 ms (2 ms)
    e = expected_rtts(sc)
    assert e[("hq", "isp1", "br", "isp2")].rtt_s == pytest.approx(0.100)
    assert e[("hq", "isp1", "br", "isp2")].jitter_s == pytest.approx(0.006)
    assert e[("br", "isp1", "hq", "isp1")].rtt_s == pytest.approx(0.040)
    assert len(e) == 8


def test_close_warned_and_far_off() -> None:
    sc = load(ROOT / "scenarios" / "failover-basic.yaml")
    # 100 ms paths with 6 ms of jitter: warned beyond 2 + 10 + 2 × 6 = 24 ms off
    checks = check(_paths({("hq", "isp1", "isp1"): 40.4,        # as it should be
                           ("hq", "isp1", "isp2"): 112.0,       # 12 ms over 100: within
                           ("hq", "isp2", "isp1"): 135.0,       # 35 ms over 100: warned
                           ("hq", "isp2", "isp2"): 2.0,         # 160 ms paths, delays not applied: refused
                           ("br", "isp1", "isp1"): None}),      # not measured
                   expected_rtts(sc))
    levels = {c.path: c.level for c in checks if c.site == "hq"}
    assert levels == {"br:isp1-isp1": "ok", "br:isp1-isp2": "ok", "br:isp2-isp1": "warn", "br:isp2-isp2": "refuse"}
    assert [c.level for c in checks if c.site == "br"] == ["unmeasured"]
    s = summary(checks)
    assert s["paths"] == 5 and s["warned"] == 1 and s["worst"]["path"] == "br:isp2-isp2"
    assert "RTT 2.0 ms where the scenario makes it 160.0 ms" in next(c for c in checks
                                                                      if c.level == "refuse").describe()
