"""One WireGuard interface per path, on the kernel module or on wireguard-go, in the current network namespace.

Decisions:

* **Two backends, one API.** `kernel` speaks netlink only (pyroute2 `IPRoute` for the link, pyroute2
  `WireGuard` for keys and the peer). `userspace` runs `wireguard-go -f IFNAME` as our child and configures it
  with `wg set` (no library API for its UAPI socket): argument lists, checked exit codes, stderr in errors.
  The link itself (MTU, ifalias, up) is always set over netlink, whichever backend made it.
* **Ownership.** Every interface we create carries `spec.owner` as its ifalias, set right after the link
  appears, so even a half-built interface is found by `cleanup(owner_prefix)`; nothing without our tag is
  ever touched. wireguard-go processes are recorded in `state_dir/wg-IFNAME.pid` (pid, ifname, owner), and are
  only ever signalled after `/proc/PID/cmdline` proves they are wireguard-go for that interface; signals go
  through a pidfd, so a recycled pid can never be hit. Never `pkill`.
* **The process outlives its creator.** wireguard-go starts in a new session with its output in
  `state_dir/wg-IFNAME.log`, so an agent restart does not take the tunnels down; a later manager (another
  process, even) finds it again through the pid file. Exit is detected by polling the pidfd, which also
  works for a zombie whose parent is gone (and the creating process reaps its own children).
* **Wait for conditions.** `create` polls, with a deadline, for the control socket
  `/var/run/wireguard/IFNAME.sock` *and* the link; early exit or timeout raises with the log tail. A
  stale socket left by a killed wireguard-go is removed first (so it cannot satisfy the wait); a live one
  means the name is in use elsewhere: those sockets are shared by every network namespace, so interface
  names must be unique machine-wide (callers use names like `pt<site>p<n>`).
* **All or nothing.** If `create` fails half-way it removes what it made (process, link, files) before
  raising. `delete` is idempotent: deleting what is not there is not an error, so cleanup can always run.
* The private key never touches the disk here: `wg set … private-key /dev/stdin` reads it from a pipe, and
  `TunnelSpec`'s repr hides it.
* `status` works from the outside: kernel via `WireGuard().info`, userspace via `wg show IFNAME dump`, both
  parsed by pure functions (`parse_wg_dump`, `parse_kernel_info`) that the unit tests exercise.
* **Adopting what an earlier agent left** (a graceful restart, see `patronus.agent.adopt`): `survey(owner)`
  finds this owner's interfaces (ifalias) and recorded processes (pid files) and reads each one's live
  configuration (`parse_wg_config`); a recorded wireguard-go counts as alive only if its pid still runs
  `wireguard-go -f IFNAME` *and* started when the record says (a recycled pid never passes). `reconfigure`
  changes only what differs from the spec (`reconfigure_argv`: a `wg set` that names nothing unchanged, since
  re-setting wireguard-go's listen port rebinds its socket), so an adopted tunnel keeps its sessions.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from patronus.agent.keys import check_key
from patronus.agent.procs import alive, argv_of, start_ticks, wait_pidfd
from patronus.core.errors import ConfigError, PatronusError

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "SOCKET_DIR",
    "TunnelSpec",
    "TunnelStatus",
    "WireGuardError",
    "WireGuardManager",
    "detect_backend",
    "kernel_available",
    "parse_kernel_info",
    "parse_wg_dump",
    "userspace_available",
    "validate_ifname",
    "wg_set_argv",
]

Backend = Literal["kernel", "userspace"]
BACKENDS: Final = ("kernel", "userspace")
SOCKET_DIR: Final = Path("/var/run/wireguard")
INSTALL_HINT: Final = "apt-get install --no-install-recommends wireguard-go wireguard-tools"
IFNAMSIZ: Final = 16  # including the NUL: names are at most 15 characters
IFALIASZ: Final = 256

_POLL_S: Final = 0.01
_LOG_TAIL_BYTES: Final = 2000


class WireGuardError(PatronusError):
    """WireGuard could not be set up, changed or inspected; the message says what and, if known, how to fix it."""


# --------------------------------------------------------------------------------------------------- spec


def validate_ifname(name: object, field_name: str = "ifname") -> str:
    """A valid Linux interface name (1..15 characters, no '/', ':' or whitespace, not '.'/'..')."""
    if not isinstance(name, str) or not name:
        raise ConfigError("expected a non-empty interface name", field_name)
    if len(name.encode()) > IFNAMSIZ - 1:
        raise ConfigError(f"interface names are at most {IFNAMSIZ - 1} bytes, got {len(name.encode())}", field_name)
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name) or not name.isprintable():
        raise ConfigError(f"{name!r} is not a valid interface name", field_name)
    return name


Problems = list[tuple[str, str]]  # (field, reason), as ConfigError takes them


def _check_port(value: object, field_name: str, *, allow_zero: bool) -> Problems:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        return [(field_name, f"expected an integer port {low}..65535, got {value!r}")]
    return []


def _check_host(host: object, field_name: str) -> Problems:
    if not isinstance(host, str) or not host:
        return [(field_name, f"expected an IP address or host name, got {host!r}")]
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return []
    if ":" in host or any(c.isspace() for c in host) or not host.isprintable() or len(host) > 253:
        return [(field_name, f"{host!r} is neither an IP address nor a host name")]
    return []


def _endpoint_text(host: str, port: int) -> str:
    """`host:port` as `wg` writes it: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _uint_errors(value: object, name: str, maximum: int, minimum: int = 0) -> Problems:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        return [(name, f"expected an integer {minimum}..{maximum}, got {value!r}")]
    return []


