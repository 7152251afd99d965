"""Generated scenario documents for the simulator's benchmarks and tests: a hierarchical mesh of N
regions, each with one hub and spokes, every site on the same number of uplinks.

    doc = regional_mesh_doc(regions=5, sites_per_region=20, uplinks=3, probe_interval="100ms",
                            duration="3600s")
    scenario = emulation.scenario.from_dict(doc)

Why hierarchical: the agent allows 250 paths a site, so 100 sites × 3 uplinks cannot be one hub and 99
spokes (891 paths at the hub). With 5 regions of 20, a hub has (19 spokes + 4 hubs) × 9 = 207 paths and
a spoke 9: 1,890 paths in all. Pure: returns a plain document, validated like a file.
"""

from __future__ import annotations

from typing import Any

REGION_NAMES = ("eu", "us", "as", "sa", "af", "oc", "me", "ca", "in", "jp", "uk", "de", "fr", "br", "mx", "za")


def regional_mesh_doc(*, regions: int, sites_per_region: int, uplinks: int, probe_interval: str = "1s",
                      duration: str = "60s", seed: int = 1, name: str = "regional-mesh",
                      flows_per_region: int = 0) -> dict[str, Any]:
    """`regions` regions of `sites_per_region` sites (one hub `<region>-hub-1`, the rest spokes
    `<region>-1` …), each on `uplinks` uplinks (isp1 … ispN, 100 Mbit/s, 10 ms + 5 ms per uplink
    number), probing every `probe_interval`; `flows_per_region` voip calls from a region's first
    spokes to its hub (distinct hub hosts). Simulator only (`backends: [sim]`)."""
    if not 1 <= regions <= len(REGION_NAMES):
        raise ValueError(f"regions: 1-{len(REGION_NAMES)}")
    if sites_per_region < 2:
        raise ValueError("sites_per_region: at least 2 (a hub and a spoke)")
    links = {f"isp{u + 1}": {"bandwidth": "100mbit", "delay": f"{10 + 5 * u}ms"} for u in range(uplinks)}
    agent = {"monitor": {"profile": "default", "interval": probe_interval}}
    names = REGION_NAMES[:regions]
    groups: dict[str, Any] = {}
    for r in names:
        groups[f"{r}-hub"] = {"count": 1, "region": r, "hosts": max(1, flows_per_region), "uplinks": links,
                              "agent": agent}
        groups[r] = {"count": sites_per_region - 1, "region": r, "uplinks": links, "agent": agent}
    traffic = [{"name": f"{r}{i}", "type": "voip", "from": f"{r}-{i}", "to": f"{r}-hub-1.host{i}"}
               for r in names for i in range(1, min(flows_per_region, sites_per_region - 1) + 1)]
    return {"version": 1, "name": name, "seed": seed, "duration": duration, "backends": ["sim"],
            "description": f"{regions} regions × {sites_per_region} sites × {uplinks} uplinks, probes every "
                           f"{probe_interval} (generated)",
            "site_groups": groups,
            "core": {"topology": "hierarchical", "hubs": {r: [f"{r}-hub-1"] for r in names}},
            "traffic": traffic}
