"""kill -9 of `patronus-lab run` at any stage never blocks the next run, and `patronus-lab clean` removes
only what a dead run left: a live run is never touched unless named, and `clean --run ID` leaves
nothing of a killed run (namespaces, links, relays, agents, wireguard-go, the stall watcher)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from emulation.scenario.short import short_version

pytestmark = [pytest.mark.emulation, pytest.mark.timeout(900)]

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def _lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emulation.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _namespaces(run_id: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"pt{run_id}-")}


def _leftovers(run_id: str, pid: int, out: Path) -> list[str]:
    """Everything of run `run_id` (owner `pid`, output `out`) still on the machine."""
    left = [f"namespace {n}" for n in sorted(_namespaces(run_id))]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [f"link {m}" for m in re.findall(rf"^\d+: (pt{run_id}[^:@]*)", links, re.M)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (f"pt{run_id}" in cmd or str(out) in cmd or
                ("emulation.stallwatch" in cmd and f"--parent {pid} " in cmd + " ")):
            left.append(f"process {proc.name}: {cmd.strip()}")
    from emulation.links.relay import registry_dir

    left += [f"relay record {f.name}" for f in registry_dir().glob(f"pt{run_id}*.json")]
    from emulation import runs

    left += [f"run record {r.run_id}" for r in runs.records() if r.run_id == run_id]
    return left


class _Run:
    """`patronus-lab run` in the background, its progress lines read as they come."""

    def __init__(self, scenario: Path, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.run_id = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Block until a progress line containing `text` (the run's own words) has been printed."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the run ended before {text!r}:\n" + "".join(self.seen[-40:])
            self.seen.append(line)
            m = re.search(r"\(run ([0-9a-f]{4})\)", line)
            if m:
                self.run_id = m.group(1)
            if text in line:
                return

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)       # its stdout stays open to the reader: children may still hold the pipe


def test_killed_runs_never_block_the_next_and_clean_touches_only_the_dead(tmp_path: Path) -> None:
    sc = short_version("failover-basic")
    scenario = tmp_path / "failover-basic-short.yaml"
    scenario.write_text(sc.to_yaml())
    killed: list[_Run] = []
    try:
        # killed while the network is being built, then while the agents start
        for stage in ("building", "starting agents"):
            run = _Run(scenario, tmp_path / f"killed-at-{stage.split()[0]}")
            killed.append(run)
            run.wait_for(stage)
            run.kill()
            assert run.run_id
        # killed mid-timeline; before that, `clean` alone leaves the live run as it is, and
        # `clean --run` of a live run is refused
        run = _Run(scenario, tmp_path / "killed-at-timeline")
        killed.append(run)
        run.wait_for("running the timeline")
        live = _namespaces(run.run_id)
        assert live
        c = _lab("clean")
        assert c.returncode == 0, c.stdout + c.stderr
        assert _namespaces(run.run_id) == live, c.stdout
        c = _lab("clean", "--run", run.run_id)
        assert c.returncode == 2 and "is running" in c.stdout, c.stdout + c.stderr
        assert _namespaces(run.run_id) == live
        run.kill()
        assert _namespaces(run.run_id), "the killed run left nothing: the test would prove nothing"

        # the next run, with no `clean` in between, builds the same interface names and passes (a run
        # whose verdict the platform's noise decided, measured and named, is run again, at most twice,
        # as test_scenarios_short does: what is judged here is that nothing of the killed runs is in its way)
        for attempt in range(3):
            out = tmp_path / f"after-{attempt}"
            r = subprocess.run([sys.executable, "-m", "emulation.cli", "run", str(scenario), "--out", str(out)],
                               capture_output=True, text=True, timeout=420, cwd=ROOT)
            assert (out / "summary.json").exists(), r.stdout[-3000:] + r.stderr[-2000:]
            summary = json.loads((out / "summary.json").read_text())
            if attempt == 0:
                assert "removed what dead runs left" in r.stdout, r.stdout[-3000:]
            if summary["verdict"] != "inconclusive":
                break
        assert r.returncode == 0 and summary["verdict"] == "passed", r.stdout[-3000:] + r.stderr[-2000:]
        for k in killed:
            assert not _leftovers(k.run_id, k.proc.pid, k.out), _leftovers(k.run_id, k.proc.pid, k.out)

        # one more killed mid-timeline: `clean --run ID` removes every trace of it
        last = _Run(scenario, tmp_path / "killed-again")
        killed.append(last)
        last.wait_for("running the timeline")
        last.kill()
        assert _leftovers(last.run_id, last.proc.pid, last.out)
        c = _lab("clean", "--run", last.run_id)
        assert c.returncode == 0 and "removed" in c.stdout, c.stdout + c.stderr
        assert not _leftovers(last.run_id, last.proc.pid, last.out), _leftovers(last.run_id, last.proc.pid, last.out)
    finally:
        for k in killed:
            if k.proc.poll() is None:
                k.kill()
            if k.run_id:
                _lab("clean", "--run", k.run_id)
            k.reader.join(30)          # the pipe ends once the run's last child is gone
            if k.proc.stdout is not None:
                k.proc.stdout.close()