@dataclass(frozen=True, kw_only=True)
class TunnelSpec:
    """One WireGuard interface with exactly one peer. Validated on construction; keys are canonicalised."""

    ifname: str
    private_key: str = field(repr=False)
    listen_port: int
    fwmark: int = 0  # 0: no mark
    mtu: int = 1420
    peer_public_key: str
    peer_endpoint: tuple[str, int]
    allowed_ips: tuple[str, ...]
    keepalive_s: int = 0  # 0: off
    owner: str  # stored as the interface's ifalias, e.g. "patronus:s1"
    initiate: bool = True  # start the first handshake at once (one end of a pair only: see below)

    def __post_init__(self) -> None:
        errors: Problems = []

        def check(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except ConfigError as e:
                errors.extend(e.errors)
                return None

        check(validate_ifname, self.ifname, "ifname")
        priv = check(check_key, self.private_key, "private_key")
        pub = check(check_key, self.peer_public_key, "peer_public_key")
        if priv is not None:
            object.__setattr__(self, "private_key", priv)
        if pub is not None:
            object.__setattr__(self, "peer_public_key", pub)
        errors += _check_port(self.listen_port, "listen_port", allow_zero=True)
        errors += _uint_errors(self.fwmark, "fwmark", 2**32 - 1)
        errors += _uint_errors(self.mtu, "mtu", 65535, minimum=576)
        errors += _uint_errors(self.keepalive_s, "keepalive_s", 65535)

        endpoint = self.peer_endpoint
        if isinstance(endpoint, list):
            endpoint = tuple(endpoint)
            object.__setattr__(self, "peer_endpoint", endpoint)
        if not isinstance(endpoint, tuple) or len(endpoint) != 2:
            errors.append(("peer_endpoint", f"expected (host, port), got {endpoint!r}"))
        else:
            errors += _check_host(endpoint[0], "peer_endpoint.host")
            errors += _check_port(endpoint[1], "peer_endpoint.port", allow_zero=False)

        ips = self.allowed_ips
        if isinstance(ips, list):
            ips = tuple(ips)
            object.__setattr__(self, "allowed_ips", ips)
        if not isinstance(ips, tuple):
            errors.append(("allowed_ips", f"expected a list of CIDR prefixes, got {ips!r}"))
        else:
            for i, cidr in enumerate(ips):
                if not isinstance(cidr, str) or "/" not in cidr:
                    errors.append((f"allowed_ips[{i}]", f"expected a CIDR prefix like 10.0.0.0/24, got {cidr!r}"))
                    continue
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError as e:
                    errors.append((f"allowed_ips[{i}]", str(e)))

        owner = self.owner
        if not isinstance(owner, str) or not owner or len(owner.encode()) >= IFALIASZ or not owner.isprintable():
            errors.append(("owner", f"expected a printable tag of 1..{IFALIASZ - 1} bytes, got {owner!r}"))
        if errors:
            raise ConfigError(errors)


@dataclass(frozen=True)
class TunnelStatus:
    ifname: str
    latest_handshake: float | None  # epoch seconds; None: never
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None  # "host:port" ("[v6]:port"); None: not known yet


def wg_set_argv(spec: TunnelSpec, key_path: str = "/dev/stdin") -> list[str]:
    """The `wg set` command configuring `spec` on a wireguard-go interface (the key is read from `key_path`)."""
    argv = [
        "wg", "set", spec.ifname,
        "listen-port", str(spec.listen_port),
        "fwmark", str(spec.fwmark) if spec.fwmark else "off",
        "private-key", key_path,
        "peer", spec.peer_public_key,
        "endpoint", _endpoint_text(*spec.peer_endpoint),
        "persistent-keepalive", str(spec.keepalive_s) if spec.keepalive_s else "off",
    ]  # fmt: skip
    if spec.allowed_ips:
        argv += ["allowed-ips", ",".join(spec.allowed_ips)]
    return argv


def parse_wg_dump(ifname: str, text: str) -> TunnelStatus:
    """Parse `wg show IFNAME dump`: one interface line, then one line per peer (totals over all peers)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or len(lines[0].split("\t")) != 4:
        raise WireGuardError(f"{ifname}: unexpected `wg show dump` output (no interface line)")
    handshake: float | None = None
    rx = tx = 0
    endpoint: str | None = None
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != 8:
            raise WireGuardError(f"{ifname}: unexpected `wg show dump` line {n}: {len(cols)} columns, expected 8")
        _pub, _psk, ep, _ips, hs, peer_rx, peer_tx, _ka = cols
        try:
            hs_s, rx_b, tx_b = int(hs), int(peer_rx), int(peer_tx)
        except ValueError:
            raise WireGuardError(f"{ifname}: unexpected `wg show dump` line {n}: non-numeric counters") from None
        if hs_s > 0:
            handshake = float(hs_s) if handshake is None else max(handshake, float(hs_s))
        rx += rx_b
        tx += tx_b
        if endpoint is None and ep != "(none)":
            endpoint = ep
    return TunnelStatus(ifname=ifname, latest_handshake=handshake, rx_bytes=rx, tx_bytes=tx, endpoint=endpoint)


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    endpoint: str | None              # "host:port" ("[v6]:port"); None: not set
    allowed_ips: frozenset[str]
    keepalive_s: int                  # 0: off


@dataclass(frozen=True)
class WgConfig:
    """The configuration a live WireGuard interface reports (what `wg show IFNAME dump` prints)."""

    private_key: str = field(repr=False)
    listen_port: int
    fwmark: int                       # 0: off
    peers: tuple[WgPeer, ...]


def parse_wg_config(ifname: str, text: str) -> WgConfig:
    """The configuration in `wg show IFNAME dump` (interface line, then one line per peer)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = lines[0].split("\t") if lines else []
    if len(head) != 4:
        raise WireGuardError(f"{ifname}: unexpected `wg show dump` output (no interface line)")
    try:
        port = int(head[2])
        fwmark = 0 if head[3] == "off" else int(head[3], 0)
    except ValueError:
        raise WireGuardError(f"{ifname}: unexpected `wg show dump` interface line: {head[2:]}") from None
    peers = []
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != 8:
            raise WireGuardError(f"{ifname}: unexpected `wg show dump` line {n}: {len(cols)} columns, expected 8")
        pub, _psk, ep, ips, _hs, _rx, _tx, ka = cols
        try:
            keepalive = 0 if ka == "off" else int(ka)
        except ValueError:
            raise WireGuardError(f"{ifname}: unexpected `wg show dump` line {n}: keepalive {ka!r}") from None
        peers.append(WgPeer(pub, None if ep == "(none)" else ep,
                            frozenset() if ips == "(none)" else frozenset(x for x in ips.split(",") if x), keepalive))
    return WgConfig(private_key=head[0], listen_port=port, fwmark=fwmark, peers=tuple(peers))


def _canonical_ips(ips: Iterable[str]) -> frozenset[str]:
    out = set()
    for x in ips:
        try:
            out.add(str(ipaddress.ip_network(x, strict=False)))
        except ValueError:
            out.add(x)
    return frozenset(out)


def config_differences(spec: TunnelSpec, cfg: WgConfig) -> list[str]:
    """What differs between the spec and a live interface's configuration (empty: it is the spec)."""
    diff = []
    if cfg.private_key != spec.private_key:
        diff.append("private-key")
    if cfg.listen_port != spec.listen_port:
        diff.append("listen-port")
    if cfg.fwmark != spec.fwmark:
        diff.append("fwmark")
    others = [p for p in cfg.peers if p.public_key != spec.peer_public_key]
    if others:
        diff.append("other peers")
    peer = next((p for p in cfg.peers if p.public_key == spec.peer_public_key), None)
    if peer is None:
        diff.append("peer")
        return diff
    if peer.endpoint != _endpoint_text(*spec.peer_endpoint):
        diff.append("endpoint")
    if _canonical_ips(peer.allowed_ips) != _canonical_ips(spec.allowed_ips):
        diff.append("allowed-ips")
    if peer.keepalive_s != spec.keepalive_s:
        diff.append("persistent-keepalive")
    return diff


def reconfigure_argv(spec: TunnelSpec, cfg: WgConfig, key_path: str = "/dev/stdin") -> list[str] | None:
    """The `wg set` that turns a live interface's configuration into the spec, naming only what
    differs (None: nothing does). Peers that are not the spec's are removed."""
    diff = config_differences(spec, cfg)
    if not diff:
        return None
    argv = ["wg", "set", spec.ifname]
    if "listen-port" in diff:
        argv += ["listen-port", str(spec.listen_port)]
    if "fwmark" in diff:
        argv += ["fwmark", str(spec.fwmark) if spec.fwmark else "off"]
    if "private-key" in diff:
        argv += ["private-key", key_path]
    for p in cfg.peers:
        if p.public_key != spec.peer_public_key:
            argv += ["peer", p.public_key, "remove"]
    if {"peer", "endpoint", "allowed-ips", "persistent-keepalive"} & set(diff):
        argv += ["peer", spec.peer_public_key]
        if "peer" in diff or "endpoint" in diff:
            argv += ["endpoint", _endpoint_text(*spec.peer_endpoint)]
        if "peer" in diff or "persistent-keepalive" in diff:
            argv += ["persistent-keepalive", str(spec.keepalive_s) if spec.keepalive_s else "off"]
        if "peer" in diff or "allowed-ips" in diff:
            argv += ["allowed-ips", ",".join(spec.allowed_ips)]
    return argv


@dataclass(frozen=True)
class FoundTunnel:
    """One tunnel of ours found on the host (`WireGuardManager.survey`)."""

    ifname: str
    link: bool                        # the interface exists, tagged with our owner
    process: bool                     # userspace: the recorded wireguard-go runs (verified); kernel: = link
    config: WgConfig | None           # its live configuration (None: unreadable, or no interface)


def _field(obj: Any, key: str) -> Any:
    """A field of a decoded pyroute2 NLA, whether pyroute2 hands back the NLA or its plain value."""
    if obj is None:
        return None
    with contextlib.suppress(KeyError, TypeError):
        return obj[key]
    return None


def _kernel_peers(msgs: Iterable[Any]) -> Iterator[Any]:
    for msg in msgs:
        yield from msg.get_attr("WGDEVICE_A_PEERS") or []


def parse_kernel_info(ifname: str, msgs: Iterable[Any]) -> TunnelStatus:
    """Parse the messages of pyroute2 `WireGuard().info(ifname)` (totals over all peers)."""
    handshake: float | None = None
    rx = tx = 0
    endpoint: str | None = None
    for peer in _kernel_peers(msgs):
        hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
        sec, nsec = _field(hs, "tv_sec") or 0, _field(hs, "tv_nsec") or 0
        if sec > 0:
            t = sec + nsec / 1e9
            handshake = t if handshake is None else max(handshake, t)
        rx += peer.get_attr("WGPEER_A_RX_BYTES") or 0
        tx += peer.get_attr("WGPEER_A_TX_BYTES") or 0
        ep = peer.get_attr("WGPEER_A_ENDPOINT")
        addr, port = _field(ep, "addr"), _field(ep, "port")
        if endpoint is None and addr and port and addr not in ("0.0.0.0", "::"):
            endpoint = _endpoint_text(str(addr), int(port))
    return TunnelStatus(ifname=ifname, latest_handshake=handshake, rx_bytes=rx, tx_bytes=tx, endpoint=endpoint)


# ----------------------------------------------------------------------------------------------- backends


def kernel_available() -> tuple[bool, str]:
    """Whether the WireGuard kernel module is usable here, and why (not)."""
    if Path("/sys/module/wireguard").exists():
        return True, "wireguard module loaded (/sys/module/wireguard)"
    probe = f"ptwgprobe{os.getpid() % 100000}"
    try:
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=probe, kind="wireguard")
            except NetlinkError as e:
                if e.code == errno.EOPNOTSUPP:
                    return False, "kernel has no wireguard module (creating a wireguard link: unknown device type)"
                return False, f"creating a wireguard link failed: {os.strerror(e.code)}"
            for idx in ipr.link_lookup(ifname=probe):
                ipr.link("del", index=idx)
    except OSError as e:  # netlink socket itself unavailable
        return False, f"netlink unavailable: {e}"
    return True, "wireguard links can be created (module loaded on demand)"


