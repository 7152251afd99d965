"""A Mininet run's raw data (`raw/`), from what the runner collected: the sampler's rows, the timeline's,
the agents' events and steering plans, the traffic tools' records, the host's stalls and platform.

The files and their columns are `emulation.rawfiles`' (every backend writes them the same way); this
module turns the traffic tools' own records (udpflow's arrivals, the taps, iperf3's JSON, the HTTP
client's CSV) into them.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulation.backends.mininet.net import MininetNet
from emulation.backends.mininet.sampler import Sampler
from emulation.backends.mininet.traffic import FlowPlan
from emulation.platform import PlatformLog
from emulation.platform import summarize as summarize_platform
from emulation.platform import write_csv as write_platform_csv
from emulation.rawfiles import (
    HTTP_COLUMNS,
    PACKET_COLUMNS,
    PATH_METRIC_COLUMNS,
    TCP_COLUMNS,
    TIMELINE_COLUMNS,
    run_document,
    write_csv,
    write_events,
    write_json,
)
from emulation.scenario.model import Scenario
from emulation.stallwatch import REPORT_MS


@dataclass
class Collected:
    """What the run gathered for its raw data, besides the traffic tools' files."""

    sampler: Sampler
    timeline_rows: list[list[Any]]
    events: list[tuple[str, list[dict[str, Any]]]]     # (site, its agent's events)
    plans: Mapping[str, Any]                             # site -> the steering plan at the end
    if_to_path: Mapping[tuple[str, str], str]            # (site, interface) -> path id
    expectations: list[dict[str, Any]]
    links: list[dict[str, Any]]


def write_raw(raw: Path, scenario: Scenario, net: MininetNet, flows: list[FlowPlan], got: Collected, *,
              impairment_backend: str, started_at: float, t0: float, mesh: dict[str, Any] | None = None) -> None:
    """path_metrics.csv, timeline.csv, events.jsonl, steering.json, tcp.csv, http.csv, packets.csv, run.json."""
    raw.mkdir(parents=True, exist_ok=True)
    write_csv(raw / "path_metrics.csv", PATH_METRIC_COLUMNS, got.sampler.rows)
    write_csv(raw / "timeline.csv", TIMELINE_COLUMNS, got.timeline_rows)
    write_events(raw / "events.jsonl", got.events)
    write_json(raw / "steering.json", dict(got.plans))
    tcp_rows, http_rows = [], []
    for f in flows:
        ip = raw / "traffic" / f"{f.name}.iperf.json"
        if ip.exists():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for iv in json.loads(ip.read_text()).get("intervals", []):
                    s = iv["sum"]
                    tcp_rows.append([f.name, round(t0 + f.start_s + s["end"], 4), s["bits_per_second"]])
        hp = raw / "traffic" / f"{f.name}.http.csv"
        if hp.exists():
            with open(hp) as hh:
                for row in csv.DictReader(hh):
                    http_rows.append([f.name, row["at"], row["latency_ms"], row["ok"]])
    if tcp_rows:
        write_csv(raw / "tcp.csv", TCP_COLUMNS, tcp_rows)
    if http_rows:
        write_csv(raw / "http.csv", HTTP_COLUMNS, http_rows)
    write_packets(raw, net, flows, got.if_to_path)
    docs = [{"name": f.name, "type": f.type, "class": f.cls, "src_site": f.src_site, "dst_site": f.dst_site,
             "dst_port": f.dst_port, "rate_pps": f.rate * f.burst if f.udp else None,
             "start_s": f.start_s, "stop_s": f.stop_s, "sent": f.sent,
             "policy": got.sampler.policy_of(f.src_site, net.sites[f.src_site].host_ip(f.src_host),
                                             net.sites[f.dst_site].host_ip(f.dst_host), 17 if f.udp else 6,
                                             f.dst_port)}
            for f in flows]
    write_json(raw / "run.json", run_document(
        scenario, backend="mininet", impairment_backend=impairment_backend, started_at=started_at,
        t0=t0, flows=docs, links=got.links, expectations=got.expectations, **({"mesh": mesh} if mesh else {})))


def write_packets(raw: Path, net: MininetNet, flows: list[FlowPlan], if_to_path: Mapping[tuple[str, str], str]) -> None:
    """packets.csv: every sent packet of every UDP flow, its arrival (or none) and its path."""
    tdir = raw / "traffic"
    with open(raw / "packets.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PACKET_COLUMNS)
        for f in flows:
            if not f.udp:
                continue
            arrivals: dict[int, tuple[int, int]] = {}
            fp = tdir / f"{f.name}.json"
            if fp.exists():
                for seq, sent, recv in json.loads(fp.read_text())["arrivals"]:
                    arrivals.setdefault(seq, (sent, recv))
            paths: dict[int, str] = {}
            dst_ip = net.sites[f.dst_site].host_ip(f.dst_host)
            tap = tdir / f"tap-{f.src_site}.csv"
            if tap.exists():
                with open(tap) as th:
                    for row in csv.DictReader(th):
                        if (row["dst_ip"] == dst_ip and int(row["dst_port"]) == f.dst_port
                                and int(row["src_port"]) == f.sport):
                            paths[int(row["seq"])] = if_to_path.get((f.src_site, row["ifname"]), "")
            total = max(f.sent, (max(arrivals) + 1) if arrivals else 0)
            for seq in range(total):
                sent, recv = arrivals.get(seq, (0, 0))
                w.writerow([f.name, seq, sent or "", recv or "", paths.get(seq, "")])


def write_stalls(raw: Path, scenario: Scenario, stalls: list[tuple[float, float]], t0: float,
                 progress: Callable[[str], None]) -> None:
    """raw/host_stalls.csv: every wake-up of the stall watcher at least `REPORT_MS` late, in scenario
    seconds; and a note when one was as long as the fastest monitor's detection time."""
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "host_stalls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["at_s", "lag_ms"])
        w.writerows([round(at - t0, 3), ms] for at, ms in stalls)
    detect_ms = min(s.agent.monitor.detection_time_s for s in scenario.sites) * 1000.0
    worst = max(stalls, key=lambda x: x[1], default=None)
    if worst is not None and worst[1] >= detect_ms:
        progress(f"warning: the host stalled for {worst[1]:.0f} ms at {worst[0] - t0:.1f} s "
                 f"(a fast agent calls a path Down after {detect_ms:.0f} ms): {len(stalls)} stalls over "
                 f"{REPORT_MS:g} ms in raw/host_stalls.csv")


def write_platform(raw: Path, log: PlatformLog, stalls_ms: list[float], t0: float, sched: list[Any],
                   rtt_summary: dict[str, Any] | None) -> None:
    """raw/platform.csv (a row per second) and raw/platform.json (summary.json's `platform`)."""
    write_platform_csv(raw / "platform.csv", log, t0)
    doc = summarize_platform(log, stalls_ms, sched)
    doc["rtt_check"] = rtt_summary
    (raw / "platform.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
