"""One way to wait for a condition: poll it, with a deadline, and say what never came.

    wait_for(lambda: link.counters()["held"] == 0, 20, "the relay to empty its heap")

`cond()` is called until it returns something truthy, which `wait_for` returns. Past `timeout_s` it
raises `error(message)`: "timed out after T s waiting for WHAT", or `what()` itself when `what` is a
function (a message that names what is still missing). Exceptions of the types in `retry` count as
"not yet" (a service still starting), and the last one is named in the message; any other exception
from `cond()` propagates at once (an agent that died is not something to wait out). Between two
checks it sleeps `interval_s`: the poll interval, not a wait in place of the condition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout_s: float, what: str | Callable[[], str], *, interval_s: float = 0.05,
             error: Callable[[str], Exception] = TimeoutError, retry: tuple[type[Exception], ...] = ()) -> T:
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
        except retry as exc:
            last_exc = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            message = what() if callable(what) else f"timed out after {timeout_s:g} s waiting for {what}"
            raise error(message + (f" (last error: {last_exc})" if last_exc is not None else ""))
        time.sleep(interval_s)      # the poll interval between two checks of the condition
