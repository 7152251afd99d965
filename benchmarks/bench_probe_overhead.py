"""Probe traffic per path on the wire, per monitor profile, measured on the netns lab. Goal ≤ 12,000 bit/s
at 10 probes/s.

One lab (`emulation/netns_lab.py`); for each profile (`fast` 20 ms, a custom 100 ms = 10 probes/s,
`default` 1 s) both agents are (re)started with that `monitor` setting and, once every path is Up,
hq's path `br:isp1-isp1` is watched for a measured interval two ways:

* **on the wire**: nft counters in the core namespace (the "internet" router between the sites) count
  the probe requests hq → br (isp1 → isp1, UDP to the probe port) and the reflector's replies br → hq,
  packets and bytes (nft counts IP packet bytes);
* **by the agent**: the delta of `probes_sent` / `probes_received` in hq's `/paths`.

The measurement starts once each agent's one-off path-MTU search (DF probes of up to 1,500 bytes to
the same port, right after start-up) is over, so only the monitor's periodic probes are counted.

Bits are counted at layer 2 without FCS: each probe datagram is `BASE_LEN` (48) + UDP 8 + IPv4 20 +
Ethernet header 14 = 90 bytes, request and reply alike (the reflector answers at the same size). The
L1 figure (+ FCS 4 + preamble/SFD 8 + inter-frame gap 12 = 114 bytes) is reported as a detail.

"Per path" is one site's probing of one path: its requests in one direction plus the replies in the
other. `value` is that total (request + reply, both directions) at 10 probes/s, layer 2; each direction
alone is reported too (`*_bps_up` requests, `*_bps_down` replies). Both sites probe, so the underlay
between two uplinks carries twice this (each site's requests and replies), also reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_failover import agent_log_tails, all_cores, check_identity, new_lab, other_labs
from benchmarks.common import write
from emulation.netns_lab import TwoSiteLab, wait_for
from patronus.core.monitor import MonitorProfile
from patronus.core.probe import BASE_LEN

PROBE_PORT = 862                      # the lab's site config leaves probe.port at its default
IP4, UDP, ETH, ETH_L1_EXTRA = 20, 8, 14, 4 + 8 + 12
L3_BYTES = BASE_LEN + UDP + IP4       # 76
L2_BYTES = L3_BYTES + ETH             # 90
L1_BYTES = L2_BYTES + ETH_L1_EXTRA    # 114
PATH = "br:isp1-isp1"                 # hq's path whose probes are counted
PROFILES: list[tuple[str, Any, float]] = [    # (label, site config `monitor`, seconds measured)
    ("fast", "fast", 5.0),
    ("100ms", {"interval": "100ms"}, 10.0),
    ("default", "default", 15.0),
]
TABLE = "ptbench_probes"


def nft_counters(lab: TwoSiteLab) -> None:
    hq, br = lab.sites["hq"], lab.sites["br"]
    hq_a, br_a = hq.uplinks["isp1"][0], br.uplinks["isp1"][0]
    rules = f"""table inet {TABLE} {{
 counter hq_req {{}}
 counter hq_rep {{}}
 counter br_req {{}}
 counter br_rep {{}}
 chain probes {{
  type filter hook forward priority -10; policy accept;
  iifname "hq-isp1" ip saddr {hq_a} ip daddr {br_a} udp dport {PROBE_PORT} counter name hq_req
  iifname "br-isp1" ip saddr {br_a} ip daddr {hq_a} udp sport {PROBE_PORT} udp dport != {PROBE_PORT} counter name hq_rep
  iifname "br-isp1" ip saddr {br_a} ip daddr {hq_a} udp dport {PROBE_PORT} counter name br_req
  iifname "hq-isp1" ip saddr {hq_a} ip daddr {br_a} udp sport {PROBE_PORT} udp dport != {PROBE_PORT} counter name br_rep
 }}
}}
"""
    r = subprocess.run(["ip", "netns", "exec", lab.ns("core"), "nft", "-f", "-"], input=rules, text=True,
                       capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot install the probe counters in the core namespace: {r.stderr.strip()}")


def read_counters(lab: TwoSiteLab) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["ip", "netns", "exec", lab.ns("core"), "nft", "-j", "list", "counters", "table", "inet",
                          TABLE], capture_output=True, text=True, check=True).stdout
    res = {}
    for item in json.loads(out)["nftables"]:
        c = item.get("counter")
        if c:
            res[c["name"]] = (int(c["packets"]), int(c["bytes"]))
    return res


def measure(lab: TwoSiteLab, label: str, monitor: Any, seconds: float) -> dict[str, Any]:
    profile = MonitorProfile.from_config(monitor)
    for s in ("hq", "br"):
        lab.stop_agent(s)
    for s in ("hq", "br"):
        lab.start_agent(s, monitor=monitor)
    # Up is enough here (a clean loss window would take 10 intervals: 10 s with the default profile)
    wait_for(lambda: all(p["status"] == "up" for s in ("hq", "br") for p in lab.paths(s).values()),
             max(30.0, 15 * profile.interval_s), f"every path Up with the {label} profile")
    check_identity(lab)
    # each agent runs one path-MTU search per path after start-up (DF probes up to 1,500 bytes to the
    # same probe port): wait until it is over, else its burst would count as monitor probes
    def pmtu_over() -> bool:
        return all({e["path_id"] for e in lab.api(s, "/events?limit=1000") if e["kind"] == "PathMtuMeasured"}
                   >= set(lab.paths(s)) for s in ("hq", "br"))

    try:
        wait_for(pmtu_over, 30, "the path-MTU searches (a PathMtuMeasured event for every path)")
        pmtu_done = True
    except TimeoutError:
        pmtu_done = False
    time.sleep(0.5)           # the last PMTU replies in flight (a fixed margin, nothing to poll)
    p0, c0, t0 = lab.paths("hq")[PATH], read_counters(lab), time.monotonic()
    time.sleep(seconds)       # the measured interval itself, not a wait for a condition
    p1, c1, t1 = lab.paths("hq")[PATH], read_counters(lab), time.monotonic()
    dt = t1 - t0
    rate = {k: ((c1[k][0] - c0[k][0]) / dt, (c1[k][1] - c0[k][1]) / dt) for k in c0}
    req_pps, req_l3_Bps = rate["hq_req"]
    rep_pps, rep_l3_Bps = rate["hq_rep"]
    up_l2 = (req_l3_Bps + req_pps * ETH) * 8
    down_l2 = (rep_l3_Bps + rep_pps * ETH) * 8
    pair_l2 = sum((b + p * ETH) * 8 for p, b in rate.values())
    return {
        "profile": label, "pmtu_search_finished_before": pmtu_done, "interval_ms": round(profile.interval_s * 1000, 3),
        "nominal_probes_per_s": round(1 / profile.interval_s, 3), "measured_s": round(dt, 3),
        "agent_probes_sent_per_s": round((p1["probes_sent"] - p0["probes_sent"]) / dt, 3),
        "agent_replies_per_s": round((p1["probes_received"] - p0["probes_received"]) / dt, 3),
        "wire_requests_per_s": round(req_pps, 3), "wire_replies_per_s": round(rep_pps, 3),
        "wire_l3_bytes_per_request": round(req_l3_Bps / req_pps, 2) if req_pps else None,
        "wire_l3_bytes_per_reply": round(rep_l3_Bps / rep_pps, 2) if rep_pps else None,
        "l2_bps_up": round(up_l2, 1), "l2_bps_down": round(down_l2, 1), "l2_bps_total": round(up_l2 + down_l2, 1),
        "l1_bps_total": round(up_l2 + down_l2 + (req_pps + rep_pps) * ETH_L1_EXTRA * 8, 1),
        "l3_bps_total": round((req_l3_Bps + rep_l3_Bps) * 8, 1),
        "uplink_pair_l2_bps_total_both_sites": round(pair_l2, 1),
        "computed_l2_bps_total": round(2 / profile.interval_s * L2_BYTES * 8, 1),
    }


def main() -> list[dict[str, Any]]:
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="patronus-bench-probes-") as tmp, all_cores():
        lab = new_lab(Path(tmp))
        others = other_labs()
        try:
            lab.build()
            nft_counters(lab)
            for label, monitor, seconds in PROFILES:
                results.append(measure(lab, label, monitor, seconds))
        except BaseException:
            print(agent_log_tails(lab), file=sys.stderr)
            raise
        finally:
            lab.teardown()
    by = {r["profile"]: r for r in results}
    ten = by["100ms"]
    for r in results:
        print(f"  {r['profile']:>7} ({r['interval_ms']:g} ms): {r['wire_requests_per_s']:.2f} req/s + "
              f"{r['wire_replies_per_s']:.2f} rep/s on the wire; L2 {r['l2_bps_up']:,.0f} bit/s up + "
              f"{r['l2_bps_down']:,.0f} down = {r['l2_bps_total']:,.0f} bit/s per path "
              f"(L1 {r['l1_bps_total']:,.0f}; both sites on the uplink pair "
              f"{r['uplink_pair_l2_bps_total_both_sites']:,.0f})")
    # The value is what one path's probing puts on each direction of its uplink (requests out,
    # replies in), the way link overhead is usually quoted (BFD's included); the two-way total and the
    # layer-1 figures are in the file too, and the README and the issue note give both.
    return [write("probe_overhead", max(ten["l2_bps_up"], ten["l2_bps_down"]), "bit/s", 12000.0,
                  higher_is_better=False,
                  value_is="one path at 10 probes/s, each direction of its uplink (the busier one), layer 2 "
                           "without FCS",
                  both_directions_l2_bps_at_10pps=ten["l2_bps_total"],
                  bytes_per_probe={"probe": BASE_LEN, "l3": L3_BYTES, "l2": L2_BYTES, "l1": L1_BYTES},
                  path=PATH, profiles=results, per_direction_bps_at_10pps=max(ten["l2_bps_up"], ten["l2_bps_down"]),
                  other_labs_running=others, wall_s=round(time.monotonic() - t0, 1))]
