"""What every part of a Mininet run shares: its error, how a process starts in a namespace and is
stopped by its pid, and the scheduling classes each kind of process gets.

Scheduling on a shared host: every site, every ISP and every application host of a scenario shares
two cores here, where in the world each is a box of its own. What stands for the wire and for the
hosts' network stacks must not wait for a CPU, or the run measures this host's scheduler, not the
SD-WAN: a relay that waits delays every packet on its link, a reflector that waits adds its wait to
every peer's RTT, a sender that wakes late leaves a gap in its flow. So those run SCHED_FIFO
(patronus.agent.sched; they sleep between packets and do little per packet), in this order: the
stall watcher above everything it measures, then the relays, the reflectors, the UDP traffic. The
agents (the system under test) stand for dedicated router boxes and go ahead of the rest at nice -5;
bulk TCP, web traffic, taps and the runner take what is left. Without this, healthy paths of the
brownout scenario went Down when the host was busy, and a voice flow on a clean path showed
one-way delays of 250 ms.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

RT_STALLWATCH = 70
RT_RELAY = 50
RT_REFLECTOR = 40
RT_TRAFFIC = 30
RELAY_NICE = -10            # where the kernel refuses a real-time class
AGENT_NICE = -5


class RunError(RuntimeError):
    """The run could not be carried out (exit code 2)."""


def popen(ns: str, argv: list[str], log: Path | None = None, nice: int = 0) -> subprocess.Popen[bytes]:
    """`argv` in namespace `ns`, in a session of its own (stopped by its pid, never by name); its output
    appended to `log`, or discarded."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True,
                         preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None)
    if log:
        out.close()  # type: ignore[union-attr]
    return p


def kill_group(p: subprocess.Popen[bytes]) -> None:
    """SIGKILL to a process's session (it and what it started), if it still runs; then reap it."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
