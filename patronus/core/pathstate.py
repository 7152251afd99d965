"""One monitored path's state machine, sans-IO: what its probe outcomes do to its liveness, window,
RTT estimate and status (`PathMonitor` in `monitor.py` schedules the probes and owns the path table).

Every status transition happens in `PathState.settle`; every probe given up on is recorded in
`PathState.give_up`. The events these rules produce (`ProbeLost`, `PathStatusChanged`) are appended to
the list the monitor hands each path, the monitor's own event list, so they keep their order among the
monitor's `SendProbe` and `PathMetricsUpdated`. The rules themselves (BFD-style liveness, the adaptive
timeout, RACK-style judging of timed-out probes, coasting) are described in `monitor.py`.
"""

from __future__ import annotations

import math
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING

from patronus.core.events import Event, PathStatusChanged, ProbeLost
from patronus.core.model import PathId, PathMetrics, PathStatus
from patronus.core.quality import ProbeWindow, quality_score, status_for

if TYPE_CHECKING:
    from patronus.core.profiles import MonitorProfile

UP_SCORE = 50.0           # quality.status_for: Degraded below this score
UP_HYSTERESIS = 5.0       # a Degraded path is Up again at UP_SCORE + this
_EXPIRED_KEEP = 64        # timed-out probes remembered so that their late replies can be recognised


class Reply(IntEnum):
    """What `PathMonitor.take_reply` made of a reply."""

    IGNORED = 0     # unknown path or seq, a duplicate, a negative or impossible RTT: only a counter changed
    TAKEN = 1       # the reply to an outstanding probe: an RTT sample
    LATE = 2        # the reply to a probe that had timed out: the probe was delayed, not lost


