"""CPU scheduling of the processes whose timing is a measurement.

A probe reflector's answer time is part of every RTT its peers measure; a test-bed relay's release
time is the emulated wire. Under CFS, however high their niceness, a busy host delays their wake-ups by
a scheduler slice or more (tens of ms on two cores with a dozen runnable tasks), and a peer reads that
as jitter or loss. SCHED_FIFO runs them the moment they are runnable, ahead of every ordinary task;
they sleep in `select` between packets and do little per packet, so they cannot starve the host (and
the kernel's RT throttling still keeps 5 % of each CPU for the rest).

`apply(realtime=PRIO, nice=N)` sets what it can in the calling process and says what took effect:
SCHED_FIFO at PRIO where the kernel allows it (root or CAP_SYS_NICE, a real-time budget), else the
niceness, else nothing. It never raises: a process that cannot get its class still works, slower to
wake, and reports which class it got so the run can say so.
"""

from __future__ import annotations

import contextlib
import os

MAX_RT_PRIORITY = 99


def apply(realtime: int | None = None, nice: int | None = None) -> str:
    """'fifo:PRIO', 'nice:N' or 'default': the class this process runs in from now on."""
    if realtime is not None and 1 <= realtime <= MAX_RT_PRIORITY:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
            return f"fifo:{realtime}"
        except (OSError, AttributeError):
            pass
    if nice is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            return f"nice:{nice}"
    return "default"


def current() -> str:
    """The calling process's class, in `apply`'s words."""
    with contextlib.suppress(OSError, AttributeError):
        if os.sched_getscheduler(0) == os.SCHED_FIFO:
            return f"fifo:{os.sched_getparam(0).sched_priority}"
    with contextlib.suppress(OSError):
        n = os.getpriority(os.PRIO_PROCESS, 0)
        if n:
            return f"nice:{n}"
    return "default"
