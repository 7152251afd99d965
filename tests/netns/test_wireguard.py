"""WireGuard paths (patronus.agent.wireguard): pure parts as unit tests, then real tunnels between namespaces.

    ns a: veth 10.77.0.1/24 ──── veth 10.77.0.2/24 + 10.77.0.3/24 :ns b
          wg  10.78.0.1/24 ════ wg  10.78.0.2/24

Each manager call runs in a fresh subprocess under `ip netns exec` (a process acts in its own namespace),
so the tests also prove that a later process finds and removes what an earlier one created, as an agent
restart would. The backend is whatever `detect_backend()` picks: wireguard-go here, the kernel module on
hosts that have it. Namespaces and interfaces are named after this process's pid; the module fixture kills
every wireguard-go recorded in our state directories (by verified pid) and deletes the namespaces in
`finally`, whatever happened.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emulation.wait import wait_for as _wait_for
from patronus.agent.keys import generate_private_key, public_key
from patronus.agent.wireguard import (
    SOCKET_DIR,
    TunnelSpec,
    TunnelStatus,
    WireGuardError,
    WireGuardManager,
    detect_backend,
    parse_kernel_info,
    parse_wg_dump,
    wg_set_argv,
)
from patronus.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PID = os.getpid()
TAG = f"ptwgt-{PID}"
OWNER_PREFIX = f"patronus:{TAG}"

# ============================================================================================ unit tests


def spec(**over: Any) -> TunnelSpec:
    base: dict[str, Any] = dict(
        ifname="pt1p0", private_key=generate_private_key(), listen_port=51820,
        peer_public_key=public_key(generate_private_key()), peer_endpoint=("192.0.2.1", 51821),
        allowed_ips=("10.78.0.0/24",), owner="patronus:s1",
    )  # fmt: skip
    base.update(over)
    return TunnelSpec(**base)


@pytest.mark.unit
def test_spec_defaults_canonical_keys_and_hidden_private_key() -> None:
    priv = generate_private_key()
    s = spec(private_key=f"{priv}\n", allowed_ips=["10.0.0.0/8", "fd00::/64"], peer_endpoint=["h.example", 1])
    assert s.private_key == priv and s.mtu == 1420 and s.fwmark == 0 and s.keepalive_s == 0
    assert s.allowed_ips == ("10.0.0.0/8", "fd00::/64") and s.peer_endpoint == ("h.example", 1)
    assert priv not in repr(s)


@pytest.mark.unit
def test_spec_lists_every_error_with_its_field() -> None:
    with pytest.raises(ConfigError) as exc:
        spec(ifname="this-name-is-too-long", private_key="nope", listen_port=70000, fwmark=-1, mtu=100,
             peer_public_key=b"x", peer_endpoint=("bad host", 0), allowed_ips=("10.0.0.0", "300.1.1.1/8"),
             keepalive_s=True, owner="")
    fields = [f for f, _ in exc.value.errors]
    assert fields == ["ifname", "private_key", "peer_public_key", "listen_port", "fwmark", "mtu", "keepalive_s",
                      "peer_endpoint.host", "peer_endpoint.port", "allowed_ips[0]", "allowed_ips[1]", "owner"]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "x" * 16, "é" * 8])
def test_spec_rejects_bad_interface_names(name: str) -> None:
    with pytest.raises(ConfigError, match="ifname"):
        spec(ifname=name)


@pytest.mark.unit
def test_wg_set_argv() -> None:
    s = spec(fwmark=0x77, keepalive_s=5, allowed_ips=("10.78.0.0/24", "fd00::/64"), peer_endpoint=("2001:db8::1", 9))
    argv = wg_set_argv(s)
    assert argv[:3] == ["wg", "set", "pt1p0"]
    opts = dict(zip(argv[3:9:2], argv[4:9:2], strict=True))
    assert opts == {"listen-port": "51820", "fwmark": "119", "private-key": "/dev/stdin"}
    assert argv[9:] == ["peer", s.peer_public_key, "endpoint", "[2001:db8::1]:9", "persistent-keepalive", "5",
                        "allowed-ips", "10.78.0.0/24,fd00::/64"]
    assert s.private_key not in argv
    off = wg_set_argv(spec(allowed_ips=()))
    assert off[off.index("fwmark") + 1] == "off" and off[off.index("persistent-keepalive") + 1] == "off"
    assert "allowed-ips" not in off


@pytest.mark.unit
def test_parse_wg_dump() -> None:
    pub = public_key(generate_private_key())
    text = (
        "PRIV\tPUB\t51820\toff\n"
        f"{pub}\t(none)\t10.77.0.2:51820\t10.78.0.0/24\t1700000000\t92\t328\t5\n"
    )
    assert parse_wg_dump("w", text) == TunnelStatus("w", 1700000000.0, 92, 328, "10.77.0.2:51820")
    never = parse_wg_dump("w", f"PRIV\tPUB\t51820\toff\n{pub}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    assert never == TunnelStatus("w", None, 0, 0, None)
    assert parse_wg_dump("w", "PRIV\tPUB\t0\toff\n") == TunnelStatus("w", None, 0, 0, None)
    with pytest.raises(WireGuardError):
        parse_wg_dump("w", "")
    with pytest.raises(WireGuardError, match="line 2"):
        parse_wg_dump("w", "PRIV\tPUB\t51820\toff\nshort\tline\n")


@pytest.mark.unit
def test_parse_kernel_info_decodes_real_netlink_messages() -> None:
    # Encode a WG_CMD_GET_DEVICE answer with pyroute2's own message class and decode it back, as the kernel's
    # answer would be decoded, so the parsing is checked on machines without the module too.
    from pyroute2.netlink.generic.wireguard import wgmsg

    def reply(peers: list[list[Any]]) -> Any:
        msg = wgmsg()
        msg["cmd"], msg["version"] = 0, 1
        msg["attrs"] = [["WGDEVICE_A_IFNAME", "w"], ["WGDEVICE_A_PEERS", [{"attrs": p} for p in peers]]]
        msg.encode()
        out = wgmsg(msg.data)
        out.decode()
        return out

    pub = public_key(generate_private_key())
    peer = [
        ["WGPEER_A_PUBLIC_KEY", pub],
        ["WGPEER_A_ENDPOINT", {"addr": "2001:db8::7", "port": 51821}],
        ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 250_000_000}],
        ["WGPEER_A_RX_BYTES", 1234],
        ["WGPEER_A_TX_BYTES", 5678],
    ]
    got = parse_kernel_info("w", [reply([peer])])
    assert got == TunnelStatus("w", 1700000000.25, 1234, 5678, "[2001:db8::7]:51821")
    fresh = [["WGPEER_A_PUBLIC_KEY", pub], ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}]]
    assert parse_kernel_info("w", [reply([fresh])]) == TunnelStatus("w", None, 0, 0, None)


@pytest.mark.unit
def test_backend_choice_is_validated() -> None:
    with pytest.raises(ConfigError, match="backend"):
        detect_backend("magic")
    with pytest.raises(ConfigError, match="backend"):
        WireGuardManager("auto", Path("/nonexistent"))
    if not Path("/sys/module/wireguard").exists() and os.geteuid() == 0:
        try:
            detect_backend("kernel")
        except WireGuardError as e:
            assert "apt-get install --no-install-recommends wireguard-go wireguard-tools" in str(e)
        # (else: the module loads on demand here, and "kernel" is a correct answer)


@pytest.mark.unit
def test_cleanup_refuses_an_empty_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="owner_prefix"):
        WireGuardManager("userspace", tmp_path).cleanup("")


# ===================================================================================== namespace tests

HELPER = textwrap.dedent(r"""
    import json, os, socket, struct, sys, time, traceback
    from pathlib import Path
    op, args = sys.argv[1], json.loads(sys.argv[2])

    def checksum(b):
        if len(b) % 2:
            b += b"\0"
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    def ping(dst, timeout_s):
        # ICMP echo over a raw socket (no `ping` binary needed); retry until a reply or the deadline.
        ident, seq, deadline = os.getpid() & 0xFFFF, 0, time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            while time.monotonic() < deadline:
                seq += 1
                body = b"patronus" * 4
                pkt = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + body
                pkt = struct.pack("!BBHHH", 8, 0, checksum(pkt), ident, seq) + body
                s.sendto(pkt, (dst, 0))
                try_until = min(deadline, time.monotonic() + 0.3)
                while (left := try_until - time.monotonic()) > 0:
                    s.settimeout(left)
                    try:
                        data, addr = s.recvfrom(2048)
                    except socket.timeout:
                        break
                    ihl = (data[0] & 0x0F) * 4
                    typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                    if typ == 0 and rid == ident and addr[0] == dst:
                        return {"ok": True, "tries": seq}
        return {"ok": False, "tries": seq}

    def main():
        from pyroute2 import IPRoute
        from patronus.agent.wireguard import TunnelSpec, WireGuardManager
        m = WireGuardManager(args.get("backend", "userspace"), Path(args.get("state", "/nonexistent")))
        if op == "setup":  # addresses on the veth and up
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=args["ifname"])[0]
                for a in args["addrs"]:
                    ipr.addr("add", index=idx, address=a, prefixlen=24)
                ipr.link("set", index=idx, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            return None
        if op == "create":
            spec = TunnelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in args["spec"].items()})
            blocker = None
            if args.get("occupy_port"):
                blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                blocker.bind(("0.0.0.0", spec.listen_port))
            t0 = time.monotonic()
            try:
                m.create(spec)
            finally:
                if blocker is not None:
                    blocker.close()
            took = time.monotonic() - t0
            if args.get("addr"):
                with IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=spec.ifname)[0]
                    ipr.addr("add", index=idx, address=args["addr"], prefixlen=24)
            return {"create_s": took}
        if op == "status":
            return m.status(args["ifname"]).__dict__
        if op == "update":
            return m.update_peer_endpoint(args["ifname"], args["host"], args["port"])
        if op == "delete":
            return m.delete(args["ifname"])
        if op == "cleanup":
            return m.cleanup(args["prefix"])
        if op == "links":
            with IPRoute() as ipr:
                return {l.get("ifname"): {"alias": l.get("ifalias"), "mtu": l.get("mtu"), "state": l.get("state")}
                        for l in ipr.get_links()}
        if op == "veth":  # a foreign interface (not ours) with an alias that must survive cleanup
            with IPRoute() as ipr:
                ipr.link("add", ifname=args["ifname"], kind="veth", peer=args["ifname"] + "p")
                idx = ipr.link_lookup(ifname=args["ifname"])[0]
                ipr.link("set", index=idx, ifalias=args["alias"])
            return None
        if op == "ping":
            return ping(args["dst"], args["timeout_s"])
        raise SystemExit(f"unknown op {op}")

    try:
        print(json.dumps({"result": main()}))
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}))
        sys.exit(3)
