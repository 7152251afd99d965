"""The simulator's clock: simpy's `Environment`, with a fast path for callbacks.

The simulation is made of timed callbacks: a packet reaches the next hop, a probe comes home, an
agent's timer fires, a flow sends its next datagram. Each could be a simpy process sleeping on
`env.timeout(delay)`, and a researcher may still write one: `SimEnvironment` is a
`simpy.Environment`, and processes, timeouts and events of their own run in it, interleaved with
the simulator's callbacks in simpy's order (time, priority, insertion).

What the subclass adds, inside simpy's documented extension point (an `Environment` subclass owns its
event queue, as `simpy.RealtimeEnvironment` does):

- `later(delay, fn, *args)`: call `fn(*args)` `delay` seconds from now. It schedules one queue entry
  ordered exactly as `env.timeout(delay)` with that callback would be (same time, priority NORMAL, and
  event id), without a `Timeout` object (a constructor with checks) or a closure per entry. A million
  of them a second is what the 100-site benchmarks take.
- `play(until)`: `env.run(until=until)` for the same queue, with the per-event overhead of
  `Environment.step` cut for `later` entries (a plain call), every other simpy event processed by
  `step` itself, and the cyclic garbage collector kept out of the way (see `play`). Nothing scheduled
  at `until` itself runs, as with simpy's urgent `until` event.
- `events_scheduled()`: how many events the run has scheduled (simpy numbers each one).

simpy is pinned (`.ci/constraints.txt`); `tests/sim/test_sim_scale.py` checks that `play` and
`env.run` run the same callbacks in the same order.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.events import NORMAL


def _fire(event: _Call) -> None:
    event.fn(*event.args)


_FIRE = (_fire,)    # every _Call's callbacks, for simpy's own loop (which only iterates them)


class _Call:
    """A `later` entry: what `Environment.step` needs of an event (callbacks, a success flag and a
    value), and the function with its arguments. `play` calls `fn` directly; simpy's own `step` goes
    through `callbacks`."""

    __slots__ = ("_ok", "_value", "args", "callbacks", "fn")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.callbacks: tuple[Callable[[Any], None], ...] | None = _FIRE
        self._ok = True
        self._value = None


class SimEnvironment(simpy.Environment):
    """`simpy.Environment` with `later`, `play` and `events_scheduled` (module header)."""

    def later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Call `fn(*args)` `delay` seconds from now (a negative delay is now)."""
        entry: Any = (self._now + (delay if delay > 0.0 else 0.0), NORMAL, next(self._eid), _Call(fn, args))
        heappush(self._queue, entry)     # a _Call is an event to simpy's own loop (see _Call)

    def events_scheduled(self) -> int:
        """Events scheduled since the environment was made (`later` entries, timeouts, processes' events)."""
        return next(copy.copy(self._eid))

    def play(self, until: float) -> None:
        """`run(until=until)`, faster for `later` entries. The objects built before the run are frozen
        for the garbage collector (never scanned again) and collections run every 100,000
        allocations rather than 700: a run allocates millions of short-lived events that reference
        counting frees, and full collections over a thousand sites' state were a third of the time."""
        queue: list[Any] = self._queue     # (time, priority, id, event): simpy events and _Calls
        pop = heappop
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        try:
            while queue:
                entry = queue[0]
                if entry[0] >= until:
                    break
                event = entry[3]
                if event.__class__ is _Call:
                    pop(queue)
                    self._now = entry[0]
                    event.fn(*event.args)
                else:
                    self.step()      # any other simpy event, exactly as `run` would process it
            self._now = until
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
