"""The stop flag of the traffic tools (senders, receivers, the tap, the HTTP client): set by a signal,
checked by their loops, so that they stop between two packets and still write what they measured."""

from __future__ import annotations

import signal


class StopFlag:
    """False until one of `signals` (default SIGTERM) arrives. `while not stop: ...`."""

    def __init__(self, *signals: signal.Signals) -> None:
        self._set = False
        for sig in signals or (signal.SIGTERM,):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        self._set = True

    def __bool__(self) -> bool:
        return self._set
