"""A SiteRuntime driven in virtual time, as a driver drives it: the loop the runtime tests share.

A subclass owns `rt` (the runtime) and `perform` (what it does with a step's actions: it queues each
probe it lets through as `(arrives at, path, seq, sent at)` on `inflight`). `run_until(t)` then
advances `now` from event to event (the runtime's next deadline or the next reply to arrive), hands
each due reply to `deliver` and steps the runtime once per event."""

from __future__ import annotations

from patronus.core.model import PathId
from patronus.core.runtime import Actions, SiteRuntime


class VirtualNet:
    rt: SiteRuntime

    def __init__(self) -> None:
        self.now = 0.0
        self.inflight: list[tuple[float, PathId, int, float]] = []

    def perform(self, act: Actions) -> None:
        raise NotImplementedError

    def deliver(self, pid: PathId, seq: int, sent: float) -> None:
        self.rt.on_probe_reply(pid, seq, sent, self.now)

    def run_until(self, t: float) -> None:
        while True:
            d = self.rt.next_deadline()
            nxt = min([d if d is not None else t] + [a for a, *_ in self.inflight])
            if nxt > t:
                self.now = t
                return
            self.now = max(self.now, nxt)
            due = sorted(x for x in self.inflight if x[0] <= self.now)
            self.inflight = [x for x in self.inflight if x[0] > self.now]
            for _, pid, seq, sent in due:
                self.deliver(pid, seq, sent)
            self.perform(self.rt.on_timer(self.now, d) if d is not None and d <= self.now else self.rt.pump(self.now))
