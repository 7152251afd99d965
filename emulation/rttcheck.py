"""Before the clock starts: do the agents measure the network the scenario describes?

Every path of a Mininet run crosses two emulated uplinks, the local one and the remote one, each in both
directions, so its round trip is 2 × (local delay + remote delay) plus what the hosts add (well under a
millisecond when the relays keep time). The agents measure every path's RTT before the run begins; when
their figures are far from that, the emulation is not the network the scenario asked for (a relay not
applying its delay, a host too loaded to forward on time), and whatever the run then measures says more
about the host than about the SD-WAN.

`check(measured, expected)` compares them: a path off by more than the warning margin is reported (the
run goes on and says so); one off by more than the refusal margin stops the run before it starts
(exit 2). Margins grow with the delay (a share of it) and with the links' configured jitter (the mean of
a jittered RTT wanders); both are stated below, and the figures checked land in summary.json's
`platform.rtt_check`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WARN_ABS_S, WARN_REL, WARN_JITTER = 0.002, 0.10, 2.0        # warn beyond 2 ms + 10 % + 2 × the path's jitter
REFUSE_ABS_S, REFUSE_REL, REFUSE_JITTER = 0.020, 0.50, 6.0  # refuse beyond 20 ms + 50 % + 6 × its jitter


@dataclass(frozen=True, slots=True)
class Expected:
    rtt_s: float
    jitter_s: float          # the RTT's jitter scale: the sum of the four crossings' configured jitter


@dataclass(frozen=True, slots=True)
class PathCheck:
    site: str
    path: str
    expected_ms: float
    measured_ms: float | None
    off_ms: float | None
    warn_ms: float
    refuse_ms: float

    @property
    def level(self) -> str:
        if self.off_ms is None:
            return "unmeasured"
        if abs(self.off_ms) > self.refuse_ms:
            return "refuse"
        return "warn" if abs(self.off_ms) > self.warn_ms else "ok"

    def describe(self) -> str:
        if self.measured_ms is None:
            return f"{self.site} {self.path}: no RTT measured (expected {self.expected_ms:.1f} ms)"
        return (f"{self.site} {self.path}: RTT {self.measured_ms:.1f} ms where the scenario makes it "
                f"{self.expected_ms:.1f} ms ({self.off_ms:+.1f} ms)")


def expected_rtts(scenario: Any) -> dict[tuple[str, str, str, str], Expected]:
    """(site, local uplink, remote site, remote uplink) → the round trip the scenario's baseline gives."""
    ups = {(s.name, u.name): u for s in scenario.sites for u in s.uplinks}
    out: dict[tuple[str, str, str, str], Expected] = {}
    for s in scenario.sites:
        # with a mesh the remotes are found at run time: any other site may be one
        for r in scenario.remotes_of(s.name) if scenario.mesh is None else \
                [o.name for o in scenario.sites if o.name != s.name]:
            for lu in s.uplinks:
                for ru in scenario.site(r).uplinks:
                    a, b = ups[(s.name, lu.name)].baseline(), ups[(r, ru.name)].baseline()
                    out[(s.name, lu.name, r, ru.name)] = Expected(2.0 * (a.delay_s + b.delay_s),
                                                                  2.0 * (a.jitter_s + b.jitter_s))
    return out


def check(measured: Iterable[Mapping[str, Any]],
          expected: Mapping[tuple[str, str, str, str], Expected]) -> list[PathCheck]:
    """One PathCheck per measured path the scenario knows. `measured`: the agents' /paths entries with
    `site` added (id, uplink, remote, remote_uplink, latency_ms)."""
    out = []
    for p in measured:
        key = (str(p["site"]), str(p["uplink"]), str(p["remote"]), str(p["remote_uplink"]))
        e = expected.get(key)
        if e is None:
            continue
        lat = p.get("latency_ms")
        m = float(lat) if isinstance(lat, int | float) and lat == lat and lat > 0 else None
        off = None if m is None else m - 1000.0 * e.rtt_s
        warn = 1000.0 * (WARN_ABS_S + WARN_REL * e.rtt_s + WARN_JITTER * e.jitter_s)
        refuse = 1000.0 * (REFUSE_ABS_S + REFUSE_REL * e.rtt_s + REFUSE_JITTER * e.jitter_s)
        out.append(PathCheck(site=key[0], path=str(p["id"]), expected_ms=1000.0 * e.rtt_s, measured_ms=m,
                             off_ms=off, warn_ms=warn, refuse_ms=refuse))
    return out


def summary(checks: list[PathCheck]) -> dict[str, Any]:
    """What platform.json keeps of the check."""
    measured = [c for c in checks if c.off_ms is not None]
    worst = max(measured, key=lambda c: abs(c.off_ms or 0.0) / max(c.warn_ms, 1e-9), default=None)
    return {"paths": len(checks), "warned": sum(1 for c in checks if c.level == "warn"),
            "worst": None if worst is None else {"site": worst.site, "path": worst.path,
                                                 "expected_ms": round(worst.expected_ms, 3),
                                                 "measured_ms": round(worst.measured_ms or 0.0, 3),
                                                 "off_ms": round(worst.off_ms or 0.0, 3)}}
