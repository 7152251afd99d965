"""Path-MTU search: the sans-IO `PmtuSearch`, the asyncio driver against fake reflectors on 127.0.0.1,
and the per-path socket options it relies on.

A fake reflector is an asyncio DatagramProtocol in the same loop as the search; "drops above a size"
is decided on the IP packet size the request would have (UDP payload + 28 bytes for IPv4), which is
what the search reports. Timeouts are short (50 ms): on loopback a reply takes microseconds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pytest

from patronus.agent.pmtu import PMTU_SEQ_FLAG, PmtuResult, PmtuSearch, discover_path_mtu, tunnel_mtu
from patronus.agent.sockets import SO_MARK, has_df, open_path_socket, set_dscp
from patronus.core.errors import ConfigError, PeerError
from patronus.core.probe import Probe, ProbeType, ReplayWindow, decode, encode, pair_key, reflect

pytestmark = pytest.mark.unit

KEY = pair_key(b"secret", "hq", "branch")
SESSION = 0xABCD
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ PmtuSearch


def simulate(lo: int, hi: int, mtu: int) -> PmtuSearch:
    s = PmtuSearch(lo, hi)
    while (size := s.next_size()) is not None:
        s.result(size, size <= mtu)
    return s


@pytest.mark.parametrize("mtu", [1280, 1281, 1399, 1400, 1492, 1500, 1501, 4000, 8999, 9000])
def test_search_finds_the_exact_mtu(mtu: int) -> None:
    s = simulate(1280, 9000, mtu)
    assert s.done and s.path_mtu == mtu
    assert len(s.history) <= 15          # lo, hi, then ceil(log2(7720)) = 13 bisections at most
    assert all(size <= mtu for size, ok in s.history if ok)
    assert all(size > mtu for size, ok in s.history if not ok)


def test_search_converges_for_every_mtu_in_a_range() -> None:
    for mtu in range(1280, 1600):
        assert simulate(1280, 1600, mtu).path_mtu == mtu


def test_search_probes_lo_then_hi() -> None:
    s = PmtuSearch(1280, 9000)
    assert s.next_size() == 1280 and s.next_size() == 1280     # stable until answered
    s.result(1280, True)
    assert s.next_size() == 9000
    s.result(9000, True)
    assert s.done and s.path_mtu == 9000 and s.next_size() is None
    assert s.history == [(1280, True), (9000, True)]


def test_search_without_an_answer_at_lo_has_no_mtu() -> None:
    s = simulate(1280, 9000, 1000)
    assert s.done and s.path_mtu is None and s.history == [(1280, False)]


def test_search_with_lo_equal_hi() -> None:
    assert simulate(1400, 1400, 1500).path_mtu == 1400
    assert simulate(1400, 1400, 1399).path_mtu is None


def test_search_refuses_a_result_for_another_size_and_bad_bounds() -> None:
    s = PmtuSearch(1280, 9000)
    with pytest.raises(ValueError, match="outstanding probe is 1280"):
        s.result(1500, True)
    assert s.path_mtu is None and not s.done
    for lo, hi in ((0, 100), (1500, 1400)):
        with pytest.raises(ValueError):
            PmtuSearch(lo, hi)


def test_tunnel_mtu_subtracts_the_wireguard_overhead() -> None:
    assert tunnel_mtu(1500, ipv6=False) == 1440
    assert tunnel_mtu(1500, ipv6=True) == 1420


# -------------------------------------------------------------------------------- driver, fake reflector


@dataclass
class FakeReflector(asyncio.DatagramProtocol):
    key: bytes | None = KEY
    drop_above: int | None = None          # IP packet size above which requests vanish
    ip_overhead: int = 28                  # IPv4 + UDP headers
    drop_first_per_size: bool = False      # lose the first request of every size
    reply_key: bytes | None = KEY          # the key replies are sealed with
    tamper: Callable[[Probe], Probe] | None = None
    replay_check: bool = False             # refuse reused (session, seq) as the agent's reflector does
    requests: list[Probe] = field(default_factory=list)
    refused_replays: int = 0
    transport: asyncio.DatagramTransport | None = None
    _sizes_seen: set[int] = field(default_factory=set)
    _windows: dict[int, ReplayWindow] = field(default_factory=dict)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            req = decode(data, self.key)
        except PeerError:
            return
        self.requests.append(req)
        if self.replay_check and not self._windows.setdefault(req.session, ReplayWindow()).check_and_update(req.seq):
            self.refused_replays += 1
            return
        if self.drop_above is not None and len(data) + self.ip_overhead > self.drop_above:
            return
        if self.drop_first_per_size and len(data) not in self._sizes_seen:
            self._sizes_seen.add(len(data))
            return
        rep = reflect(req, 1)
        if self.tamper is not None:
            rep = self.tamper(rep)
        assert self.transport is not None
        self.transport.sendto(encode(rep, self.reply_key), addr)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)
    return asyncio.run(bounded())


async def search_against(refl: FakeReflector, *, host: str = "127.0.0.1", times: int = 1,
                         **kw: Any) -> list[PmtuResult]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: refl, local_addr=(host, 0))
    sock = open_path_socket(host, None, 0, df=True)
    try:
        remote = transport.get_extra_info("sockname")[:2]
        kw.setdefault("timeout_s", 0.05)
        return [await discover_path_mtu(sock, remote, KEY, SESSION, **kw) for _ in range(times)]
    finally:
        sock.close()
        transport.close()


@pytest.mark.parametrize("limit", [1280, 1400, 1492, 1500, 4470, 8999])
def test_driver_converges_on_the_size_the_reflector_drops_above(limit: int) -> None:
    refl = FakeReflector(drop_above=limit)
    (res,) = run(search_against(refl))
    assert res.path_mtu == limit
    assert res.tunnel_mtu == limit - 60 and not res.ipv6
    assert res.local_refusals == 0 and res.ignored_replies == 0
    assert res.probes_sent == len(refl.requests)
    # every request is in the PMTU session and its own sequence space, never reused
    assert {r.session for r in refl.requests} == {SESSION}
    seqs = [r.seq for r in refl.requests]
    assert all(s & PMTU_SEQ_FLAG for s in seqs) and seqs == sorted(set(seqs))
    # the IP sizes probed are exactly the sizes the search asked for, and the requests carry padding
    assert sorted({len(encode(r, KEY)) + 28 for r in refl.requests}) == sorted({s for s, _ in res.steps})


def test_real_loopback_reflector_reaches_the_hi_bound() -> None:
    (res,) = run(search_against(FakeReflector(), hi=9000))
    assert res.path_mtu == 9000 and res.tunnel_mtu == 8940
    assert res.steps == ((1280, True), (9000, True)) and res.probes_sent == 2
    (res,) = run(search_against(FakeReflector(), hi=9076))      # the largest probe: 48 + 9000 padding
    assert res.path_mtu == 9076


def test_lost_probes_are_retried_and_tries_matter() -> None:
    (res,) = run(search_against(FakeReflector(drop_above=1500, drop_first_per_size=True), tries=2))
    assert res.path_mtu == 1500
    (res,) = run(search_against(FakeReflector(drop_above=1500, drop_first_per_size=True), tries=1))
    assert res.path_mtu is None and res.steps == ((1280, False),)


def test_replies_sealed_with_another_key_are_ignored() -> None:
    (res,) = run(search_against(FakeReflector(reply_key=pair_key(b"other", "hq", "branch"))))
    assert res.path_mtu is None and res.tunnel_mtu is None
    assert res.ignored_replies == 2 and res.probes_sent == 2


@pytest.mark.parametrize("tamper", [
    lambda p: Probe(p.type, p.session + 1, p.seq, p.t_send_ns, p.t_reflect_ns, p.padding),
    lambda p: Probe(p.type, p.session, p.seq + 1000, p.t_send_ns, p.t_reflect_ns, p.padding),
    lambda p: Probe(p.type, p.session, p.seq, p.t_send_ns, p.t_reflect_ns, max(0, p.padding - 1)),
    lambda p: Probe(ProbeType.REQUEST, p.session, p.seq, p.t_send_ns, 0, p.padding),
], ids=["session", "seq", "size", "type"])
def test_replies_for_another_session_seq_size_or_type_are_ignored(tamper: Callable[[Probe], Probe]) -> None:
    (res,) = run(search_against(FakeReflector(tamper=tamper)))
    assert res.path_mtu is None and res.ignored_replies == 2


def test_repeated_searches_in_one_session_survive_the_reflectors_replay_window() -> None:
    refl = FakeReflector(drop_above=1400, replay_check=True)
    first, second = run(search_against(refl, times=2))
    assert first.path_mtu == second.path_mtu == 1400
    assert refl.refused_replays == 0


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    (res,) = run(search_against(FakeReflector(drop_above=1500, ip_overhead=48), host="::1"))
    assert res.ipv6 and res.path_mtu == 1500 and res.tunnel_mtu == 1420


def test_driver_checks_its_arguments() -> None:
    async def go(sock: socket.socket, **kw: Any) -> PmtuResult:
        return await discover_path_mtu(sock, ("127.0.0.1", 9), KEY, SESSION, **kw)

    plain = open_path_socket("127.0.0.1", None, 0)
    df = open_path_socket("127.0.0.1", None, 0, df=True)
    try:
        with pytest.raises(ConfigError, match="sock: must be a UDP socket from open_path_socket"):
            run(go(plain))
        with pytest.raises(ConfigError) as err:
            run(go(df, lo=50, hi=9100, tries=0, ipv6=True))
        fields = [f for f, _ in err.value.errors]
        assert fields == ["ipv6", "lo", "hi", "tries"]
    finally:
        plain.close()
        df.close()


# ------------------------------------------------------------------------------------------- sockets


def test_open_path_socket_options() -> None:
    with open_path_socket("127.0.0.1", None, 0, df=True) as s:
        assert has_df(s) and not s.getblocking()
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert s.getsockname()[0] == "127.0.0.1"
    with open_path_socket("127.0.0.1", None, 0) as s:
        assert not has_df(s)


def test_set_dscp_keeps_ecn_bits() -> None:
    with open_path_socket("127.0.0.1", None, 0) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x01)
        set_dscp(s, 46)
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == (46 << 2) | 0x01
        with pytest.raises(ConfigError, match="dscp"):
            set_dscp(s, 64)


def test_open_path_socket_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="local_addr"):
        open_path_socket("not-an-ip", None, 0)
    with pytest.raises(ConfigError, match="device"):
        open_path_socket("127.0.0.1", "a-name-far-too-long", 0)
    with pytest.raises(ConfigError, match="mark"):
        open_path_socket("127.0.0.1", None, -1)


def test_open_path_socket_errors_name_the_address() -> None:
    with pytest.raises(OSError, match=r"cannot bind on UDP socket 192\.0\.2\.55:0") as err:
        open_path_socket("192.0.2.55", None, 0)
    assert err.value.errno == errno.EADDRNOTAVAIL


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE and SO_MARK need root")
def test_open_path_socket_device_and_mark_as_root() -> None:
    with open_path_socket("127.0.0.1", "lo", 0x65) as s:
        assert s.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x65
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
    with pytest.raises(OSError, match=r"SO_BINDTODEVICE.*dev ptnope0") as err:
        open_path_socket("127.0.0.1", "ptnope0", 0)
    assert err.value.errno == errno.ENODEV
