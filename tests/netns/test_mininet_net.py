"""The Mininet backend builds a scenario's network and removes all of it."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

if os.geteuid() != 0:
    pytest.skip("needs root to create network namespaces", allow_module_level=True)

from emulation import runs  # noqa: E402
from emulation.backends.mininet.net import MininetNet, NetSpec, SiteSpec, UplinkSpec, ns_run  # noqa: E402


def state() -> tuple[str, str]:
    return (subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout,
            subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout)


def test_build_reach_and_teardown() -> None:
    run = runs.claim("test")
    spec = NetSpec(run=run, sites=(
        SiteSpec("hq", 11, "10.1.0.0/24", 1, (UplinkSpec("isp1"), UplinkSpec("isp2"))),
        SiteSpec("br", 12, "10.2.0.0/24", 2, (UplinkSpec("isp1"),))))
    net = MininetNet(spec)
    try:
        net.build()
        names, _ = state()
        assert f"pt{run}-c{run}" in names and f"pt{run}-r0{run}" in names
        hq, br = net.sites["hq"], net.sites["br"]
        # the uplinks reach the core (relay nodes are not bridging yet: the core is reached only once a
        # relay runs) and the LAN hosts reach their router
        r = ns_run(net.ns(br.hosts[1]), ["python3", "-c", f"""
import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('{br.lan_gw}', 9)); print('ok')"""])
        assert r.stdout.strip() == "ok"
        assert "mgmt0" in ns_run(net.ns(hq.router), ["ip", "-o", "link"]).stdout
        assert set(hq.uplink_addr) == {"isp1", "isp2"} and hq.relay_node
    finally:
        net.teardown()
        runs.release(run)
    names, links = state()
    assert f"pt{run}-" not in names
    assert f"pt{run}m" not in links