def userspace_available() -> tuple[bool, str]:
    """Whether wireguard-go + wg (and /dev/net/tun) are usable here, and why (not)."""
    missing = [tool for tool in ("wireguard-go", "wg") if shutil.which(tool) is None]
    problems = [f"{', '.join(missing)} not on PATH"] if missing else []
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun missing (no TUN support)")
    if problems:
        return False, "; ".join(problems)
    return True, f"wireguard-go at {shutil.which('wireguard-go')}, wg at {shutil.which('wg')}"


def detect_backend(preferred: str = "auto") -> Backend:
    """`kernel` if the module is usable, else `userspace` if wireguard-go and wg are; forced values are checked."""
    if preferred not in ("auto", *BACKENDS):
        raise ConfigError(f"expected one of auto, kernel, userspace, got {preferred!r}", "wireguard.backend")
    kernel_why = ""
    if preferred in ("auto", "kernel"):
        ok, kernel_why = kernel_available()
        if ok:
            return "kernel"
        if preferred == "kernel":
            raise WireGuardError(
                f"WireGuard kernel backend unavailable: {kernel_why}. Load it with `modprobe wireguard` (in "
                f"mainline Linux since 5.6) or use the userspace backend: {INSTALL_HINT}"
            )
    ok, user_why = userspace_available()
    if ok:
        return "userspace"
    prefix = f"no WireGuard backend: kernel: {kernel_why}; userspace: " if preferred == "auto" else ""
    raise WireGuardError(f"{prefix or 'WireGuard userspace backend unavailable: '}{user_why}. Install: {INSTALL_HINT}")


