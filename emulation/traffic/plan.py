"""What every backend starts for a scenario flow: its traffic numbers, with the defaults filled in once."""

from __future__ import annotations

from dataclasses import dataclass

from emulation.scenario.model import Flow, FlowType

SOURCE_PORT_BASE = 41000          # flow i of a scenario sends from port 41000 + i, on every backend


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """The numbers a flow's generator runs with, its defaults filled in: the same for the Mininet
    runner's processes and the simulator's models."""

    rate: float          # ticks per second (UDP); 0 for TCP flows
    burst: int           # datagrams per tick
    size: int            # UDP payload bytes
    interval_s: float    # http
    bandwidth_bps: float  # tcp_bulk cap (0 = none)
    response_bytes: int  # http


def traffic_plan(f: Flow) -> TrafficPlan:
    """`f`'s traffic numbers, defaults filled in (a voip call 50 packets/s of 172 bytes, a video 30 frames/s
    of 1,200 bytes, a udp_cbr 1,000 packets/s of 172 bytes, http every second)."""
    t = f.type
    rate, burst, size, interval, bw = 1000.0, 1, 64, 1.0, 0.0
    if t in (FlowType.UDP_CBR, FlowType.VOIP):
        rate = float(f.rate_pps or (50.0 if t is FlowType.VOIP else 1000.0))
        size = max(16, int(f.payload_bytes or 172))
    elif t is FlowType.VIDEO:
        fps = float(f.frame_rate or 30.0)
        pps = float(f.packets_per_s or fps)
        rate, burst, size = fps, max(1, round(pps / fps)), int(f.payload_bytes or 1200)
    elif t is FlowType.TCP_BULK:
        bw = float(f.bandwidth_bps or 0.0)
    elif t is FlowType.HTTP:
        interval = float(f.interval_s or 1.0)
    return TrafficPlan(rate=rate if t.is_packet_flow else 0.0, burst=burst, size=size, interval_s=interval,
                    bandwidth_bps=bw, response_bytes=int(f.response_bytes or 65536))
