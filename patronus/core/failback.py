"""A router's failback book: the flows away from their origin path, per origin, and the timers at
which they may go back.

What may change state here: `displace` and `clear_origin` (a flow's origin), `forget` (an origin
removed), `returning` (each displaced flow's `ok_since`, and the origin's timer) and the timers
(`next_due`, `pop_due`). This module must not move a flow: `returning` says which flows go back and
the router moves them (`Router._move`, the one place a flow changes path).

Rule (`returning`): a displaced flow goes back once its origin has been acceptable to the flow's
policy (Up, not suspect, at or above its threshold, meeting its requirements) for the hold without
interruption, its cooldown has passed, and the origin beats its current path by the minimum
improvement (or the current path is Down, or the flow is stranded there). Until then the origin's
timer is armed at the earliest moment one of its flows may be ready.
"""

from __future__ import annotations

import heapq

from patronus.core.model import PathId, PathStatus, RouteKey
from patronus.core.pathtable import FlowState, PathEntry

_UP = PathStatus.UP
_DOWN = PathStatus.DOWN


class Failbacks:
    def __init__(self) -> None:
        self.displaced: dict[PathId, dict[RouteKey, FlowState]] = {}   # origin path -> flows away from it
        self._timers: list[tuple[float, int, PathId]] = []
        self._armed: dict[PathId, float] = {}
        self._tie = 0

    def displace(self, f: FlowState, origin: PathId) -> None:
        """`f` is away from `origin`, a new origin for it: the hold starts over."""
        f.origin = origin
        f.ok_since = None
        self.displaced.setdefault(origin, {})[f.key] = f

    def clear_origin(self, f: FlowState) -> None:
        if f.origin is not None:
            d = self.displaced.get(f.origin)
            if d is not None:
                d.pop(f.key, None)
                if not d:
                    del self.displaced[f.origin]
            f.origin = None

    def forget(self, origin: PathId) -> None:
        """The origin path is gone: its flows have no origin any more."""
        for f in self.displaced.pop(origin, {}).values():
            f.origin = None

    def pending(self) -> int:
        """Origins with a failback timer running."""
        return len(self._armed)

    def next_due(self, entries: dict[PathId, PathEntry]) -> float | None:
        """When the next failback timer that still matters fires (one whose origin is Up and has
        displaced flows); timers nothing waits for any more are dropped."""
        timers = self._timers
        while timers:
            when, _, pid = timers[0]
            e = entries.get(pid)
            if e is not None and pid in self.displaced and e.status is _UP and self._armed.get(pid) == when:
                return when
            heapq.heappop(timers)
            if self._armed.get(pid) == when:
                del self._armed[pid]      # a timer nothing waits for any more is no failback pending
        return None

    def pop_due(self, now: float) -> PathId | None:
        """The origin of the next armed timer due at `now` (it is disarmed), or None."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, pid = heapq.heappop(timers)
            if self._armed.get(pid) == when:
                del self._armed[pid]
                return pid
        return None

    def returning(self, origin: PathEntry, now: float, hold_s: float, cooldown_s: float,
                  min_improvement: float) -> list[FlowState]:
        """Called whenever the origin path's state changes and at its timers: track, per displaced
        flow, since when the origin has been acceptable, and say which flows go back now (in the
        order they were displaced); arm the origin's timer for the others."""
        origin_id = origin.path.id
        flows = self.displaced.get(origin_id)
        if not flows:
            return []
        back: list[FlowState] = []
        wake: float | None = None
        for f in list(flows.values()):
            cur = f.entry
            if cur is origin:
                self.clear_origin(f)
                continue
            if not _acceptable(f, origin):
                f.ok_since = None
                continue
            if f.ok_since is None:
                f.ok_since = now
            ready = f.ok_since + hold_s
            if f.moved_at is not None and f.moved_at + cooldown_s > ready:
                ready = f.moved_at + cooldown_s
            if now < ready:
                wake = ready if wake is None or ready < wake else wake
                continue
            p = f.policy
            gain = p.score(origin.metrics) - p.score(cur.metrics)
            if f.stranded or cur.status is _DOWN or gain >= min_improvement:
                back.append(f)
        if wake is None:
            self._armed.pop(origin_id, None)          # nothing waits on this origin now
        elif self._armed.get(origin_id) != wake:
            self._armed[origin_id] = wake
            self._tie += 1
            heapq.heappush(self._timers, (wake, self._tie, origin_id))
        return back


def _acceptable(f: FlowState, origin: PathEntry) -> bool:
    """Would the flow's policy accept its origin path right now?"""
    if origin.status is not _UP or origin.suspect:
        return False
    p = f.policy
    m = origin.metrics
    if p.failover_threshold is not None and m.score < p.failover_threshold:
        return False
    return p.requirements is None or p.requirements.met_by(m)
