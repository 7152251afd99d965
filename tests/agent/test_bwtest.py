"""Bandwidth test: the control-message codec, the sans-IO server (counting, limits, anti-replay) driven
with explicit clocks, and client + server over 127.0.0.1 in one event loop.

Over-the-wire checks never wait for "nothing happened": after the messages under test, a fresh valid
START is sent from the same socket and its OK awaited; UDP on loopback keeps order and the server
handles datagrams in order, so by then every earlier message has been handled (and answered or not).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from patronus.agent.bwtest import (
    DATA_HEADER_LEN,
    BandwidthResult,
    BandwidthServer,
    BandwidthServerState,
    BandwidthTestRefused,
    Control,
    ControlRejected,
    End,
    Ok,
    Reject,
    RejectReason,
    Report,
    Start,
    decode_control,
    encode_control,
    encode_data,
    run_bandwidth_test,
)
from patronus.agent.sockets import open_path_socket, recvfrom_until
from patronus.core.errors import ConfigError
from patronus.core.probe import pair_key

pytestmark = pytest.mark.unit

KEY = pair_key(b"secret", "hq", "branch")
OTHER_KEY = pair_key(b"secret", "hq", "elsewhere")
MONO = 5_000_000_000_000          # server monotonic clock, ns
WALL = 1_760_000_000_000_000_000  # wall clock, ns
ADDR = ("192.0.2.7", 40000)
T = TypeVar("T")


# ------------------------------------------------------------------------------------------- codec


SAMPLES: list[Control] = [
    Start(0x1122334455667788, 1, WALL, 2000, 20_000, 1200),
    Ok(7, 1, 2000),
    Reject(7, 2, RejectReason.BUSY),
    End(7, 3, 2083, 2_499_600),
    Report(7, 3, 2083, 2080, 2_496_000, 3, 1, 0, MONO, MONO + 10**9),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_control_round_trip(msg: Control) -> None:
    wire = encode_control(msg, KEY)
    assert decode_control(wire, KEY) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_control_truncated_or_extended_is_malformed(msg: Control) -> None:
    wire = encode_control(msg, KEY)
    for n in range(len(wire)):
        with pytest.raises(ControlRejected) as err:
            decode_control(wire[:n], KEY)
        assert err.value.kind == "malformed"
    with pytest.raises(ControlRejected, match="malformed"):
        decode_control(wire + b"\0", KEY)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_control_with_any_bit_flipped_or_another_key_is_refused(msg: Control) -> None:
    wire = encode_control(msg, KEY)
    with pytest.raises(ControlRejected) as err:
        decode_control(wire, OTHER_KEY)
    assert err.value.kind == "forged"
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        with pytest.raises(ControlRejected):     # header bits: malformed; anything else: forged
            decode_control(bytes(bad), KEY)
    bad = bytearray(wire)
    bad[-1] ^= 0x80
    with pytest.raises(ControlRejected, match="forged"):
        decode_control(bytes(bad), KEY)


# ------------------------------------------------------------------------------------ sans-IO server


class Harness:
    """A server state with explicit clocks; `send` returns the decoded reply (or None)."""

    def __init__(self, **limits: Any) -> None:
        self.st = BandwidthServerState(KEY, **limits)
        self.mono = MONO
        self.wall = WALL

    def raw(self, data: bytes) -> Control | None:
        reply = self.st.on_datagram(data, ADDR, self.mono, self.wall)
        return None if reply is None else decode_control(reply, KEY)

    def send(self, msg: Control, key: bytes = KEY) -> Control | None:
        return self.raw(encode_control(msg, key))

    def start(self, test_id: int = 1, ctl_seq: int = 1, duration_ms: int = 1000, payload: int = 1200) -> Control | None:
        return self.send(Start(test_id, ctl_seq, self.wall, duration_ms, 20_000, payload))

    def data(self, test_id: int, *seqs: int, payload: int = 1200, key: bytes = KEY) -> None:
        for s in seqs:
            self.mono += 1000
            assert self.raw(encode_data(key, test_id, s, payload)) is None

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * 1e9)
        self.wall += int(seconds * 1e9)

    @property
    def counters(self) -> dict[str, int]:
        return self.st.counters.as_dict()


def test_start_is_granted_up_to_the_duration_limit() -> None:
    h = Harness(max_duration_s=10)
    assert h.start(1, duration_ms=2000) == Ok(1, 1, 2000)
    assert h.start(2, duration_ms=60_000) == Ok(2, 1, 10_000)
    assert h.counters["started"] == 2 and h.st.active_tests == 2


def test_counts_bytes_loss_reordering_and_duplicates() -> None:
    h = Harness()
    h.start(9)
    first = h.mono + 1000
    h.data(9, 0, 1, 2, 4, 3, 3, 7)
    last = h.mono
    rep = h.send(End(9, 2, packets_sent=8, bytes_sent=8 * 1200))
    assert rep == Report(9, 2, expected=8, packets=6, bytes=6 * 1200, lost=2, reordered=1, duplicates=1,
                         first_ns=first, last_ns=last)
    assert h.counters["completed"] == 1 and h.st.active_tests == 0


def test_loss_counts_seqs_beyond_what_end_claims() -> None:
    h = Harness()
    h.start(9)
    h.data(9, 0, 5)
    rep = h.send(End(9, 2, packets_sent=3, bytes_sent=3600))
    assert isinstance(rep, Report) and rep.expected == 6 and rep.lost == 4


def test_forged_truncated_and_misdirected_data_do_not_count() -> None:
    h = Harness(max_packets=100)
    h.start(9)
    h.data(9, 0, key=OTHER_KEY)                                        # tag under another key
    good = encode_data(KEY, 9, 1, 1200)
    assert h.raw(good[:-1]) is None                                    # truncated: length field disagrees
    assert h.raw(good[:DATA_HEADER_LEN] + b"\1" * (1200 - DATA_HEADER_LEN)) is None  # payload altered: fine
    h.data(12345, 0)                                                   # no such test
    h.data(9, 100)                                                     # beyond max_packets
    c = h.counters
    assert (c["data_forged"], c["data_unknown"], c["data_overflow"]) == (2, 1, 1)
    rep = h.send(End(9, 2, packets_sent=2, bytes_sent=2400))
    assert isinstance(rep, Report) and rep.packets == 1 and rep.bytes == 1200


def test_data_from_an_earlier_test_does_not_count_in_a_later_one() -> None:
    h = Harness()
    h.start(1)
    h.start(2)
    h.raw(encode_data(KEY, 1, 0, 1200)[:4] + (2).to_bytes(8, "big") + encode_data(KEY, 1, 0, 1200)[12:])
    assert h.counters["data_forged"] == 1


def test_forged_and_truncated_control_messages_are_refused_and_counted() -> None:
    h = Harness()
    assert h.send(Start(1, 1, WALL, 1000, 0, 1200), key=OTHER_KEY) is None
    wire = encode_control(Start(1, 1, WALL, 1000, 0, 1200), KEY)
    assert h.raw(wire[:-1]) is None
    assert h.raw(wire[:10]) is None
    assert h.raw(b"") is None
    c = h.counters
    assert (c["forged"], c["malformed"], c["started"]) == (1, 3, 0)


def test_replayed_start_and_end_are_refused_and_counted() -> None:
    h = Harness()
    start = encode_control(Start(5, 1, WALL, 1000, 0, 1200), KEY)
    assert h.raw(start) == Ok(5, 1, 1000)
    assert h.raw(start) is None                                   # replay while running
    h.data(5, 0, 1)
    end = encode_control(End(5, 2, 2, 2400), KEY)
    first = h.raw(end)
    assert isinstance(first, Report) and first.packets == 2
    assert h.raw(end) is None                                     # replayed END
    assert h.raw(start) is None                                   # replay after the end
    h.advance(100)                                                # report forgotten, id still remembered
    assert h.raw(start) is None
    assert h.counters["replayed"] == 4 and h.counters["started"] == 1


def test_retransmissions_carry_a_higher_ctl_seq_and_are_answered_again() -> None:
    h = Harness()
    assert h.start(5, ctl_seq=1) == Ok(5, 1, 1000)
    assert h.start(5, ctl_seq=2) == Ok(5, 2, 1000)                # OK lost: same test, not a new one
    h.data(5, 0)
    a = h.send(End(5, 3, 1, 1200))
    h.data(5, 1)                                                   # after END: late, not counted
    b = h.send(End(5, 4, 1, 1200))                                 # REPORT lost: same report again
    assert isinstance(a, Report) and isinstance(b, Report)
    assert (a.ctl_seq, b.ctl_seq) == (3, 4) and a.packets == b.packets == 1 and a.first_ns == b.first_ns
    assert h.counters["started"] == 1 and h.counters["completed"] == 1 and h.counters["data_late"] == 1


def test_stale_start_is_refused() -> None:
    h = Harness(max_skew_s=300)
    assert h.send(Start(5, 1, WALL - 301 * 10**9, 1000, 0, 1200)) is None
    assert h.send(Start(6, 1, WALL + 301 * 10**9, 1000, 0, 1200)) is None
    assert h.send(Start(7, 1, WALL - 299 * 10**9, 1000, 0, 1200)) == Ok(7, 1, 1000)
    assert h.counters["stale"] == 2


def test_remembered_ids_are_forgotten_only_after_the_skew_window() -> None:
    h = Harness(max_skew_s=10, grace_s=1, report_ttl_s=1)
    start = Start(5, 1, WALL, 1000, 0, 1200)
    assert h.send(start) == Ok(5, 1, 1000)
    h.advance(15)
    assert h.send(start) is None and h.counters["replayed"] == 1   # within 2 x skew: still a replay
    h.advance(10)
    assert h.send(start) is None and h.counters["stale"] == 1      # forgotten, but now too old anyway


def test_concurrent_tests_are_limited() -> None:
    h = Harness(max_tests=2)
    assert isinstance(h.start(1), Ok) and isinstance(h.start(2), Ok)
    assert h.start(3) == Reject(3, 1, RejectReason.BUSY)
    h.send(End(1, 2, 0, 0))
    assert isinstance(h.start(4), Ok)
    assert h.counters["busy"] == 1


def test_a_test_without_end_expires_and_frees_its_slot() -> None:
    h = Harness(max_tests=1, grace_s=2)
    assert isinstance(h.start(1, duration_ms=1000), Ok)
    h.advance(2.5)
    h.data(1, 0)                                                   # still within duration + grace
    h.advance(1)
    h.data(1, 1)                                                   # past the deadline: late
    assert h.counters["data_late"] == 1
    assert isinstance(h.start(2), Ok)                              # the expired test was pruned
    assert h.counters["expired"] == 1
    assert h.send(End(1, 2, 2, 2400)) is None and h.counters["unknown_test"] == 1


def test_bad_requests_and_server_bound_replies() -> None:
    h = Harness()
    assert h.start(1, payload=DATA_HEADER_LEN - 1) == Reject(1, 1, RejectReason.BAD_REQUEST)
    assert h.start(2, duration_ms=0) == Reject(2, 1, RejectReason.BAD_REQUEST)
    assert h.send(Ok(3, 1, 1000)) is None
    c = h.counters
    assert (c["bad_request"], c["unexpected"], c["started"]) == (2, 1, 0)


def test_server_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        BandwidthServerState(b"")
    with pytest.raises(ValueError):
        BandwidthServerState(KEY, max_tests=0)


# ------------------------------------------------------------------------------ over 127.0.0.1, e2e


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)
    return asyncio.run(bounded())


async def serve(drain: bool = True, **limits: Any) -> BandwidthServer:
    sock = open_path_socket("127.0.0.1", None, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return await BandwidthServer.serve(sock, KEY, drain=drain, **limits)


async def measure(server: BandwidthServer, **kw: Any) -> BandwidthResult:
    with open_path_socket("127.0.0.1", None, 0) as sock:
        return await run_bandwidth_test(sock, server.address, KEY, **kw)


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "protocol"])
def test_20_mbit_on_loopback_is_measured_as_20_mbit_without_loss(drain: bool) -> None:
    async def go() -> tuple[BandwidthResult, dict[str, int]]:
        server = await serve(drain)
        try:
            return await measure(server, duration_s=1.0, rate_mbps=20.0, payload=1200), server.counters.as_dict()
        finally:
            server.close()

    res, counters = run(go())
    assert 16.0 <= res.goodput_mbps <= 24.0, res
    assert 16.0 <= res.offered_mbps <= 24.0 and not res.sender_limited
    assert res.lost_packets == 0 and res.loss_pct == 0.0
    assert res.received_packets == res.sent_packets > 1500          # 20 Mbit/s of 1200 B: ~2083 a second
    assert res.received_bytes == res.sent_bytes == res.sent_packets * 1200
    assert 0.8 <= res.duration_s <= 1.2 and res.granted_s == 1.0
    assert counters["completed"] == 1 and counters["data_forged"] == counters["forged"] == 0
    d = res.as_dict()
    assert d["goodput_mbps"] == res.goodput_mbps and d["rate_mbps"] == 20.0


class DropEveryTenth(BandwidthServerState):
    def on_datagram(self, data: bytes, addr: Any, now_ns: int, wall_ns: int) -> bytes | None:
        if len(data) >= DATA_HEADER_LEN and data[3] == 6 and int.from_bytes(data[12:20], "big") % 10 == 0:
            return None
        return super().on_datagram(data, addr, now_ns, wall_ns)


def test_a_server_that_drops_packets_reports_the_loss() -> None:
    async def go() -> BandwidthResult:
        server = await serve()
        server.state = DropEveryTenth(KEY)
        try:
            return await measure(server, duration_s=0.5, rate_mbps=20.0)
        finally:
            server.close()

    res = run(go())
    dropped = (res.sent_packets + 9) // 10          # seqs 0, 10, 20, ...
    assert res.lost_packets == dropped > 50
    assert res.received_packets == res.sent_packets - dropped
    assert res.loss_pct == pytest.approx(100 * dropped / res.sent_packets)
    assert 9.0 < res.loss_pct < 11.0


def test_forged_truncated_and_replayed_control_messages_over_the_wire() -> None:
    async def go() -> tuple[list[Control], dict[str, int]]:
        server = await serve()
        loop = asyncio.get_running_loop()
        try:
            with open_path_socket("127.0.0.1", None, 0) as sock:
                start = encode_control(Start(1, 1, time.time_ns(), 1000, 0, 1200), KEY)
                for wire in (
                    encode_control(Start(7, 1, time.time_ns(), 1000, 0, 1200), OTHER_KEY),   # forged
                    start[:-5],                                                            # truncated
                    start,                                                                 # genuine
                    start,                                                                 # replayed
                    encode_control(End(1, 2, 0, 0), OTHER_KEY),                            # forged END
                    encode_control(End(1, 2, 0, 0), KEY),                                  # genuine END
                    encode_control(End(1, 2, 0, 0), KEY),                                  # replayed END
                    encode_control(Start(2, 1, time.time_ns(), 1000, 0, 1200), KEY),       # marker
                ):
                    await loop.sock_sendto(sock, wire, server.address)
                replies: list[Control] = []
                deadline = loop.time() + 10
                while not (replies and replies[-1].test_id == 2):
                    got = await recvfrom_until(sock, deadline)
                    assert got is not None, f"no answer to the marker START; got {replies}"
                    replies.append(decode_control(got[0], KEY))
            return replies, server.counters.as_dict()
        finally:
            server.close()

    replies, c = run(go())
    assert [type(r).__name__ for r in replies] == ["Ok", "Report", "Ok"]
    assert [r.test_id for r in replies] == [1, 1, 2]
    assert (c["forged"], c["malformed"], c["replayed"], c["started"], c["completed"]) == (2, 1, 2, 2, 1)


def test_client_ignores_a_server_with_another_key() -> None:
    async def go() -> dict[str, int]:
        sock = open_path_socket("127.0.0.1", None, 0)
        server = await BandwidthServer.serve(sock, OTHER_KEY)
        try:
            with pytest.raises(TimeoutError, match="no answer"):
                await measure(server, duration_s=0.5, control_timeout_s=0.05, control_tries=2)
            return server.counters.as_dict()
        finally:
            server.close()

    assert run(go())["forged"] == 2


def test_client_is_told_when_the_server_is_busy() -> None:
    async def go() -> None:
        server = await serve(max_tests=1)
        try:
            server.state.on_datagram(encode_control(Start(99, 1, time.time_ns(), 5000, 0, 1200), KEY), ADDR,
                                     time.monotonic_ns(), time.time_ns())
            with pytest.raises(BandwidthTestRefused, match="busy"):
                await measure(server, duration_s=0.5)
        finally:
            server.close()

    run(go())


def test_server_caps_the_duration() -> None:
    async def go() -> BandwidthResult:
        server = await serve(max_duration_s=0.2)
        try:
            return await measure(server, duration_s=30.0, rate_mbps=5.0)
        finally:
            server.close()

    res = run(go())
    assert res.granted_s == 0.2 and res.send_duration_s < 1.0
    assert res.lost_packets == 0 and res.received_packets == res.sent_packets > 0


def test_max_mode_sends_flat_out_and_accounts_for_every_packet() -> None:
    async def go() -> BandwidthResult:
        server = await serve()
        try:
            return await measure(server, duration_s=0.3, rate_mbps=None)
        finally:
            server.close()

    res = run(go())
    assert res.rate_mbps is None and not res.sender_limited
    assert res.sent_packets > 0 and 0 < res.received_packets <= res.sent_packets
    assert res.lost_packets == res.sent_packets - res.received_packets and res.duplicates == 0
    assert res.goodput_mbps > 0 and res.offered_mbps >= res.goodput_mbps * 0.9


def test_client_checks_its_arguments() -> None:
    async def go() -> None:
        with open_path_socket("127.0.0.1", None, 0) as sock:
            await run_bandwidth_test(sock, ("127.0.0.1", 9), KEY, duration_s=0, rate_mbps=-1, payload=10)

    with pytest.raises(ConfigError) as err:
        run(go())
    assert [f for f, _ in err.value.errors] == ["duration_s", "rate_mbps", "payload"]