""")


class HelperError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """`emulation.wait.wait_for`, failing the test (FRR's run_and_expect)."""
    return _wait_for(fn, timeout_s, what, interval_s=interval_s, error=AssertionError)


def proc_alive(pid: int) -> bool:
    """A live process (a zombie, whose parent is gone and never reaps, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wireguard_go_pids(ifname: str) -> list[int]:
    """Live `wireguard-go ... IFNAME` processes, found by reading /proc (to check, never to kill by name)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = [a for a in (d / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        ours = argv and os.path.basename(argv[0]) == b"wireguard-go" and argv[-1] == ifname.encode()
        if ours and proc_alive(int(d.name)):
            pids.append(int(d.name))
    return pids


@dataclass
class Site:
    ns: str
    state: Path
    veth: str
    wg: str
    tun_addr: str
    owner: str
    private_key: str

    @property
    def public_key(self) -> str:
        return public_key(self.private_key)


@dataclass
class Bed:
    a: Site
    b: Site
    backend: str

    def run(self, site: Site, op: str, **args: Any) -> Any:
        args.setdefault("state", str(site.state))
        args.setdefault("backend", self.backend)
        res = subprocess.run(
            ["ip", "netns", "exec", site.ns, sys.executable, "-c", HELPER, op, json.dumps(args)],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip
        try:
            doc = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise AssertionError(f"helper {op} in {site.ns} exited {res.returncode}: {res.stderr}") from None
        if "error" in doc:
            raise HelperError(doc["error"], doc["message"])
        return doc["result"]

    def spec(self, site: Site, peer: Site, peer_addr: str, **over: Any) -> dict[str, Any]:
        d: dict[str, Any] = dict(
            ifname=site.wg, private_key=site.private_key, listen_port=51820, peer_public_key=peer.public_key,
            peer_endpoint=[peer_addr, 51820], allowed_ips=["10.78.0.0/24"], owner=site.owner,
        )  # fmt: skip
        d.update(over)
        return d

    def create(self, site: Site, peer: Site, peer_addr: str, **over: Any) -> Any:
        return self.run(site, "create", spec=self.spec(site, peer, peer_addr, **over), addr=site.tun_addr)

    def status(self, site: Site) -> TunnelStatus:
        return TunnelStatus(**self.run(site, "status", ifname=site.wg))

    def pid_of(self, site: Site) -> int | None:
        path = site.state / f"wg-{site.wg}.pid"
        return int(path.read_text().split()[0]) if path.exists() else None

    def assert_gone(self, site: Site, pid: int | None) -> None:
        assert site.wg not in self.run(site, "links")
        assert wireguard_go_pids(site.wg) == []
        if pid is not None:
            assert not proc_alive(pid)
        assert not (SOCKET_DIR / f"{site.wg}.sock").exists()
        assert not (site.state / f"wg-{site.wg}.pid").exists()


def _kill_recorded(state_dirs: list[Path]) -> None:
    """Safety net: SIGKILL every wireguard-go recorded in our state dirs, after checking what that pid runs."""
    for d in state_dirs:
        for pidfile in d.glob("wg-*.pid"):
            lines = pidfile.read_text().split()
            pid, ifname = int(lines[0]), lines[1]
            if pid in wireguard_go_pids(ifname):
                os.kill(pid, signal.SIGKILL)
            sock = SOCKET_DIR / f"{ifname}.sock"
            if sock.exists():
                with socket.socket(socket.AF_UNIX) as s:
                    try:
                        s.connect(str(sock))
                    except OSError:
                        sock.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and WireGuard interfaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` for `ip netns exec`")
    try:
        backend = detect_backend()
    except WireGuardError as e:
        pytest.skip(f"no WireGuard backend: {e}")
    from pyroute2 import IPRoute, netns

    tmp = tmp_path_factory.mktemp("wg")
    sites = [
        Site(ns=f"{TAG}-{n}", state=tmp / n, veth=f"pwgv{PID}{n}", wg=f"ptt{PID}{n}",
             tun_addr=f"10.78.0.{i}", owner=f"{OWNER_PREFIX}:{n}", private_key=generate_private_key())
        for i, n in ((1, "a"), (2, "b"))
    ]  # fmt: skip
    a, b = sites
    created: list[str] = []
    try:
        for s in sites:
            netns.create(s.ns)
            created.append(s.ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=a.veth, kind="veth", peer=b.veth)
            for s in sites:
                ipr.link("set", index=ipr.link_lookup(ifname=s.veth)[0], net_ns_fd=s.ns)
        t = Bed(a=a, b=b, backend=backend)
        t.run(a, "setup", ifname=a.veth, addrs=["10.77.0.1"])
        t.run(b, "setup", ifname=b.veth, addrs=["10.77.0.2", "10.77.0.3"])
        yield t
    finally:
        _kill_recorded([s.state for s in sites])
        for ns in created:
            netns.remove(ns)
    assert not [n for n in netns.listnetns() if n.startswith(TAG)]


@pytest.fixture
def tunnels(bed: Bed) -> Iterator[Bed]:
    """Both ends up; B first, so A's first handshake initiation finds B listening (no 5 s retry)."""
    try:
        bed.create(bed.b, bed.a, "10.77.0.1")
        bed.create(bed.a, bed.b, "10.77.0.2", keepalive_s=1)
        yield bed
    finally:
        for site in (bed.a, bed.b):
            with contextlib.suppress(HelperError, AssertionError):
                bed.run(site, "cleanup", prefix=OWNER_PREFIX)
        _kill_recorded([bed.a.state, bed.b.state])


@pytest.mark.netns
def test_handshake_ping_and_counters(tunnels: Bed) -> None:
    t = tunnels
    links = t.run(t.a, "links")
    assert links[t.a.wg] == {"alias": t.a.owner, "mtu": 1420, "state": "up"}
    started = time.time()
    st = wait_for("a handshake", lambda: (s := t.status(t.a)).latest_handshake and s, timeout_s=15)
    assert started - 30 < st.latest_handshake <= time.time() + 1
    assert st.endpoint == "10.77.0.2:51820"
    assert t.run(t.a, "ping", dst="10.78.0.2", timeout_s=10)["ok"]
    assert t.run(t.b, "ping", dst="10.78.0.1", timeout_s=10)["ok"]
    sa, sb = t.status(t.a), t.status(t.b)
    assert sa.rx_bytes > 0 and sa.tx_bytes > 0 and sb.rx_bytes > 0 and sb.tx_bytes > 0
    assert sb.latest_handshake is not None and sb.endpoint == "10.77.0.1:51820"


@pytest.mark.netns
def test_update_peer_endpoint(tunnels: Bed) -> None:
    t = tunnels
    t.run(t.a, "update", ifname=t.a.wg, host="10.77.0.3", port=51820)
    assert t.status(t.a).endpoint == "10.77.0.3:51820"
    assert t.run(t.a, "ping", dst="10.78.0.2", timeout_s=10)["ok"]  # traffic flows via the new endpoint
    with pytest.raises(HelperError, match="port"):
        t.run(t.a, "update", ifname=t.a.wg, host="10.77.0.3", port=0)


@pytest.mark.netns
def test_delete_leaves_nothing_behind(tunnels: Bed) -> None:
    t = tunnels
    pid = t.pid_of(t.a)
    if t.backend == "userspace":
        assert pid is not None and wireguard_go_pids(t.a.wg) == [pid]
        assert (SOCKET_DIR / f"{t.a.wg}.sock").exists()
    t.run(t.a, "delete", ifname=t.a.wg)  # a different process from the one that created it
    t.assert_gone(t.a, pid)
    t.run(t.a, "delete", ifname=t.a.wg)  # idempotent
    with pytest.raises(HelperError):
        t.status(t.a)
    assert t.status(t.b).ifname == t.b.wg  # the other side is untouched


@pytest.mark.netns
def test_cleanup_removes_only_ours(tunnels: Bed) -> None:
    t = tunnels
    foreign = f"pfor{PID}"
    t.run(t.b, "veth", ifname=foreign, alias="someone-else")
    pid_b = t.pid_of(t.b)
    assert t.run(t.b, "cleanup", prefix=f"{OWNER_PREFIX}:a") == []  # A's tag: nothing of it lives in B
    assert t.b.wg in t.run(t.b, "links")
    assert t.run(t.b, "cleanup", prefix=OWNER_PREFIX) == [t.b.wg]
    t.assert_gone(t.b, pid_b)
    links = t.run(t.b, "links")
    assert links[foreign]["alias"] == "someone-else" and t.b.veth in links
    # A's wireguard-go lives in namespace A, but its pid file names it: cleanup from the root namespace finds it.
    pid_a = t.pid_of(t.a)
    removed = WireGuardManager(t.backend, t.a.state).cleanup(OWNER_PREFIX)
    if t.backend == "userspace":
        assert removed == [t.a.wg]
        assert pid_a is not None and not proc_alive(pid_a)
        assert not (SOCKET_DIR / f"{t.a.wg}.sock").exists()
        assert t.a.wg not in t.run(t.a, "links")  # its TUN went with its process


@pytest.mark.netns
def test_failed_create_rolls_back(bed: Bed) -> None:
    # The listen port is taken in A's namespace: configuration fails after the interface exists.
    with pytest.raises(HelperError) as exc:
        bed.run(bed.a, "create", spec=bed.spec(bed.a, bed.b, "10.77.0.2"), occupy_port=True)
    assert exc.value.kind == "WireGuardError"
    assert "in use" in str(exc.value).lower()
    bed.assert_gone(bed.a, None)


@pytest.mark.netns
def test_interface_names_are_machine_wide_for_wireguard_go(tunnels: Bed) -> None:
    t = tunnels
    if t.backend != "userspace":
        pytest.skip("the kernel backend has no shared control sockets")
    clash = t.spec(t.b, t.a, "10.77.0.1", ifname=t.a.wg, owner=f"{OWNER_PREFIX}:clash", listen_port=51999)
    with pytest.raises(HelperError, match="unique machine-wide"):
        t.run(t.b, "create", spec=clash)
    assert t.a.wg not in t.run(t.b, "links")
    assert t.run(t.a, "ping", dst="10.78.0.2", timeout_s=10)["ok"]  # the original is unharmed
    assert (SOCKET_DIR / f"{t.a.wg}.sock").exists()


@pytest.mark.netns
def test_key_is_never_written_to_disk(tunnels: Bed) -> None:
    t = tunnels
    raw = base64.b64decode(t.a.private_key)
    for path in t.a.state.rglob("*"):
        data = path.read_bytes()
        assert t.a.private_key.encode() not in data and raw not in data, path
