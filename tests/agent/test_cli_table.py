"""`patronus status` / `patronus paths`: a path id and its tunnel are never cut, however narrow the
terminal and however large the counters have grown (a user types the id next)."""

from __future__ import annotations

import pytest
from rich.console import Console

from patronus.cli import _paths_table

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
