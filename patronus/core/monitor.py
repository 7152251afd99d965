"""Path monitor: probe scheduling, timeouts, BFD-style liveness, metrics and status, sans-IO.

What may change state here: `add_path`/`remove_path`, `on_timer(now)` (sends due, timeouts due,
reports due), `on_probe_reply(...)` and `on_probe_result(...)`. The monitor schedules the probes and
keeps the path table; each path's rules are its `PathState` (`pathstate.py`), run on its profile
(`MonitorProfile`, `profiles.py`). Every status transition happens in `PathState.settle`; every probe
given up on is recorded in `PathState.give_up`, which starts a run of misses and says so (`ProbeLost`,
once a run: the exact moment a failure first showed, for the failover ledger) when the probe before
was answered. This module must not know about sockets, clocks, routing or flows: it turns probe
outcomes into `ProbeLost` / `PathStatusChanged` / `PathMetricsUpdated` events and `SendProbe` actions.

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
from collections.abc import Callable
from dataclasses import dataclass

from patronus.core.errors import ConfigError
from patronus.core.events import Event, PathMetricsUpdated, SendProbe
from patronus.core.model import PathId, PathMetrics, PathStatus
from patronus.core.pathstate import UP_HYSTERESIS, UP_SCORE, PathState, Reply
from patronus.core.profiles import MIN_INTERVAL_S, PROFILES, MonitorProfile
from patronus.core.quality import ProbeWindow

__all__ = ["MIN_INTERVAL_S", "PROFILES", "UP_HYSTERESIS", "UP_SCORE", "MonitorProfile", "PathMonitor", "ProbeCounters",
           "Reply"]

_COAST_TOLERANCE = 1e-9    # a coast's RTT and the window's samples agree to this part


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


class PathMonitor:
    """Probes every path on its profile's schedule and turns outcomes into metrics and status events.

    Drive it with `on_timer(now)` at `next_deadline()`, perform the `SendProbe` actions it queues,
    and feed replies with `on_probe_reply(path_id, seq, sent_at, now)`. Callers that model probing
    themselves (tests, flow-level simulation) can skip the schedule with `on_probe_result`.
    """

    def __init__(self, profile: MonitorProfile | None = None, *, start_seq: int = 0) -> None:
        self.profile = profile or PROFILES["default"]
        self._start_seq = start_seq
        self._paths: dict[PathId, PathState] = {}
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
        st = PathState(path_id, profile or self.profile, now, self._start_seq, self._events)
        st.cost_per_gb = cost_per_gb
        st.bandwidth_mbps = bandwidth_mbps
        if not schedule:
            st.next_send_at = float("inf")
        self._paths[path_id] = st
        self._arm(st)

    def remove_path(self, path_id: PathId) -> None:
        """Stop monitoring `path_id`: its state goes, and so do its events not yet drained (a probe to
        send over it, a verdict on it); replies still on their way are ignored."""
        self._paths.pop(path_id, None)   # heap entries for it are dropped lazily
        self._coasting.pop(path_id, None)
        self._events[:] = [e for e in self._events if getattr(e, "path_id", None) != path_id]

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
        events = self._events       # every path appends to this list: it is emptied, never rebound
        ev = events[:]
        events.clear()
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
            return st.take_late_reply(seq, now)
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
            st.judge_pending(seq)
        if st.coast_rtt_s is not None and not _near(rtt_s, st.coast_rtt_s):
            self._settle_coast(st, now)     # the driver's word no longer holds
        st.outcome(rtt_s, now)
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
            st.give_up(seq, now, now, judged=True)
            return
        st.received += 1
        st.answered_sent_at = now - rtt_s
        st.outcome(rtt_s, now)

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
        st.coast_due = st.coast_next()
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

    def _current(self, path_id: PathId) -> PathState:
        st = self._state(path_id)
        if st.coast_due <= self._clock:
            self._sync(st, self._clock)
        return st

    def _sync(self, st: PathState, now: float) -> None:
        """Send the coasted probes due by `now` and take the replies due by then (`PathState.coast_sync`),
        hand the replies to `coast_sink`, and end the coast when it has nothing left."""
        r = st.coast_rtt_s
        assert r is not None
        n, replies = st.coast_sync(r, now)
        self.coasted_probes += n
        if replies and self.coast_sink is not None:
            self.coast_sink(st.path_id, r * 1000.0, replies)
        st.coast_due = st.coast_next()
        if st.coast_due == math.inf:
            st.coast_rtt_s = None
            st.coast_end = -math.inf
            st.coast_resume_at = math.inf
            self._coasting.pop(st.path_id, None)

    def _settle_coast(self, st: PathState, now: float) -> None:
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

    def _state(self, path_id: PathId) -> PathState:
        try:
            return self._paths[path_id]
        except KeyError:
            raise ConfigError(f"unknown path {path_id!r}", "path_id") from None

    def _arm(self, st: PathState) -> None:
        t = st.next_wake()
        st.wake_at = t
        if t != float("inf"):
            self._tie += 1
            heapq.heappush(self._heap, (t, self._tie, st.path_id))

    def _service(self, st: PathState, now: float) -> None:
        if st.outstanding:
            due = sorted((d, seq) for seq, (_, d) in st.outstanding.items() if d <= now)
            if due and st.coast_rtt_s is not None:
                self._settle_coast(st, now)     # a probe the driver vouched for timed out
            for _, seq in due:
                sent_at = st.outstanding.pop(seq)[0]
                st.give_up(seq, sent_at, now)
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
