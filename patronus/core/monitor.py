"""Path monitor: probe scheduling, timeouts, BFD-style liveness, metrics and status, sans-IO.

What may change state here: `add_path`/`remove_path`, `on_timer(now)` (sends due, timeouts due,
reports due), `on_probe_reply(...)` and `on_probe_result(...)`. Every status transition happens in
`PathMonitor._settle`; every probe given up on is recorded in `PathMonitor._lost`, which starts a run
of misses and says so (`ProbeLost`, once a run: the exact moment a failure first showed, for the
failover ledger) when the probe before was answered. This module must not know about sockets, clocks,
routing or flows: it turns probe outcomes into `ProbeLost` / `PathStatusChanged` / `PathMetricsUpdated`
events and `SendProbe` actions.

Liveness (in the style of BFD, RFC 5880): a path is Down once `detect_multiplier` consecutive probes
went unanswered within their timeout, and comes back only after `up_count` consecutive answered
probes (hysteresis), whatever took it Down. Each probe's timeout is a deadline in the core:
`timeout_s` from the profile, or, when that is None, adaptive as in RFC 6298
(srtt + max(interval/10, 4·rttvar)), never above `max_timeout_s` (the seed's 2 s). The last answered
probe went out at most one interval before a cut, so with a short RTT the detection time after a cut
is at most interval × multiplier plus that small margin (the `fast` profile: 20 ms × 3 ≈ 60 ms, at
least 40 ms); a long RTT adds itself once, because a probe cannot be called lost before its reply
could have arrived. The timeout follows the path's own jitter (4·rttvar), so a jittery path gets a
longer detection time rather than false Downs; a fixed BFD-style detect timer (no reply for
interval × multiplier) was tried and turned a jittery brownout into a "cut". The timeout is a
liveness deadline, not a verdict on the probe: a timed-out probe counts towards the run of misses at
once, but it is judged *lost* (a loss in the window, which the score, the loss rule and a site's SLA
see) only when a probe sent after it is answered first, or when the path goes Down, as TCP's RACK
judges segments (RFC 8985). A reply that comes before that is a late sample; one that comes after
turns the loss back into an RTT sample while it is still in the window. A path whose RTT rises (a
brownout) is slow, not dead, and a healthy path on a busy host does not read a few-ms delay past its
tight timeout as loss, not even for the instant before the reply arrives (an SLA class with
"loss ≤ 1 %" would move a call on that instant). Only an RTT jump
larger than (multiplier − 1) × interval within one detection time can still look like a cut.

While a path is alive its status follows the seed's quality rule over the probe window
(`quality.status_for`). When a dead path comes back, the window keeps only the probes that brought
it back: the outage measured the outage, not the path.

Coasting (`coast`, for a flow-level simulation; the agent never coasts): a driver that knows a path's
RTT will not change for a while (fixed links, no timeline step) vouches for it, and the monitor, once
the path is steady at that RTT, sends and answers those probes itself, a batch at a time when the path
is next woken or looked at, instead of asking for each one. Every coasted probe is counted, numbered,
taught to the RTT estimator and put in the window as an answered probe would be; the window then holds
one RTT, so score and status cannot change until the coast ends. Reports and every other timer go on.
A 100-site hour is 68 million probes: coasting is what lets the simulator run it in minutes.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from patronus.core.errors import ConfigError
from patronus.core.events import Event, PathMetricsUpdated, PathStatusChanged, ProbeLost, SendProbe
from patronus.core.model import PathId, PathMetrics, PathStatus
from patronus.core.quality import ProbeWindow, quality_score, status_for
from patronus.core.units import format_duration
from patronus.core.validate import Errors, choice, duration, integer, join, mapping, show

MIN_INTERVAL_S = 0.010
UP_SCORE = 50.0           # quality.status_for: Degraded below this score
UP_HYSTERESIS = 5.0       # a Degraded path is Up again at UP_SCORE + this
_COAST_TOLERANCE = 1e-9    # a coast's RTT and the window's samples agree to this part
_EXPIRED_KEEP = 64        # timed-out probes remembered so that their late replies can be recognised


@dataclass(frozen=True, slots=True)
class MonitorProfile:
    """How one path is probed and judged."""

    name: str = "default"
    interval_s: float = 1.0
    detect_multiplier: int = 3
    up_count: int = 3
    window: int = 10
    timeout_s: float | None = None        # None: adaptive (RFC 6298) between interval and max
    max_timeout_s: float = 2.0
    report_interval_s: float = 1.0        # cadence of PathMetricsUpdated
    jitter: str = "stdev"                 # "stdev" (seed) or "rfc3550"

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise ConfigError(errors)

    def problems(self, prefix: str = "monitor") -> list[tuple[str, str]]:
        errs: list[tuple[str, str]] = []
        if not self.interval_s >= MIN_INTERVAL_S:
            errs.append((f"{prefix}.interval",
                         f"must be at least {format_duration(MIN_INTERVAL_S)}, got "
                         f"{format_duration(self.interval_s) if self.interval_s > 0 else self.interval_s}"))
        if self.detect_multiplier < 1:
            errs.append((f"{prefix}.detect_multiplier", f"must be at least 1, got {self.detect_multiplier}"))
        if self.up_count < 1:
            errs.append((f"{prefix}.up_count", f"must be at least 1, got {self.up_count}"))
        if self.window < 1:
            errs.append((f"{prefix}.window", f"must be at least 1 sample, got {self.window}"))
        elif self.up_count > self.window:
            errs.append((f"{prefix}.up_count", f"must not exceed the window ({self.window}), got {self.up_count}"))
        if self.timeout_s is not None and not self.timeout_s > 0:
            errs.append((f"{prefix}.timeout", f"must be positive, got {self.timeout_s}"))
        if not self.max_timeout_s > 0:
            errs.append((f"{prefix}.max_timeout", f"must be positive, got {self.max_timeout_s}"))
        if not self.report_interval_s > 0:
            errs.append((f"{prefix}.report_interval", f"must be positive, got {self.report_interval_s}"))
        if self.jitter not in ("stdev", "rfc3550"):
            errs.append((f"{prefix}.jitter", f"expected 'stdev' or 'rfc3550', got {self.jitter!r}"))
        return errs

    @property
    def detection_time_s(self) -> float:
        """Nominal detection time for a short-RTT path: interval × multiplier."""
        return self.interval_s * self.detect_multiplier

    @classmethod
    def from_config(cls, value: Any, field: str = "monitor") -> MonitorProfile:
        """`"fast"`, `"default"`, or a mapping such as `{profile: fast, interval: "50ms", multiplier: 4}`."""
        if isinstance(value, MonitorProfile):
            return value
        if isinstance(value, str):
            if value in PROFILES:
                return PROFILES[value]
            raise ConfigError(f"unknown monitor profile {show(value)}; expected one of {', '.join(PROFILES)} "
                              "or a mapping with an interval", field)
        errs = Errors()
        m = mapping(value, field, errs, _PROFILE_KEYS)
        if m is None:
            raise ConfigError(f"expected a profile name or a mapping, got {show(value)}", field)
        base = PROFILES[choice(m.get("profile", "default"), join(field, "profile"), errs, PROFILES) or "default"]
        changes: dict[str, Any] = {"name": "custom" if set(m) - {"profile"} else base.name}
        for key, attr in (("interval", "interval_s"), ("timeout", "timeout_s"), ("max_timeout", "max_timeout_s"),
                          ("report_interval", "report_interval_s")):
            if key in m:
                changes[attr] = duration(m[key], join(field, key), errs)
        for key, attr in (("detect_multiplier", "detect_multiplier"), ("multiplier", "detect_multiplier"),
                          ("up_count", "up_count"), ("window", "window")):
            if key in m:
                n = integer(m[key], join(field, key), errs)     # below 1: problems() says why
                if n is not None and not -1_000_000 <= n <= 1_000_000:
                    errs.add(join(field, key), f"expected a whole number of at most 1000000, got {show(n)}")
                    n = None
                changes[attr] = n
        if "jitter" in m:
            changes["jitter"] = choice(m["jitter"], join(field, "jitter"), errs, ("stdev", "rfc3550"))
        try:
            profile = replace(base, **{k: v for k, v in changes.items() if v is not None})
        except ConfigError as exc:
            errs.items += [(f.replace("monitor", field, 1), r) for f, r in exc.errors
                           if f.replace("monitor", field, 1) not in {p for p, _ in errs.items}]
        errs.check()
        return profile


_PROFILE_KEYS = ("profile", "interval", "detect_multiplier", "multiplier", "up_count", "window", "timeout",
                 "max_timeout", "report_interval", "jitter")


PROFILES: dict[str, MonitorProfile] = {
    "default": MonitorProfile(name="default", interval_s=1.0),
    # 50 probes = the last second: the seed's 10 would judge loss and jitter over 200 ms, where one lost
    # probe is 10 % loss and five (one short stall) take a path Down by the loss rule
    "fast": MonitorProfile(name="fast", interval_s=0.020, window=50, report_interval_s=0.5),
}


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= b * _COAST_TOLERANCE


@dataclass(frozen=True, slots=True)
class ProbeCounters:
    sent: int
    received: int
    timed_out: int     # probes whose timeout (the liveness deadline) fired
    late: int          # replies that arrived after their probe had timed out (taken as delayed samples)
    unexpected: int    # replies to probes never sent (or to a removed path)
    duplicates: int = 0    # second copies, and replies to probes too old to remember


class Reply(IntEnum):
    """What `PathMonitor.take_reply` made of a reply."""

    IGNORED = 0     # unknown path or seq, a duplicate, a negative or impossible RTT: only a counter changed
    TAKEN = 1       # the reply to an outstanding probe: an RTT sample
    LATE = 2        # the reply to a probe that had timed out: the probe was delayed, not lost


class _PathState:
    __slots__ = ("alive", "answered_sent_at", "bandwidth_mbps", "coast_due", "coast_end", "coast_flight",
                 "coast_resume_at", "coast_rtt_s", "cost_per_gb", "duplicates", "expired", "good_run", "late",
                 "lost", "lost_sent_at", "miss_run", "miss_since", "mtu_bytes", "next_report_at", "next_send_at",
                 "next_seq", "outstanding", "path_id", "pending", "profile", "received", "revived", "rttvar_s",
                 "score", "sent", "srtt_s", "status", "status_since", "timed_out", "unexpected", "wake_at", "window")

    def __init__(self, path_id: PathId, profile: MonitorProfile, now: float, start_seq: int) -> None:
        self.path_id = path_id
        self.profile = profile
        self.window = ProbeWindow(profile.window)
        self.outstanding: dict[int, tuple[float, float]] = {}   # seq -> (sent_at, deadline)
        self.pending: dict[int, float] = {}     # timed out, not judged lost yet: seq -> sent_at
        self.expired: dict[int, tuple[float, tuple[int, int]]] = {}   # lost seq -> (sent_at, window serial)
        self.next_seq = start_seq
        self.next_send_at = now
        self.next_report_at = now + profile.report_interval_s
        self.alive = False
        self.status = PathStatus.DOWN
        self.status_since = now
        self.score = 0.0
        self.miss_run = 0
        self.miss_since: float | None = None        # send time of the first probe of the current miss run
        self.answered_sent_at: float | None = None  # send time of the newest probe that got a reply
        self.lost_sent_at: float | None = None      # send time of the newest probe given up on
        self.good_run = 0
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.sent = self.received = self.timed_out = self.late = self.unexpected = self.duplicates = 0
        self.lost = self.revived = 0    # probes judged lost; late replies that undid such a judgement
        self.bandwidth_mbps = 0.0
        self.mtu_bytes = 1500
        self.cost_per_gb = 0.0
        self.wake_at = now
        # a coast (`PathMonitor.coast`): probes sent before `coast_end` come back `coast_rtt_s` later
        self.coast_rtt_s: float | None = None
        self.coast_end = -math.inf
        self.coast_resume_at = math.inf     # the first send after the coast (the accumulated schedule)
        self.coast_flight: deque[float] = deque()   # send times of coasted probes not back yet
        self.coast_due = math.inf           # when the next coasted probe is sent or answered

    def timeout_s(self) -> float:
        p = self.profile
        if p.timeout_s is not None:
            return p.timeout_s
        if self.srtt_s is None:
            return max(p.interval_s, min(1.0, p.max_timeout_s))
        # RFC 6298's srtt + max(G, 4·rttvar), with a granularity G of a tenth of the interval. Not
        # floored at the interval: that would add up to one interval to every detection time.
        margin = 4.0 * self.rttvar_s
        granularity = p.interval_s / 10.0
        rto = self.srtt_s + (margin if margin > granularity else granularity)
        return min(rto, max(p.max_timeout_s, p.interval_s))

    def jitter_ms(self) -> float:
        w = self.window
        return w.rfc3550_jitter_ms if self.profile.jitter == "rfc3550" else w.stdev_ms

    def metrics(self, now: float) -> PathMetrics:
        w = self.window
        return PathMetrics(latency_ms=w.mean_ms, jitter_ms=self.jitter_ms(), loss_pct=w.loss_pct,
                           score=self.score, measured_at=now, bandwidth_mbps=self.bandwidth_mbps,
                           mtu_bytes=self.mtu_bytes, cost_per_gb=self.cost_per_gb, samples=len(w),
                           answered=w.received)

    def next_wake(self) -> float:
        send = self.coast_resume_at if self.next_send_at < self.coast_end else self.next_send_at
        t = send if send < self.next_report_at else self.next_report_at
        for _, deadline in self.outstanding.values():
            if deadline < t:
                t = deadline
        return t


class PathMonitor:
    """Probes every path on its profile's schedule and turns outcomes into metrics and status events.

    Drive it with `on_timer(now)` at `next_deadline()`, perform the `SendProbe` actions it queues,
    and feed replies with `on_probe_reply(path_id, seq, sent_at, now)`. Callers that model probing
    themselves (tests, flow-level simulation) can skip the schedule with `on_probe_result`.
    """

    def __init__(self, profile: MonitorProfile | None = None, *, start_seq: int = 0) -> None:
        self.profile = profile or PROFILES["default"]
        self._start_seq = start_seq
        self._paths: dict[PathId, _PathState] = {}
        self._heap: list[tuple[float, int, PathId]] = []
        self._tie = 0
        self._events: list[Event] = []
        self._clock = -math.inf     # the latest time handed in: queries bring coasting paths up to it
        self._coasting: dict[PathId, None] = {}     # paths with coasted probes to account for
        # what a coast's answered probes are for the rest of a site (the SLA): (path, rtt_ms, reply times)
        self.coast_sink: Callable[[PathId, float, list[float]], None] | None = None
        self.coasted_probes = 0     # probes sent by coasts, all paths, ever

    # -- topology ---------------------------------------------------------------------------------

    def add_path(self, path_id: PathId, now: float, *, profile: MonitorProfile | None = None,
                 cost_per_gb: float = 0.0, bandwidth_mbps: float = 0.0, schedule: bool = True) -> None:
        """Start monitoring `path_id`; the first probe is due at `now`. The path starts Down.

        `schedule=False` registers the path without a probe schedule (outcomes come from
        `on_probe_result`)."""
        if path_id in self._paths:
            raise ConfigError(f"path {path_id!r} is already monitored", "path_id")
        st = _PathState(path_id, profile or self.profile, now, self._start_seq)
        st.cost_per_gb = cost_per_gb
        st.bandwidth_mbps = bandwidth_mbps
        if not schedule:
            st.next_send_at = float("inf")
        self._paths[path_id] = st
        self._arm(st)

    def remove_path(self, path_id: PathId) -> None:
        self._paths.pop(path_id, None)   # heap entries for it are dropped lazily
        self._coasting.pop(path_id, None)

    def set_profile(self, path_id: PathId, profile: MonitorProfile, now: float) -> None:
        st = self._state(path_id)
        self._settle_coast(st, now)
        st.profile = profile
        samples = st.window.samples()
        st.window = ProbeWindow(profile.window)
        for x in samples[-profile.window:]:
            st.window.add(x)
        st.next_send_at = min(st.next_send_at, now + profile.interval_s)
        self._arm(st)

    def set_bandwidth(self, path_id: PathId, bandwidth_mbps: float) -> None:
        self._state(path_id).bandwidth_mbps = bandwidth_mbps

    def set_mtu(self, path_id: PathId, mtu_bytes: int) -> None:
        self._state(path_id).mtu_bytes = mtu_bytes

    @property
    def path_ids(self) -> list[PathId]:
        return list(self._paths)

    # -- queries ----------------------------------------------------------------------------------

    def status(self, path_id: PathId) -> PathStatus:
        return self._current(path_id).status

    def metrics(self, path_id: PathId, now: float) -> PathMetrics:
        st = self._state(path_id)
        if now > self._clock:
            self._clock = now
        if st.coast_due <= self._clock:
            self._sync(st, self._clock)
        return st.metrics(now)

    def miss_since(self, path_id: PathId) -> float | None:
        """When the first probe of the path's current run of misses was sent (None: no misses)."""
        st = self._current(path_id)
        return st.miss_since if st.miss_run else None

    def judged(self, path_id: PathId) -> bool:
        """Whether the path has a verdict of its own: it is Up or Degraded, or its last
        `detect_multiplier` probes in a row went unanswered. A path starts Down without one."""
        st = self._current(path_id)
        return st.status is not PathStatus.DOWN or st.miss_run >= st.profile.detect_multiplier

    def answered_sent_at(self, path_id: PathId) -> float | None:
        """Send time of the newest probe that got a reply, late or not: the path was alive then."""
        return self._current(path_id).answered_sent_at

    def lost_sent_at(self, path_id: PathId) -> float | None:
        """Send time of the newest probe the monitor gave up on (its timeout fired; a reply that came
        after does not undo it here): the path was failing then."""
        return self._current(path_id).lost_sent_at

    def counters(self, path_id: PathId) -> ProbeCounters:
        st = self._current(path_id)
        return ProbeCounters(st.sent, st.received, st.timed_out, st.late, st.unexpected, st.duplicates)

    def losses(self, path_id: PathId) -> tuple[int, int]:
        """(lost, revived): probes judged lost (in the window as losses), and late replies that came
        after that judgement and made a loss an RTT sample again. What a site's SLA counts; without
        accounting for coasted probes first (they are never lost)."""
        st = self._state(path_id)
        return st.lost, st.revived

    def current_timeout_s(self, path_id: PathId) -> float:
        return self._current(path_id).timeout_s()

    def drain_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def has_events(self) -> bool:
        """Whether `drain_events()` would return anything (a driver may skip a pump when not)."""
        return bool(self._events)

    def next_deadline(self) -> float | None:
        heap, paths = self._heap, self._paths
        while heap:
            t, _, pid = heap[0]
            st = paths.get(pid)
            if st is not None and st.wake_at == t:
                return t
            heapq.heappop(heap)
        return None

    # -- inputs -----------------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Fire everything due at or before `now`: timeouts, then probe sends, then reports."""
        heap, paths = self._heap, self._paths
        if now > self._clock:
            self._clock = now
        while heap and heap[0][0] <= now:
            t, _, pid = heapq.heappop(heap)
            st = paths.get(pid)
            if st is None or st.wake_at != t:
                continue
            if st.coast_due <= now and not (now < st.coast_end and not st.outstanding
                                            and st.window.uniform == st.coast_rtt_s * 1000.0):  # type: ignore[operator]
                # (a report of a path coasting at a steady window says the same synced or not: the
                # coasted probes wait for the next reading, or the SLA's next evaluation)
                self._sync(st, now)
            self._service(st, now)
            self._arm(st)

    def on_probe_reply(self, path_id: PathId, seq: int, sent_at: float | None, now: float) -> bool:
        """A reply to probe `seq` arrived at `now`. Returns True when it is an RTT sample of an
        outstanding probe (`take_reply` says more: a late reply is a sample too, of a probe that had
        timed out).

        `sent_at` is the send time carried by the (authenticated) probe, or None to use the time the
        monitor asked for the probe. A reply for an unknown path or seq, a duplicate reply, or one
        that would give a negative RTT changes nothing but a counter."""
        return self.take_reply(path_id, seq, sent_at, now) is Reply.TAKEN

    def take_reply(self, path_id: PathId, seq: int, sent_at: float | None, now: float) -> Reply:
        """`on_probe_reply`, saying what the reply was: TAKEN, LATE (after its timeout, taken as a
        delayed probe) or IGNORED."""
        st = self._paths.get(path_id)
        if st is None:
            return Reply.IGNORED
        if now > self._clock:
            self._clock = now
        if st.coast_due <= now:
            self._sync(st, now)
        rec = st.outstanding.pop(seq, None)
        if rec is None:
            pend = st.pending.get(seq)
            if pend is not None and now >= pend:
                # after its timeout, before any later probe was answered: a delayed probe, never
                # judged lost, so it is simply a sample (late)
                del st.pending[seq]
                self._judge_pending(st, seq)
                st.late += 1
                if st.answered_sent_at is None or pend > st.answered_sent_at:
                    st.answered_sent_at = pend
                self._outcome(st, now - pend, now)
                return Reply.LATE
            exp = st.expired.pop(seq, None)
            if exp is not None and now >= exp[0]:
                # A reply after its timeout. The timeout is a liveness deadline (it makes a cut show
                # within interval × multiplier), not a verdict on the probe: the probe was delayed,
                # not lost. So the run of misses ends, the RTT estimator (hence the timeout) learns
                # the new RTT, and the loss recorded at the timeout becomes this RTT in the window if
                # it is still there. Otherwise a delay spike of a few ms past a tight adaptive timeout
                # (a busy host, a queue) would read as loss and push a healthy path Down.
                sent = exp[0]
                st.late += 1
                st.revived += 1
                st.miss_run = 0
                if st.answered_sent_at is None or sent > st.answered_sent_at:
                    st.answered_sent_at = sent
                self._learn_rtt(st, now - sent)
                if st.window.revise(exp[1], (now - sent) * 1000.0) and st.alive:
                    self._judge(st, now)
                return Reply.LATE
            if exp is not None or pend is not None:
                if exp is not None:
                    st.expired[seq] = exp     # a forged copy that predates the probe: the real one may follow
                st.unexpected += 1
            elif self._start_seq <= seq < st.next_seq:
                st.duplicates += 1        # a second copy, or a reply to a probe too old to remember
            else:
                st.unexpected += 1
            return Reply.IGNORED
        start = rec[0] if sent_at is None else sent_at
        rtt_s = now - start
        if rtt_s < 0.0 or start < rec[0] - st.profile.max_timeout_s:
            st.outstanding[seq] = rec
            st.unexpected += 1
            return Reply.IGNORED
        st.received += 1
        if st.answered_sent_at is None or start > st.answered_sent_at:
            st.answered_sent_at = start
        if st.pending:
            self._judge_pending(st, seq)
        if st.coast_rtt_s is not None and not _near(rtt_s, st.coast_rtt_s):
            self._settle_coast(st, now)     # the driver's word no longer holds
        self._outcome(st, rtt_s, now)
        if st.wake_at < st.next_wake():
            # the answered probe's timeout was the next wake-up: move it, so the driver is not woken
            # for nothing (about one wasted wake-up a probe otherwise); the old heap entry goes stale
            self._arm(st)
        return Reply.TAKEN

    def on_probe_result(self, path_id: PathId, rtt_s: float | None, now: float) -> None:
        """Feed one probe outcome directly (None = lost), bypassing the probe schedule."""
        st = self._state(path_id)
        st.sent += 1
        seq = st.next_seq
        st.next_seq += 1
        if rtt_s is None:
            self._lost(st, seq, now, now, judged=True)
            return
        st.received += 1
        st.answered_sent_at = now - rtt_s
        self._outcome(st, rtt_s, now)

    # -- coasting: flow-level probing --------------------------------------------------------------

    def coast(self, path_id: PathId, rtt_s: float, until: float, now: float) -> bool:
        """Flow-level probing of a steady path. The driver vouches that every probe of `path_id` sent
        before `until`, and every one outstanding now, comes back exactly `rtt_s` after it was sent
        (a simulator whose links are fixed until then). If the path is steady at that RTT (alive, not
        Down, its window full of answered probes each within a part in 10⁹ of it, its timeout above
        it), the monitor asks for none of those probes (no `SendProbe`) and accounts for them itself,
        a batch at a time, whenever the path is next woken or looked at: each one is sent on the
        schedule, answered, taught to the RTT estimator, counted and put in the window, and
        `coast_sink(path_id, rtt_ms, reply_times)` receives the replies (a site's SLA samples). Their
        score is judged once a batch (the window holds one RTT, so it cannot change in between).
        Reports, timeouts of other probes and everything else go on as before. The coast ends at
        `until` (sends from then on are asked for again), or earlier when the path shows the
        driver's word no longer holds (a timeout, a reply with another RTT). Returns whether it
        coasts."""
        st = self._paths.get(path_id)
        if st is None or not (0.0 < rtt_s < math.inf):
            return False
        if now > self._clock:
            self._clock = now
        if st.coast_rtt_s is not None:
            self._sync(st, now)
            if st.coast_rtt_s is not None:
                if st.coast_rtt_s != rtt_s:
                    return False        # probes of another RTT are still out
                if st.next_send_at < st.coast_end:
                    return True         # coasting already
        if not st.alive or st.status is PathStatus.DOWN or st.srtt_s is None or st.pending:
            return False
        p = st.profile
        if not st.next_send_at < until or st.next_send_at == math.inf:
            return False
        if not st.window.steady_at(rtt_s * 1000.0, rtt_s * 1000.0 * _COAST_TOLERANCE):
            return False
        # every coasted probe must come back within its timeout, which follows srtt towards rtt_s
        if p.timeout_s is not None:
            lowest = p.timeout_s
        else:
            lowest = min(min(st.srtt_s, rtt_s) + p.interval_s / 10.0, st.timeout_s(),
                         max(p.max_timeout_s, p.interval_s))
        if not rtt_s < lowest:
            return False
        for sent, deadline in st.outstanding.values():
            if not now < sent + rtt_s < deadline:
                return False        # its reply is overdue (lost?), or would come after its timeout
        resume = math.inf
        if until != math.inf:
            t, interval = st.next_send_at, p.interval_s
            while t < until:
                t += interval
            resume = t
        st.coast_rtt_s = rtt_s
        st.coast_end = until
        st.coast_resume_at = resume
        st.coast_due = self._coast_next(st)
        self._coasting[path_id] = None
        self._arm(st)
        return True

    def coasting(self, path_id: PathId) -> bool:
        """Whether the path's probes are coasted now (sent by the monitor itself, not asked for)."""
        st = self._current(path_id)
        return st.next_send_at < st.coast_end

    def sync(self, now: float) -> None:
        """Account for every coasted probe sent or answered by `now` (before reading the SLA samples
        they feed; queries of one path do this for that path)."""
        if now > self._clock:
            self._clock = now
        paths = self._paths
        for pid in list(self._coasting):
            st = paths[pid]
            if st.coast_due <= now:
                self._sync(st, now)

    def _current(self, path_id: PathId) -> _PathState:
        st = self._state(path_id)
        if st.coast_due <= self._clock:
            self._sync(st, self._clock)
        return st

    def _sync(self, st: _PathState, now: float) -> None:
        """Send the coasted probes due by `now` and take the replies due by then."""
        r = st.coast_rtt_s
        assert r is not None
        flight = st.coast_flight
        replies: list[float] = []
        sent = -math.inf        # the newest answered probe's send time
        while flight and flight[0] + r <= now:
            sent = flight.popleft()
            replies.append(sent + r)
        t, end = st.next_send_at, st.coast_end
        if t <= now and t < end:
            interval = st.profile.interval_s
            n = 0
            while t <= now and t < end:
                if flight or t + r > now:
                    flight.append(t)
                else:
                    sent = t
                    replies.append(t + r)
                t += interval
                n += 1
            st.next_send_at = t
            st.next_seq += n
            st.sent += n
            self.coasted_probes += n
        if replies:
            if st.pending:
                self._judge_pending(st, None)   # every probe still pending went out before the coast
            k = len(replies)
            st.received += k
            st.good_run += k
            st.miss_run = 0
            if st.answered_sent_at is None or sent > st.answered_sent_at:
                st.answered_sent_at = sent
            for _ in range(k):          # k samples of r, until the estimator stops changing
                before = (st.srtt_s, st.rttvar_s)
                self._learn_rtt(st, r)
                if (st.srtt_s, st.rttvar_s) == before:
                    break
            rtt_ms = r * 1000.0
            w = st.window
            steady = w.uniform == rtt_ms    # then the window stays as it was: so does the score
            w.add_run(rtt_ms, k)
            if not steady and st.alive:
                self._judge(st, replies[-1])
            if self.coast_sink is not None:
                self.coast_sink(st.path_id, rtt_ms, replies)
        st.coast_due = self._coast_next(st)
        if st.coast_due == math.inf:
            st.coast_rtt_s = None
            st.coast_end = -math.inf
            st.coast_resume_at = math.inf
            self._coasting.pop(st.path_id, None)

    @staticmethod
    def _coast_next(st: _PathState) -> float:
        """When the coast next sends a probe or takes a reply (inf: it has nothing left)."""
        r = st.coast_rtt_s
        assert r is not None
        flight = st.coast_flight
        reply = flight[0] + r if flight else math.inf
        send = st.next_send_at if st.next_send_at < st.coast_end else math.inf
        return reply if reply < send else send

    def _settle_coast(self, st: _PathState, now: float) -> None:
        """End a coast at `now`: what was coasted up to now is accounted for, probes already out under
        it still come back as vouched, and the probes from now on are asked for again."""
        if st.coast_rtt_s is None:
            return
        self._sync(st, now)
        if st.coast_rtt_s is not None and st.next_send_at < st.coast_end:
            st.coast_end = st.next_send_at
            self._sync(st, now)
        self._arm(st)

    # -- internals --------------------------------------------------------------------------------

    def _state(self, path_id: PathId) -> _PathState:
        try:
            return self._paths[path_id]
        except KeyError:
            raise ConfigError(f"unknown path {path_id!r}", "path_id") from None

    def _arm(self, st: _PathState) -> None:
        t = st.next_wake()
        st.wake_at = t
        if t != float("inf"):
            self._tie += 1
            heapq.heappush(self._heap, (t, self._tie, st.path_id))

    def _service(self, st: _PathState, now: float) -> None:
        if st.outstanding:
            due = sorted((d, seq) for seq, (_, d) in st.outstanding.items() if d <= now)
            if due and st.coast_rtt_s is not None:
                self._settle_coast(st, now)     # a probe the driver vouched for timed out
            for _, seq in due:
                sent_at = st.outstanding.pop(seq)[0]
                self._lost(st, seq, sent_at, now)
        if st.next_send_at <= now and not st.next_send_at < st.coast_end:   # a coast sends by itself
            seq = st.next_seq
            st.next_seq += 1
            st.sent += 1
            st.outstanding[seq] = (now, now + st.timeout_s())
            self._events.append(SendProbe(at=now, path_id=st.path_id, seq=seq))
            interval = st.profile.interval_s
            nxt = st.next_send_at + interval
            if nxt <= now:   # the driver woke late: do not burst to catch up
                nxt = now + interval
            st.next_send_at = nxt
        if st.next_report_at <= now:
            if len(st.window):
                self._events.append(PathMetricsUpdated(at=now, path_id=st.path_id, metrics=st.metrics(now),
                                                       status=st.status))
            nxt = st.next_report_at + st.profile.report_interval_s
            st.next_report_at = nxt if nxt > now else now + st.profile.report_interval_s

    def _lost(self, st: _PathState, seq: int, sent_at: float, now: float, *, judged: bool = False) -> None:
        """The one place a probe is given up on (its timeout fired at `now`, or a caller said so with
        `judged`). The first miss of a run (the probe before was answered, or this is the path's first)
        starts the run and is said as `ProbeLost`, before any verdict it leads to; the misses after it
        are not (a long cut must not flood the events). Coasted probes are never lost: a probe the
        driver vouched for that times out ends the coast first (`_service`) and comes here like any
        other.

        The timeout is the liveness deadline: it counts towards the run of misses (Down after
        `detect_multiplier`) at once. Whether the probe was *lost*, a loss in the window that the
        score, the loss rule and a site's SLA see, is judged later, as TCP's RACK judges a segment
        (RFC 8985): when a probe sent after it is answered and it is not, or when the path is Down.
        Until then it is pending. A reply a few ms past a tight adaptive timeout (a busy host, a
        queue) then arrives as a late sample before anything acted on a loss that never was; a lost
        probe is judged one interval (plus its RTT) after its timeout, with the next reply."""
        st.timed_out += 1
        if st.lost_sent_at is None or sent_at > st.lost_sent_at:
            st.lost_sent_at = sent_at
        if st.miss_run == 0:
            st.miss_since = sent_at
            self._events.append(ProbeLost(at=now, path_id=st.path_id, seq=seq, sent_at=sent_at))
        st.good_run = 0
        st.miss_run += 1
        if judged or not st.alive:
            self._judge_pending(st, None)
            self._add_loss(st, seq, sent_at)
        else:
            st.pending[seq] = sent_at
        if st.alive and st.miss_run >= st.profile.detect_multiplier:
            self._judge_pending(st, None)
            st.alive = False
            self._settle(st, now, PathStatus.DOWN, f"{st.miss_run} consecutive probes unanswered")
            return
        if st.alive and judged:
            self._judge(st, now)

    def _judge_pending(self, st: _PathState, before: int | None) -> None:
        """Pending probes sent before probe `before` (all of them: None) are lost, in send order."""
        for seq in sorted(st.pending):
            if before is not None and seq >= before:
                break
            self._add_loss(st, seq, st.pending.pop(seq))

    @staticmethod
    def _add_loss(st: _PathState, seq: int, sent_at: float) -> None:
        st.window.add(None)
        st.lost += 1
        st.expired[seq] = (sent_at, st.window.last_serial)
        if len(st.expired) > _EXPIRED_KEEP:
            del st.expired[next(iter(st.expired))]

    def _outcome(self, st: _PathState, rtt_s: float, now: float) -> None:
        """An answered probe (on time or late): a sample in the window, the end of a run of misses."""
        w = st.window
        p = st.profile
        w.add(rtt_s * 1000.0)
        st.miss_run = 0
        st.good_run += 1
        self._learn_rtt(st, rtt_s)
        if not st.alive:
            if st.good_run < p.up_count:
                return
            st.alive = True
            w.keep_last(st.good_run if st.good_run < p.window else p.window)
        self._judge(st, now)

    def _judge(self, st: _PathState, now: float) -> None:
        """A live path's score and status from its window (the seed's quality rule)."""
        w = st.window
        p = st.profile
        loss = w.loss_pct
        score = quality_score(w.mean_ms, st.jitter_ms(), loss)
        st.score = score
        new = status_for(score, loss)
        if new is PathStatus.UP and st.status is PathStatus.DEGRADED and score < UP_SCORE + UP_HYSTERESIS:
            new = PathStatus.DEGRADED   # back Up only clearly above the line: no Up/Degraded flutter at 50
        if st.status is PathStatus.DOWN and new is not PathStatus.DOWN and st.good_run < p.up_count:
            return   # hysteresis for every Down, also one the loss rule decided: no flapping around 50 %
        if new is not st.status:
            if new is PathStatus.DOWN:
                reason = f"loss {loss:.1f}% over the last {len(w)} probes"
            elif st.status is PathStatus.DOWN:
                reason = f"{st.good_run} consecutive probes answered"
            else:
                reason = f"score {score:.1f}"
            self._settle(st, now, new, reason)

    @staticmethod
    def _learn_rtt(st: _PathState, rtt_s: float) -> None:
        """RFC 6298 smoothed RTT and variation, from which the adaptive timeout follows."""
        if st.srtt_s is None:
            st.srtt_s = rtt_s
            st.rttvar_s = rtt_s / 2.0
        else:
            err = st.srtt_s - rtt_s
            st.rttvar_s = 0.75 * st.rttvar_s + 0.25 * (err if err >= 0.0 else -err)
            st.srtt_s = 0.875 * st.srtt_s + 0.125 * rtt_s

    def _settle(self, st: _PathState, now: float, new: PathStatus, reason: str) -> None:
        """The one place a path's status changes."""
        old = st.status
        if new is old:
            return
        st.status = new
        st.status_since = now
        if new is PathStatus.DOWN and not st.alive:
            st.score = 0.0
        self._events.append(PathStatusChanged(at=now, path_id=st.path_id, old=old, new=new, reason=reason,
                                              metrics=st.metrics(now)))
