"""The site file both backends give the agent: the same document as the Mininet runner builds, parsed by
the agent's own parser into the scenario's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emulation.scenario import load
from emulation.siteconf import host_address, site_document, uplink_addresses
from patronus.agent.config import from_dict
from patronus.agent.keys import generate_private_key, public_key

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if p.stem != "scale-1000")   # 1,000: own tests


def _document(scenario_path: Path, site: str, tmp_path: Path) -> dict[str, Any]:
    sc = load(scenario_path)
    keys = {s.name: public_key(generate_private_key()) for s in sc.sites}
    return site_document(sc, site, uplink_addr=uplink_addresses(sc), public_keys=keys,
                         agents_dir=tmp_path / "agents", api_listen="100.96.0.2:8470", token="t" * 32)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_sites_document_is_a_valid_site_file(path: Path, tmp_path: Path) -> None:
    sc = load(path)
    for s in sc.sites:
        cfg = from_dict(_document(path, s.name, tmp_path))
        assert cfg.name == s.name and cfg.id == s.id
        assert [u.name for u in cfg.uplinks] == [u.name for u in s.uplinks]
        assert [r.name for r in cfg.remotes] == list(sc.remotes_of(s.name))
        assert len(cfg.paths) == sum(len(s.uplinks) * len(sc.site(r).uplinks) for r in sc.remotes_of(s.name))


def test_the_agent_parses_it_into_the_scenarios_settings(tmp_path: Path) -> None:
    sc = load(ROOT / "scenarios" / "six-sites.yaml")
    doc = _document(ROOT / "scenarios" / "six-sites.yaml", "br1", tmp_path)
    cfg = from_dict(doc)
    agent = sc.site("br1").agent
    assert cfg.monitor == agent.monitor and cfg.monitor.interval_s == 0.1
    assert cfg.router == agent.router and cfg.router.failback_hold_s == 5.0
    assert cfg.sla == agent.sla
    assert cfg.policies == agent.policies
    # hub and spoke: a branch's only remote is the hub, one path per (uplink, hub uplink)
    assert [r.name for r in cfg.remotes] == ["hq"]
    assert sorted(p.id for p in cfg.paths) == ["hq:isp1-isp1", "hq:isp1-isp2", "hq:lte-isp1", "hq:lte-isp2"]


def test_the_address_plan_is_the_mininet_backends() -> None:
    sc = load(ROOT / "scenarios" / "six-sites.yaml")
    addrs = uplink_addresses(sc)
    assert addrs["hq"] == {"isp1": ("100.64.0.1", "100.64.0.254"), "isp2": ("100.64.1.1", "100.64.1.254")}
    assert addrs["br1"]["lte"] == ("100.64.9.1", "100.64.9.254")        # site 1, uplink 1: (1·8 + 1)·256
    assert host_address(sc, "hq", 2) == "10.1.0.11"                    # hq.host2 = LAN + 10 + 1
