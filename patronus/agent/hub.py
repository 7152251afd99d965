"""The agent's events out: the recent ones for `GET /events`, and a queue per WebSocket subscriber.

Events leave the process with wall times (`Event.as_dict(offset)` shifts every time field of the
core's monotonic clock). A subscriber that does not keep up loses its oldest event, never the
agent's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from patronus.core.events import Event

# the API's most (`/events?limit=10000`): the test-bed reads a run's events once, at its end, and the
# first misses of probe runs (ProbeLost, published but never stored) must not push the verdicts out
EVENT_BUFFER = 10_000
SUBSCRIBER_QUEUE = 1000


class EventHub:
    def __init__(self, offset: float) -> None:
        self.offset = offset                  # wall time - monotonic time
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_BUFFER)
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, ev: Event) -> None:
        d = ev.as_dict(self.offset)
        self._events.append(d)
        for q in list(self._subscribers):
            try:
                q.put_nowait(d)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(d)

    def last_word(self, ev: Event) -> None:
        """To the subscribers only (the agent is stopping: no one reads the buffer any more)."""
        d = ev.as_dict(self.offset)
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(d)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._events)[-limit:] if limit > 0 else []

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)
