"""Who a pid is: the helpers the agent uses before it adopts or signals a process it did not start.

An agent that adopts the processes an earlier agent left running (wireguard-go, the probe reflector)
knows them only by the pid recorded in its state directory. A pid alone can name another process by
the time it is read (pids are recycled), so a record also carries the process's start time (field 22
of /proc/PID/stat, clock ticks since boot): the same pid with the same start time is the same
process. Signals go through a pidfd opened after that check, so the check and the signal cannot be
split by a recycling either.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path


def proc_state(pid: int) -> str | None:
    """The /proc state letter of `pid` (R, S, Z, ...), None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None if there is no such process)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command name on (which may hold spaces and parens)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def argv_of(pid: int) -> list[bytes]:
    """The command line of `pid` ([] when it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.split(b"\0") if a]


def alive(pid: int, start: int | None) -> bool:
    """`pid` runs (not a zombie) and, when `start` is known, is the process that started then."""
    if proc_state(pid) in (None, "Z", "X"):
        return False
    return start is None or start_ticks(pid) == start


def wait_pidfd(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process behind `pidfd` has exited (a zombie counts); True if it has."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def stop(pid: int, is_it: Callable[[int], bool], timeout_s: float = 5.0) -> bool:
    """SIGTERM (then SIGKILL) `pid` if `is_it(pid)` holds once a pidfd on it is open; True if we
    stopped it, False if it was gone or is not the process meant."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not is_it(pid):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not wait_pidfd(pidfd, timeout_s):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not wait_pidfd(pidfd, timeout_s):
                raise OSError(f"pid {pid} survived SIGKILL")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)          # our own child: reap it (someone else's: init does)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def running_agent_pid(pidfile: Path) -> int | None:
    """The pid of the agent recorded in `pidfile` if it still runs (same pid, same start time when
    recorded, a patronus command line), else None."""
    try:
        lines = pidfile.read_text().split()
        pid = int(lines[0])
        start = int(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    cmd = b" ".join(argv_of(pid))
    return pid if b"patronus" in cmd and b"reflector" not in cmd and alive(pid, start) else None
