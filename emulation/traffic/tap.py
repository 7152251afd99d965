"""Which path did each packet take? A tap in the source site's router.

    python -m emulation.traffic.tap --out taps.csv --ports 5001,5060 [--ready FILE]

Runs in a site router's namespace, listens (AF_PACKET, outgoing only) on every WireGuard interface of
the agent (`pt<site id>p<n>`, found at start and re-scanned each second: a mesh agent deletes tunnels and
makes new ones, which may take a deleted one's name, so a socket is bound per interface index and closed
when its interface is gone) and records, for UDP
packets to the given destination ports that carry `emulation.udpflow`'s header, the sequence number
and the interface they left on. The runner maps interfaces to path ids through the agent's API.
Stops on SIGTERM/SIGINT and writes `dst_ip,dst_port,src_port,seq,ifname,at_ns` rows (`at_ns`: the
kernel's timestamp of the packet on the tunnel interface). A packet is recorded only on the socket of
the interface it left by (the capture's own interface index): while an interface is being deleted, its
socket may be handed a packet that leaves by another one.
"""

from __future__ import annotations

import argparse
import csv
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from emulation.traffic import kstamp
from emulation.traffic.stopflag import StopFlag

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_SEQ = struct.Struct("!QQ")


def _wg_ifaces() -> dict[str, int]:
    out = {}
    for name in os.listdir("/sys/class/net"):
        if name.startswith("pt") and "p" in name[2:]:
            try:
                out[name] = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
            except OSError:
                continue
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.traffic.tap")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ports", required=True, help="destination ports to record, comma separated")
    ap.add_argument("--ready", type=Path)
    a = ap.parse_args(argv)
    ports = {int(p) for p in a.ports.split(",") if p}
    socks: dict[int, tuple[str, int, socket.socket]] = {}     # fd -> (interface, its index, socket)
    rows: list[tuple[str, int, int, int, str, int]] = []
    stop = StopFlag(signal.SIGTERM, signal.SIGINT)

    def rescan() -> None:
        now = _wg_ifaces()
        for fd, (name, idx, s) in list(socks.items()):
            if now.get(name) != idx:            # gone, or a new interface of that name
                del socks[fd]
                s.close()
        known = {(name, idx) for name, idx, _ in socks.values()}
        for name, idx in now.items():
            if (name, idx) in known:
                continue
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            try:
                s.bind((name, 0))
            except OSError:                     # deleted meanwhile
                s.close()
                continue
            kstamp.enable(s)
            s.setblocking(False)
            socks[s.fileno()] = (name, idx, s)

    rescan()
    if a.ready:
        a.ready.write_text("ready\n")
    next_scan = time.monotonic() + 1.0
    while not stop:
        try:
            ready, _, _ = select.select(list(socks), [], [], 0.2)
        except InterruptedError:
            continue
        for fd in ready:
            if fd not in socks:
                continue
            name, _idx, s = socks[fd]
            while True:
                try:
                    data, addr, at_ns = kstamp.recv_stamped(s, 2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if addr[2] != PACKET_OUTGOING or len(data) < 20 + 8 + 16 or data[0] >> 4 != 4 or data[9] != 17:
                    continue
                if addr[0] != name:             # left by another interface (see the module's header)
                    continue
                ihl = (data[0] & 0x0F) * 4
                sport, dport = struct.unpack_from("!HH", data, ihl)
                if dport not in ports:
                    continue
                seq, _sent = _SEQ.unpack_from(data, ihl + 8)
                dst = socket.inet_ntoa(data[16:20])
                rows.append((dst, dport, sport, seq, name, at_ns))
        if time.monotonic() >= next_scan:
            next_scan = time.monotonic() + 1.0
            rescan()
    tmp = a.out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dst_ip", "dst_port", "src_port", "seq", "ifname", "at_ns"])
        w.writerows(rows)
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
