"""A three-namespace bench for one impaired link: A ─ veth ─ R ─ veth ─ B.

    ns <name>-a: eth0 10.77.1.1/24 ── x  [ns <name>-r: relay bridges x and y]  y ── eth0 10.77.1.2/24 :ns <name>-b

Used by the relay's netns tests and its benchmark, with the probe tools below (run inside the
namespaces with `ip netns exec`):

    python -m emulation.links.lab send --to IP:PORT --rate PPS --count N [--size BYTES]
    python -m emulation.links.lab blast --to IP:PORT --seconds S [--size BYTES]
    python -m emulation.links.lab recv --port P

`send` paces datagrams carrying `!QQ` (sequence, CLOCK_REALTIME send time in ns) on an absolute
schedule and prints `{"sent": N}`; `blast` sends as fast as it can; `recv` prints `ready`, records
every datagram with its kernel receive timestamp (SO_TIMESTAMPNS) and, when its stdin closes, drains
its socket and prints `{"arrivals": [[seq, sent_ns, received_ns], ...]}`: the caller decides when
everything has arrived (e.g. the receiving interface's counter reached what the relay sent) and
only then closes stdin, so nothing in flight is cut off. Built with pyroute2 (namespaces, veths created
inside the namespaces so no name ever appears in the root namespace, addresses, static neighbours
so no ARP crosses the link, IPv6 off so nothing but the test's own packets does). `build()` tears
down what it made if it fails; `teardown()` removes the three namespaces (which takes the veths
along) and is safe to call twice. Namespace names start with `ptrl-<pid>-`, the owner's pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from emulation.traffic import kstamp
from emulation.wait import wait_for

A_IP, B_IP = "10.77.1.1", "10.77.1.2"
ROLES = ("a", "r", "b")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass
class RelayLab:
    name: str = field(default_factory=lambda: f"ptrl-{os.getpid()}-{secrets.token_hex(2)}")
    offloads: bool = True            # leave the veths' checksum/TSO offloads on (the relay must cope)
    namespaces: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.name}-{role}"

    def exec_argv(self, role: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def build(self) -> RelayLab:
        from pyroute2 import IPRoute, netns

        try:
            for role in ROLES:
                netns.create(self.ns(role))
                self.namespaces.append(self.ns(role))
                _run(self.exec_argv(role, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                                           "net.ipv6.conf.default.disable_ipv6=1"]))
            macs: dict[str, str] = {}
            for role, peer, ip in (("a", "x", A_IP), ("b", "y", B_IP)):
                with IPRoute(netns=self.ns(role)) as ipr:
                    ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": peer, "net_ns_fd": self.ns("r")})
                    idx = ipr.link_lookup(ifname="eth0")[0]
                    ipr.addr("add", index=idx, address=ip, prefixlen=24)
                    ipr.link("set", index=idx, state="up")
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                    macs[role] = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            with IPRoute(netns=self.ns("r")) as ipr:
                for port in ("x", "y"):
                    ipr.link("set", index=ipr.link_lookup(ifname=port)[0], state="up")
            for role, other_ip, other in (("a", B_IP, "b"), ("b", A_IP, "a")):
                with IPRoute(netns=self.ns(role)) as ipr:
                    ipr.neigh("replace", dst=other_ip, lladdr=macs[other], ifindex=ipr.link_lookup(ifname="eth0")[0],
                              state=0x80)             # NUD_PERMANENT
            if not self.offloads:
                for role, dev in (("a", "eth0"), ("b", "eth0"), ("r", "x"), ("r", "y")):
                    _run(self.exec_argv(role, ["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"]))
        except BaseException:
            self.teardown()
            raise
        return self

    def rx_packets(self, role: str = "b", dev: str = "eth0") -> int:
        """The kernel's receive counter of `dev` in `role`'s namespace."""
        out = _run(self.exec_argv(role, ["cat", f"/sys/class/net/{dev}/statistics/rx_packets"])).stdout
        return int(out)

    def teardown(self) -> None:
        from pyroute2 import netns

        for name in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                netns.remove(name)
        self.namespaces.clear()

    def __enter__(self) -> RelayLab:
        return self.build()

    def __exit__(self, *exc: Any) -> None:
        self.teardown()


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with `prefix` (tests assert none survive a teardown)."""
    from pyroute2 import netns

    return [n for n in netns.listnetns() if n.startswith(prefix)]


