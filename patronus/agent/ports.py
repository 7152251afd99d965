"""The ports a site listens on, kept out of the kernel's ephemeral pool (`net.ipv4.ip_local_reserved_ports`).

Why: WireGuard's listen ports (`port_base + 16·remote id + 4·a + b`: 40000 and up by default) and the
mesh port (51900) lie inside Linux's default ephemeral range, 32768–60999. A socket bound to port 0 (the
prober's per-path sockets, on-demand probe bursts, a resolver, a relay) may be handed one of them; when
the tunnel that owns it is built later (a mesh site that joins, a remote added), wireguard refuses it
with EADDRINUSE and the path never comes up. hierarchical-20 hit exactly this at a hub.

A reserved port is never handed out by an automatic bind (port 0, or connect without bind); an explicit
bind still takes it, so the tunnels, the mesh socket and the bandwidth servers are unaffected. The
setting is per network namespace, so each emulated site reserves in its own.

What is reserved (`site_ports`): every WireGuard listen port the site can come to use (for a mesh site,
the block up to the highest site id the port scheme allows; for a static site, up to its highest remote
id), the mesh port, the probe port and the bandwidth-test ports. The agent merges them into what the
host already reserves, at start, before any socket of its own is opened; a cleanup stop gives back
what it added (and only that: ranges reserved before it, or since by someone else, stay). A graceful
stop keeps the reservation with the tunnels it leaves for the next agent.

If the host refuses (a read-only /proc/sys in a container), the agent logs why and runs on: the risk is
the collision above, not a wrong route.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from patronus.agent.lifecycle import Lifecycle, Thread

if TYPE_CHECKING:
    from patronus.agent.config import SiteConfig

log = logging.getLogger("patronus.agent")

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
MAX_SITE_ID = 4000           # config.py's bound on a site id
Range = tuple[int, int]      # inclusive
RECORD = "reserved-ports"     # in the state directory: the ports this site's agent added


def parse(text: str) -> set[int]:
    """The ports of the sysctl's text ("1000-1010,2000", or empty). ValueError on anything else."""
    out: set[int] = set()
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not 0 <= a <= b <= 65535:
            raise ValueError(f"bad port range {part!r}")
        out.update(range(a, b + 1))
    return out


def render(ports: Iterable[int]) -> str:
    """The sysctl's text of `ports`: sorted, runs collapsed ("40000-40015,51900")."""
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs(ports))


def runs(ports: Iterable[int]) -> list[Range]:
    out: list[Range] = []
    for p in sorted(set(ports)):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def site_ports(cfg: SiteConfig) -> set[int]:
    """The ports `cfg`'s site binds explicitly, or may come to (see the module's header)."""
    top = MAX_SITE_ID if cfg.mesh is not None else max((r.id for r in cfg.remotes), default=0)
    wg_end = min(65535, cfg.wg_port_base + 16 * top + 15)
    ports = set(range(cfg.wg_port_base, wg_end + 1)) if top else set()
    ports.update(p.listen_port for p in cfg.paths)
    ports.add(cfg.probe_port)
    ports.update(range(cfg.probe_port + 1, min(65535, cfg.probe_port + 1 + top) + 1))   # bandwidth servers
    if cfg.mesh is not None:
        ports.add(cfg.mesh.port)
    return ports


@dataclass
class Reservation:
    """What this site's agents added to the host's reserved ports (recorded in the state directory's
    `reserved-ports`, so the agent after a graceful stop, or `patronus cleanup`, can take it back);
    `release` takes back only that."""
    added: set[int]
    record: Path
    path: Path = RESERVED

    @classmethod
    def reserve(cls, ports: set[int], state_dir: Path, path: Path = RESERVED) -> Reservation:
        """Merge `ports` into the host's reservation. OSError / ValueError: the host refused or its
        current value could not be read (nothing was changed)."""
        before = parse(path.read_text())
        record = state_dir / RECORD
        ours = _recorded(record) & before          # an earlier agent's of this site, still reserved
        res = cls((ports - before) | ours, record, path)
        old = record.read_text() if record.exists() else None
        if res.added:           # recorded first: a crash right after the write below still knows its ports
            record.write_text(render(res.added) + "\n")
        try:
            if ports - before:
                path.write_text(render(before | ports) + "\n")
                if not ports <= parse(path.read_text()):
                    raise OSError(f"{path} did not take the reservation")
        except (OSError, ValueError):
            if old is None:         # nothing was changed: the record says so too
                record.unlink(missing_ok=True)
            else:
                record.write_text(old)
            raise
        return res

    def release(self) -> None:
        if self.added:
            now = parse(self.path.read_text())
            self.path.write_text(render(now - self.added) + "\n")
            self.added = set()
        self.record.unlink(missing_ok=True)


def _recorded(record: Path) -> set[int]:
    try:
        return parse(record.read_text())
    except (OSError, ValueError):
        return set()


def release_recorded(state_dir: Path, path: Path = RESERVED) -> int:
    """`patronus cleanup`: give back what a stopped agent of this state directory reserved (the
    number of ports; 0 when it recorded none)."""
    record = state_dir / RECORD
    added = _recorded(record)
    if not record.exists():
        return 0
    Reservation(added, record, path).release()
    return len(added)


def reserve_site_ports(cfg: SiteConfig, life: Lifecycle | None = None) -> Reservation | None:
    """`Reservation.reserve` of `site_ports(cfg)`, or None (logged, with the reason) if the host refuses;
    its release registered with `life` (a cleanup stop gives the ports back, a graceful one keeps them)."""
    ports = site_ports(cfg)
    try:
        res = Reservation.reserve(ports, cfg.state_dir)
    except (OSError, ValueError) as exc:
        log.warning("cannot keep the site's ports out of the ephemeral range (%s): %s; a socket bound to "
                    "port 0 may take a tunnel's port before it is built", RESERVED, exc)
        return None
    log.info("reserved %d ports against ephemeral binds: %s", len(ports),
             render(ports) if len(runs(ports)) <= 6 else f"{len(runs(ports))} ranges")
    if life is not None:
        life.add("reserved ports", res.release, None, Thread.LOOP)
    return res
