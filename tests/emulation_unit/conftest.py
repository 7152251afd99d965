"""Shared helpers of the scenario tests: a small valid scenario to start from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "version": 1,
    "name": "minimal",
    "duration": "30s",
    "sites": {
        "hq": {"uplinks": {"isp1": {}, "isp2": {"delay": "40ms"}}},
        "br": {"uplinks": {"isp1": None}},
    },
}


@pytest.fixture
def doc() -> dict[str, Any]:
    """A fresh copy of a small valid scenario document, with one flow of each type and a timeline."""
    d = copy.deepcopy(MINIMAL)
    d["sites"]["br"]["hosts"] = 2
    d["traffic"] = [
        {"name": "cbr", "type": "udp_cbr", "from": "hq", "to": "br"},
        {"name": "voice", "type": "voip", "from": "hq", "to": "br.host2"},
        {"name": "video", "type": "video", "from": "br", "to": "hq"},
        {"name": "bulk", "type": "tcp_bulk", "from": "hq", "to": "br"},
        {"name": "web", "type": "http", "from": "br.host2", "to": "hq"},
    ]
    d["timeline"] = [
        {"at": "10s", "action": "cut", "link": "hq.isp1"},
        {"at": "20s", "action": "restore", "link": "hq.isp1"},
    ]
    d["expectations"] = [{"failover_gap": {"flow": "cbr", "max": "300ms"}}]
    return d
