"""The host-stall watcher: a stall of its process is reported with its length; a quiet host, nothing."""

from __future__ import annotations

import os
import signal
import time

import pytest

from emulation.stallwatch import REPORT_MS, StallWatch

pytestmark = pytest.mark.unit


def test_a_stall_is_reported_with_its_length() -> None:
    watch = StallWatch()
    watch.start()
    proc = watch._proc
    assert proc is not None
    t0 = time.time()
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.15)                    # the stall itself: the watcher cannot run for 150 ms
    os.kill(proc.pid, signal.SIGCONT)
    stalls = watch.stop()
    assert proc.poll() is not None      # gone
    assert stalls and all(ms >= REPORT_MS for _, ms in stalls)
    at, ms = max(stalls, key=lambda s: s[1])
    assert 140 <= ms < 1000 and t0 < at < time.time()


def test_stop_without_start_and_twice_is_harmless() -> None:
    watch = StallWatch()
    assert watch.stop() == []
    watch.start()
    watch.stop()
    assert watch.stop() == []


def test_the_watcher_ends_with_its_parent_even_a_killed_one() -> None:
    """A runner killed with kill -9 left `emulation.stallwatch` running in the root namespace."""
    import subprocess
    import sys

    from emulation.wait import wait_for
    from patronus.agent.procs import proc_state

    code = ("import os, signal; from emulation.stallwatch import StallWatch; w = StallWatch(); w.start(); "
            "print(w._proc.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert parent.returncode == -signal.SIGKILL
    watcher = int(parent.stdout.split()[0])
    wait_for(lambda: proc_state(watcher) in (None, "Z"), 5, "the orphaned watcher ends")
