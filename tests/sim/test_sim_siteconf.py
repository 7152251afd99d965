"""The site file both backends give the agent: the same document as the Mininet runner builds, parsed by
the agent's own parser into the scenario's settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from emulation.backends.mininet_net import SiteSpec, UplinkSpec
from emulation.runner import Runner
from emulation.scenario import load
from emulation.siteconf import host_address, site_document, uplink_addresses
from patronus.agent.config import from_dict
from patronus.agent.keys import generate_private_key, public_key

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def _runner_document(scenario_path: Path, site: str, tmp_path: Path) -> tuple[dict, dict]:
    """(the runner's site_file for `site`, ours), from the same addresses, keys, token and directory."""
    sc = load(scenario_path)
    runner = Runner(sc, tmp_path)
    runner.site_ids = {s.name: s.id for s in sc.sites}
    addrs = uplink_addresses(sc)
    runner.keys = {s.name: generate_private_key() for s in sc.sites}
    sites = {}
    for k, s in enumerate(sc.sites):
        spec = SiteSpec(s.name, s.id, s.lan_prefix, s.hosts,
                        tuple(UplinkSpec(u.name, u.bandwidth_bps, u.cost_per_gb) for u in s.uplinks))
        sites[s.name] = SimpleNamespace(spec=spec, uplink_addr=addrs[s.name], mgmt_ip=f"100.96.0.{4 * k + 2}")
    runner.net = SimpleNamespace(sites=sites)  # type: ignore[assignment]
    theirs = runner.site_file(site, sc.site(site).agent.to_dict(), list(sc.remotes_of(site)))
    ours = site_document(sc, site, uplink_addr=addrs,
                         public_keys={n: public_key(k) for n, k in runner.keys.items()},
                         agents_dir=tmp_path / "agents", api_listen=f"{sites[site].mgmt_ip}:8470",
                         token=runner.token)
    return theirs, ours


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_the_document_is_the_runners(path: Path, tmp_path: Path) -> None:
    sc = load(path)
    for s in sc.sites:
        theirs, ours = _runner_document(path, s.name, tmp_path)
        assert ours == theirs
        assert list(ours) == list(theirs)          # same key order in the YAML the agent reads


def test_the_agent_parses_it_into_the_scenarios_settings(tmp_path: Path) -> None:
    sc = load(ROOT / "scenarios" / "six-sites.yaml")
    _, doc = _runner_document(ROOT / "scenarios" / "six-sites.yaml", "br1", tmp_path)
    cfg = from_dict(doc)
    agent = sc.site("br1").agent
    assert cfg.monitor == agent.monitor and cfg.monitor.interval_s == 0.05
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


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_run_json_expectations_and_targets_are_the_runners(path: Path, tmp_path: Path) -> None:
    from emulation.backends.sim.writer import expectations_doc, sla_targets_doc

    sc = load(path)
    runner = Runner(sc, tmp_path)
    assert expectations_doc(sc) == runner.expectations()
    assert sla_targets_doc(sc) == runner.sla_targets()
