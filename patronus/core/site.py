"""One site's decision logic: path monitor → router → SLA, with fate sharing and dead tunnels.

This is what every driver runs for a site: the agent (asyncio, real probes and kernel steering) and
the simulator (simpy, modelled probes and packets). It owns the three core objects and the two
rules that sit between the monitor's verdicts and the router's view of a path:

* **Fate sharing.** When a path goes Down, the paths that share a piece of it (the same local uplink,
  or the same remote endpoint) may have failed with it, but their own probes have not timed out yet
  (a longer RTT times out later). Those without a reply to a probe sent after the failed path's first
  missed probe are *suspected*: the router sends no flow to them while another path can take it, so
  the flows leaving the failed path go straight to a path that is working, not to a sibling that is
  about to fail too (which would double the failover gap). A sibling that answered a probe sent
  after the failure began, and lost none since, is evidently fine and is not suspected, which tells a
  local uplink cut (every path over that uplink misses) from a remote one (every path to that endpoint
  misses). A sibling that answered some and lost others is over the same lossy uplink: it is part of
  the failure (voip-sla's calls left a path with 14 % bursty loss for its sibling over the same
  uplink, and moved again a second later). A suspected path's own flows stay where they are (a guess
  must not evict them); a reply to a probe sent after the failure clears the suspicion once the path
  has lost nothing since the failure began, or nothing for a whole probe window.
  With a fast profile the Down often comes before any sibling could have answered, and then a local
  cut and a remote one look alike. The router is told of the Down a little later in that case: as
  soon as one suspect answers (an answer over the same uplink clears the uplink: the failure is at
  the far end; one to the same endpoint clears the endpoint: the failure is ours), at the latest when
  they all could have, and never more than `detect_multiplier` intervals after the Down. The flows
  then go to the best path that is not part of the failure instead of the only path sharing nothing
  with it (failover-basic: 50 ms one way instead of 80, for a wait of about 20 ms). The hold only
  delays the Down, it never swallows it: a path back Up before its held Down was told still has its
  Down told first (its flows leave, and come back only by the failback rules). Whether a brief
  outage moves a call must not depend on which of two probes a few ms apart answered first.
* **Dead tunnels.** A path whose probes pass but whose tunnel carries nothing (the driver decides:
  the agent from WireGuard handshakes) is Down for routing until the driver says it works again.
* **Steering held after a restart.** A restarted agent that adopts a dataplane it did not build
  (tunnels and kernel maps left by the agent before it) starts with every path Down, as any start
  does; acting on that would empty the kernel's maps and drop the traffic the kernel is steering
  well. `hold_steering(until)` makes the driver leave its steering as it is until every path has a
  verdict of its own (`PathMonitor.judged`: Up, or `detect_multiplier` probes unanswered in a row), at
  the latest `until` (`steering_hold_s`). The step that ends the hold says so (`Step.released`); the
  driver then hands the router the flows it adopted (`Router.place` with their origin) and steers
  from there on as usual.

Sans-IO like the rest of the core: feed replies with `on_probe_reply`, call `pump(now)` whenever
`next_deadline()` is due or something was fed, and perform what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from patronus.core.events import (
    Event,
    PathMetricsUpdated,
    PathStatusChanged,
    ProbeLost,
    SendProbe,
)
from patronus.core.model import Path, PathId, PathStatus, SiteId
from patronus.core.monitor import MonitorProfile, PathMonitor, Reply
from patronus.core.policy import RoutingPolicy
from patronus.core.router import Router, RouterConfig
from patronus.core.sla import SlaMonitor

_MAX_TIMEOUTS_PER_STEP = 100    # SLA samples recorded for timeouts found in one step (after a long pause)


@dataclass(slots=True)
class Step:
    """What one `pump` produced, in the order it happened."""

    probes: list[SendProbe] = field(default_factory=list)
    lost: list[ProbeLost] = field(default_factory=list)             # first misses of runs: for the record only
    status: list[PathStatusChanged] = field(default_factory=list)   # the monitor's verdicts, as made
    router: list[Event] = field(default_factory=list)               # FlowAssigned, FailoverTriggered, ...
    sla: list[Event] = field(default_factory=list)                  # SlaViolated, SlaRestored
    metrics_changed: bool = False
    released: bool = False      # the steering hold (`SiteLogic.hold_steering`) ended in this step

    @property
    def routing_changed(self) -> bool:
        """True when the kernel's (or the model's) view of paths or flows may need an update."""
        return bool(self.router or self.status or self.metrics_changed or self.released)


def steering_hold_s(profile: MonitorProfile) -> float:
    """The longest a restarted agent holds its steering (`SiteLogic.hold_steering`): long enough for a
    live path to come Up (`up_count` probes) and for a dead one to miss `detect_multiplier` probes in
    a row, the first of which waits for the longest timeout a probe can have before any RTT is known."""
    return profile.interval_s * (profile.up_count + profile.detect_multiplier) + \
        max(profile.max_timeout_s, profile.interval_s)


def uplink_of(path: Path) -> str:
    """The local uplink a path leaves by: its source endpoint is `site:uplink`."""
    return str(path.src_endpoint).rpartition(":")[2]


class SiteLogic:
    def __init__(self, site: str, profile: MonitorProfile | None = None, router: RouterConfig | None = None,
                 sla: SlaMonitor | None = None, policies: Iterable[RoutingPolicy] | None = None) -> None:
        self.site = site
        self.monitor = PathMonitor(profile)
        self.router = Router(router, policies)
        self.sla = sla if sla is not None else SlaMonitor()
        self.monitor.coast_sink = self.sla.record_probe_run     # coasted probes are SLA samples too
        self._uplink: dict[PathId, str] = {}
        self._endpoint: dict[PathId, str] = {}       # the remote endpoint, `site:uplink`
        self._suspect: dict[PathId, float] = {}      # path -> when its sibling's failure began
        self._tunnel_dead: set[PathId] = set()
        self._timeouts_seen: dict[PathId, tuple[int, int]] = {}   # (timed out, late) already counted
        self._failures: dict[PathId, float] = {}     # Down path -> when its failure began
        # Downs not yet told to the router: path -> (until, the event, its suspected siblings)
        self._held: dict[PathId, tuple[float, PathStatusChanged, list[PathId]]] = {}
        self._steering_held_until: float | None = None

    # -- paths -------------------------------------------------------------------------------------

    def add_path(self, path: Path, now: float) -> None:
        self.monitor.add_path(path.id, now, cost_per_gb=path.cost_per_gb,
                              bandwidth_mbps=path.bandwidth_mbps or 0.0)
        self.router.add_path(path, now, PathStatus.DOWN)
        self._uplink[path.id] = uplink_of(path)
        self._endpoint[path.id] = str(path.dst_endpoint)

    def remove_site(self, site: str, now: float) -> list[PathId]:
        """A remote left: the router forgets it (paths, prefixes, flows), and so does every part of the
        site's judgement (the monitor, the SLA samples, suspicions and held Downs that named its paths).
        Returns its paths."""
        gone = self.router.remove_site(SiteId(site), now)
        for pid in gone:
            self.monitor.remove_path(pid)
            self.sla.forget(pid)
            for d in (self._uplink, self._endpoint, self._suspect, self._timeouts_seen, self._failures, self._held):
                d.pop(pid, None)
            self._tunnel_dead.discard(pid)
        for _, _, suspects in self._held.values():
            suspects[:] = [s for s in suspects if s in self._uplink]
        return gone

    def set_site_prefixes(self, site: str, prefixes: Iterable[str]) -> None:
        self.router.set_site_prefixes(SiteId(site), prefixes)

    @property
    def path_ids(self) -> list[PathId]:
        return list(self._uplink)

    def status(self, path_id: PathId) -> PathStatus:
        """The status routing uses: the monitor's, unless the tunnel is dead (Down)."""
        return PathStatus.DOWN if path_id in self._tunnel_dead else self.monitor.status(path_id)

    def suspected(self, path_id: PathId) -> bool:
        return path_id in self._suspect

    def tunnel_dead(self, path_id: PathId) -> bool:
        return path_id in self._tunnel_dead

    # -- inputs ------------------------------------------------------------------------------------

    def on_probe_reply(self, path_id: PathId, seq: int, sent_at: float, now: float) -> bool:
        """A probe reply arrived at `now` (sent at `sent_at`, both on the driver's monotonic clock).
        Returns False if the monitor did not take it as the reply to an outstanding probe (unknown,
        duplicate, or late: a late one is still an RTT sample). Call `pump` after."""
        took = self.monitor.take_reply(path_id, seq, sent_at, now)
        if took is not Reply.IGNORED and now >= sent_at:
            # a late reply is a delayed probe, not a lost one, for the SLA as for the monitor's window
            self.sla.record_probe(path_id, (now - sent_at) * 1000.0, now)
        suspect = self._suspect
        if suspect:
            since = suspect.get(path_id)
            if since is not None and sent_at > since and self._clean_since(path_id, since, now):
                # a probe sent after its sibling's failure began came back, and none of its probes since
                # was lost (or none for a whole probe window): this path is fine after all
                self._clear_suspect(path_id)
        return took is Reply.TAKEN

    def _clean_since(self, path_id: PathId, began: float, now: float) -> bool:
        """Whether the path has shown it is not part of a failure that began at `began`: it answered a
        probe sent after it, and lost none sent after it -- or, if it did, it has answered since and its
        last loss is a whole probe window old (a healthy path's odd lost probe is not a failure). A path
        over a lossy uplink answers some probes and loses others: it stays part of the failure."""
        mon = self.monitor
        answered, lost = mon.answered_sent_at(path_id), mon.lost_sent_at(path_id)
        if answered is None or answered <= began:
            return False
        if lost is None or lost < began:
            return True
        p = mon.profile
        return answered > lost and lost < now - p.window * p.interval_s

    def coast(self, path_id: PathId, rtt_s: float, until: float, now: float) -> bool:
        """Flow-level probing (`PathMonitor.coast`): the driver vouches that the path's probes sent
        before `until` come back `rtt_s` after they left; the monitor then sends and answers them
        itself, and their replies are the SLA's samples as real ones are. Returns whether it coasts.
        A suspected path does not coast (only a real reply may clear the suspicion)."""
        if path_id in self._suspect or path_id in self._held or path_id in self._tunnel_dead:
            return False
        return self.monitor.coast(path_id, rtt_s, until, now)

    def sync(self, now: float) -> None:
        """Account for the coasted probes sent or answered by `now`; call it before reading the SLA
        monitor directly (a pump does it before each evaluation)."""
        self.monitor.sync(now)

    def set_tunnel_dead(self, path_id: PathId, dead: bool, now: float) -> bool:
        """Mark a path's tunnel dead (Down for routing) or alive again. Returns True if that changed
        anything; call `pump` after."""
        if dead == (path_id in self._tunnel_dead):
            return False
        if dead:
            self._tunnel_dead.add(path_id)
            self.router.update_path(path_id, now, status=PathStatus.DOWN)
        else:
            self._tunnel_dead.discard(path_id)
            self.router.update_path(path_id, now, status=self.status(path_id),
                                    metrics=self.monitor.metrics(path_id, now))
        return True

    def _clear_suspect(self, path_id: PathId) -> None:
        if self._suspect.pop(path_id, None) is not None:
            self.router.set_suspect(path_id, False)

    def _suspect_siblings(self, failed: PathId, at: float) -> tuple[float, list[PathId]]:
        """Suspect the failed path's siblings that have not answered since its failure began, or that
        lost probes too since (`_clean_since`); returns (when it began, the newly suspected)."""
        began = self.monitor.miss_since(failed)
        began = at if began is None else began
        up, ep = self._uplink[failed], self._endpoint[failed]
        mon = self.monitor
        new: list[PathId] = []
        for pid in self._uplink:
            if pid == failed or pid in self._suspect or mon.status(pid) is PathStatus.DOWN:
                continue
            if self._uplink[pid] != up and self._endpoint[pid] != ep:
                continue
            if self._clean_since(pid, began, at):
                continue        # answered a probe sent after the failure began, lost none: not part of it
            self._suspect[pid] = began
            self.router.set_suspect(pid, True)
            new.append(pid)
        return began, new

    def _suspect_if_failing(self, path_id: PathId, sent_at: float) -> None:
        """A probe sent at `sent_at` was lost: if a sibling of the path is Down from a failure that began
        before, the path is part of that failure too (a lossy uplink takes its paths down one by one;
        at the first Down the sibling's losses may not have timed out yet)."""
        if path_id in self._suspect or path_id in self._failures:
            return
        for failed, began in self._failures.items():
            if sent_at > began and (self._uplink[failed] == self._uplink[path_id]
                                    or self._endpoint[failed] == self._endpoint[path_id]):
                self._suspect[path_id] = began
                self.router.set_suspect(path_id, True)
                return

    def _hold_until(self, began: float, suspects: list[PathId], now: float) -> float:
        """How long the router may wait before moving the flows of a path that just went Down: until
        its suspected siblings could have answered a probe sent after the failure began (the next
        probe, one interval at most after, plus that path's own timeout), at most `detect_multiplier`
        intervals. 0 when there is nothing to learn (no suspect, or the time is past: slow profiles)."""
        if not suspects:
            return now
        mon = self.monitor
        p = mon.profile
        latest = max(began + p.interval_s + mon.current_timeout_s(s) for s in suspects)
        return min(latest, now + p.detect_multiplier * p.interval_s)

    def _release_held(self, now: float) -> None:
        """Tell the router of held Downs whose time is up, or as soon as one suspect of a held Down has
        answered: a sibling over the same uplink that answers clears the whole uplink (the failure
        is at the far end), one to the same remote endpoint clears that endpoint (the failure is
        ours); the flows then move knowing which of the two it was."""
        for pid in list(self._held):
            until, ev, suspects = self._held[pid]
            answered = [s for s in suspects if s not in self._suspect and self.monitor.status(s) is not PathStatus.DOWN]
            if answered:
                for a in answered:
                    same = self._uplink if self._uplink[a] == self._uplink[pid] else self._endpoint
                    for s in suspects:
                        if same[s] == same[pid]:
                            self._clear_suspect(s)
            elif now < until:
                continue
            del self._held[pid]
            self.router.handle(replace(ev, at=now))     # the router decides now, and says so
            self.router.set_suspect(pid, False)

    # -- a restart ---------------------------------------------------------------------------------

    def hold_steering(self, until: float) -> None:
        """Leave the driver's steering as it is until every path has a verdict, at the latest `until`
        (see the module's header). The `pump` that ends it returns `Step.released`."""
        self._steering_held_until = until

    @property
    def steering_held(self) -> bool:
        return self._steering_held_until is not None

    def _release_steering(self, now: float) -> bool:
        until = self._steering_held_until
        if until is None:
            return False
        if now < until and not all(self.monitor.judged(p) for p in self._uplink):
            return False
        self._steering_held_until = None
        return True

    # -- the step ----------------------------------------------------------------------------------

    def has_news(self) -> bool:
        """Whether a `pump` now could change anything besides firing timers: the monitor has events
        (a status or metrics change), or a Down is held until a sibling answers. A driver may skip the
        pump after a probe reply when it has none, and wait for its next deadline."""
        return self.monitor.has_events() or bool(self._held)

    def next_deadline(self) -> float | None:
        best = self.monitor.next_deadline()
        for d in (self.router.next_deadline(), self.sla.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        for h in self._held.values():
            if best is None or h[0] < best:
                best = h[0]
        until = self._steering_held_until
        if until is not None and (best is None or until < best):
            best = until
        return best

    def pump(self, now: float) -> Step:
        """Fire what is due and feed the monitor's verdicts through the router and the SLA monitor."""
        mon, router, sla = self.monitor, self.router, self.sla
        step = Step()
        mon.on_timer(now)
        for ev in mon.drain_events():
            if isinstance(ev, SendProbe):
                step.probes.append(ev)
                continue
            if isinstance(ev, ProbeLost):
                step.lost.append(ev)      # the router and the SLA learn of losses from the verdicts
                if self._failures:
                    self._suspect_if_failing(ev.path_id, ev.sent_at)
                continue
            if isinstance(ev, PathStatusChanged):
                step.status.append(ev)
                if ev.new is PathStatus.DOWN:
                    self._clear_suspect(ev.path_id)
                    # siblings first, so the flows leaving this path do not land on one of them
                    began, suspects = self._suspect_siblings(ev.path_id, ev.at)
                    self._failures[ev.path_id] = began
                    until = self._hold_until(began, suspects, now)
                    if until > now:
                        self._held[ev.path_id] = (until, ev, suspects)
                        router.set_suspect(ev.path_id, True)   # Down, though the router is not told yet
                        continue
                else:
                    self._failures.pop(ev.path_id, None)
                    held = self._held.pop(ev.path_id, None)
                    if held is not None:
                        # back before the router heard: the Down happened all the same (its flows saw the
                        # outage), so the router hears it now, then this status; a Down swallowed by the
                        # hold would leave a call on a path that just dropped every probe of a detection time
                        router.handle(replace(held[1], at=now))
                        router.set_suspect(ev.path_id, False)
                    if ev.path_id in self._tunnel_dead:
                        ev = replace(ev, new=PathStatus.DOWN)
            elif isinstance(ev, PathMetricsUpdated):
                step.metrics_changed = True
                self._count_timeouts(ev.path_id, now)
                if ev.path_id in self._held:
                    continue                              # the router still has the path Up: no news yet
                if ev.path_id in self._tunnel_dead:
                    ev = replace(ev, status=PathStatus.DOWN)
            router.handle(ev)
        if self._held:
            self._release_held(now)
        d = router.next_deadline()
        if d is not None and d <= now:
            router.on_timer(now)
        step.router = router.drain_events()
        d = sla.next_deadline()
        if d is not None and d <= now:
            mon.sync(now)       # coasted probes answered by now are samples of this evaluation
            sla.on_timer(now)
        step.sla = sla.drain_events()
        step.released = self._release_steering(now)
        return step

    def _count_timeouts(self, path_id: PathId, now: float) -> None:
        """Every probe the monitor judged lost, less those whose reply came late after all, since the
        last metrics report is a lost sample for the path's SLA (a timed-out probe whose reply is
        still on its way is not judged yet: `PathState.give_up`)."""
        judged, revived = self.monitor.losses(path_id)
        seen_lost, seen_revived = self._timeouts_seen.get(path_id, (0, 0))
        lost = (judged - seen_lost) - (revived - seen_revived)
        for _ in range(min(max(lost, 0), _MAX_TIMEOUTS_PER_STEP)):
            self.sla.record_probe(path_id, None, now)
        self._timeouts_seen[path_id] = (judged, revived)
