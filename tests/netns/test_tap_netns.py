"""The path tap (emulation/traffic/tap.py) in a namespace of its own: it records each flow packet on the
tunnel interface it left by, and keeps doing so when a tunnel is deleted and a new one takes its name
(a mesh agent does that when a remote leaves and another joins: path numbers are reused)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulation.wait import wait_for

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

NS = f"pttap{os.getpid()}"
SEND = ("import socket, struct, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for seq in map(int, sys.argv[2:]):\n"
        "    s.sendto(struct.pack('!QQ', seq, time.time_ns()) + bytes(16), (sys.argv[1], 5001))\n")


def ns(*argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], check=True, capture_output=True, text=True).stdout


def tunnel(name: str, net: int) -> int:
    """A stand-in tunnel interface: one end of a veth pair (the kernel here has no dummy), its far end
    (`pt9x…`, not a tunnel's name) up, and a static neighbour so that what leaves goes out at once; its
    index."""
    far = f"pt9x{net}"
    ns("ip", "link", "add", name, "type", "veth", "peer", "name", far)
    ns("ip", "addr", "add", f"10.99.{net}.1/24", "dev", name)
    ns("ip", "link", "set", far, "up")
    ns("ip", "link", "set", name, "up")
    ns("ip", "neigh", "replace", f"10.99.{net}.2", "lladdr", "02:00:00:00:00:01", "dev", name, "nud", "permanent")
    return int(ns("cat", f"/sys/class/net/{name}/ifindex"))


def bound_to(index: int) -> bool:
    """A packet socket of the namespace is bound to interface `index` (/proc/net/packet's Iface)."""
    rows = ns("cat", "/proc/net/packet").splitlines()[1:]
    return any(int(r.split()[4]) == index for r in rows)


def send(dst: str, *seqs: int) -> None:
    ns(sys.executable, "-c", SEND, dst, *map(str, seqs))


def test_the_tap_follows_a_tunnel_deleted_and_made_again_under_its_name(tmp_path: Path) -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    tap = None
    try:
        first = tunnel("pt9p1", 1)
        tunnel("pt9p2", 2)
        out, ready = tmp_path / "tap.csv", tmp_path / "ready"
        tap = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "emulation.traffic.tap", "--out",
                                str(out), "--ports", "5001", "--ready", str(ready)], cwd=Path(__file__).parents[2])
        wait_for(ready.exists, 10.0, "the tap")
        send("10.99.1.2", 0, 1, 2)
        send("10.99.2.2", 10, 11, 12)
        ns("ip", "link", "del", "pt9p1")
        again = tunnel("pt9p1", 1)
        assert again != first, (first, again)
        wait_for(lambda: bound_to(again), 10.0, "the tap on the new pt9p1", interval_s=0.1)
        send("10.99.1.2", 20, 21, 22)
        tap.terminate()
        tap.wait(10)
        with out.open() as fh:
            rows = sorted((int(r["seq"]), r["ifname"]) for r in csv.DictReader(fh))
    finally:
        if tap is not None and tap.poll() is None:
            tap.kill()
            tap.wait(5)
        subprocess.run(["ip", "netns", "del", NS], check=False)
    assert rows == [(0, "pt9p1"), (1, "pt9p1"), (2, "pt9p1"), (10, "pt9p2"), (11, "pt9p2"), (12, "pt9p2"),
                    (20, "pt9p1"), (21, "pt9p1"), (22, "pt9p1")]