def wait_until(cond: Any, timeout_s: float, what: str, interval_s: float = 0.01) -> Any:
    """`emulation.wait.wait_for`, polling every 10 ms (the relay's counters move fast)."""
    return wait_for(cond, timeout_s, what, interval_s=interval_s)


class Receiver:
    """`recv` running in the lab's B namespace; `finish()` closes its stdin and returns the arrivals."""

    def __init__(self, lab: RelayLab, port: int, role: str = "b", timeout_s: float = 10.0) -> None:
        self.proc = subprocess.Popen(lab.exec_argv(role, [sys.executable, "-m", "emulation.links.lab", "recv",
                                                          "--port", str(port)]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert self.proc.stdout is not None
            r, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
            line = self.proc.stdout.readline() if r else ""
            if line.strip() != "ready":
                raise RuntimeError(f"the receiver did not start (said {line!r})")
        except BaseException:
            self.kill()
            raise

    def finish(self, timeout_s: float = 30.0) -> list[tuple[int, int, int]]:
        out, _ = self.proc.communicate(input="", timeout=timeout_s)
        return [(int(a[0]), int(a[1]), int(a[2])) for a in json.loads(out)["arrivals"]]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def sender(lab: RelayLab, rate: float, count: int, port: int, size: int = 64, role: str = "a",
           to: str = B_IP) -> subprocess.Popen[str]:
    """A paced sender in `role`'s namespace (wait for it, then read `{"sent": N}` from stdout)."""
    return subprocess.Popen(lab.exec_argv(role, [sys.executable, "-m", "emulation.links.lab", "send",
                                                 "--to", f"{to}:{port}", "--rate", str(rate),
                                                 "--count", str(count), "--size", str(size)]),
                            stdout=subprocess.PIPE, text=True)


# -- probe tools -----------------------------------------------------------------------------------

HEADER = struct.Struct("!QQ")


def send(dst: tuple[str, int], rate: float, count: int, size: int = 64) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(dst)
    pad = bytes(max(0, size - HEADER.size))
    start = time.monotonic()
    for n in range(count):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)            # pacing to an absolute schedule, not waiting for a condition
        s.send(HEADER.pack(n, time.time_ns()) + pad)
    return count


def blast(dst: tuple[str, int], seconds: float, size: int = 64) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(dst)
    payload = bytes(max(HEADER.size, size))
    n = 0
    end = time.monotonic() + seconds
    snd = s.send
    while time.monotonic() < end:
        for _ in range(256):
            try:
                snd(payload)
                n += 1
            except OSError:          # ENOBUFS when the veth peer's backlog is full: offered load, go on
                continue
    return n


def receive(port: int) -> list[tuple[int, int, int]]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    kstamp.enable(s)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    arrivals: list[tuple[int, int, int]] = []
    os.set_blocking(0, False)
    print("ready", flush=True)

    def drain() -> None:
        while True:
            try:
                data, _addr, got = kstamp.recv_stamped(s, 2048)
            except BlockingIOError:
                return
            if len(data) >= HEADER.size:
                seq, sent = HEADER.unpack_from(data)
                arrivals.append((seq, sent, got))

    while True:
        r, _, _ = select.select([s.fileno(), 0], [], [])
        if s.fileno() in r:
            drain()
        if 0 in r:
            try:
                chunk = os.read(0, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                drain()
                return arrivals


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulation.links.lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("send")
    sp.add_argument("--to", required=True)
    sp.add_argument("--rate", type=float, required=True)
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--size", type=int, default=64)
    bp = sub.add_parser("blast")
    bp.add_argument("--to", required=True)
    bp.add_argument("--seconds", type=float, required=True)
    bp.add_argument("--size", type=int, default=64)
    rp = sub.add_parser("recv")
    rp.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "send":
        print(json.dumps({"sent": send(_addr(a.to), a.rate, a.count, a.size)}))
    elif a.cmd == "blast":
        print(json.dumps({"sent": blast(_addr(a.to), a.seconds, a.size)}))
    else:
        print(json.dumps({"arrivals": receive(a.port)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
