"""Per-path UDP sockets: bound to one uplink's address and device, marked for its routing table.

The site agent measures each path (prober, path-MTU search, bandwidth test) from a socket that can
only leave through that path's uplink, so a measurement never silently takes another route:

* bound to the uplink's local address (the source address the far end sees and answers to);
* `SO_BINDTODEVICE` to the uplink interface when one is given (otherwise a route change could send
  the packets out of another interface with this source address);
* `SO_MARK` with the uplink's fwmark, so the agent's policy-routing rules (`fwmark X lookup T`) pick
  the uplink's table. Both options need `CAP_NET_ADMIN` (or `CAP_NET_RAW` for the device), which the
  agent has.

`SO_REUSEADDR` is explicitly off: two sockets sharing a path's probe port would split its replies.

`df=True` is for path-MTU probing: `IP_MTU_DISCOVER=IP_PMTUDISC_PROBE` (`IPV6_MTU_DISCOVER` for v6)
sets DF on every packet and makes the kernel *ignore* the cached path MTU, so a probe bigger than the
route's cached PMTU is still sent (PMTUDISC_DO would refuse it with EMSGSIZE and the search would
learn only the cache). Bigger than the *interface* MTU is still refused locally with EMSGSIZE, which
the search reads as "does not fit". The Python 3.11 socket module has no names for these options, so
their Linux values (from `<linux/in.h>`, `<linux/in6.h>`) are defined here.

Every `OSError` is re-raised with the same errno and a message naming the address, port and device,
so "Permission denied" becomes "cannot set SO_MARK 0x65 on UDP socket 192.0.2.1:0 dev wan1: ...".
A malformed address or device name is our own bad input and raises `ConfigError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Final

from patronus.core.errors import ConfigError

__all__ = [
    "IPV6_MTU_DISCOVER",
    "IPV6_PMTUDISC_PROBE",
    "IP_MTU_DISCOVER",
    "IP_PMTUDISC_PROBE",
    "has_df",
    "open_path_socket",
    "recvfrom_until",
    "set_dscp",
]

# Linux values; not exported by Python 3.11's socket module.
IP_MTU_DISCOVER: Final = 10
IP_PMTUDISC_PROBE: Final = 3
IPV6_MTU_DISCOVER: Final = 23
IPV6_PMTUDISC_PROBE: Final = 3
SO_MARK: Final = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE: Final = getattr(socket, "SO_BINDTODEVICE", 25)
_IFNAMSIZ: Final = 16


def _describe(local_addr: str, port: int, device: str | None) -> str:
    host = f"[{local_addr}]" if ":" in local_addr else local_addr
    return f"UDP socket {host}:{port}" + (f" dev {device}" if device else "")


def _reraise(err: OSError, what: str, where: str) -> OSError:
    """The same OSError (errno kept, so callers can still test it) with the context in the message."""
    return OSError(err.errno, f"cannot {what} on {where}: {err.strerror or err}")


def open_path_socket(local_addr: str, device: str | None, mark: int, port: int = 0, *,
                     df: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to `(local_addr, port)` that leaves through one uplink.

    `device`: interface for `SO_BINDTODEVICE` (None: not bound to a device).
    `mark`: fwmark for `SO_MARK` (0: none). `df`: DF set and cached PMTU ignored (for PMTU probes).
    IPv6 link-local addresses may carry a zone (`fe80::1%wan1`)."""
    try:
        ip = ipaddress.ip_address(local_addr)
    except ValueError:
        raise ConfigError(f"expected an IPv4 or IPv6 address, got {local_addr!r}", field="local_addr") from None
    if not 0 <= port <= 0xFFFF:
        raise ConfigError(f"expected a port 0-65535, got {port}", field="port")
    if not 0 <= mark <= 0xFFFF_FFFF:
        raise ConfigError(f"expected a 32-bit fwmark, got {mark}", field="mark")
    if device is not None and not 0 < len(device.encode()) < _IFNAMSIZ:
        raise ConfigError(f"interface names are 1-{_IFNAMSIZ - 1} bytes, got {device!r}", field="device")
    where = _describe(local_addr, port, device)
    v6 = ip.version == 6
    try:
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        raise _reraise(e, "create", where) from e
    try:
        step = "set non-blocking"
        sock.setblocking(False)
        step = "clear SO_REUSEADDR"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        if v6:
            step = "set IPV6_V6ONLY"
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if device:
            step = "set SO_BINDTODEVICE"
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        if mark:
            step = f"set SO_MARK 0x{mark:x}"
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if df:
            step = "set path-MTU discovery to PROBE (DF)"
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        step = "bind"
        if v6:
            assert isinstance(ip, ipaddress.IPv6Address)
            scope = ip.scope_id
            scope_id = socket.if_nametoindex(scope) if scope and not scope.isdigit() else int(scope or 0)
            sock.bind((str(ip).split("%", 1)[0], port, 0, scope_id))
        else:
            sock.bind((local_addr, port))
    except OSError as e:
        sock.close()
        raise _reraise(e, step, where) from e
    return sock


def has_df(sock: socket.socket) -> bool:
    """Whether `sock` was opened with `df=True` (path-MTU discovery mode PROBE)."""
    if sock.family == socket.AF_INET6:
        return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == IPV6_PMTUDISC_PROBE
    return sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_PROBE


def set_dscp(sock: socket.socket, dscp: int) -> None:
    """Mark the socket's packets with DSCP `dscp` (0-63), keeping the two ECN bits as they are."""
    if not 0 <= dscp <= 63:
        raise ConfigError(f"expected a DSCP 0-63, got {dscp}", field="dscp")
    if sock.family == socket.AF_INET6:
        level, opt, name = socket.IPPROTO_IPV6, socket.IPV6_TCLASS, "IPV6_TCLASS"
    else:
        level, opt, name = socket.IPPROTO_IP, socket.IP_TOS, "IP_TOS"
    try:
        ecn = sock.getsockopt(level, opt) & 0x03
        sock.setsockopt(level, opt, (dscp << 2) | ecn)
    except OSError as e:
        try:
            here = "UDP socket {}:{}".format(*sock.getsockname()[:2])
        except OSError:
            here = "UDP socket"
        raise _reraise(e, f"set {name} to DSCP {dscp}", here) from e


async def recvfrom_until(sock: socket.socket, deadline: float, bufsize: int = 65535) -> tuple[bytes, Any] | None:
    """The next datagram on non-blocking `sock`, or None once the loop clock reaches `deadline`.

    Only this coroutine reads the socket: it waits for readability (a reader callback and a timer
    both resolving one future) and then calls `recvfrom` itself, so a timeout can never swallow a
    datagram that was already read (as `wait_for(loop.sock_recvfrom(...))` can on Python 3.11).
    ICMP errors reported on the socket (ECONNREFUSED and the like) are skipped."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    while True:
        try:
            return sock.recvfrom(bufsize)
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionError:
            continue
        if loop.time() >= deadline:
            return None
        ready: asyncio.Future[None] = loop.create_future()

        def wake(fut: asyncio.Future[None] = ready) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, wake)
        timer = loop.call_at(deadline, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
            timer.cancel()