# ------------------------------------------------------------------------------------------------ helpers

# Popen objects of the wireguard-go processes this Python process started, so it reaps its own children
# (and Popen never warns about a child it lost track of). Other processes' children are handled by pid.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class _PidRecord:
    pid: int
    ifname: str
    owner: str
    path: Path
    start: int | None = None        # the process's start time (clock ticks since boot), when recorded


def _link_index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def _socket_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _remove_stale_socket(ifname: str) -> None:
    path = _socket_path(ifname)
    if path.exists() and not _socket_live(path):
        path.unlink(missing_ok=True)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace").strip()
    except OSError as e:
        return f"(log unreadable: {e.strerror})"
    return text or "(log empty)"


def _is_wireguard_go(pid: int, ifname: str, start: int | None = None) -> bool:
    """True if `pid` is a live (non-zombie) `wireguard-go ... IFNAME` process (that started at `start`,
    when given)."""
    argv = argv_of(pid)
    return (
        len(argv) >= 2
        and os.path.basename(argv[0]) == b"wireguard-go"
        and argv[-1] == ifname.encode()
        and alive(pid, start)
    )


def _run(argv: list[str], what: str, *, input_text: str | None = None, timeout_s: float = 10.0) -> str:
    try:
        res = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise WireGuardError(f"{what}: {argv[0]} not found on PATH. Install: {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise WireGuardError(f"{what}: `{argv[0]} {argv[1]}` did not finish within {timeout_s:g}s") from None
    if res.returncode != 0:
        raise WireGuardError(f"{what}: `{' '.join(argv[:3])}` exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


# ------------------------------------------------------------------------------------------------ manager


def _resolve(host: str, port: int) -> str:
    """An IP literal for `host` (the kernel API takes addresses only; `wg` resolves names itself)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise WireGuardError(f"peer endpoint {host!r}: cannot resolve: {e}") from None
    return str(infos[0][4][0])


def _wait_up(proc: subprocess.Popen[bytes], ifname: str, log_path: Path, timeout_s: float) -> None:
    """Poll until the link is there and the control socket accepts a connection; raise with the log
    tail otherwise. The socket file exists from wireguard-go's bind(), a moment before its listen():
    a `wg` run in between is refused, takes the interface for a kernel one ("Protocol not supported")
    and even unlinks the socket as stale. So existing is not enough: it must answer."""
    deadline = time.monotonic() + timeout_s
    sock = _socket_path(ifname)
    with IPRoute() as ipr:
        while True:
            if _link_index(ipr, ifname) is not None and sock.exists() and _socket_live(sock):
                return
            try:
                code = proc.wait(timeout=_POLL_S)  # doubles as the poll interval
            except subprocess.TimeoutExpired:
                pass
            else:
                _CHILDREN.pop(proc.pid, None)
                raise WireGuardError(f"{ifname}: wireguard-go exited with {code} while starting: {_tail(log_path)}")
            if time.monotonic() > deadline:
                missing = [w for w, ok in (("socket " + str(sock), sock.exists()),
                                           ("link", _link_index(ipr, ifname) is not None)) if not ok]
                raise WireGuardError(
                    f"{ifname}: wireguard-go not ready after {timeout_s:g}s (missing: "
                    f"{', '.join(missing)}): {_tail(log_path)}"
                )


class WireGuardManager:
    """Creates, changes, inspects and removes WireGuard interfaces in the current network namespace."""

    def __init__(
        self,
        backend: str,
        state_dir: Path,
        *,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        log_level: str = "error",
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"expected one of kernel, userspace, got {backend!r}", "wireguard.backend")
        self.backend: Backend = "kernel" if backend == "kernel" else "userspace"
        self.state_dir = Path(state_dir)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_level = log_level  # wireguard-go LOG_LEVEL: verbose, error or silent

    # -- paths

    def _pid_path(self, ifname: str) -> Path:
        return self.state_dir / f"wg-{ifname}.pid"

    def _log_path(self, ifname: str) -> Path:
        return self.state_dir / f"wg-{ifname}.log"

    def _key_path(self, ifname: str) -> Path:
        return self.state_dir / f"wg-{ifname}.key"  # not written by us (key goes via stdin); removed if found

    # -- create

    def create(self, spec: TunnelSpec) -> None:
        """Create and configure `spec`'s interface and bring it up; on failure nothing of it is left behind."""
        with IPRoute() as ipr:
            if _link_index(ipr, spec.ifname) is not None:
                raise WireGuardError(f"{spec.ifname}: an interface of that name already exists")
        if self.backend == "kernel":
            self._create_kernel(spec)
        else:
            self._create_userspace(spec)

    def create_many(self, specs: list[TunnelSpec], workers: int = 8) -> None:
        """`create` each of `specs`; all or none (those made are deleted again when one fails). A userspace
        tunnel is mostly waiting for its wireguard-go to come up, so they are made `workers` at a time
        (a site that joins a mesh of ten gets its ten tunnels in the time of a few); kernel ones in turn."""
        if self.backend == "kernel" or len(specs) < 2:
            made: list[str] = []
            try:
                for spec in specs:
                    self.create(spec)
                    made.append(spec.ifname)
            except BaseException:
                for ifname in made:
                    with contextlib.suppress(Exception):
                        self.delete(ifname)
                raise
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(specs)), thread_name_prefix="patronus-wg") as pool:
            futures = [(spec.ifname, pool.submit(self.create, spec)) for spec in specs]
        errors = [(ifname, f.exception()) for ifname, f in futures if f.exception() is not None]
        if errors:
            for ifname, f in futures:
                if f.exception() is None:
                    with contextlib.suppress(Exception):
                        self.delete(ifname)
            raise errors[0][1]  # type: ignore[misc]

    def _finish_link(self, ipr: Any, spec: TunnelSpec) -> None:
        idx = _link_index(ipr, spec.ifname)
        if idx is None:
            raise WireGuardError(f"{spec.ifname}: interface vanished during configuration")
        ipr.link("set", index=idx, mtu=spec.mtu)
        ipr.link("set", index=idx, state="up")

    def _create_kernel(self, spec: TunnelSpec) -> None:
        host, port = spec.peer_endpoint
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=spec.ifname, kind="wireguard")
            except NetlinkError as e:
                raise WireGuardError(f"{spec.ifname}: creating the wireguard link failed: {os.strerror(e.code)}") from e
            try:
                ipr.link("set", index=_link_index(ipr, spec.ifname), ifalias=spec.owner)
                peer = {
                    "public_key": spec.peer_public_key,
                    "endpoint_addr": _resolve(host, port),
                    "endpoint_port": port,
                    "persistent_keepalive": spec.keepalive_s,
                    "replace_allowed_ips": True,
                    "allowed_ips": list(spec.allowed_ips),
                }
                with WireGuard() as wg:
                    wg.set(
                        spec.ifname,
                        listen_port=spec.listen_port,
                        fwmark=spec.fwmark,
                        private_key=spec.private_key,
                        peer=peer,
                    )
                self._finish_link(ipr, spec)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    for idx in ipr.link_lookup(ifname=spec.ifname):
                        ipr.link("del", index=idx)
                if isinstance(e, NetlinkError):
                    raise WireGuardError(f"{spec.ifname}: configuring failed: {os.strerror(e.code)}") from e
                raise

    def _create_userspace(self, spec: TunnelSpec) -> None:
        ifname = spec.ifname
        sock = _socket_path(ifname)
        if sock.exists() and _socket_live(sock):
            raise WireGuardError(
                f"{ifname}: {sock} is in use by another wireguard-go; its control sockets are shared by all network "
                "namespaces, so interface names must be unique machine-wide"
            )
        sock.unlink(missing_ok=True)  # stale: it must not satisfy the wait below
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self._log_path(ifname)
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": self.log_level}
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    ["wireguard-go", "-f", ifname],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError:
                raise WireGuardError(f"wireguard-go not found on PATH. Install: {INSTALL_HINT}") from None
        _CHILDREN[proc.pid] = proc
        try:
            self._write_pid(ifname, proc.pid, spec.owner)
            _wait_up(proc, ifname, log_path, self.start_timeout_s)
            with IPRoute() as ipr:
                ipr.link("set", index=_link_index(ipr, ifname), ifalias=spec.owner)
                _run(wg_set_argv(spec), f"{ifname}: configuring", input_text=spec.private_key + "\n")
                self._finish_link(ipr, spec)
            if spec.keepalive_s and spec.initiate:
                # wireguard-go sends the first keepalive (and so the first handshake) when the interval
                # is set on an interface that is up; set before the link was up, it waits for traffic.
                # Setting it again now warms the tunnel at once, so a failover never waits a handshake.
                # Only one end does this: two agents started together would otherwise send crossing
                # initiations in step, each discarding the other's response, again and again on links
                # whose RTT is longer than WireGuard's retry jitter.
                for value in ("off", str(spec.keepalive_s)):     # only a change from off sends one
                    _run(["wg", "set", ifname, "peer", spec.peer_public_key, "persistent-keepalive", value],
                         f"{ifname}: keepalive")
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop_process(proc.pid, ifname)
            with contextlib.suppress(Exception), IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=ifname):
                    ipr.link("del", index=idx)
            self._pid_path(ifname).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _remove_stale_socket(ifname)
            raise

    def _write_pid(self, ifname: str, pid: int, owner: str) -> None:
        path = self._pid_path(ifname)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        start = start_ticks(pid)
        tmp.write_text(f"{pid}\n{ifname}\n{owner}\n{'' if start is None else start}\n")
        os.replace(tmp, path)

    # -- change

    def _peer_keys(self, ifname: str) -> list[str]:
        if self.backend == "kernel":
            with WireGuard() as wg:
                msgs = wg.info(ifname)
            keys = []
            for peer in _kernel_peers(msgs):
                raw = peer.get_attr("WGPEER_A_PUBLIC_KEY")
                keys.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            return keys
        return _run(["wg", "show", ifname, "peers"], f"{ifname}: listing peers").split()

    def kick(self, ifname: str, keepalive_s: int = 5, *, then: int | None = None) -> None:
        """Make the tunnel start a fresh handshake now (setting a keepalive interval from off does);
        `then`: the keepalive to leave it with (a tunnel's end that keeps none: 0), else `keepalive_s`."""
        validate_ifname(ifname)
        for peer in self._peer_keys(ifname):
            if self.backend == "kernel":
                with WireGuard() as wg:
                    for value in (0, keepalive_s or 5, *(() if then is None else (then,))):
                        wg.set(ifname, peer={"public_key": peer, "persistent_keepalive": value})
            else:
                for value in ("off", str(keepalive_s or 5), *(() if then is None else (str(then) if then else "off",))):
                    _run(["wg", "set", ifname, "peer", peer, "persistent-keepalive", value], f"{ifname}: kick")

    def update_peer_endpoint(self, ifname: str, host: str, port: int) -> None:
        """Point the interface's (single) peer at `host:port`."""
        errors = _check_host(host, "host") + _check_port(port, "port", allow_zero=False)
        if errors:
            raise ConfigError(errors)
        try:
            peers = self._peer_keys(ifname)
        except NetlinkError as e:
            raise WireGuardError(f"{ifname}: reading peers failed: {os.strerror(e.code)}") from e
        if len(peers) != 1:
            raise WireGuardError(f"{ifname}: expected exactly one peer, found {len(peers)}")
        if self.backend == "kernel":
            try:
                with WireGuard() as wg:
                    wg.set(
                        ifname,
                        peer={
                            "public_key": peers[0],
                            "endpoint_addr": _resolve(host, port),
                            "endpoint_port": port,
                            "update_only": True,
                        },
                    )
            except NetlinkError as e:
                raise WireGuardError(f"{ifname}: setting the endpoint failed: {os.strerror(e.code)}") from e
        else:
            argv = ["wg", "set", ifname, "peer", peers[0], "endpoint", _endpoint_text(host, port)]
            _run(argv, f"{ifname}: setting the endpoint")

    # -- inspect

    def status(self, ifname: str) -> TunnelStatus:
        if self.backend == "kernel":
            try:
                with WireGuard() as wg:
                    return parse_kernel_info(ifname, wg.info(ifname))
            except NetlinkError as e:
                raise WireGuardError(f"{ifname}: reading status failed: {os.strerror(e.code)}") from e
        return parse_wg_dump(ifname, _run(["wg", "show", ifname, "dump"], f"{ifname}: reading status"))

    # -- remove

    def _read_pid(self, path: Path) -> _PidRecord | None:
        try:
            lines = path.read_text().splitlines()
            start = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
            return _PidRecord(pid=int(lines[0]), ifname=lines[1], owner=lines[2] if len(lines) > 2 else "", path=path,
                              start=start)
        except (OSError, ValueError, IndexError):
            return None

    # -- adopt (a restarted agent)

    def survey(self, owner: str) -> dict[str, FoundTunnel]:
        """Every tunnel of `owner` in this namespace: interfaces whose ifalias is `owner`, and (userspace)
        wireguard-go processes recorded under `state_dir` for `owner`, each with its live configuration."""
        with IPRoute() as ipr:
            links = {str(link.get("ifname")) for link in ipr.get_links() if (link.get("ifalias") or "") == owner}
        recs: dict[str, _PidRecord] = {}
        if self.state_dir.is_dir():
            for path in sorted(self.state_dir.glob("wg-*.pid")):
                rec = self._read_pid(path)
                if rec is not None and rec.owner == owner and path == self._pid_path(rec.ifname):
                    recs[rec.ifname] = rec
        out = {}
        for ifname in sorted(links | set(recs)):
            link = ifname in links
            if self.backend == "kernel":
                process = link
            else:
                rec = recs.get(ifname)
                process = rec is not None and _is_wireguard_go(rec.pid, ifname, rec.start)
            config = None
            if link and process:
                with contextlib.suppress(WireGuardError, NetlinkError, OSError):
                    config = self._config(ifname)
            out[ifname] = FoundTunnel(ifname, link, process, config)
        return out

    def _config(self, ifname: str) -> WgConfig | None:
        if self.backend == "kernel":
            return None        # the kernel is always given the whole spec (netlink leaves equal values alone)
        return parse_wg_config(ifname, _run(["wg", "show", ifname, "dump"], f"{ifname}: reading its configuration"))

    def reconfigure(self, spec: TunnelSpec, found: FoundTunnel) -> list[str]:
        """Make a live tunnel of ours match `spec` without recreating it (its sessions survive), and check
        its link (ifalias, MTU, up). Returns what was changed ([] when it already matched)."""
        changed: list[str] = []
        if self.backend == "kernel":
            host, port = spec.peer_endpoint
            peer = {"public_key": spec.peer_public_key, "endpoint_addr": _resolve(host, port),
                    "endpoint_port": port, "persistent_keepalive": spec.keepalive_s, "replace_allowed_ips": True,
                    "allowed_ips": list(spec.allowed_ips)}
            try:
                with WireGuard() as wg:
                    for other in self._peer_keys(spec.ifname):
                        if other != spec.peer_public_key:
                            wg.set(spec.ifname, peer={"public_key": other, "remove": True})
                    wg.set(spec.ifname, listen_port=spec.listen_port, fwmark=spec.fwmark,
                           private_key=spec.private_key, peer=peer)
            except NetlinkError as e:
                raise WireGuardError(f"{spec.ifname}: reconfiguring failed: {os.strerror(e.code)}") from e
            changed.append("configuration (netlink)")
        else:
            cfg = found.config if found.config is not None else self._config(spec.ifname)
            assert cfg is not None
            argv = reconfigure_argv(spec, cfg)
            if argv is not None:
                changed += config_differences(spec, cfg)
                _run(argv, f"{spec.ifname}: reconfiguring",
                     input_text=spec.private_key + "\n" if "private-key" in argv else None)
        with IPRoute() as ipr:
            idx = _link_index(ipr, spec.ifname)
            if idx is None:
                raise WireGuardError(f"{spec.ifname}: interface vanished while being adopted")
            link = ipr.get_links(idx)[0]
            if (link.get("ifalias") or "") != spec.owner:
                ipr.link("set", index=idx, ifalias=spec.owner)
            if link.get("mtu") != spec.mtu:
                changed.append("mtu")
            if link.get("state") != "up":
                changed.append("state")
            self._finish_link(ipr, spec)
        return changed

    def _stop_process(self, pid: int, ifname: str, start: int | None = None) -> bool:
        """Stop `wireguard-go ... IFNAME` with pid `pid` if that is what runs there; True if we stopped it."""
        proc = _CHILDREN.pop(pid, None)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            if not _is_wireguard_go(pid, ifname, start):
                return False  # gone (zombie) or the pid now belongs to something else: not ours to signal
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not wait_pidfd(pidfd, self.stop_timeout_s):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                if not wait_pidfd(pidfd, self.stop_timeout_s):
                    raise WireGuardError(f"{ifname}: wireguard-go pid {pid} survived SIGKILL")
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.stop_timeout_s)  # reap our own child

    def _forget(self, ifname: str) -> None:
        self._pid_path(ifname).unlink(missing_ok=True)
        self._key_path(ifname).unlink(missing_ok=True)
        _remove_stale_socket(ifname)

    def delete(self, ifname: str) -> None:
        """Remove the interface (and its wireguard-go process); deleting a missing interface is not an error."""
        validate_ifname(ifname)
        rec = self._read_pid(self._pid_path(ifname))
        if rec is not None:
            self._stop_process(rec.pid, ifname, rec.start)
        with IPRoute() as ipr:
            idx = _link_index(ipr, ifname)
            if idx is not None:
                try:
                    ipr.link("del", index=idx)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:  # vanished with its process meanwhile
                        raise WireGuardError(f"{ifname}: deleting the link failed: {os.strerror(e.code)}") from e
        self._forget(ifname)

    def cleanup(self, owner_prefix: str, *, exact: bool = False) -> list[str]:
        """Remove every interface whose ifalias starts with `owner_prefix` (is `owner_prefix`, if `exact`:
        `patronus:s1` must not take `patronus:s10`'s) in this namespace, and every wireguard-go recorded
        under `state_dir` with such an owner (in any namespace). Returns the interface names removed, sorted."""
        if not owner_prefix:
            raise ConfigError("refusing an empty owner prefix (it would match every tagged interface)", "owner_prefix")

        def match(tag: str) -> bool:
            return tag == owner_prefix if exact else tag.startswith(owner_prefix)

        removed: set[str] = set()
        with IPRoute() as ipr:
            ours = [
                str(link.get("ifname"))
                for link in ipr.get_links()
                if match(link.get("ifalias") or "")
            ]
        for ifname in ours:
            self.delete(ifname)
            removed.add(ifname)
        if self.state_dir.is_dir():
            for path in sorted(self.state_dir.glob("wg-*.pid")):
                rec = self._read_pid(path)
                if rec is None or not match(rec.owner):
                    continue
                if self._stop_process(rec.pid, rec.ifname, rec.start):
                    removed.add(rec.ifname)
                self._forget(rec.ifname)
        return sorted(removed)
