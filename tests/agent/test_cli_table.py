"""`patronus status` / `patronus paths`: a path id and its tunnel are never cut, however narrow the
terminal and however large the counters have grown (a user types the id next)."""

from __future__ import annotations

import pytest
from rich.console import Console

from patronus.cli import _paths_table, _topology_table

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("width", [60, 80, 120])
def test_names_are_whole_on_a_narrow_terminal_with_big_counters(width: int) -> None:
    paths = [{"id": f"br:isp{i}-isp{j}", "status": "degraded", "latency_ms": 123.456, "jitter_ms": 12.345,
              "loss_pct": 12.5, "score": 99.9, "flows": 12, "probes_received": 1234567, "probes_sent": 1234600,
              "probes_rejected": 123, "interface": f"pt1234p{i}{j}"} for i in (1, 2) for j in (1, 2)]
    console = Console(width=width, record=True)
    console.print(_paths_table(paths))
    out = console.export_text()
    for p in paths:
        assert p["id"] in out and p["interface"] in out
    assert "degraded" in out


def test_the_topology_table_groups_paths_by_remote_and_lists_a_remote_with_none() -> None:
    data = {"nodes": [{"id": "hq", "kind": "local", "prefixes": ["10.1.0.0/24"]},
                      {"id": "br", "kind": "remote", "prefixes": ["10.2.0.0/24"]},
                      {"id": "dc", "kind": "remote", "prefixes": ["10.3.0.0/24", "fd00:3::/64"]}],
            "links": [{"path": f"br:isp{i}-isp1", "from": "hq", "to": "br", "uplink": f"isp{i}",
                       "remote_uplink": "isp1",
                       "status": s, "score": sc} for i, s, sc in ((2, "down", 0.0), (1, "up", 97.25))]}
    console = Console(width=120, record=True)
    console.print(_topology_table(data))
    rows = [[c.strip() for c in ln.split("│")] for ln in console.export_text().splitlines() if "│" in ln]
    assert rows == [["hq", "local", "10.1.0.0/24", "-", "", "", ""],
                    ["br", "remote", "10.2.0.0/24", "br:isp1-isp1", "isp1 → isp1", "up", "97.2"],
                    ["", "", "", "br:isp2-isp1", "isp2 → isp1", "down", "0.0"],
                    ["dc", "remote", "10.3.0.0/24 fd00:3::/64", "-", "", "", ""]]
