"""Path-MTU search across a real kernel path: two namespaces joined by a veth pair.

    ns a: veth 10.77.0.1/24 (MTU 1500) ───── veth 10.77.0.2/24 (MTU 1400) :ns b, reflector

The prober (in `a`) sits behind a 1500-byte interface, so the kernel lets it send every size up to
1500 and refuses larger ones itself (EMSGSIZE); sizes 1401-1500 leave and must be found not to fit
by the missing reply, as on a real path whose bottleneck is further away. The reflector (in `b`) is
the minimal one the agent's reflector is specified to be: `reflect()` every authentic request, same
size, from a socket opened with `open_path_socket(..., df=True)`.

Two kernel facts this test pinned down (see `patronus.agent.pmtu`): a veth *accepts* frames up to
MTU + 4 bytes (`is_skb_forwardable` allows a VLAN tag), so 1401-1404-byte requests do reach `b`; and
a reflector socket without DF then fragments its 1404-byte reply, which `a` reassembles and counts as
fitting: the search found 1404 until the reflector's replies carried DF.

Both sides run as subprocesses under `ip netns exec` (a socket lives in the namespace of the process
that opens it); their pids are recorded and killed by pid, and the namespaces (named after this
process's pid) are deleted in `finally` whatever happens.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from patronus.core.probe import pair_key

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip` for `ip netns exec`"),
]

REPO = Path(__file__).resolve().parents[2]
KEY = pair_key(b"netns-secret", "site-a", "site-b")
PORT = 4791
A_ADDR, B_ADDR = "10.77.0.1", "10.77.0.2"
BOTTLENECK = 1400

REFLECTOR = textwrap.dedent("""
    import sys, time
    from patronus.agent.sockets import open_path_socket
    from patronus.core.errors import PeerError
    from patronus.core.probe import ProbeType, decode, encode, reflect
    key, addr, dev, port = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    s = open_path_socket(addr, dev, 0, port, df=True)
    s.setblocking(True)
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        try:
            p = decode(data, key)
        except PeerError:
            continue
        if p.type is ProbeType.REQUEST:
            s.sendto(encode(reflect(p, time.time_ns()), key), peer)
""")

PROBER = textwrap.dedent("""
    import asyncio, json, sys
    from patronus.agent.pmtu import discover_path_mtu
    from patronus.agent.sockets import open_path_socket
    key, local, dev, remote, port = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

    async def main():
        sock = open_path_socket(local, dev, 0x77, df=True)
        try:
            res = await discover_path_mtu(sock, (remote, port), key, session=0x504D, lo=1280, hi=9000,
                                          tries=2, timeout_s=0.2)
        finally:
            sock.close()
        print(json.dumps(res.as_dict()), flush=True)

    asyncio.run(main())
""")


@dataclass(frozen=True)
class Topo:
    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


@pytest.fixture
def topo() -> Iterator[Topo]:
    from pyroute2 import IPRoute, NetNS, netns

    pid = os.getpid()
    t = Topo(f"ptpm-{pid}-a", f"ptpm-{pid}-b", f"ptpm{pid}a", f"ptpm{pid}b")
    assert len(t.veth_a) <= 15
    created: list[str] = []
    try:
        for ns in (t.ns_a, t.ns_b):
            netns.create(ns)
            created.append(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=t.veth_a, kind="veth", peer={"ifname": t.veth_b, "net_ns_fd": t.ns_b})
            ipr.link("set", index=ipr.link_lookup(ifname=t.veth_a)[0], net_ns_fd=t.ns_a)
        for ns, dev, addr, mtu in ((t.ns_a, t.veth_a, A_ADDR, 1500), (t.ns_b, t.veth_b, B_ADDR, BOTTLENECK)):
            with NetNS(ns) as n:
                idx = n.link_lookup(ifname=dev)[0]
                n.link("set", index=idx, mtu=mtu)
                n.addr("add", index=idx, address=addr, prefixlen=24)
                n.link("set", index=idx, state="up")
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
                got = n.get_links(idx)[0].get("IFLA_MTU")
                assert got == mtu, f"{dev} MTU is {got}, wanted {mtu}"
        yield t
    finally:
        for ns in created:
            netns.remove(ns)


def _spawn(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen[str], want: str, timeout_s: float) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"no {want!r} from pid {proc.pid} within {timeout_s} s")
        line = proc.stdout.readline().strip()
    if line != want:
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(f"expected {want!r} from pid {proc.pid}, got {line!r} {err}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_pmtu_search_finds_the_1400_byte_bottleneck(topo: Topo) -> None:
    reflector = _spawn(topo.ns_b, REFLECTOR, KEY.hex(), B_ADDR, topo.veth_b, str(PORT))
    try:
        _wait_for_line(reflector, "ready", 20)
        prober = _spawn(topo.ns_a, PROBER, KEY.hex(), A_ADDR, topo.veth_a, B_ADDR, str(PORT))
        try:
            out, err = prober.communicate(timeout=60)
        finally:
            _stop(prober)
        assert prober.returncode == 0, err
        res = json.loads(out)
    finally:
        _stop(reflector)
    assert res["path_mtu"] == BOTTLENECK, res
    assert res["tunnel_mtu"] == BOTTLENECK - 60
    assert res["local_refusals"] > 0, "sizes above the 1500-byte interface should be refused locally"
    assert [s for s, ok in res["steps"] if ok and s > BOTTLENECK] == []
    assert (BOTTLENECK, True) in [tuple(s) for s in res["steps"]]
    assert (BOTTLENECK + 1, False) in [tuple(s) for s in res["steps"]]


def test_pmtu_search_with_a_wrong_key_finds_nothing(topo: Topo) -> None:
    reflector = _spawn(topo.ns_b, REFLECTOR, pair_key(b"other", "x", "y").hex(), B_ADDR, topo.veth_b,
                       str(PORT))
    try:
        _wait_for_line(reflector, "ready", 20)
        prober = _spawn(topo.ns_a, PROBER, KEY.hex(), A_ADDR, topo.veth_a, B_ADDR, str(PORT))
        try:
            out, err = prober.communicate(timeout=60)
        finally:
            _stop(prober)
        assert prober.returncode == 0, err
        res = json.loads(out)
    finally:
        _stop(reflector)
    assert res["path_mtu"] is None and res["tunnel_mtu"] is None, res
    assert res["steps"] == [[1280, False]]
