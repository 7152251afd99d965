"""The backend interface `patronus-lab` calls (emulation.backends), and the one site-file builder the
netns lab shares with the backends (emulation.siteconf.site_file). No root: nothing is run on Mininet."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from emulation import backends
from emulation.netns_lab import TwoSiteLab
from patronus.agent.config import from_dict
from patronus.agent.keys import generate_private_key
from patronus.core.errors import ConfigError
from tests.emulation_unit.conftest import SCENARIOS

pytestmark = pytest.mark.unit


def test_the_registry_holds_both_backends_by_name() -> None:
    assert list(backends.BACKENDS) == ["mininet", "sim"]
    for name, b in backends.BACKENDS.items():
        assert backends.get(name) is b and b.name == name
    with pytest.raises(KeyError):
        backends.get("hosts")


def test_each_backend_says_which_options_it_takes() -> None:
    mininet, sim = backends.get("mininet"), backends.get("sim")
    assert mininet.check(backends.RunOptions(mode="flow")) == "--mode applies to --backend sim only"
    assert mininet.check(backends.RunOptions(keep=True, impairment="relay")) is None
    assert sim.check(backends.RunOptions(mode="flow")) is None
    assert (sim.check(backends.RunOptions(mode="fast")) or "").startswith("--mode: expected one of ")
    assert "apply to the mininet backend" in (sim.ignored(backends.RunOptions(keep=True)) or "")
    assert sim.ignored(backends.RunOptions()) is None and mininet.ignored(backends.RunOptions(keep=True)) is None
    assert sim.available() is None
    assert sim.clean(None) == []


def test_a_silent_run_raises_what_a_console_run_reports(tmp_path: Path) -> None:
    from emulation.scenario import load

    scenario = load(next(p for p in SCENARIOS if p.name == "failover-basic.yaml"))
    sim = backends.get("sim")
    with pytest.raises(ConfigError):
        sim.run(scenario, tmp_path / "a", backends.RunOptions(mode="fast"))
    buf = io.StringIO()
    con = Console(file=buf, width=200)
    assert sim.run(scenario, tmp_path / "b", backends.RunOptions(mode="fast", console=con)) == 2
    assert "mode" in buf.getvalue()


def test_the_netns_labs_site_files_come_from_the_shared_builder_and_parse(tmp_path: Path) -> None:
    from emulation.netns_lab import SiteInfo

    lab = TwoSiteLab(tmp_path, run="abcd")
    for k, s in enumerate(("hq", "br")):
        lab.sites[s] = SiteInfo(name=s, id=10 + k, ns=lab.ns(s), lan_prefix=f"10.9.{k + 1}.0/24",
                                lan_gw=f"10.9.{k + 1}.1", host_ns=lab.ns(f"{s}h"), host_ip=f"10.9.{k + 1}.10",
                                mgmt_ip=f"100.72.9.{4 * k + 2}",
                                uplinks={"isp1": (f"10.109.{2 * k + 1}.1", f"10.109.{2 * k + 1}.254"),
                                         "isp2": (f"10.109.{2 * k + 2}.1", f"10.109.{2 * k + 2}.254")},
                                private_key=generate_private_key())
    doc = lab.site_config("hq", policies="default")
    assert doc["site"]["lan_interfaces"] == ["lan0"]
    assert doc["state_dir"] == str(lab.state_dir("hq"))
    assert doc["api"]["listen"] == "100.72.9.2:8470" and doc["monitor"] == "fast"
    (tmp_path / "hq.key").write_text(lab.sites["hq"].private_key + "\n")
    cfg = from_dict(doc)
    assert [u.bandwidth_mbps for u in cfg.uplinks] == [100.0, 1000.0]
    assert [e.address for e in cfg.remotes[0].endpoints] == ["10.109.3.1", "10.109.4.1"]