class PathState:
    """One path as the monitor sees it: its schedule and counters, and the per-path rules that turn
    its probe outcomes into liveness, window samples, an RTT estimate and a status."""

    __slots__ = ("alive", "answered_sent_at", "bandwidth_mbps", "coast_due", "coast_end", "coast_flight",
                 "coast_resume_at", "coast_rtt_s", "cost_per_gb", "duplicates", "events", "expired", "good_run",
                 "late", "lost", "lost_sent_at", "miss_run", "miss_since", "mtu_bytes", "next_report_at",
                 "next_send_at", "next_seq", "outstanding", "path_id", "pending", "profile", "received", "revived",
                 "rttvar_s", "score", "sent", "srtt_s", "start_seq", "status", "status_since", "timed_out",
                 "unexpected", "wake_at", "window")

    def __init__(self, path_id: PathId, profile: MonitorProfile, now: float, start_seq: int,
                 events: list[Event]) -> None:
        self.path_id = path_id
        self.profile = profile
        self.events = events        # the monitor's event list: appended to, never rebound
        self.window = ProbeWindow(profile.window)
        self.outstanding: dict[int, tuple[float, float]] = {}   # seq -> (sent_at, deadline)
        self.pending: dict[int, float] = {}     # timed out, not judged lost yet: seq -> sent_at
        self.expired: dict[int, tuple[float, tuple[int, int]]] = {}   # lost seq -> (sent_at, window serial)
        self.start_seq = start_seq  # the first seq the path's probes may carry
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

    # -- readings ---------------------------------------------------------------------------------

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

    def coast_next(self) -> float:
        """When the coast next sends a probe or takes a reply (inf: it has nothing left)."""
        r = self.coast_rtt_s
        assert r is not None
        flight = self.coast_flight
        reply = flight[0] + r if flight else math.inf
        send = self.next_send_at if self.next_send_at < self.coast_end else math.inf
        return reply if reply < send else send

    # -- outcomes ---------------------------------------------------------------------------------

    def give_up(self, seq: int, sent_at: float, now: float, *, judged: bool = False) -> None:
        """The one place a probe is given up on (its timeout fired at `now`, or a caller said so with
        `judged`). The first miss of a run (the probe before was answered, or this is the path's first)
        starts the run and is said as `ProbeLost`, before any verdict it leads to; the misses after it
        are not (a long cut must not flood the events). Coasted probes are never lost: a probe the
        driver vouched for that times out ends the coast first (`PathMonitor._service`) and comes here
        like any other.

        The timeout is the liveness deadline: it counts towards the run of misses (Down after
        `detect_multiplier`) at once. Whether the probe was *lost*, a loss in the window that the
        score, the loss rule and a site's SLA see, is judged later, as TCP's RACK judges a segment
        (RFC 8985): when a probe sent after it is answered and it is not, or when the path is Down.
        Until then it is pending. A reply a few ms past a tight adaptive timeout (a busy host, a
        queue) then arrives as a late sample before anything acted on a loss that never was; a lost
        probe is judged one interval (plus its RTT) after its timeout, with the next reply."""
        self.timed_out += 1
        if self.lost_sent_at is None or sent_at > self.lost_sent_at:
            self.lost_sent_at = sent_at
        if self.miss_run == 0:
            self.miss_since = sent_at
            self.events.append(ProbeLost(at=now, path_id=self.path_id, seq=seq, sent_at=sent_at))
        self.good_run = 0
        self.miss_run += 1
        if judged or not self.alive:
            self.judge_pending(None)
            self.add_loss(seq, sent_at)
        else:
            self.pending[seq] = sent_at
        if self.alive and self.miss_run >= self.profile.detect_multiplier:
            self.judge_pending(None)
            self.alive = False
            self.settle(now, PathStatus.DOWN, f"{self.miss_run} consecutive probes unanswered")
            return
        if self.alive and judged:
            self.judge(now)

    def judge_pending(self, before: int | None) -> None:
        """Pending probes sent before probe `before` (all of them: None) are lost, in send order."""
        for seq in sorted(self.pending):
            if before is not None and seq >= before:
                break
            self.add_loss(seq, self.pending.pop(seq))

    def add_loss(self, seq: int, sent_at: float) -> None:
        self.window.add(None)
        self.lost += 1
        self.expired[seq] = (sent_at, self.window.last_serial)
        if len(self.expired) > _EXPIRED_KEEP:
            del self.expired[next(iter(self.expired))]

    def outcome(self, rtt_s: float, now: float) -> None:
        """An answered probe (on time or late): a sample in the window, the end of a run of misses."""
        w = self.window
        p = self.profile
        w.add(rtt_s * 1000.0)
        self.miss_run = 0
        self.good_run += 1
        self.learn_rtt(rtt_s)
        if not self.alive:
            if self.good_run < p.up_count:
                return
            self.alive = True
            w.keep_last(self.good_run if self.good_run < p.window else p.window)
        self.judge(now)

    def take_late_reply(self, seq: int, now: float) -> Reply:
        """A reply to probe `seq`, which is not outstanding: a probe that timed out (LATE: a delayed
        sample, whether it was still pending or already judged lost), or a duplicate, or a reply to
        a probe never sent (IGNORED: only a counter changes)."""
        pend = self.pending.get(seq)
        if pend is not None and now >= pend:
            # after its timeout, before any later probe was answered: a delayed probe, never
            # judged lost, so it is simply a sample (late)
            del self.pending[seq]
            self.judge_pending(seq)
            self.late += 1
            if self.answered_sent_at is None or pend > self.answered_sent_at:
                self.answered_sent_at = pend
            self.outcome(now - pend, now)
            return Reply.LATE
        exp = self.expired.pop(seq, None)
        if exp is not None and now >= exp[0]:
            # A reply after its timeout. The timeout is a liveness deadline (it makes a cut show
            # within interval × multiplier), not a verdict on the probe: the probe was delayed,
            # not lost. So the run of misses ends, the RTT estimator (hence the timeout) learns
            # the new RTT, and the loss recorded at the timeout becomes this RTT in the window if
            # it is still there. Otherwise a delay spike of a few ms past a tight adaptive timeout
            # (a busy host, a queue) would read as loss and push a healthy path Down.
            sent = exp[0]
            self.late += 1
            self.revived += 1
            self.miss_run = 0
            if self.answered_sent_at is None or sent > self.answered_sent_at:
                self.answered_sent_at = sent
            self.learn_rtt(now - sent)
            if self.window.revise(exp[1], (now - sent) * 1000.0) and self.alive:
                self.judge(now)
            return Reply.LATE
        if exp is not None or pend is not None:
            if exp is not None:
                self.expired[seq] = exp     # a forged copy that predates the probe: the real one may follow
            self.unexpected += 1
        elif self.start_seq <= seq < self.next_seq:
            self.duplicates += 1        # a second copy, or a reply to a probe too old to remember
        else:
            self.unexpected += 1
        return Reply.IGNORED

    def coast_sync(self, r: float, now: float) -> tuple[int, list[float]]:
        """Send the coasted probes (RTT `r`) due by `now` and take the replies due by then. Returns
        how many probes were sent and the replies' arrival times; the monitor passes these on and
        decides whether the coast goes on."""
        flight = self.coast_flight
        replies: list[float] = []
        sent = -math.inf        # the newest answered probe's send time
        while flight and flight[0] + r <= now:
            sent = flight.popleft()
            replies.append(sent + r)
        t, end = self.next_send_at, self.coast_end
        n = 0
        if t <= now and t < end:
            interval = self.profile.interval_s
            while t <= now and t < end:
                if flight or t + r > now:
                    flight.append(t)
                else:
                    sent = t
                    replies.append(t + r)
                t += interval
                n += 1
            self.next_send_at = t
            self.next_seq += n
            self.sent += n
        if replies:
            if self.pending:
                self.judge_pending(None)   # every probe still pending went out before the coast
            k = len(replies)
            self.received += k
            self.good_run += k
            self.miss_run = 0
            if self.answered_sent_at is None or sent > self.answered_sent_at:
                self.answered_sent_at = sent
            for _ in range(k):          # k samples of r, until the estimator stops changing
                before = (self.srtt_s, self.rttvar_s)
                self.learn_rtt(r)
                if (self.srtt_s, self.rttvar_s) == before:
                    break
            rtt_ms = r * 1000.0
            w = self.window
            steady = w.uniform == rtt_ms    # then the window stays as it was: so does the score
            w.add_run(rtt_ms, k)
            if not steady and self.alive:
                self.judge(replies[-1])
        return n, replies

    # -- verdicts ---------------------------------------------------------------------------------

    def judge(self, now: float) -> None:
        """A live path's score and status from its window (the seed's quality rule)."""
        w = self.window
        p = self.profile
        loss = w.loss_pct
        score = quality_score(w.mean_ms, self.jitter_ms(), loss)
        self.score = score
        new = status_for(score, loss)
        if new is PathStatus.UP and self.status is PathStatus.DEGRADED and score < UP_SCORE + UP_HYSTERESIS:
            new = PathStatus.DEGRADED   # back Up only clearly above the line: no Up/Degraded flutter at 50
        if self.status is PathStatus.DOWN and new is not PathStatus.DOWN and self.good_run < p.up_count:
            return   # hysteresis for every Down, also one the loss rule decided: no flapping around 50 %
        if new is not self.status:
            if new is PathStatus.DOWN:
                reason = f"loss {loss:.1f}% over the last {len(w)} probes"
            elif self.status is PathStatus.DOWN:
                reason = f"{self.good_run} consecutive probes answered"
            else:
                reason = f"score {score:.1f}"
            self.settle(now, new, reason)

    def learn_rtt(self, rtt_s: float) -> None:
        """RFC 6298 smoothed RTT and variation, from which the adaptive timeout follows."""
        if self.srtt_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2.0
        else:
            err = self.srtt_s - rtt_s
            self.rttvar_s = 0.75 * self.rttvar_s + 0.25 * (err if err >= 0.0 else -err)
            self.srtt_s = 0.875 * self.srtt_s + 0.125 * rtt_s

    def settle(self, now: float, new: PathStatus, reason: str) -> None:
        """The one place a path's status changes."""
        old = self.status
        if new is old:
            return
        self.status = new
        self.status_since = now
        if new is PathStatus.DOWN and not self.alive:
            self.score = 0.0
        self.events.append(PathStatusChanged(at=now, path_id=self.path_id, old=old, new=new, reason=reason,
                                             metrics=self.metrics(now)))
