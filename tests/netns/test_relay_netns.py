"""The userspace relay on a real kernel path: namespace A ─ veth ─ R (relay) ─ veth ─ B.

UDP datagrams carrying their send time go from A to B through the relay (`emulation.links.lab`);
the receiver stamps arrivals with the kernel's receive time, all namespaces share one clock, so the
one-way delay is exact. Every exchange waits for a condition (the relay has released everything it
holds and B's interface has counted every frame the relay sent) before the receiver is stopped.
The veths keep their checksum and TSO offloads on: the relay has to cope (virtio-net headers, GSO
segmentation), and the TCP test checks it does.

One module-scoped lab and relay; every namespace (`ptrl-<pid>-...`) and the relay process are
removed in `finally`, and a test checks that a failing run leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulation.links import netem
from emulation.links.impairment import Impairment
from emulation.links.lab import B_IP, Receiver, RelayLab, leftover_namespaces, sender, wait_until
from emulation.links.relay import RelayLink, _gone, registry_dir

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip` for `ip netns exec`"),
]

TAG = f"ptrl-test-{os.getpid()}"


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[RelayLab, RelayLink]]:
    lab = RelayLab()
    link = RelayLink(lab.ns("r"), "x", "y", seed=1234, tag=TAG, nice=-10)
    try:
        lab.build()
        link.start()
        yield lab, link
    finally:
        try:
            link.stop()
        finally:
            lab.teardown()


@pytest.fixture
def link(bed: tuple[RelayLab, RelayLink]) -> Iterator[RelayLink]:
    _, lnk = bed
    lnk.set("both", Impairment())
    yield lnk
    lnk.set("both", Impairment())


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after["xy"][key]) - int(before["xy"][key])


def settle(lab: RelayLab, link: RelayLink, rx_base: int, before: dict[str, Any], timeout_s: float = 10.0
           ) -> dict[str, Any]:
    """Wait until the relay holds nothing and B's eth0 has counted every frame the relay sent since
    `before` (B receives nothing else: static neighbours, no IPv6)."""
    seen: list[Any] = []

    def done() -> dict[str, Any] | None:
        c = link.counters()
        rx = lab.rx_packets() - rx_base
        seen[:] = [c["xy"]["held"], rx, delta(c, before, "sent")]
        return c if c["xy"]["held"] == 0 and rx == delta(c, before, "sent") else None
    try:
        return dict(wait_until(done, timeout_s, "the relay to release everything and B to count it"))
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (held, received at B, sent by the relay: {seen})") from None


def run_flow(lab: RelayLab, link: RelayLink, port: int, rate: float, count: int) -> tuple[
        int, list[tuple[int, int, int]], dict[str, Any], dict[str, Any]]:
    before = link.counters()
    rx_base = lab.rx_packets()
    rx = Receiver(lab, port)
    try:
        snd = sender(lab, rate, count, port)
        out, _ = snd.communicate(timeout=count / rate + 30)
        assert snd.returncode == 0
        sent = json.loads(out)["sent"]
        wait_until(lambda: delta(link.counters(), before, "packets_in") >= sent, 10, "the relay to see every packet")
        after = settle(lab, link, rx_base, before)
        arrivals = rx.finish()
    finally:
        rx.kill()
    return sent, arrivals, before, after


def binomial_99(n: int, p: float) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 2.576 * sd, n * p + 2.576 * sd


def test_constant_delay(bed: tuple[RelayLab, RelayLink], link: RelayLink) -> None:
    lab, _ = bed
    link.set("xy", Impairment(delay_s=0.020))
    sent, arrivals, before, after = run_flow(lab, link, 5301, rate=500, count=300)
    owd_ms = sorted((r - s) / 1e6 for _, s, r in arrivals)
    assert sent == 300 and len(arrivals) == 300
    assert owd_ms[0] >= 19.95                       # never early
    assert 20.0 <= owd_ms[len(owd_ms) // 2] <= 21.5    # and on time (the median: a busy machine makes a tail)
    assert sum(owd_ms) / len(owd_ms) <= 25.0
    assert delta(after, before, "packets_in") == 300 == delta(after, before, "delivered")
    assert delta(after, before, "sent") == 300


def test_random_loss_within_binomial_interval(bed: tuple[RelayLab, RelayLink], link: RelayLink) -> None:
    lab, _ = bed
    link.set("xy", Impairment(loss=0.10))
    sent, arrivals, before, after = run_flow(lab, link, 5302, rate=1000, count=2000)
    lost = sent - len({a[0] for a in arrivals})
    lo, hi = binomial_99(sent, 0.10)
    assert sent == 2000 and lo <= lost <= hi
    assert after["xy"]["dropped"]["loss"] - before["xy"]["dropped"]["loss"] == lost
    assert delta(after, before, "packets_in") == sent
    assert delta(after, before, "delivered") == len(arrivals) == delta(after, before, "sent")


def test_runtime_cut_drops_everything_from_applied_at(bed: tuple[RelayLab, RelayLink], link: RelayLink) -> None:
    lab, _ = bed
    port = 5303
    before = link.counters()
    rx_base = lab.rx_packets()
    rx = Receiver(lab, port)
    try:
        snd = sender(lab, 1000, 2000, port)
        try:
            wait_until(lambda: lab.rx_packets() - rx_base >= 500, 10, "500 packets through before the cut")
            applied_at = link.set("xy", Impairment(cut=True))
            out, _ = snd.communicate(timeout=30)
        finally:
            if snd.poll() is None:
                snd.kill()
        sent = json.loads(out)["sent"]
        wait_until(lambda: delta(link.counters(), before, "packets_in") >= sent, 10, "the relay to see every packet")
        after = settle(lab, link, rx_base, before)
        arrivals = rx.finish()
    finally:
        rx.kill()
    assert arrivals, "nothing arrived before the cut"
    assert max(s for _, s, _ in arrivals) < applied_at              # nothing sent after the cut got through
    seqs = sorted(a[0] for a in arrivals)
    assert seqs == list(range(len(seqs)))                             # everything before it did
    last_sent = max(s for _, s, _ in arrivals)
    assert (applied_at - last_sent) / 1e6 < 20                        # the cut is where it says it is
    assert 500 <= len(seqs) < sent == 2000
    assert after["xy"]["dropped"]["cut"] - before["xy"]["dropped"]["cut"] == sent - len(seqs)
    assert delta(after, before, "delivered") == len(seqs)


def test_tcp_through_offloads_arrives_intact(bed: tuple[RelayLab, RelayLink], link: RelayLink) -> None:
    """A TCP sender with TSO hands the relay 64 KB super-frames; cut into packets, with 1 % loss and a
    delay, the stream must still arrive byte for byte."""
    lab, _ = bed
    link.set("both", Impairment(delay_s=0.002, loss=0.01))
    before = link.counters()
    server = subprocess.Popen(lab.exec_argv("b", [sys.executable, "-c", (
        "import socket,hashlib\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 5304))\n"
        "s.listen(1); print('ready', flush=True)\n"
        "c,_=s.accept(); h=hashlib.sha256(); n=0\n"
        "while d := c.recv(65536):\n    h.update(d); n += len(d)\n"
        "print(n, h.hexdigest(), flush=True)\n")]), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = subprocess.run(lab.exec_argv("a", [sys.executable, "-c", (
            "import socket,random,hashlib\n"
            "data=random.Random(5).randbytes(3_000_000)\n"
            f"s=socket.create_connection(('{B_IP}', 5304)); s.sendall(data); s.close()\n"
            "print(hashlib.sha256(data).hexdigest())\n")]), capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    n, digest = out.split()
    assert int(n) == 3_000_000 and digest == client.stdout.strip()
    after = link.counters()
    frames, segs = delta(after, before, "gso_frames"), delta(after, before, "gso_segments")
    assert segs >= frames                              # every super-frame was cut (or there were none)
    assert after["xy"]["dropped"]["loss"] > before["xy"]["dropped"]["loss"]


def test_unix_control_socket(bed: tuple[RelayLab, RelayLink]) -> None:
    """A relay started by hand with `--control unix:PATH` answers there."""
    lab, _ = bed
    path = Path(tempfile.mkdtemp(prefix="ptrl-ctl-")) / "relay.sock"
    proc = subprocess.Popen(lab.exec_argv("r", [sys.executable, "-m", "emulation.links.relay", "--x=x", "--y=y",
                                                f"--tag={TAG}", f"--control=unix:{path}"]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] and ready["control"] == f"unix:{path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(str(path))
            c.sendall(b'{"id": 1, "set": {"dir": "xy", "impairment": {"loss": 0.5}}}\n{"id": 2, "counters": true}\n')
            with c.makefile("r") as f:
                first, second = json.loads(f.readline()), json.loads(f.readline())
                assert first["ok"] and first["id"] == 1 and first["applied_at"] > 0
                assert second["id"] == 2 and second["counters"]["xy"]["impairment"]["loss"] == 0.5
                c.sendall(b'{"stop": true}\n')
                assert json.loads(f.readline())["ok"]
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(path.parent, ignore_errors=True)
    assert not path.exists()


def test_a_failing_run_leaves_nothing() -> None:
    lab = RelayLab()
    link = RelayLink(lab.ns("r"), "x", "y", seed=1, tag=TAG)
    pid = None

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        try:
            lab.build()
            with link:
                pid = link.pid
                assert pid is not None and not _gone(pid)
                assert (registry_dir() / f"{TAG}.{pid}.json").exists()
                raise Boom
        finally:
            lab.teardown()
    assert pid is not None and _gone(pid)
    assert not (registry_dir() / f"{TAG}.{pid}.json").exists()
    assert leftover_namespaces(lab.name) == []


def test_netem_backend_on_this_kernel(bed: tuple[RelayLab, RelayLink]) -> None:
    """Where sch_netem exists the plan is installed and removed; where it does not (here), applying it
    raises instead of carrying on without the impairment."""
    lab, _ = bed
    ok, why = netem.available()
    if ok:
        netem.apply("eth0", Impairment(delay_s=0.01, loss=0.01), lab.ns("a"))
        assert netem.stats("eth0", lab.ns("a")) != {}
        assert netem.remove("eth0", lab.ns("a"))
        assert netem.stats("eth0", lab.ns("a")) == {}
    else:
        assert "sch_netem" in why
        with pytest.raises(netem.NetemError, match="netem"):
            netem.apply("eth0", Impairment(delay_s=0.01), lab.ns("a"))
    assert leftover_namespaces(f"ptrl-{os.getpid()}-probe") == []
